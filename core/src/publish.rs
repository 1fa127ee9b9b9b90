//! The one way a client makes a new version: upload the changed chunks
//! (staged: written, not yet synced), make them durable with one `Flush` per
//! node, publish, and upload again whatever poold says garbage collection
//! may have reclaimed meanwhile. Used by `vol-import` (`transfer.rs`) and by
//! mirrord's COMMIT.
//!
//! The GC epoch is read when the [`Publisher`] is made, before any chunk is
//! checked or uploaded, so poold can tell which uploads a GC pass may have
//! raced with.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::client::Publish;
use crate::proto as pb;
use crate::{ChunkId, RepoError, Repository};

/// How many times a publish is retried after re-uploading chunks.
const TRIES: usize = 5;

/// Why a publish failed. `E` is the caller's error from giving a chunk's
/// bytes again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError<E: std::error::Error + 'static> {
    /// poold or a chunkd refused or failed (match on [`RepoError::code`]).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// poold asked for a chunk this publish never uploaded: a protocol error.
    #[error(
        "poold asked to upload chunk {0} again, which this publish did not send; see the poold log"
    )]
    NotSent(ChunkId),
    /// GC reclaimed the chunks again and again.
    #[error("garbage collection kept reclaiming the chunks being published; try again")]
    KeptReclaiming,
    /// The caller could not give a chunk's bytes again.
    #[error(transparent)]
    Source(E),
}

/// Uploads the chunks of one new version and publishes it.
pub struct Publisher<'a> {
    repo: &'a dyn Repository,
    epoch: u64,
    sent: Mutex<HashSet<ChunkId>>,
    staged_on: Mutex<HashSet<String>>,
    uploaded: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'a> Publisher<'a> {
    /// Starts a publish; reads the GC epoch now (refresh the repository's
    /// view first).
    pub fn new(repo: &'a dyn Repository) -> Self {
        Publisher {
            repo,
            epoch: repo.gc_epoch(),
            sent: Mutex::default(),
            staged_on: Mutex::default(),
            uploaded: AtomicU64::new(0),
        }
    }

    /// Uploads chunk `id` (staged) unless this publish sent it already.
    pub async fn put(&self, id: ChunkId, data: Bytes) -> Result<(), RepoError> {
        if !lock(&self.sent).insert(id) {
            return Ok(());
        }
        let len = data.len() as u64;
        match self.repo.put_chunk_staged(id, data).await {
            Ok(nodes) => {
                lock(&self.staged_on).extend(nodes);
                self.uploaded.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                lock(&self.sent).remove(&id);
                Err(e)
            }
        }
    }

    /// Bytes uploaded so far (re-uploads included).
    pub fn bytes_uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Makes the staged chunks durable, then publishes `req` (its
    /// `gc_epoch` is set here). When poold answers that chunks may have
    /// been reclaimed, gets their bytes from `again` and uploads them
    /// again (durably), then retries. Returns the new version.
    pub async fn publish<E: std::error::Error + 'static>(
        &self,
        mut req: pb::PublishRequest,
        mut again: impl FnMut(ChunkId) -> Result<Bytes, E>,
    ) -> Result<u64, PublishError<E>> {
        let staged: Vec<String> = lock(&self.staged_on).iter().cloned().collect();
        self.repo.flush(&staged).await?;
        req.gc_epoch = self.epoch;
        for _ in 0..TRIES {
            match self.repo.publish(req.clone()).await? {
                Publish::Done(v) => return Ok(v),
                Publish::Reupload(ids) => {
                    for id in ids {
                        if !lock(&self.sent).contains(&id) {
                            return Err(PublishError::NotSent(id));
                        }
                        let data = again(id).map_err(PublishError::Source)?;
                        self.uploaded
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        self.repo.put_chunk(id, data).await?;
                    }
                    req.gc_epoch = self.repo.gc_epoch();
                }
            }
        }
        Err(PublishError::KeptReclaiming)
    }
}
