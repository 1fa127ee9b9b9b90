//! The metadata layer: blobs (volumes), versions, segment trees, reference
//! counts, the GC queue, profiles, persisted membership, leases and
//! deferred deletions ([`cluster`]), on top of a
//! [`Kv`] engine (encoding in [`crate::codec`]).
//!
//! Every operation is one KV transaction, so a publish, clone or delete
//! either happens completely or not at all, and publishes are serialized by
//! the engine's single writer. Operations block (they fsync); async callers
//! run them with `spawn_blocking`.

mod bounded;
mod check;
pub mod cluster;
mod revert;
mod txn;
mod write;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use blobvirt_core::proto as pb;
use blobvirt_core::tree::{self, TreeError};
use bytes::Bytes;

use crate::codec::{self, dec_u64, key, BlobRec, DecodeError, VersionRec};
use crate::kv::{self, Kv, KvError, KvExt, ReadTx, ReadTxExt};

pub use txn::{Counters, MetaTx, ReadStore};
pub use write::{PublishOutcome, MAX_PROFILE};

/// Most chunk entries one Resolve reply carries.
pub const MAX_RESOLVE: u64 = 65536;

/// Errors of metadata operations; the first four are user errors whose
/// message is a complete sentence.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Stored metadata is inconsistent: only for data read from disk.
    #[error("the metadata is inconsistent ({0}); stop poold and restore the metadata store from a backup")]
    Corrupt(String),
    /// A bug or a failed task, not a problem of the stored data.
    #[error("poold failed internally ({0}); see the poold log and report it")]
    Internal(String),
}

impl From<TreeError<MetaError>> for MetaError {
    fn from(e: TreeError<MetaError>) -> Self {
        match e {
            TreeError::Store(e) => e,
            TreeError::Corrupt(s) => MetaError::Corrupt(s),
        }
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

pub fn no_volume(name: &str) -> MetaError {
    MetaError::NotFound(format!(
        "volume {name} does not exist; list volumes with blobvirt vol-list"
    ))
}

/// Current unix time in seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Format of the whole store, kept under the `format` counter.
const FORMAT: u64 = 1;

/// The metadata service over one KV store. Cheap to clone.
#[derive(Clone)]
pub struct Meta {
    kv: Arc<dyn Kv>,
}

impl Meta {
    /// Opens the store of `engine` under `dir`.
    pub fn open(engine: kv::Engine, dir: &std::path::Path) -> Result<Self> {
        Meta::new(kv::open(engine, dir, None)?)
    }

    /// Uses `kv`, initializing an empty store and checking the format of an
    /// existing one.
    pub fn new(kv: Arc<dyn Kv>) -> Result<Self> {
        kv.write(|tx| {
            let k = key::counter("format");
            match tx.get(&k)? {
                None => tx.put(&k, &codec::enc_u64(FORMAT))?,
                Some(v) if dec_u64(&v, "format")? == FORMAT => {}
                Some(_) => {
                    return Err(MetaError::Corrupt(
                        "the metadata store has an unknown format; run the poold that wrote it"
                            .into(),
                    ))
                }
            }
            Ok(())
        })?;
        Ok(Meta { kv })
    }

    pub fn engine(&self) -> &'static str {
        self.kv.name()
    }

    /// Runs `f` in a read transaction.
    pub fn read<R>(&self, f: impl FnOnce(&dyn ReadTx) -> Result<R>) -> Result<R> {
        self.kv.read(f)
    }

    /// Runs `f` in a metadata write transaction (commits when it returns Ok).
    pub fn write<R>(&self, f: impl FnOnce(&mut MetaTx) -> Result<R>) -> Result<R> {
        let now = now_secs();
        self.kv.write(|tx| {
            let mut m = MetaTx::begin(tx, now)?;
            let r = f(&mut m)?;
            m.finish()?;
            Ok(r)
        })
    }

    pub fn get_blob(&self, name: &str) -> Result<pb::BlobInfo> {
        self.read(|tx| {
            let (id, b) = find_blob(tx, name)?;
            blob_info(tx, id, &b)
        })
    }

    /// All volumes, sorted by name.
    pub fn list_blobs(&self) -> Result<Vec<pb::BlobInfo>> {
        self.read(|tx| {
            let mut out = Vec::new();
            for (_, v) in tx.prefix(&[key::NAME])? {
                let id = dec_u64(&v, "name")?;
                out.push(blob_info(tx, id, &blob_rec(tx, id)?)?);
            }
            Ok(out)
        })
    }

    /// Chunk ids of `name@version` (0 = latest) from `first` on: `count`
    /// of them (0 = to the end), at most [`MAX_RESOLVE`].
    pub fn resolve(
        &self,
        name: &str,
        version: u64,
        first: u64,
        count: u64,
    ) -> Result<pb::ResolveReply> {
        self.read(|tx| {
            let (id, b) = find_blob(tx, name)?;
            let (v, rec) = find_version(tx, name, id, version)?;
            let n = blobvirt_core::chunk::chunk_count(rec.size, b.chunk_size);
            let left = n.saturating_sub(first);
            let cnt = if count == 0 { left } else { count.min(left) }.min(MAX_RESOLVE);
            let chunks = if cnt == 0 {
                Vec::new()
            } else {
                self.prefetch_tree(tx, rec.root, rec.depth, first, first + cnt)?;
                tree::resolve(&ReadStore(tx), rec.root, rec.depth, first, cnt)?
            };
            Ok(pb::ResolveReply {
                version: v,
                size: rec.size,
                chunk_size: b.chunk_size,
                first_chunk: first,
                chunks: chunks
                    .into_iter()
                    .map(|c| c.map_or_else(Bytes::new, |c| Bytes::copy_from_slice(&c.0)))
                    .collect(),
            })
        })
    }

    /// Reads the nodes of `root`'s tree (of `depth` levels) that cover
    /// chunks `lo..hi`, one level at a time and each level in batches
    /// ([`crate::kv::Kv::prefetch`]), so that a walk of the range finds
    /// them in the engine's cache: a few round trips per level instead of
    /// one per node. Only on engines with batched reads (etcd).
    pub(super) fn prefetch_tree(
        &self,
        tx: &dyn ReadTx,
        root: tree::Child,
        depth: u32,
        lo: u64,
        hi: u64,
    ) -> Result<()> {
        if !self.kv.batched_reads() {
            return Ok(());
        }
        let mut at: Vec<(tree::Child, u64)> = vec![(root, 0)];
        for level in (1..=depth).rev() {
            let span = 1u64 << level;
            let nodes: Vec<(u64, u64)> = at
                .iter()
                .filter_map(|&(c, base)| match c {
                    tree::Child::Node(n) if base < hi && base + span > lo => Some((n, base)),
                    _ => None,
                })
                .collect();
            if nodes.is_empty() {
                break;
            }
            let keys: Vec<Vec<u8>> = nodes.iter().map(|&(n, _)| key::node(n)).collect();
            self.kv.prefetch(&keys)?;
            at.clear();
            for (n, base) in nodes {
                let node = txn::node_rec(tx, n)?.node;
                at.push((node.left, base));
                at.push((node.right, base + span / 2));
            }
        }
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters> {
        self.read(Counters::load)
    }

    pub fn stats(&self) -> Result<pb::PoolStatsReply> {
        let c = self.counters()?;
        Ok(pb::PoolStatsReply {
            blobs: c.blobs,
            versions: c.versions,
            meta_nodes: c.nodes,
            live_chunks: c.live_chunks,
            gc_pending: c.gc_pending,
            ..Default::default()
        })
    }

    pub fn gc_epoch(&self) -> Result<u64> {
        Ok(self.counters()?.gc_epoch)
    }

    /// True when the volume exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        self.read(|tx| Ok(tx.get(&key::name(name))?.is_some()))
    }

    /// The reference count of a chunk (for tests and repair).
    pub fn chunk_refs(&self, id: &blobvirt_core::ChunkId) -> Result<u64> {
        self.read(|tx| txn::chunk_refs(tx, id))
    }

    /// The boot profile of `name`: its own, else its origin's (recursively),
    /// else empty.
    pub fn get_profile(&self, name: &str) -> Result<Vec<u64>> {
        self.read(|tx| {
            let (mut id, mut b) = find_blob(tx, name)?;
            for _ in 0..64 {
                if let Some(p) = tx.get(&key::profile(id))? {
                    return Ok(codec::decode_profile(&p)?);
                }
                let Some(o) = &b.origin else { break };
                id = o.blob;
                match tx.get(&key::blob(id))? {
                    Some(v) => b = BlobRec::decode(&v)?,
                    None => break,
                }
            }
            Ok(Vec::new())
        })
    }

    /// The persisted chunkd membership: (id, addr), sorted by id.
    pub fn members(&self) -> Result<Vec<(String, String)>> {
        self.read(|tx| {
            tx.prefix(&[key::MEMBER])?
                .into_iter()
                .map(|(k, v)| {
                    let s = |b: &[u8]| {
                        String::from_utf8(b.to_vec()).map_err(|_| DecodeError { what: "member" })
                    };
                    Ok((s(&k[1..])?, s(&v)?))
                })
                .collect()
        })
    }
}

pub(crate) fn blob_rec(tx: &dyn ReadTx, id: u64) -> Result<BlobRec> {
    match tx.get(&key::blob(id))? {
        Some(v) => Ok(BlobRec::decode(&v)?),
        None => Err(MetaError::Corrupt(format!(
            "blob {id} is named but missing"
        ))),
    }
}

/// The blob named `name`, or NotFound.
pub(crate) fn find_blob(tx: &dyn ReadTx, name: &str) -> Result<(u64, BlobRec)> {
    let id = match tx.get(&key::name(name))? {
        Some(v) => dec_u64(&v, "name")?,
        None => return Err(no_volume(name)),
    };
    Ok((id, blob_rec(tx, id)?))
}

/// The live versions of blob `id`, oldest first.
pub(crate) fn versions(tx: &dyn ReadTx, id: u64) -> Result<Vec<(u64, VersionRec)>> {
    tx.prefix(&key::versions_of(id))?
        .into_iter()
        .map(|(k, v)| {
            let n = key::version_of_key(&k).ok_or(DecodeError {
                what: "version key",
            })?;
            Ok((n, VersionRec::decode(&v)?))
        })
        .collect()
}

/// Version `v` (0 = latest) of blob `id` named `name`, or NotFound.
pub(crate) fn find_version(
    tx: &dyn ReadTx,
    name: &str,
    id: u64,
    v: u64,
) -> Result<(u64, VersionRec)> {
    if v != 0 {
        if let Some(r) = tx.get(&key::version(id, v))? {
            return Ok((v, VersionRec::decode(&r)?));
        }
    }
    let all = versions(tx, id)?;
    match all.last() {
        Some(last) if v == 0 => Ok(last.clone()),
        _ => Err(no_version(name, v, &all)),
    }
}

pub(crate) fn no_version(name: &str, v: u64, all: &[(u64, VersionRec)]) -> MetaError {
    let list: Vec<String> = all.iter().map(|(n, _)| n.to_string()).collect();
    MetaError::NotFound(if list.is_empty() {
        format!(
            "volume {name} has no version {v}; it has no versions, delete it and import it again"
        )
    } else {
        format!(
            "volume {name} has no version {v}; its versions are {}",
            list.join(", ")
        )
    })
}

pub(crate) fn blob_info(tx: &dyn ReadTx, id: u64, b: &BlobRec) -> Result<pb::BlobInfo> {
    let vs = versions(tx, id)?;
    Ok(pb::BlobInfo {
        id,
        name: b.name.clone(),
        chunk_size: b.chunk_size,
        latest_version: vs.last().map_or(0, |(n, _)| *n),
        versions: vs
            .into_iter()
            .map(|(n, r)| pb::VersionInfo {
                version: n,
                size: r.size,
                created: r.created,
                label: r.label,
            })
            .collect(),
        origin: b
            .origin
            .as_ref()
            .map_or(String::new(), |o| format!("{}@{}", o.name, o.version)),
    })
}

#[cfg(test)]
mod tests;
