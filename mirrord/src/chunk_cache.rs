//! The host-level chunk cache: one per mirrord, shared by every mirror on
//! this host and keyed by chunk id, so that N clones of one image booting
//! here fetch each chunk from chunkd once. It sits behind the
//! [`Repository`] seam, wrapping the real client:
//!
//! - a fetch first looks in a bounded in-memory LRU of recently fetched
//!   chunks (`[mirrord] chunk_cache_mib`, default 256 MiB; 0 turns it off);
//! - concurrent fetches of one id from different mirrors share one request
//!   (each mirror already shares one fetch per chunk among its own readers);
//! - everything else passes through unchanged.
//!
//! The cache holds only bytes [`Repo::get_chunk`] verified against their
//! id, and chunks are immutable, so a hit needs no check and no
//! invalidation. It lives in memory rather than on disk: every mirror keeps
//! its own copy of what its guest read in its data file anyway (the guest
//! may write it), so a disk cache would be one more copy of each chunk on
//! the host's disk, and memory needs no clean-up after a crash.
//!
//! It also owns the daemon-wide counters of fetches from chunkd
//! (`blobvirt_mirrord_fetched_*`: network traffic only) and of cache hits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use blobvirt_core::client::{Publish, Resolved, Result};
use blobvirt_core::proto as pb;
use blobvirt_core::{ChunkId, Repo, Repository};
use bytes::Bytes;
use lru::LruCache;
use tokio::sync::OnceCell;

use crate::metrics::Metrics;

/// Default size of the cache.
pub const DEFAULT_MIB: u64 = 256;

struct Lru {
    map: LruCache<ChunkId, Bytes>,
    bytes: u64,
    cap: u64,
}

/// The repository as every mirror on this host sees it.
pub struct HostCache {
    repo: Repo,
    lru: Mutex<Lru>,
    /// Fetches from chunkd in flight, by id; `None` when the leader failed.
    inflight: Mutex<HashMap<ChunkId, Arc<OnceCell<Option<Bytes>>>>>,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HostCache {
    /// A cache of at most `cap_bytes` over `repo` (0: no cache, but fetches
    /// of one id still share one request).
    pub fn new(repo: Repo, cap_bytes: u64, metrics: Metrics) -> Self {
        HostCache {
            repo,
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
                cap: cap_bytes,
            }),
            inflight: Mutex::default(),
            metrics,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        lock(&self.lru).bytes
    }

    fn lookup(&self, id: &ChunkId) -> Option<Bytes> {
        let b = lock(&self.lru).map.get(id).cloned()?;
        self.metrics.cache_hits.inc();
        self.metrics.cache_hit_bytes.inc_by(b.len() as u64);
        Some(b)
    }

    fn insert(&self, id: ChunkId, data: &Bytes) {
        let mut l = lock(&self.lru);
        let len = data.len() as u64;
        if len > l.cap || l.map.contains(&id) {
            return;
        }
        while l.bytes + len > l.cap {
            match l.map.pop_lru() {
                Some((_, old)) => l.bytes -= old.len() as u64,
                None => break,
            }
        }
        // `fetch` asked for owned bytes: no slice of a larger receive
        // buffer is kept alive uncounted, and no copy is made here.
        l.map.put(id, data.clone());
        l.bytes += len;
        self.metrics.cache_bytes.set(l.bytes as i64);
    }

    /// One fetch from chunkd, counted.
    async fn fetch(&self, id: ChunkId) -> Result<Bytes> {
        let data = self.repo.get_chunk_owned(id).await?;
        self.metrics.fetched_chunks.inc();
        self.metrics.fetched_bytes.inc_by(data.len() as u64);
        self.insert(id, &data);
        Ok(data)
    }
}

#[async_trait]
impl Repository for HostCache {
    async fn get_chunk(&self, id: ChunkId) -> Result<Bytes> {
        if let Some(b) = self.lookup(&id) {
            return Ok(b);
        }
        let cell = lock(&self.inflight).entry(id).or_default().clone();
        let mut failed = None;
        let mut leader = false;
        let got = cell
            .get_or_init(|| {
                leader = true;
                async {
                    match self.fetch(id).await {
                        Ok(b) => Some(b),
                        Err(e) => {
                            failed = Some(e);
                            None
                        }
                    }
                }
            })
            .await
            .clone();
        {
            let mut inflight = lock(&self.inflight);
            if inflight.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&id);
            }
        }
        match (got, failed) {
            (Some(b), _) => {
                if !leader {
                    self.metrics.cache_hits.inc();
                    self.metrics.cache_hit_bytes.inc_by(b.len() as u64);
                }
                Ok(b)
            }
            (None, Some(e)) => Err(e),
            // The leader's fetch failed: this caller tries for itself.
            (None, None) => self.fetch(id).await,
        }
    }
    async fn put_chunk(&self, id: ChunkId, data: Bytes) -> Result<()> {
        self.repo.put_chunk(id, data).await
    }
    async fn put_chunk_staged(&self, id: ChunkId, data: Bytes) -> Result<Vec<String>> {
        self.repo.put_chunk_staged(id, data).await
    }
    async fn flush(&self, nodes: &[String]) -> Result<()> {
        self.repo.flush(nodes).await
    }
    async fn publish(&self, req: pb::PublishRequest) -> Result<Publish> {
        self.repo.publish(req).await
    }
    async fn resolve(&self, name: &str, version: u64) -> Result<Resolved> {
        self.repo.resolve(name, version).await
    }
    async fn clone_blob(&self, src: &str, version: u64, dst: &str) -> Result<pb::BlobInfo> {
        self.repo.clone_blob(src, version, dst).await
    }
    async fn get_blob(&self, name: &str) -> Result<pb::BlobInfo> {
        self.repo.get_blob(name).await
    }
    async fn refresh(&self) -> Result<()> {
        self.repo.refresh().await
    }
    fn gc_epoch(&self) -> u64 {
        self.repo.gc_epoch()
    }
    fn concurrency(&self) -> usize {
        self.repo.concurrency
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mirror::tests::{import, pattern, repository, CS};
    use crate::mirror::{Mirror, SharedRepo};

    /// 8 clones of one image, all read at once through one host cache:
    /// chunkd serves each chunk once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clones_read_at_once_fetch_each_chunk_once() {
        let t = tempfile::tempdir().unwrap();
        let repo = repository(t.path()).await;
        let base = pattern(50, 32 * CS);
        import(&repo, t.path(), "img", &base).await;
        let vols = t.path().join("vols");
        std::fs::create_dir_all(&vols).unwrap();
        let metrics = Metrics::default();
        let cache = Arc::new(HostCache::new(repo.clone(), 64 << 20, metrics.clone()));
        let shared: SharedRepo = cache.clone();
        let mut mirrors = Vec::new();
        for k in 0..8 {
            let name = format!("c{k}");
            repo.clone_blob("img", 1, &name).await.unwrap();
            mirrors.push(Mirror::attach(&shared, &vols, &name, None).await.unwrap());
        }
        let reads: Vec<_> = mirrors
            .iter()
            .map(|m| {
                let m = m.clone();
                tokio::spawn(async move { m.read(0, (32 * CS) as u64).await })
            })
            .collect();
        for r in reads {
            assert!(r.await.unwrap().unwrap() == base);
        }
        let one = base.len() as u64;
        assert_eq!(
            metrics.fetched_bytes.get(),
            one,
            "each chunk is fetched once"
        );
        assert_eq!(metrics.cache_hit_bytes.get(), 7 * one);
        assert_eq!(cache.bytes(), one);
    }

    /// The cache stays within its size, dropping the least recently used.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_is_bounded_and_evicts_the_least_recently_used() {
        let t = tempfile::tempdir().unwrap();
        let repo = repository(t.path()).await;
        let base = pattern(60, 8 * CS);
        import(&repo, t.path(), "img", &base).await;
        let ids: Vec<ChunkId> = repo
            .resolve("img", 0)
            .await
            .unwrap()
            .chunks
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(ids.len(), 8);
        let metrics = Metrics::default();
        let cache = HostCache::new(repo.clone(), 3 * CS as u64, metrics.clone());
        for id in &ids[..3] {
            cache.get_chunk(*id).await.unwrap();
        }
        // Touch the first, so the second is the least recently used.
        cache.get_chunk(ids[0]).await.unwrap();
        cache.get_chunk(ids[3]).await.unwrap();
        assert_eq!(cache.bytes(), 3 * CS as u64);
        let fetched = metrics.fetched_chunks.get();
        for id in [ids[0], ids[2], ids[3]] {
            cache.get_chunk(id).await.unwrap();
        }
        assert_eq!(
            metrics.fetched_chunks.get(),
            fetched,
            "0, 2 and 3 are cached"
        );
        cache.get_chunk(ids[1]).await.unwrap();
        assert_eq!(metrics.fetched_chunks.get(), fetched + 1, "1 was evicted");
        assert_eq!(cache.bytes(), 3 * CS as u64);
    }
}
