//! The replicas of a [`Repo`] that sit on a chunkd of this machine: which
//! nodes share this process's view of the machine (asked once per node with
//! Stats), and reading a chunk from such a node's segment file instead of
//! over gRPC. The file side (batches, places, reads) is [`crate::local`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Repo;
use crate::chunk::ChunkId;
use crate::local::LocalStore;
use crate::placement::Member;
use crate::proto::{self as pb};

/// What a [`Repo`] knows of a chunkd's locality.
#[derive(Clone)]
pub(super) enum LocalEntry {
    /// Asked: the node when it shares this machine's view.
    Known(Option<Arc<LocalStore>>),
    /// Stats failed at this time; asked again after [`LOCAL_RETRY`].
    Failed(std::time::Instant),
}

/// How long a chunkd whose Stats failed is treated as not local.
const LOCAL_RETRY: Duration = Duration::from_secs(30);

impl Repo {
    /// Chunk `id` from a replica on this machine, when one reads back and
    /// verifies; `None` sends the caller to gRPC.
    ///
    /// A replica is read from its segment (a place from an earlier Locate,
    /// or Locate now, then a pread): no chunk body over gRPC, no TLS, one
    /// copy. Its bytes are hash-checked like any answer. Replicas whose
    /// place is known are tried first, in ranking order, and only then is
    /// Locate asked. (Making concurrent callers wait for one Locate per
    /// node cut Locates 5-fold in a sequential read but made an export,
    /// which reads many runs at once, 1.6x slower.) A kept place that does
    /// not read back is stale and asked again; absent (deleted, not local after all), the next local
    /// replica is tried; corrupt where the node says it is, the caller asks
    /// the replicas over gRPC as usual, so its chunkd quarantines and
    /// reports it and it is repaired.
    pub(super) async fn read_nearby(&self, id: &ChunkId, order: &[&Member]) -> Option<Bytes> {
        let id = *id;
        let mut local = Vec::new();
        for m in order.iter().filter(|m| m.alive) {
            if let Some(l) = self.local_store(&m.addr).await.filter(|l| l.runs()) {
                local.push((*m, l));
            }
        }
        for (_, l) in &local {
            if let Some(data) = read_known(l, &id).await {
                return Some(data);
            }
        }
        for (m, l) in &local {
            let req = pb::LocateRequest {
                id: Bytes::copy_from_slice(&id.0),
                more: crate::local::LOCATE_MORE,
            };
            let Ok(r) = self.node(&m.addr).locate(req).await else {
                continue;
            };
            let p = l.learn(&id, r.into_inner());
            let l2 = l.clone();
            match tokio::task::spawn_blocking(move || l2.read(&p, &id)).await {
                Ok(Some(Some(data))) => return Some(data),
                Ok(Some(None)) => break,
                _ => {}
            }
        }
        None
    }

    /// The directories of the chunkd at `addr` when it shares this
    /// process's view of the machine (asked once per node with Stats), and
    /// local reads and writes are on.
    pub(super) async fn local_store(&self, addr: &str) -> Option<Arc<LocalStore>> {
        if !self.local_reads {
            return None;
        }
        match self.local.lock().expect("local lock").get(addr) {
            Some(LocalEntry::Known(d)) => return d.clone(),
            Some(LocalEntry::Failed(t)) if t.elapsed() < LOCAL_RETRY => return None,
            _ => {}
        }
        let mut c = self.node(addr);
        let st = tokio::time::timeout(Duration::from_secs(2), c.stats(pb::StatsRequest {})).await;
        let Ok(Ok(st)) = st else {
            self.local.lock().expect("local lock").insert(
                addr.to_string(),
                LocalEntry::Failed(std::time::Instant::now()),
            );
            return None;
        };
        let st = st.into_inner();
        let me = crate::chunk::host_view();
        let dir = (!me.is_empty() && st.host_view == me && !st.packs_dir.is_empty())
            .then(|| LocalStore::new(PathBuf::from(st.tmp_dir), st.pid))
            .filter(|l| l.usable())
            .map(Arc::new);
        // Concurrent first calls each asked; the first answer stays, so
        // every caller appends to the same batch of that node.
        let mut m = self.local.lock().expect("local lock");
        if let Some(LocalEntry::Known(d)) = m.get(addr) {
            return d.clone();
        }
        m.insert(addr.to_string(), LocalEntry::Known(dir.clone()));
        dir
    }
}

/// Chunk `id` read at its kept place in `l`, when it has one and it reads
/// back and verifies; a place that does not is forgotten.
async fn read_known(l: &Arc<LocalStore>, id: &ChunkId) -> Option<Bytes> {
    let p = l.place(id)?;
    let (l2, id2) = (l.clone(), *id);
    let read = tokio::task::spawn_blocking(move || l2.read(&p, &id2));
    if let Ok(Some(Some(data))) = read.await {
        return Some(data);
    }
    l.forget(id);
    None
}
