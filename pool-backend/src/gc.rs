//! Garbage collection of unreferenced chunks.
//!
//! A chunk whose reference count drops to 0 is queued as *pending* (see
//! `meta::txn`); a new reference takes it out again. A pass:
//! 1. (txn 1) marks pending entries older than the grace delay *deleting*;
//! 2. sends `Delete` for every deleting chunk to every live chunkd, in
//!    batches of at most 1000 ids;
//! 3. (txn 2) drops the deleting entries and increments `gc_epoch`.
//!
//! A publish that names a deleting chunk, or an unreferenced chunk while the
//! epoch moved past the client's, is refused with a re-upload list (see
//! `Meta::publish`), so GC never loses a chunk a new version needs.
//!
//! GC goes on while a chunkd is down: the deletions it could not send are
//! recorded for that node (`Meta::gc_defer`) and queued again when it is
//! back (`heal` calls `Meta::gc_undefer`), so they go through the same
//! epoch guard; `node remove` drops a removed node's. Self-healing passes
//! hold the same lock as GC passes ([`Gc::exclusive`]).

use std::sync::Arc;
use std::time::Duration;

use blobvirt_core::client::{channel, chunk_client};
use blobvirt_core::proto as pb;
use blobvirt_core::ChunkId;
use bytes::Bytes;

use crate::codec::{key, GcState};
use crate::kv::ReadTxExt;
use crate::membership::Membership;
use crate::meta::{Meta, MetaError, Result};

/// Most ids in one Delete request.
pub const DELETE_BATCH: usize = 1000;

impl Meta {
    /// GC txn 1: marks pending chunks unreferenced for at least `grace_secs`
    /// (all of them with `force`) as deleting, and returns every deleting
    /// chunk (including ones left by an interrupted pass).
    pub fn gc_mark(&self, grace_secs: u64, force: bool) -> Result<Vec<ChunkId>> {
        self.write(|m| {
            let mut out = Vec::new();
            for (k, v) in m.r().prefix(&[key::GC])? {
                let Some(id) = key::chunk_of_key(&k) else {
                    continue;
                };
                let st = GcState::decode(&v)?;
                if let GcState::Pending { since } = st {
                    if m.chunk_refs(&id)? > 0 {
                        m.gc_unqueue(&id)?;
                        continue;
                    }
                    if !force && since.saturating_add(grace_secs as i64) > m.now {
                        continue;
                    }
                    m.gc_mark_deleting(&id)?;
                }
                out.push(id);
            }
            Ok(out)
        })
    }

    /// GC txn 2: drops the deleting entries of `ids` and, when there were
    /// any, increments `gc_epoch`. Returns how many were dropped.
    pub fn gc_finish(&self, ids: &[ChunkId]) -> Result<u64> {
        self.write(|m| {
            let mut n = 0;
            for id in ids {
                if m.gc_state(id)? == Some(GcState::Deleting) {
                    m.gc_unqueue(id)?;
                    n += 1;
                }
            }
            if n > 0 {
                m.c.gc_epoch += 1;
            }
            Ok(n)
        })
    }
}

/// Runs GC passes, one at a time.
pub struct Gc {
    meta: Meta,
    members: Arc<Membership>,
    grace_secs: u64,
    running: tokio::sync::Mutex<()>,
    /// Chunks reclaimed by passes so far (`blobvirt_poold_gc_reclaimed_chunks_total`).
    pub reclaimed: prometheus_client::metrics::counter::Counter,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MetaError::Internal(format!("a metadata task failed: {e}")))?
}

impl Gc {
    pub fn new(meta: Meta, members: Arc<Membership>, grace_secs: u64) -> Self {
        Gc {
            meta,
            members,
            grace_secs,
            running: tokio::sync::Mutex::new(()),
            reclaimed: Default::default(),
        }
    }

    /// One pass; `force` treats the grace delay as elapsed. Returns the
    /// number of chunks reclaimed.
    pub async fn pass(&self, force: bool) -> Result<u64> {
        let _one = self.running.lock().await;
        self.pass_locked(force).await
    }

    /// A background pass.
    pub async fn background_pass(&self) -> Result<u64> {
        let _one = self.running.lock().await;
        self.pass_locked(false).await
    }

    /// Keeps GC passes out while the guard lives (a self-healing pass).
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.running.lock().await
    }

    async fn pass_locked(&self, force: bool) -> Result<u64> {
        let meta = self.meta.clone();
        let grace = self.grace_secs;
        let ids = blocking(move || meta.gc_mark(grace, force)).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut missed = Vec::new();
        for n in self.members.nodes() {
            if !(n.alive
                && delete_on(&n.addr, &ids, "garbage collection")
                    .await
                    .is_some())
            {
                missed.push(n.id);
            }
        }
        if !missed.is_empty() {
            let meta = self.meta.clone();
            let ids = ids.clone();
            tracing::info!(nodes = ?missed, chunks = ids.len(),
                "garbage collection deletes on these nodes once they are back");
            blocking(move || meta.gc_defer(&missed, &ids)).await?;
        }
        let meta = self.meta.clone();
        let n = blocking(move || meta.gc_finish(&ids)).await?;
        self.reclaimed.inc_by(n);
        tracing::info!(chunks = n, "garbage collection reclaimed chunks");
        Ok(n)
    }

    /// Runs a pass every `every` until the task is dropped.
    pub async fn run_every(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.background_pass().await {
                tracing::warn!("garbage collection pass failed: {e}");
            }
        }
    }
}

/// Deletes `ids` on the chunkd at `addr` (`why` names the caller in the
/// log); the number it removed, or None when it did not take them all.
pub(crate) async fn delete_on(addr: &str, ids: &[ChunkId], why: &str) -> Option<u64> {
    let ch = match channel(addr) {
        Ok(ch) => ch,
        Err(e) => {
            tracing::warn!(node = addr, "cannot reach chunkd for {why}: {e}");
            return None;
        }
    };
    let mut client = chunk_client(ch);
    let mut n = 0;
    for batch in ids.chunks(DELETE_BATCH) {
        let req = pb::DeleteRequest {
            ids: batch
                .iter()
                .map(|id| Bytes::copy_from_slice(&id.0))
                .collect(),
        };
        let call = tokio::time::timeout(Duration::from_secs(30), client.delete(req));
        match call.await {
            Ok(Ok(r)) => n += r.into_inner().deleted,
            Ok(Err(s)) => {
                tracing::warn!(
                    node = addr,
                    "chunkd refused a delete for {why}: {}",
                    s.message()
                );
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    node = addr,
                    "chunkd did not answer a delete for {why} in 30 s"
                );
                return None;
            }
        }
    }
    Some(n)
}
