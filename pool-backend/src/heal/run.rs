//! Running a self-healing pass against the live chunkds: scrub, list,
//! copy (throttled), delete misplaced copies, and report; plus the
//! questions `node remove` asks (which chunks only one node holds).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use blobvirt_core::client::{channel, chunk_client};
use blobvirt_core::placement::Member;
use blobvirt_core::proto as pb;
use blobvirt_core::proto::chunk_store_client::ChunkStoreClient;
use blobvirt_core::ChunkId;
use bytes::Bytes;
use futures::StreamExt;
use tonic::transport::Channel;

use super::plan::{plan, Holders};
use super::{Healer, PassOpts};
use crate::gc::delete_on;
use crate::meta::{MetaError, Result};

/// Chunks per Pull.
const PULL_BATCH: usize = 32;
/// How long a chunk must stay an orphan before a pass hands it to GC.
const ORPHAN_AGE: Duration = Duration::from_secs(60);
/// Longest wait for one chunkd call of a pass.
const CALL: Duration = Duration::from_secs(120);

fn bytes_of(id: &ChunkId) -> Bytes {
    Bytes::copy_from_slice(&id.0)
}

fn client(addr: &str) -> Option<ChunkStoreClient<Channel>> {
    channel(addr).ok().map(chunk_client)
}

/// Every durable chunk id of one chunkd (None: it did not answer).
async fn list_node(addr: &str) -> Option<Vec<ChunkId>> {
    let mut c = client(addr)?;
    let mut out = Vec::new();
    let mut after = Bytes::new();
    loop {
        let req = pb::ListRequest {
            after: after.clone(),
            limit: 0,
        };
        let r = match tokio::time::timeout(CALL, c.list(req)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                tracing::warn!(
                    node = addr,
                    "chunkd did not list its chunks: {}",
                    s.message()
                );
                return None;
            }
            Err(_) => {
                tracing::warn!(node = addr, "chunkd did not list its chunks within 120 s");
                return None;
            }
        };
        for b in &r.ids {
            out.extend(ChunkId::from_slice(b));
        }
        match r.ids.last() {
            Some(l) if !r.done => after = l.clone(),
            _ => return Some(out),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MetaError::Internal(format!("a metadata task failed: {e}")))?
}

/// The membership as one pass sees it: `alive` = listed in this pass.
struct View {
    members: Vec<Member>,
    holders: HashMap<ChunkId, Holders>,
    listed: Vec<Option<Vec<ChunkId>>>,
}

impl Healer {
    /// Lists every up node.
    async fn view(&self) -> View {
        let nodes = self.members.nodes();
        let asks: Vec<(String, bool)> = nodes.iter().map(|n| (n.addr.clone(), n.alive)).collect();
        let lists: Vec<Option<Vec<ChunkId>>> =
            futures::stream::iter(asks.into_iter().map(|(addr, alive)| async move {
                if alive {
                    list_node(&addr).await
                } else {
                    None
                }
            }))
            .buffered(8)
            .collect()
            .await;
        let mut holders: HashMap<ChunkId, Holders> = HashMap::new();
        for (i, l) in lists.iter().enumerate() {
            for id in l.iter().flatten() {
                holders.entry(*id).or_default().push(i as u16);
            }
        }
        let members = nodes
            .iter()
            .zip(&lists)
            .map(|(n, l)| Member {
                id: n.id.clone(),
                addr: n.addr.clone(),
                alive: l.is_some(),
                placed: n.state != "out" && !n.draining,
            })
            .collect();
        View {
            members,
            holders,
            listed: lists,
        }
    }

    /// One pass (see the module doc of `heal`).
    pub async fn pass(&self, o: PassOpts) -> Result<pb::RepairReply> {
        let _one = self.one.lock().await;
        let _gc = self.gc.exclusive().await;
        self.running.store(true, Ordering::Relaxed);
        let r = self.pass_locked(o).await;
        self.running.store(false, Ordering::Relaxed);
        if let Ok(rep) = &r {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(rep.clone());
            self.last_unix
                .store(crate::meta::now_secs().max(0) as u64, Ordering::Relaxed);
        }
        r
    }

    async fn pass_locked(&self, o: PassOpts) -> Result<pb::RepairReply> {
        let t0 = Instant::now();
        let mut rep = pb::RepairReply::default();
        if o.scrub {
            self.scrub_all(&mut rep).await;
        }
        let meta = self.meta.clone();
        let referenced = blocking(move || meta.referenced_chunks()).await?;
        let view = self.view().await;
        let p = plan(&view.members, self.replicas, &referenced, &view.holders);
        rep.referenced = referenced.len() as u64;
        rep.degraded_before = p.degraded;
        // Copy, then note which chunks now have every home.
        let mut failed: HashSet<ChunkId> = HashSet::new();
        let mut fixed: HashSet<(u16, ChunkId)> = HashSet::new();
        let jobs: Vec<(u16, u16, Vec<ChunkId>)> = p
            .copies
            .iter()
            .flat_map(|((t, s), ids)| ids.chunks(PULL_BATCH).map(move |b| (*t, *s, b.to_vec())))
            .collect();
        let started = Instant::now();
        let mut results = futures::stream::iter(jobs.into_iter().map(|(t, s, ids)| {
            let to = view.members[t as usize].addr.clone();
            let from = view.members[s as usize].addr.clone();
            async move {
                let r = self.pull(&to, &from, &ids).await;
                (t, to, ids, r)
            }
        }))
        .buffer_unordered(self.cfg.concurrency.max(1));
        while let Some((t, to, ids, r)) = results.next().await {
            match r {
                Ok(reply) => {
                    for (id, ok) in ids.iter().zip(&reply.ok) {
                        if *ok {
                            rep.copied_chunks += 1;
                            fixed.insert((t, *id));
                        } else {
                            failed.insert(*id);
                        }
                    }
                    rep.copied_bytes += reply.bytes;
                    self.copied_bytes.inc_by(reply.bytes);
                    self.copied_chunks
                        .inc_by(reply.ok.iter().filter(|o| **o).count() as u64);
                    if !reply.errors.is_empty() {
                        tracing::warn!(node = %to, "some copies failed: {}", reply.errors);
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %to, chunks = ids.len(), "copy failed: {e}");
                    failed.extend(ids);
                }
            }
            // Throttle: no faster than the configured bandwidth.
            if self.cfg.bytes_per_sec > 0 {
                let due = Duration::from_secs_f64(
                    rep.copied_bytes as f64 / self.cfg.bytes_per_sec as f64,
                );
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        drop(results);
        // Still degraded: those that were and got no copy, plus failures.
        let have = |id: &ChunkId| view.holders.get(id).map_or(0, Vec::len);
        let mut added: HashMap<ChunkId, usize> = HashMap::new();
        for ((t, _), ids) in &p.copies {
            for id in ids {
                if fixed.contains(&(*t, *id)) {
                    *added.entry(*id).or_default() += 1;
                }
            }
        }
        rep.degraded_after = referenced
            .iter()
            .filter(|id| have(id) + added.get(*id).copied().unwrap_or(0) < self.replicas)
            .count() as u64;
        // Delete misplaced copies of chunks whose homes all hold them now.
        let mut deletes: HashMap<u16, Vec<ChunkId>> = HashMap::new();
        for (id, nodes) in &p.extras {
            if failed.contains(id) {
                continue;
            }
            for n in nodes {
                deletes.entry(*n).or_default().push(*id);
            }
        }
        for (n, ids) in deletes {
            let addr = &view.members[n as usize].addr;
            rep.removed_copies += delete_on(addr, &ids, "misplaced copies").await.unwrap_or(0);
        }
        self.removed_copies.inc_by(rep.removed_copies);
        // Lost chunks, with the versions that use them.
        if !p.lost.is_empty() {
            let meta = self.meta.clone();
            let lost = p.lost.clone();
            let used = blocking(move || meta.versions_using(&lost)).await?;
            for id in &p.lost {
                rep.lost.push(pb::LostChunk {
                    id: bytes_of(id),
                    used_by: used.get(id).cloned().unwrap_or_default(),
                });
            }
            tracing::error!(
                chunks = p.lost.len(),
                "referenced chunks have no replica on any live chunkd"
            );
        }
        let orphans = self.orphans(&view).await?;
        if o.fsck {
            self.fsck(orphans.clone(), o.repair, &mut rep).await?;
        }
        self.collect_orphans(&orphans).await?;
        rep.seconds = t0.elapsed().as_secs_f64();
        if rep.copied_chunks > 0 || rep.removed_copies > 0 || rep.degraded_after > 0 {
            tracing::info!(
                referenced = rep.referenced,
                degraded_before = rep.degraded_before,
                degraded_after = rep.degraded_after,
                copied = rep.copied_chunks,
                copied_bytes = rep.copied_bytes,
                removed_copies = rep.removed_copies,
                lost = rep.lost.len(),
                seconds = rep.seconds,
                "self-healing pass"
            );
        }
        Ok(rep)
    }

    async fn pull(
        &self,
        to: &str,
        from: &str,
        ids: &[ChunkId],
    ) -> std::result::Result<pb::PullReply, String> {
        let mut c = client(to).ok_or_else(|| format!("{to} is not an address"))?;
        let req = pb::PullRequest {
            from: from.to_string(),
            ids: ids.iter().map(bytes_of).collect(),
        };
        match tokio::time::timeout(CALL, c.pull(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err("no answer within 120 s".into()),
        }
    }

    /// Every up chunkd scrubs now (all at once).
    async fn scrub_all(&self, rep: &mut pb::RepairReply) {
        let nodes: Vec<pb::NodeInfo> = self
            .members
            .nodes()
            .into_iter()
            .filter(|n| n.alive)
            .collect();
        let calls = nodes.iter().map(|n| async move {
            let mut c = client(&n.addr)?;
            match tokio::time::timeout(Duration::from_secs(3600), c.scrub(pb::ScrubRequest {}))
                .await
            {
                Ok(Ok(r)) => Some(r.into_inner()),
                Ok(Err(s)) => {
                    tracing::warn!(node = %n.id, "scrub failed: {}", s.message());
                    None
                }
                Err(_) => None,
            }
        });
        for r in futures::future::join_all(calls).await.into_iter().flatten() {
            rep.scrubbed_chunks += r.checked;
            rep.corrupt_replicas += r.corrupt.len() as u64;
        }
    }

    /// Chunks some node lists that nothing references and GC does not know.
    async fn orphans(&self, view: &View) -> Result<Vec<ChunkId>> {
        let mut on_nodes: Vec<ChunkId> = view.listed.iter().flatten().flatten().copied().collect();
        on_nodes.sort_unstable();
        on_nodes.dedup();
        let meta = self.meta.clone();
        blocking(move || {
            let refs: HashSet<ChunkId> = meta.referenced_chunks()?.into_iter().collect();
            let cand: Vec<ChunkId> = on_nodes.into_iter().filter(|c| !refs.contains(c)).collect();
            let known = meta.gc_knows(&cand)?;
            Ok(cand
                .into_iter()
                .zip(known)
                .filter(|(_, k)| !k)
                .map(|(c, _)| c)
                .collect())
        })
        .await
    }

    /// Every pass: orphans that were orphans in a pass at least a minute
    /// earlier too (uploads that did not finish since) go to GC. Orphans
    /// are what uploads cut short by a crash leave; a live upload that
    /// takes longer is still safe (GC's grace delay and epoch guard make
    /// its publish upload them again).
    async fn collect_orphans(&self, orphans: &[ChunkId]) -> Result<u64> {
        let old: Vec<ChunkId> = {
            let mut prev = self.prev_orphans.lock().unwrap_or_else(|e| e.into_inner());
            let ripe = prev.0.is_some_and(|t: Instant| t.elapsed() >= ORPHAN_AGE);
            let old = if ripe {
                orphans
                    .iter()
                    .filter(|c| prev.1.contains(*c))
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            if ripe || prev.0.is_none() {
                *prev = (Some(Instant::now()), orphans.iter().copied().collect());
            }
            old
        };
        if old.is_empty() {
            return Ok(0);
        }
        let meta = self.meta.clone();
        let n = blocking(move || meta.gc_adopt(&old)).await?;
        tracing::info!(
            chunks = n,
            "orphan chunks (uploads cut short) are queued for garbage collection"
        );
        Ok(n)
    }

    /// fsck: the metadata recount, and the orphans (queued for GC with
    /// `repair`).
    async fn fsck(
        &self,
        orphans: Vec<ChunkId>,
        repair: bool,
        rep: &mut pb::RepairReply,
    ) -> Result<()> {
        let meta = self.meta.clone();
        rep.problems = blocking(move || meta.check()).await?;
        rep.orphan_chunks = orphans.len() as u64;
        if repair && !rep.problems.is_empty() {
            let meta = self.meta.clone();
            let (fixed, left) =
                blocking(move || Ok((meta.repair_counts()?, meta.check()?))).await?;
            rep.repaired.extend(fixed);
            rep.problems = left;
        }
        if repair {
            if rep.copied_chunks > 0 {
                rep.repaired.push(format!(
                    "copied {} chunk replicas to the nodes that lacked them",
                    rep.copied_chunks
                ));
            }
            if !orphans.is_empty() {
                let meta = self.meta.clone();
                let n = blocking(move || meta.gc_adopt(&orphans)).await?;
                rep.repaired.push(format!(
                    "queued {n} orphan chunks for garbage collection (deleted after the grace delay)"
                ));
            }
        }
        Ok(())
    }

    /// How many referenced chunks node `id` may hold the only copy of: the
    /// ones no other live node lists (for `node remove`).
    pub async fn only_on(&self, id: &str) -> Result<u64> {
        let _one = self.one.lock().await;
        let meta = self.meta.clone();
        let referenced = blocking(move || meta.referenced_chunks()).await?;
        let view = self.view().await;
        let me = view.members.iter().position(|m| m.id == id);
        Ok(referenced
            .iter()
            .filter(|c| {
                view.holders
                    .get(*c)
                    .is_none_or(|h| h.iter().all(|n| Some(*n as usize) == me))
            })
            .count() as u64)
    }
}
