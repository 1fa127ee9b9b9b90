//! Metadata changes bounded in size, for engines that limit how many keys
//! one transaction may change (etcd: `--max-txn-ops`; [`Kv::txn_budget`]).
//! redb and sled have no limit and never take these paths.
//!
//! * **A publish too big for one transaction** is applied in slices to a
//!   hidden staging root (`S` + seq → root and depth), one transaction per
//!   slice, each leaving every reference count right. The staging root
//!   holds one reference, like a version's root. The last, small
//!   transaction checks the publish again (base version, name) and makes
//!   the staging root the new version: the switch is one atomic commit, so
//!   no version is ever half there. A publish that fails on the way gives
//!   its staging root to the release queue.
//! * **Releases** (a deleted version's tree, an abandoned staging root) go
//!   to a queue (`F` + seq → one reference) that is freed in batches of a
//!   bounded size: pop a reference, drop it, and when that was a node's
//!   last, delete the node and queue its two children.
//! * [`Meta::recover`] (poold's start) queues every staging root left by a
//!   crash and drains the queue. [`Meta::check`] counts both kinds of
//!   entries as references.
//!
//! [`Kv::txn_budget`]: crate::kv::Kv::txn_budget

use blobvirt_core::proto as pb;
use blobvirt_core::tree::{self, Child, NodeStore};
use blobvirt_core::ChunkId;

use super::write::{commit_version, must_reupload, prepare};
use super::{Meta, MetaError, MetaTx, PublishOutcome, Result};
use crate::codec::{key, Reader, Writer};
use crate::kv::ReadTx;

/// Keys a transaction may use besides its per-item work (counters, the
/// version and blob records, the staging record).
const FIXED_KEYS: usize = 32;
/// Changes whose chunk keys a sliced publish reads ahead in one batch.
const PREFETCH_CHANGES: usize = 2048;
/// Keys one popped release-queue entry may change (its own delete, the
/// node or chunk count, a GC-queue entry, two children queued).
const KEYS_PER_RELEASE: usize = 6;

/// Queues the reference `c` (held by the caller) to be freed later.
pub(super) fn queue_release(m: &mut MetaTx, c: Child) -> Result<()> {
    if c == Child::Hole {
        return Ok(());
    }
    let seq = m.c.next_hold;
    m.c.next_hold += 1;
    m.tx.put(&key::free(seq), &Writer::default().child(c).0)?;
    Ok(())
}

fn staging_rec(root: Child, depth: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.child(root).u32(depth);
    w.0
}

fn read_staging(tx: &dyn ReadTx, seq: u64) -> Result<(Child, u32)> {
    let v = tx.get(&key::staging(seq))?.ok_or_else(|| {
        MetaError::Internal(format!("the staging record {seq} of a publish is gone"))
    })?;
    let mut r = Reader::new(&v, "staging record");
    Ok((r.child()?, r.u32()?))
}

/// The first `n` entries of the tag `tag` (key, value).
fn first(tx: &dyn ReadTx, tag: u8, n: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    tx.scan(&[tag], Some(&[tag + 1]), &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        out.len() < n
    })?;
    Ok(out)
}

/// Every root a staging or release-queue entry holds (for the recount).
pub(super) fn held_roots(tx: &dyn ReadTx) -> Result<Vec<Child>> {
    let mut out = Vec::new();
    for tag in [key::STAGING, key::FREE] {
        for (_, v) in first(tx, tag, usize::MAX)? {
            out.push(Reader::new(&v, "held root").child()?);
        }
    }
    Ok(out)
}

impl Meta {
    /// Changes per slice when `req` needs more than one transaction on this
    /// engine (`None`: one transaction, as always on redb and sled).
    pub(super) fn slice_for(
        &self,
        req: &pb::PublishRequest,
        changes: &[(u64, Option<ChunkId>)],
    ) -> Result<Option<usize>> {
        let Some(budget) = self.kv.txn_budget() else {
            return Ok(None);
        };
        let chunks = self.read(|tx| {
            if req.create {
                return Ok(req.size / u64::from(req.chunk_size.max(1)) + 1);
            }
            let (_, b) = super::find_blob(tx, &req.name)?;
            Ok(req.size / u64::from(b.chunk_size.max(1)) + 1)
        });
        // An unknown volume fails in the ordinary path with its own error.
        let Ok(chunks) = chunks else { return Ok(None) };
        let depth = tree::depth_for(chunks) as usize;
        // A change makes up to `depth` nodes, increfs as many siblings,
        // frees the old path and moves two chunk counts.
        let per_change = 3 * depth + 6;
        let per = budget.saturating_sub(FIXED_KEYS) / per_change;
        if per == 0 {
            return Err(MetaError::Kv(crate::kv::KvError::Engine(format!(
                "a publish to volume {} needs transactions of {} keys, over the engine's limit of {budget}; raise etcd's --max-txn-ops and poold's --etcd-max-txn-ops",
                req.name,
                per_change + FIXED_KEYS
            ))));
        }
        Ok((changes.len() > per).then_some(per))
    }

    /// A publish in slices of `per` changes (see the module docs).
    pub(super) fn publish_sliced(
        &self,
        req: &pb::PublishRequest,
        changes: &[(u64, Option<ChunkId>)],
        per: usize,
    ) -> Result<PublishOutcome> {
        let (seq, depth) = self.write(|m| {
            let p = prepare(m, req, changes)?;
            let (sized, depth) = tree::resize(m, p.root, p.n_old, p.n_new)?;
            m.incref(sized)?;
            let seq = m.c.next_hold;
            m.c.next_hold += 1;
            m.tx.put(&key::staging(seq), &staging_rec(sized, depth))?;
            Ok((seq, depth))
        })?;
        let r = self.apply_slices(req, changes, per, seq, depth);
        match r {
            Ok(PublishOutcome::Published(v)) => Ok(PublishOutcome::Published(v)),
            other => {
                // Reupload or an error: the staging root is dropped.
                if let Err(e) = self.abandon(seq) {
                    tracing::warn!(volume = %req.name, "cannot drop the staging root of a failed publish ({e}); the next start of poold drops it");
                }
                other
            }
        }
    }

    fn apply_slices(
        &self,
        req: &pb::PublishRequest,
        changes: &[(u64, Option<ChunkId>)],
        per: usize,
        seq: u64,
        depth: u32,
    ) -> Result<PublishOutcome> {
        let mut fetched = 0;
        for (k, slice) in changes.chunks(per).enumerate() {
            // Read ahead the chunk keys of the next slices in one batch.
            let end = (k * per + slice.len()).min(changes.len());
            while fetched < end {
                let to = (fetched + PREFETCH_CHANGES).min(changes.len());
                self.prefetch_chunks(&changes[fetched..to])?;
                fetched = to;
            }
            // And the staging tree's nodes over the slice's indices.
            if let (Some(a), Some(b)) = (slice.first(), slice.last()) {
                self.read(|tx| {
                    let (root, _) = read_staging(tx, seq)?;
                    self.prefetch_tree(tx, root, depth, a.0, b.0 + 1)
                })?;
            }
            let reupload = self.write(|m| {
                let reupload = must_reupload(m, slice, req.gc_epoch)?;
                if !reupload.is_empty() {
                    return Ok(Some(PublishOutcome::Reupload {
                        chunks: reupload,
                        gc_epoch: m.c.gc_epoch,
                    }));
                }
                let (root, _) = read_staging(m.r(), seq)?;
                let new_root = tree::apply(m, root, depth, slice)?;
                m.incref(new_root)?;
                tree::release(m, root)?;
                m.tx.put(&key::staging(seq), &staging_rec(new_root, depth))?;
                Ok(None)
            })?;
            if let Some(r) = reupload {
                return Ok(r);
            }
        }
        self.write(|m| {
            let p = prepare(m, req, changes)?;
            let (root, _) = read_staging(m.r(), seq)?;
            m.tx.delete(&key::staging(seq))?;
            commit_version(m, req, p, root, depth)
        })
    }

    /// Gives the staging root `seq` to the release queue and drains it.
    fn abandon(&self, seq: u64) -> Result<()> {
        self.write(|m| {
            if let Ok((root, _)) = read_staging(m.r(), seq) {
                m.tx.delete(&key::staging(seq))?;
                queue_release(m, root)?;
            }
            Ok(())
        })?;
        self.drain_releases().map(drop)
    }

    /// Frees the release queue in bounded transactions until it is empty;
    /// returns the entries handled.
    pub fn drain_releases(&self) -> Result<u64> {
        let budget = self.kv.txn_budget().unwrap_or(usize::MAX / 2);
        let per = (budget.saturating_sub(FIXED_KEYS) / KEYS_PER_RELEASE).max(1);
        let mut total = 0;
        let mut next: Vec<Child> = Vec::new();
        loop {
            let n = self.write(|m| {
                next.clear();
                let batch = first(m.r(), key::FREE, per)?;
                for (k, v) in &batch {
                    m.tx.delete(k)?;
                    let c = Reader::new(v, "release queue entry").child()?;
                    if m.decref(c)? == 0 {
                        if let Child::Node(id) = c {
                            let node = m.get(id)?;
                            m.remove(id)?;
                            queue_release(m, node.left)?;
                            queue_release(m, node.right)?;
                            next.extend([node.left, node.right]);
                        }
                    }
                }
                Ok(batch.len() as u64)
            })?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
            // The records the next batches decrement, read ahead in batches.
            if self.kv.batched_reads() {
                let keys: Vec<Vec<u8>> = next
                    .drain(..)
                    .flat_map(|c| match c {
                        Child::Node(id) => vec![key::node(id)],
                        Child::Chunk(c) => vec![key::chunk(&c), key::gc(&c)],
                        Child::Hole => vec![],
                    })
                    .collect();
                self.kv.prefetch(&keys)?;
            }
        }
    }

    /// At start: drops the staging roots of publishes a crash interrupted
    /// and frees the release queue. Returns the staging roots dropped.
    pub fn recover(&self) -> Result<u64> {
        let mut dropped = 0;
        loop {
            let n = self.write(|m| {
                let batch = first(m.r(), key::STAGING, 64)?;
                for (k, v) in &batch {
                    m.tx.delete(k)?;
                    queue_release(m, Reader::new(v, "staging record").child()?)?;
                }
                Ok(batch.len() as u64)
            })?;
            if n == 0 {
                break;
            }
            dropped += n;
        }
        self.drain_releases()?;
        Ok(dropped)
    }
}
