//! COMMIT, CLONE and resize of a mirror.
//!
//! COMMIT phase 1 (`freeze`) takes the write gate exclusively, moves the
//! dirty set into the frozen set and records the size: no I/O at all. Phase
//! 2 reads each frozen chunk (from the copy a writer made before
//! overwriting it, else from the data file), hashes it (all zeros = hole),
//! uploads the changed chunks in parallel and publishes them on top of the
//! mirror's version, re-uploading what poold asks for. After publishing,
//! the frozen chunks that were not written again are present in the new
//! version; the others stay dirty.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use blobvirt_core::chunk::{chunk_count, is_zero};
use blobvirt_core::proto as pb;
use blobvirt_core::publish::{PublishError, Publisher};
use blobvirt_core::ChunkId;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::{chunk_len, lock, CommitOutcome, Mirror, MirrorError};
use crate::statemap::ChunkState;

/// The result of phase 1.
pub struct Frozen {
    chunks: Vec<u64>,
    size: u64,
    base_size: u64,
    version: u64,
    ids: Vec<Option<ChunkId>>,
    freeze_us: u64,
    /// Label of the version to publish; non-empty forces a publish.
    label: String,
}

impl Mirror {
    /// COMMIT phase 1: freezes the dirty set. Fast: no I/O.
    pub(crate) fn freeze(&self) -> Frozen {
        let t = Instant::now();
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut inner = lock(&self.inner);
        let chunks: Vec<u64> = std::mem::take(&mut inner.dirty).into_iter().collect();
        let mut sh = lock(&self.shadow);
        sh.frozen = chunks.iter().copied().collect();
        sh.size = inner.size;
        sh.copies.clear();
        let fz = Frozen {
            chunks,
            size: inner.size,
            base_size: inner.base_size,
            version: inner.version,
            ids: inner.ids.clone(),
            freeze_us: 0,
            label: String::new(),
        };
        drop(sh);
        drop(inner);
        let us = t.elapsed().as_micros() as u64;
        self.stats.last_freeze_us.store(us, Ordering::Relaxed);
        Frozen {
            freeze_us: us,
            ..fz
        }
    }

    /// Commits the dirty chunks as a new version (both phases).
    pub async fn commit(self: &Arc<Self>) -> Result<CommitOutcome, MirrorError> {
        self.commit_labeled(String::new()).await
    }

    /// [`Mirror::commit`] publishing a version labelled `label`; a
    /// non-empty label publishes even when nothing is dirty.
    pub async fn commit_labeled(
        self: &Arc<Self>,
        label: String,
    ) -> Result<CommitOutcome, MirrorError> {
        let _c = self.commit_lock.lock().await;
        let fz = Frozen {
            label,
            ..self.freeze()
        };
        self.finish(fz).await
    }

    /// Runs phase 1 now and phase 2 in the background; `wait_commit`
    /// waits for it.
    pub async fn commit_background(self: &Arc<Self>) -> CommitOutcome {
        self.commit_background_labeled(String::new()).await
    }

    /// [`Mirror::commit_background`] with a version label.
    pub async fn commit_background_labeled(self: &Arc<Self>, label: String) -> CommitOutcome {
        let guard = self.commit_lock.clone().lock_owned().await;
        let fz = Frozen {
            label,
            ..self.freeze()
        };
        let out = CommitOutcome {
            version: fz.version,
            published: false,
            chunks_changed: fz.chunks.len() as u64,
            bytes_uploaded: 0,
            freeze_us: fz.freeze_us,
        };
        let m = self.clone();
        tokio::spawn(async move {
            if let Err(e) = m.finish(fz).await {
                tracing::error!(volume = %m.name(), "background commit failed: {e}");
            }
            drop(guard);
        });
        out
    }

    /// Waits until no commit runs; returns the version, or the failure of
    /// the last commit (with its errno).
    pub async fn wait_commit(&self) -> Result<u64, MirrorError> {
        let _c = self.commit_lock.lock().await;
        if let Some(f) = self.last_failure() {
            return Err(MirrorError::CommitFailed {
                name: self.name(),
                errno: f.errno,
                msg: f.msg,
            });
        }
        Ok(self.version())
    }

    pub(crate) async fn finish(self: &Arc<Self>, fz: Frozen) -> Result<CommitOutcome, MirrorError> {
        let t = Instant::now();
        let res = self.upload_publish(&fz).await;
        let had_work = !fz.chunks.is_empty() || fz.size != fz.base_size || !fz.label.is_empty();
        if had_work {
            self.metrics.observe_phase(1, fz.freeze_us as f64 / 1e6);
            self.metrics.observe_phase(2, t.elapsed().as_secs_f64());
        }
        let mut sh = lock(&self.shadow);
        sh.frozen.clear();
        sh.copies.clear();
        drop(sh);
        match &res {
            Ok(out) => {
                if had_work {
                    self.metrics.commits.inc();
                    self.metrics.committed_chunks.inc_by(out.chunks_changed);
                    self.metrics.committed_bytes.inc_by(out.bytes_uploaded);
                }
                if !self.is_gone() {
                    *lock(&self.last_error) = None;
                }
            }
            Err(e) => {
                lock(&self.inner).dirty.extend(fz.chunks.iter().copied());
                self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                self.metrics.commit_failures.inc();
                self.fail(e.errno(), e.to_string());
            }
        }
        res
    }

    async fn upload_publish(self: &Arc<Self>, fz: &Frozen) -> Result<CommitOutcome, MirrorError> {
        let name = self.name();
        if self.is_gone() {
            return Err(MirrorError::Gone { name });
        }
        if fz.chunks.is_empty() && fz.size == fz.base_size && fz.label.is_empty() {
            return Ok(CommitOutcome {
                version: fz.version,
                freeze_us: fz.freeze_us,
                ..Default::default()
            });
        }
        let _ = self.repo.refresh().await;
        // Upload, flush, publish and retry: the path import takes too.
        let publisher = Publisher::new(self.repo.as_ref());
        let hashed: Vec<(u64, Option<ChunkId>, Bytes)> = stream::iter(fz.chunks.clone())
            .map(|i| {
                let m = self.clone();
                let (name, publisher) = (&name, &publisher);
                let base = fz.ids.get(i as usize).copied().flatten();
                async move {
                    let (data, id) = tokio::task::spawn_blocking(move || {
                        let data = m.read_frozen(i)?;
                        let id = (!is_zero(&data)).then(|| ChunkId::of(&data));
                        Ok::<_, std::io::Error>((data, id))
                    })
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r)
                    .map_err(|e| MirrorError::io("read", &self.dir().join("data"), e))?;
                    if let Some(id) = id.filter(|id| Some(*id) != base) {
                        publisher
                            .put(id, data.clone())
                            .await
                            .map_err(|e| MirrorError::repo(name, e))?;
                    }
                    Ok::<_, MirrorError>((i, id, data))
                }
            })
            .buffer_unordered(self.repo.concurrency().max(1))
            .try_collect()
            .await?;
        let mut changes: Vec<pb::ChunkChange> = hashed
            .iter()
            .filter(|(i, id, _)| fz.ids.get(*i as usize).copied().flatten() != *id)
            .map(|(i, id, _)| pb::ChunkChange {
                index: *i,
                id: id.map(|c| Bytes::copy_from_slice(&c.0)).unwrap_or_default(),
            })
            .collect();
        changes.sort_by_key(|c| c.index);
        let data_of: HashMap<ChunkId, Bytes> = hashed
            .iter()
            .filter_map(|(_, id, d)| id.map(|id| (id, d.clone())))
            .collect();
        let n_changes = changes.len() as u64;
        let version = if changes.is_empty() && fz.size == fz.base_size && fz.label.is_empty() {
            fz.version
        } else {
            let req = pb::PublishRequest {
                name: name.clone(),
                create: false,
                chunk_size: self.chunk_size as u32,
                base_version: fz.version,
                size: fz.size,
                changes,
                label: fz.label.clone(),
                gc_epoch: 0,
                request_id: Default::default(),
            };
            let again = |id: ChunkId| {
                data_of.get(&id).cloned().ok_or_else(|| {
                    std::io::Error::other(format!("chunk {id} is not in this commit"))
                })
            };
            match publisher.publish(req, again).await {
                Ok(v) => v,
                Err(PublishError::Repo(e)) => {
                    return Err(match e.code() {
                        Some(tonic::Code::FailedPrecondition) => {
                            self.stale_or_gone(&name, fz.version).await
                        }
                        Some(tonic::Code::NotFound) => MirrorError::Gone { name },
                        _ => MirrorError::repo(&name, e),
                    })
                }
                Err(e) => return Err(MirrorError::Publish { name, source: e }),
            }
        };
        crate::failpoint::hit("mirrord-after-publish");
        {
            let mut inner = lock(&self.inner);
            inner.version = version;
            inner.base_size = fz.size;
            for (i, id, _) in &hashed {
                let u = *i as usize;
                if u < inner.ids.len() {
                    inner.ids[u] = *id;
                    if !inner.dirty.contains(i) && inner.st[u] == ChunkState::Dirty {
                        inner.st[u] = ChunkState::Present;
                    }
                }
            }
            inner.changed = true;
        }
        let bytes = publisher.bytes_uploaded();
        self.stats
            .bytes_committed
            .fetch_add(bytes, Ordering::Relaxed);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.flush_state(false)?;
        if version != fz.version {
            tracing::info!(volume = %name, version, chunks = n_changes, bytes, freeze_us = fz.freeze_us, "committed");
        }
        Ok(CommitOutcome {
            version,
            published: version != fz.version,
            chunks_changed: n_changes,
            bytes_uploaded: bytes,
            freeze_us: fz.freeze_us,
        })
    }

    /// Why a publish on top of `version` was refused: a newer version was
    /// made elsewhere, or `version` itself was deleted.
    async fn stale_or_gone(&self, name: &str, version: u64) -> MirrorError {
        match self.repo.get_blob(name).await {
            Ok(b) if !b.versions.iter().any(|v| v.version == version) => MirrorError::BaseGone {
                name: name.into(),
                version,
            },
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                MirrorError::Gone { name: name.into() }
            }
            _ => MirrorError::Stale {
                name: name.into(),
                version,
            },
        }
    }

    /// CLONE: makes the mirror's base version a new volume `new` (O(1) on
    /// poold), switches the mirror to it and commits the local changes
    /// into it. The old volume is unchanged.
    pub async fn clone_to(
        self: &Arc<Self>,
        vols: &std::path::Path,
        new: &str,
    ) -> Result<CommitOutcome, MirrorError> {
        let _c = self.commit_lock.lock().await;
        let old = self.name();
        let version = self.version();
        let info = self
            .repo
            .clone_blob(&old, version, new)
            .await
            .map_err(|e| match e.code() {
                Some(tonic::Code::NotFound) => MirrorError::UnknownVolume(old.clone()),
                Some(tonic::Code::AlreadyExists) => MirrorError::Exists(new.into()),
                _ => MirrorError::repo(new, e),
            })?;
        {
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut inner = lock(&self.inner);
            self.move_dir(vols, new)?;
            inner.blob_id = info.id;
            inner.version = info.latest_version;
            inner.pinned = false;
            inner.changed = true;
        }
        self.flush_state(false)?;
        tracing::info!(volume = %old, clone = %new, version, "cloned; the mirror continues on the clone");
        let fz = self.freeze();
        self.finish(fz).await
    }

    /// Moves the mirror's directory and name to volume `new` (a renamed
    /// volume) and saves its state under the new name.
    pub(crate) fn move_to(&self, vols: &std::path::Path, new: &str) -> Result<(), MirrorError> {
        {
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut inner = lock(&self.inner);
            self.move_dir(vols, new)?;
            inner.changed = true;
        }
        self.flush_state(false)
    }

    /// Renames the cache directory to `new`'s (replacing a stale one) and
    /// the mirror to `new`. The caller holds the write gate.
    fn move_dir(&self, vols: &std::path::Path, new: &str) -> Result<(), MirrorError> {
        let new_dir = vols.join(super::attach::dir_name(new));
        let old_dir = self.dir();
        let _ = std::fs::remove_dir_all(&new_dir);
        std::fs::rename(&old_dir, &new_dir).map_err(|e| MirrorError::io("rename", &old_dir, e))?;
        *self.dir.write().unwrap_or_else(|e| e.into_inner()) = new_dir;
        *self.name.write().unwrap_or_else(|e| e.into_inner()) = new.to_string();
        Ok(())
    }

    /// Changes the size of the mirror; the caller commits it.
    pub async fn resize(self: &Arc<Self>, new_size: u64) -> Result<(), MirrorError> {
        let _c = self.commit_lock.lock().await;
        self.resize_local(new_size, false).await
    }

    /// Grows the mirror to `new_size` unless it is that large already (a
    /// write or fallocate past the end); the next commit publishes the size.
    /// Needs no commit lock: growing leaves every frozen byte as it was.
    pub(crate) async fn grow(self: &Arc<Self>, new_size: u64) -> Result<(), MirrorError> {
        self.resize_local(new_size, true).await
    }

    /// Resizes the local mirror. The chunk that straddles the old or new
    /// end is made local and dirty so its bytes past the end read as zeros
    /// and its new length is published.
    async fn resize_local(
        self: &Arc<Self>,
        new_size: u64,
        grow_only: bool,
    ) -> Result<(), MirrorError> {
        let cs = self.chunk_size;
        let name = self.name();
        if new_size > super::MAX_SIZE {
            return Err(MirrorError::Invalid {
                name,
                msg: format!(
                    "{new_size} bytes is larger than the largest volume ({} bytes); pick a smaller size",
                    super::MAX_SIZE
                ),
            });
        }
        for _ in 0..8 {
            let old_size = self.size();
            if new_size == old_size || (grow_only && new_size < old_size) {
                return Ok(());
            }
            let edge = old_size.min(new_size);
            let straddle = (!edge.is_multiple_of(cs)).then_some(edge / cs);
            if let Some(i) = straddle {
                if !self.ensure_local(i).await.map_err(|e| MirrorError::Io {
                    op: "fetch",
                    path: format!("chunk {i} of {name}"),
                    source: std::io::Error::from_raw_os_error(e),
                })? {
                    return Err(MirrorError::io(
                        "store",
                        &self.dir().join("data"),
                        std::io::Error::from_raw_os_error(libc::ENOSPC),
                    ));
                }
            }
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut inner = lock(&self.inner);
            if inner.size != old_size {
                continue; // another resize came first
            }
            let path = self.dir().join("data");
            if let Some(i) = straddle {
                if !inner.st[i as usize].is_local() && inner.ids[i as usize].is_some() {
                    continue; // the last chunk changed while fetching it
                }
                if !inner.st[i as usize].is_local() {
                    self.punch_local_chunk(i, old_size)?;
                }
            }
            // Cut the data file to the smaller size first so the tail is zero.
            self.data
                .set_len(edge)
                .and_then(|_| self.data.set_len(new_size))
                .map_err(|e| MirrorError::io("resize", &path, e))?;
            let n = chunk_count(new_size, cs as u32) as usize;
            inner.st.resize(n, ChunkState::Absent);
            inner.ids.resize(n, None);
            inner.seen.resize(n, false);
            inner.dirty.retain(|&i| (i as usize) < n);
            if let Some(i) = straddle {
                inner.st[i as usize] = ChunkState::Dirty;
                inner.dirty.insert(i);
            }
            inner.size = new_size;
            inner.changed = true;
            return Ok(());
        }
        Err(MirrorError::Invalid {
            name,
            msg: "the size kept changing while resizing; try again".into(),
        })
    }

    fn punch_local_chunk(&self, i: u64, size: u64) -> Result<(), MirrorError> {
        let cs = self.chunk_size;
        let len = chunk_len(size, cs, i) as usize;
        use std::os::unix::fs::FileExt;
        self.data
            .write_all_at(&vec![0u8; len], i * cs)
            .map_err(|e| MirrorError::io("write", &self.dir().join("data"), e))
    }
}
