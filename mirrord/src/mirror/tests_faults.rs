//! The mirror against a faulty repository, through the [`Repository`] seam:
//! a real poold and chunkd (in this process) behind a wrapper that makes
//! fetches slow or failing, and uploads, flushes or publishes fail or arrive
//! corrupted. The mirror must fetch each chunk once however many readers
//! wait, turn a failed fetch into EIO without remembering it, and keep every
//! change until a commit fully succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blobvirt_core::client::{Publish, Resolved, Result};
use blobvirt_core::proto as pb;
use blobvirt_core::{ChunkId, Repo, RepoError, Repository};
use bytes::Bytes;

use super::tests::{export, import, pattern, repository, CS};
use super::{Mirror, SharedRepo};
use crate::statemap::ChunkState;

/// What the wrapper does to the calls it passes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Every fetch waits this long first.
    SlowGet(Duration),
    /// Every fetch fails as if no replica answered.
    FailGet,
    /// Staged uploads arrive with one bit flipped.
    CorruptPut,
    /// The flush that makes staged uploads durable fails.
    FailFlush,
    /// poold refuses the publish as unavailable.
    FailPublish,
}

/// A real repository behind a switch of faults, counting fetches.
struct Faulty {
    inner: Repo,
    fault: Mutex<Fault>,
    gets: AtomicU64,
}

impl Faulty {
    fn set(&self, f: Fault) {
        *self.fault.lock().unwrap() = f;
    }
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }
}

fn unavailable(what: &str) -> RepoError {
    RepoError::Pool(tonic::Status::unavailable(format!("injected: {what}")))
}

#[async_trait]
impl Repository for Faulty {
    async fn get_chunk(&self, id: ChunkId) -> Result<Bytes> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        match self.fault() {
            Fault::SlowGet(d) => tokio::time::sleep(d).await,
            Fault::FailGet => {
                return Err(RepoError::ChunkUnavailable {
                    chunk: id,
                    tried: "n1: injected".into(),
                    corrupt: 0,
                })
            }
            _ => {}
        }
        self.inner.get_chunk(id).await
    }
    async fn put_chunk(&self, id: ChunkId, data: Bytes) -> Result<()> {
        self.inner.put_chunk(id, data).await
    }
    async fn put_chunk_staged(&self, id: ChunkId, data: Bytes) -> Result<Vec<String>> {
        let data = if self.fault() == Fault::CorruptPut {
            let mut v = data.to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0x10;
            Bytes::from(v)
        } else {
            data
        };
        self.inner.put_chunk_staged(id, data).await
    }
    async fn flush(&self, nodes: &[String]) -> Result<()> {
        if self.fault() == Fault::FailFlush {
            return Err(RepoError::Flush {
                node: nodes.first().cloned().unwrap_or_default(),
                reason: "injected: no space left on device".into(),
            });
        }
        self.inner.flush(nodes).await
    }
    async fn publish(&self, req: pb::PublishRequest) -> Result<Publish> {
        if self.fault() == Fault::FailPublish {
            return Err(unavailable("publish"));
        }
        self.inner.publish(req).await
    }
    async fn resolve(&self, name: &str, version: u64) -> Result<Resolved> {
        self.inner.resolve(name, version).await
    }
    async fn clone_blob(&self, src: &str, version: u64, dst: &str) -> Result<pb::BlobInfo> {
        self.inner.clone_blob(src, version, dst).await
    }
    async fn get_blob(&self, name: &str) -> Result<pb::BlobInfo> {
        self.inner.get_blob(name).await
    }
    async fn refresh(&self) -> Result<()> {
        self.inner.refresh().await
    }
    fn gc_epoch(&self) -> u64 {
        self.inner.gc_epoch()
    }
    fn concurrency(&self) -> usize {
        self.inner.concurrency
    }
}

/// A volume `v` of `data`, mirrored through a [`Faulty`] repository.
async fn setup(dir: &std::path::Path, data: &[u8]) -> (Repo, Arc<Faulty>, Arc<Mirror>) {
    let repo = repository(dir).await;
    import(&repo, dir, "v", data).await;
    let vols = dir.join("vols");
    std::fs::create_dir_all(&vols).unwrap();
    let f = Arc::new(Faulty {
        inner: repo.clone(),
        fault: Mutex::new(Fault::None),
        gets: AtomicU64::new(0),
    });
    let shared: SharedRepo = f.clone();
    let m = Mirror::attach(&shared, &vols, "v", None).await.unwrap();
    (repo, f, m)
}

/// Chunk `i`'s state once its fetch, if any, is over (fetched bytes are
/// stored in the background after the read that fetched them returns).
async fn state(m: &Mirror, i: usize) -> ChunkState {
    let fetch = super::lock(&m.inner).inflight.get(&(i as u64)).cloned();
    if let Some(f) = fetch {
        f.stored().await;
    }
    super::lock(&m.inner).st[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_slow_chunk_share_one_fetch() {
    let t = tempfile::tempdir().unwrap();
    let base = pattern(11, 4 * CS);
    let (_repo, f, m) = setup(t.path(), &base).await;
    f.set(Fault::SlowGet(Duration::from_millis(300)));
    let reads: Vec<_> = (0..8)
        .map(|k| {
            let m = m.clone();
            tokio::spawn(async move { m.read(CS as u64 + k * 100, 1000).await })
        })
        .collect();
    for (k, r) in reads.into_iter().enumerate() {
        let got = r.await.unwrap().unwrap();
        let at = CS + k * 100;
        assert!(got == base[at..at + 1000], "reader {k} got wrong bytes");
    }
    assert_eq!(
        f.gets.load(Ordering::SeqCst),
        1,
        "8 readers of one chunk must share one fetch"
    );
    assert_eq!(state(&m, 1).await, ChunkState::Present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_is_eio_and_is_not_remembered() {
    let t = tempfile::tempdir().unwrap();
    let base = pattern(12, 4 * CS);
    let (_repo, f, m) = setup(t.path(), &base).await;
    f.set(Fault::FailGet);
    assert_eq!(m.read(2 * CS as u64, 10).await, Err(libc::EIO));
    assert!(f.gets.load(Ordering::SeqCst) >= 2, "the fetch is retried");
    assert_eq!(state(&m, 2).await, ChunkState::Absent);
    // Once the repository answers again, the same read succeeds.
    f.set(Fault::None);
    let got = m.read(2 * CS as u64, 10).await.unwrap();
    assert!(got == base[2 * CS..2 * CS + 10]);
    assert_eq!(state(&m, 2).await, ChunkState::Present);
}

/// A guest write of a whole chunk right after the read that fetched it,
/// while the fetched bytes may still be on their way into the data file:
/// the write must win (writers wait for an in-flight chunk's store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_read_is_not_undone_by_the_background_store() {
    let t = tempfile::tempdir().unwrap();
    let base = pattern(21, 16 * CS);
    let (_repo, _f, m) = setup(t.path(), &base).await;
    let new = vec![0xa5u8; CS];
    for i in 0..16u64 {
        let off = i * CS as u64;
        let got = m.read(off, 10).await.unwrap();
        assert!(got == base[off as usize..off as usize + 10]);
        assert_eq!(m.write(off, &new).await, Ok(CS));
    }
    for i in 0..16usize {
        assert_eq!(state(&m, i).await, ChunkState::Dirty, "chunk {i}");
        let got = m.read((i * CS) as u64, CS as u64).await.unwrap();
        assert!(
            got == new,
            "chunk {i}: the fetched bytes overwrote the guest's write"
        );
    }
}

/// A commit through `fault` fails, publishes nothing and keeps the change;
/// the next commit, with the repository healthy, publishes it exactly.
async fn commit_survives(fault: Fault, seed: u8) {
    let t = tempfile::tempdir().unwrap();
    let base = pattern(seed, 4 * CS);
    let (repo, f, m) = setup(t.path(), &base).await;
    let w = pattern(seed + 1, CS + 100);
    m.write(CS as u64 - 50, &w).await.unwrap();
    let mut want = base.clone();
    want[CS - 50..2 * CS + 50].copy_from_slice(&w);
    f.set(fault);
    let e = m.commit().await.expect_err("the commit must fail");
    eprintln!("{fault:?}: {e}");
    assert_eq!(
        repo.get_blob("v").await.unwrap().versions.len(),
        1,
        "{fault:?}: a version was published"
    );
    assert_eq!((m.version(), state(&m, 1).await), (1, ChunkState::Dirty));
    assert!(m.read(0, want.len() as u64).await.unwrap() == want);
    f.set(Fault::None);
    let out = m.commit().await.unwrap();
    assert_eq!((out.version, out.published), (2, true));
    assert!(export(&repo, t.path(), "v", 2).await == want);
    assert_eq!(m.status().chunks_dirty, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_flush_fails_keeps_its_changes() {
    commit_survives(Fault::FailFlush, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_publish_fails_keeps_its_changes() {
    commit_survives(Fault::FailPublish, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_uploads_arrive_corrupt_keeps_its_changes() {
    // chunkd checks every chunk against its id, so a corrupted upload is
    // refused and never stored under the id.
    commit_survives(Fault::CorruptPut, 40).await;
}
