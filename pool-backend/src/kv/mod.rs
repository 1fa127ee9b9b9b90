//! An ordered byte key-value store with atomic, durable multi-key write
//! transactions and consistent reads: the seam between poold's metadata and
//! an embedded engine.
//!
//! * [`Kv`] is object safe (`Arc<dyn Kv>`); [`KvExt`] adds the convenient
//!   closure API: `kv.read(|tx| ...)` and `kv.write(|tx| ...)`.
//! * A write closure's changes commit all together when it returns `Ok`, and
//!   are dropped when it returns `Err` (the error is handed back unchanged).
//!   Reads inside a write transaction see its own pending writes.
//! * A read transaction sees one committed state, never part of a write.
//! * Tables are key prefixes in one keyspace.
//!
//! Engines: [`redb_engine`] (default; redb 2, `Durability::Immediate`),
//! [`sled_engine`] (sled 0.34, an overlay over the tree committed with
//! `apply_batch` + `flush`) and [`etcd_engine`] (an etcd v3 cluster; an
//! overlay committed as one etcd `Txn`). All pass the same conformance
//! suite ([`conformance`]).

pub mod conformance;
pub mod etcd_engine;
pub mod etcd_leader;
pub mod etcd_retry;
pub mod overlay;
pub mod redb_engine;
pub mod sled_engine;

use std::path::Path;
use std::sync::Arc;

/// Failure of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("the metadata store failed ({0}); check the disk and the permissions of --dir")]
    Engine(String),
    /// Internal marker: the closure asked to abort (its own error is kept
    /// aside by [`KvExt`]).
    #[error("transaction aborted")]
    Aborted,
    /// The engine's fence (the active poold's election key) no longer
    /// holds: this instance was deposed and wrote nothing.
    #[error("this poold is no longer the active one (its election key {0} changed); nothing was written")]
    Fenced(String),
}

pub type KvResult<T> = Result<T, KvError>;

/// One key-value pair.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Reads of a transaction.
pub trait ReadTx {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>>;
    /// Visits the pairs with `start <= key < end` (no `end` = to the last
    /// key) in key order until `f` returns `false`.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> KvResult<()>;
}

/// Reads and writes of a write transaction.
pub trait WriteTx: ReadTx {
    fn put(&mut self, key: &[u8], value: &[u8]) -> KvResult<()>;
    fn delete(&mut self, key: &[u8]) -> KvResult<()>;
    /// Reads of this transaction as a plain `ReadTx`.
    fn as_read(&self) -> &dyn ReadTx;
}

/// Conveniences on every [`ReadTx`].
pub trait ReadTxExt: ReadTx {
    /// All pairs with `start <= key < end`.
    fn range(&self, start: &[u8], end: Option<&[u8]>) -> KvResult<Vec<Pair>> {
        let mut out = Vec::new();
        self.scan(start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }
    /// All pairs whose key starts with `prefix`.
    fn prefix(&self, prefix: &[u8]) -> KvResult<Vec<Pair>> {
        let end = prefix_end(prefix);
        self.range(prefix, end.as_deref())
    }
}
impl<T: ReadTx + ?Sized> ReadTxExt for T {}

/// The smallest key greater than every key starting with `prefix` (`None`
/// when there is none, i.e. the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An engine. Object safe; use it through [`KvExt`].
pub trait Kv: Send + Sync {
    /// Runs `f` in a read transaction.
    fn read_dyn(&self, f: &mut dyn FnMut(&dyn ReadTx) -> KvResult<()>) -> KvResult<()>;
    /// Runs `f` in a write transaction; commits (durably) when it returns
    /// `Ok`, aborts when it returns `Err`. Write transactions are serialized.
    fn write_dyn(&self, f: &mut dyn FnMut(&mut dyn WriteTx) -> KvResult<()>) -> KvResult<()>;
    /// Engine name for logs.
    fn name(&self) -> &'static str;
    /// Most keys one write transaction may change (`None`: no limit). The
    /// metadata layer splits bigger changes (`meta/bounded.rs`).
    fn txn_budget(&self) -> Option<usize> {
        None
    }
    /// A hint that `keys` are about to be read: an engine with a round
    /// trip per read may fetch them in batches now (etcd). Nothing else
    /// changes; the default does nothing.
    fn prefetch(&self, _keys: &[Vec<u8>]) -> KvResult<()> {
        Ok(())
    }
    /// True when [`Kv::prefetch`] saves round trips (walks worth doing
    /// twice to batch their reads).
    fn batched_reads(&self) -> bool {
        false
    }
}

/// The closure API over any [`Kv`].
pub trait KvExt: Kv {
    fn read<R, E: From<KvError>>(
        &self,
        f: impl FnOnce(&dyn ReadTx) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut once = Once::new(f);
        let r = self.read_dyn(&mut |tx| once.call(tx));
        finish(r, once.out)
    }

    fn write<R, E: From<KvError>>(
        &self,
        f: impl FnOnce(&mut dyn WriteTx) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut once = Once::new(f);
        let r = self.write_dyn(&mut |tx| once.call(tx));
        finish(r, once.out)
    }
}
impl<T: Kv + ?Sized> KvExt for T {}

/// Adapts a typed `FnOnce` closure to the engines' `FnMut` callback: runs it
/// once, keeps its result, and aborts the transaction when it failed.
struct Once<F, R, E> {
    f: Option<F>,
    out: Option<Result<R, E>>,
}

impl<F, R, E> Once<F, R, E> {
    fn new(f: F) -> Self {
        Once {
            f: Some(f),
            out: None,
        }
    }

    fn call<A>(&mut self, arg: A) -> KvResult<()>
    where
        F: FnOnce(A) -> Result<R, E>,
    {
        let f = self.f.take().ok_or(KvError::Aborted)?;
        let res = f(arg);
        let failed = res.is_err();
        self.out = Some(res);
        if failed {
            Err(KvError::Aborted)
        } else {
            Ok(())
        }
    }
}

fn finish<R, E: From<KvError>>(r: KvResult<()>, out: Option<Result<R, E>>) -> Result<R, E> {
    match (r, out) {
        // The closure failed: its own error wins.
        (_, Some(Err(e))) => Err(e),
        (Ok(()), Some(Ok(v))) => Ok(v),
        (Err(e), _) => Err(e.into()),
        (Ok(()), None) => Err(KvError::Engine("transaction closure did not run".into()).into()),
    }
}

/// Which engine to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Redb,
    Sled,
    Etcd,
}

/// Opens the engine's store: under `dir` (`meta.redb` or `meta.sled/`),
/// or in the etcd cluster of `etcd`.
pub fn open(
    engine: Engine,
    dir: &Path,
    etcd: Option<&etcd_engine::EtcdOptions>,
) -> KvResult<Arc<dyn Kv>> {
    Ok(match engine {
        Engine::Redb => Arc::new(redb_engine::RedbKv::open(&dir.join("meta.redb"))?),
        Engine::Sled => Arc::new(sled_engine::SledKv::open(&dir.join("meta.sled"))?),
        Engine::Etcd => {
            let o = etcd.ok_or_else(|| {
                KvError::Engine(
                    "the etcd engine needs the members' addresses; give poold --etcd-endpoints URL[,URL…] or etcd_endpoints in [poold]".into(),
                )
            })?;
            Arc::new(etcd_engine::EtcdKv::connect(o.clone())?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
