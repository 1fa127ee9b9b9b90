//! The redb engine (default): one `&[u8] -> &[u8]` table, every write
//! transaction committed with `Durability::Immediate` (fsync before the
//! commit returns). redb's copy-on-write B-tree gives readers a snapshot and
//! survives crashes at any point.

use std::ops::Bound;
use std::path::Path;

use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::{Kv, KvError, KvResult, ReadTx, WriteTx};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

fn engine<E: std::fmt::Display>(e: E) -> KvError {
    KvError::Engine(format!("redb: {e}"))
}

/// A redb database file.
pub struct RedbKv {
    db: Database,
}

impl RedbKv {
    /// Opens or creates the database file at `path`.
    pub fn open(path: &Path) -> KvResult<Self> {
        let db = Database::create(path)
            .map_err(|e| KvError::Engine(format!("redb cannot open {}: {e}", path.display())))?;
        // Create the table once so read transactions always find it.
        let mut w = db.begin_write().map_err(engine)?;
        w.set_durability(Durability::Immediate);
        w.open_table(TABLE).map_err(engine)?;
        w.commit().map_err(engine)?;
        Ok(RedbKv { db })
    }
}

fn scan_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    start: &[u8],
    end: Option<&[u8]>,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> KvResult<()> {
    let hi = match end {
        Some(e) => Bound::Excluded(e),
        None => Bound::Unbounded,
    };
    if let Some(e) = end {
        if e <= start {
            return Ok(());
        }
    }
    let range = t
        .range::<&[u8]>((Bound::Included(start), hi))
        .map_err(engine)?;
    for item in range {
        let (k, v) = item.map_err(engine)?;
        if !f(k.value(), v.value()) {
            break;
        }
    }
    Ok(())
}

struct RedbRead(redb::ReadOnlyTable<&'static [u8], &'static [u8]>);

impl ReadTx for RedbRead {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        Ok(self.0.get(key).map_err(engine)?.map(|v| v.value().to_vec()))
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> KvResult<()> {
        scan_table(&self.0, start, end, f)
    }
}

struct RedbWrite<'t>(redb::Table<'t, &'static [u8], &'static [u8]>);

impl ReadTx for RedbWrite<'_> {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        Ok(self.0.get(key).map_err(engine)?.map(|v| v.value().to_vec()))
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> KvResult<()> {
        scan_table(&self.0, start, end, f)
    }
}

impl WriteTx for RedbWrite<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> KvResult<()> {
        self.0.insert(key, value).map_err(engine)?;
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> KvResult<()> {
        self.0.remove(key).map_err(engine)?;
        Ok(())
    }
    fn as_read(&self) -> &dyn ReadTx {
        self
    }
}

impl Kv for RedbKv {
    fn read_dyn(&self, f: &mut dyn FnMut(&dyn ReadTx) -> KvResult<()>) -> KvResult<()> {
        let r = self.db.begin_read().map_err(engine)?;
        let t = RedbRead(r.open_table(TABLE).map_err(engine)?);
        f(&t)
    }

    fn write_dyn(&self, f: &mut dyn FnMut(&mut dyn WriteTx) -> KvResult<()>) -> KvResult<()> {
        let mut w = self.db.begin_write().map_err(engine)?;
        w.set_durability(Durability::Immediate);
        let res = {
            let mut t = RedbWrite(w.open_table(TABLE).map_err(engine)?);
            f(&mut t)
        };
        match res {
            Ok(()) => w.commit().map_err(engine),
            Err(e) => {
                w.abort().map_err(engine)?;
                Err(e)
            }
        }
    }

    fn name(&self) -> &'static str {
        "redb"
    }
}
