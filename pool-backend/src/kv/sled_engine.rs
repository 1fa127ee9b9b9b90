//! The sled engine (`--engine sled`). sled's multi-tree transactions cannot
//! iterate, so a write transaction here is an [`Overlay`] of pending puts
//! and deletes over the default tree: reads (and ranges) inside the
//! transaction merge the overlay, and commit applies it with
//! `Tree::apply_batch` (atomic) followed by `flush()` (durable). A mutex serializes writers; a read/write
//! lock keeps readers from observing a batch half applied, so every read
//! transaction sees one committed state.

use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use super::overlay::Overlay;
use super::{Kv, KvError, KvResult, ReadTx, WriteTx};

fn engine<E: std::fmt::Display>(e: E) -> KvError {
    KvError::Engine(format!("sled: {e}"))
}

/// A sled database directory.
pub struct SledKv {
    db: sled::Db,
    writer: Mutex<()>,
    commit: RwLock<()>,
}

impl SledKv {
    /// Opens or creates the database directory at `path`.
    /// sled releases its file lock from a background thread after the last
    /// handle is dropped, so a reopen in the same process retries briefly.
    pub fn open(path: &Path) -> KvResult<Self> {
        let mut tries = 0;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock && tries < 50 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(KvError::Engine(format!(
                        "sled cannot lock {}; another process uses it",
                        path.display()
                    )))
                }
                Err(e) => {
                    return Err(KvError::Engine(format!(
                        "sled cannot open {}: {e}",
                        path.display()
                    )))
                }
            }
        };
        Ok(SledKv {
            db,
            writer: Mutex::new(()),
            commit: RwLock::new(()),
        })
    }
}

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

fn tree_scan(
    tree: &sled::Tree,
    start: &[u8],
    end: Option<&[u8]>,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> KvResult<()> {
    if end.is_some_and(|e| e <= start) {
        return Ok(());
    }
    for item in tree.range::<&[u8], _>(bounds(start, end)) {
        let (k, v) = item.map_err(engine)?;
        if !f(&k, &v) {
            break;
        }
    }
    Ok(())
}

struct SledRead<'a>(&'a sled::Tree);

impl ReadTx for SledRead<'_> {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        Ok(self.0.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> KvResult<()> {
        tree_scan(self.0, start, end, f)
    }
}

impl Kv for SledKv {
    fn read_dyn(&self, f: &mut dyn FnMut(&dyn ReadTx) -> KvResult<()>) -> KvResult<()> {
        let _g = self.commit.read().unwrap_or_else(|e| e.into_inner());
        f(&SledRead(&self.db))
    }

    fn write_dyn(&self, f: &mut dyn FnMut(&mut dyn WriteTx) -> KvResult<()>) -> KvResult<()> {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let read = SledRead(&self.db);
        let mut tx = Overlay::new(&read);
        f(&mut tx)?;
        let pending = tx.into_pending();
        if pending.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        let _c = self.commit.write().unwrap_or_else(|e| e.into_inner());
        self.db.apply_batch(batch).map_err(engine)?;
        self.db.flush().map_err(engine)?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "sled"
    }
}
