//! Attaching a mirror: a fresh one, or the one a previous run left in the
//! cache (verified after an unclean stop), and rebasing an unchanged mirror
//! onto a newer version.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

use blobvirt_core::chunk::{chunk_count, is_zero};
use blobvirt_core::client::Resolved;
use blobvirt_core::ChunkId;

use super::SharedRepo;

use super::io::read_full_at;
use super::{chunk_len, lock, Inner, Mirror, MirrorError, Shadow, Stats};
use crate::statemap::{ChunkState, StateMap};

/// Directory name of a volume's mirror: the name itself when it is plain,
/// else `x-` and its hex.
pub fn dir_name(name: &str) -> String {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.starts_with("x-")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if plain {
        name.to_string()
    } else {
        format!("x-{}", hex::encode(name))
    }
}

/// The chunk map of `name@version` (None: the latest) of a volume known to
/// exist: a NotFound is a missing version.
async fn resolve_wanted(
    repo: &SharedRepo,
    name: &str,
    version: Option<u64>,
) -> Result<Resolved, MirrorError> {
    repo.resolve(name, version.unwrap_or(0))
        .await
        .map_err(|e| match (e.code(), version) {
            (Some(tonic::Code::NotFound), Some(version)) => MirrorError::NoVersion {
                name: name.into(),
                version,
            },
            _ => MirrorError::repo(name, e),
        })
}

impl Mirror {
    /// Attaches volume `name`: reuses the mirror in `vols` when one exists
    /// for the same blob, else starts an empty one. With `version`, the
    /// mirror is based on that version (a mirror with local changes keeps
    /// its own base).
    pub async fn attach(
        repo: &SharedRepo,
        vols: &Path,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<Mirror>, MirrorError> {
        Mirror::attach_metered(repo, vols, name, version, Default::default()).await
    }

    /// [`Mirror::attach`] adding to the daemon-wide counters `metrics`.
    pub async fn attach_metered(
        repo: &SharedRepo,
        vols: &Path,
        name: &str,
        version: Option<u64>,
        metrics: crate::metrics::Metrics,
    ) -> Result<Arc<Mirror>, MirrorError> {
        let info = repo
            .get_blob(name)
            .await
            .map_err(|e| MirrorError::repo(name, e))?;
        let dir = vols.join(dir_name(name));
        let state_path = dir.join("state");
        let saved = match StateMap::read(&state_path) {
            Ok(Some(s)) if s.blob_id == info.id && s.name == name => Some(s),
            Ok(Some(_)) => {
                tracing::warn!(
                    volume = name,
                    "the cached mirror belongs to an older volume of that name; discarding it"
                );
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(volume = name, "discarding the cached mirror: {e}");
                None
            }
        };
        let (saved, resolved) = match saved {
            Some(s) => match repo.resolve(name, s.version).await {
                Ok(r) => (Some(s), r),
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    if s.states.contains(&ChunkState::Dirty) {
                        return Err(MirrorError::Invalid {
                            name: name.into(),
                            msg: format!("the cached mirror holds uncommitted changes based on version {}, which was deleted; remove {} to start over", s.version, dir.display()),
                        });
                    }
                    (None, resolve_wanted(repo, name, version).await?)
                }
                Err(e) => return Err(MirrorError::repo(name, e)),
            },
            None => (None, resolve_wanted(repo, name, version).await?),
        };
        if saved.is_none() {
            let _ = fs::remove_dir_all(&dir);
        }
        fs::create_dir_all(&dir).map_err(|e| MirrorError::io("create", &dir, e))?;
        let data_path = dir.join("data");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(|e| MirrorError::io("open", &data_path, e))?;
        let cs = resolved.chunk_size as u64;
        let (size, mut st, clean) = match &saved {
            Some(s) => (s.size, s.states.clone(), s.clean),
            None => (resolved.size, Vec::new(), true),
        };
        let n = chunk_count(size, cs as u32) as usize;
        st.resize(n, ChunkState::Absent);
        data.set_len(size)
            .map_err(|e| MirrorError::io("resize", &data_path, e))?;
        let mut ids = resolved.chunks.clone();
        ids.resize(n, None);
        let dirty: BTreeSet<u64> = st
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == ChunkState::Dirty)
            .map(|(i, _)| i as u64)
            .collect();
        let m = Arc::new(Mirror {
            repo: repo.clone(),
            name: RwLock::new(name.to_string()),
            dir: RwLock::new(dir.clone()),
            data,
            chunk_size: cs,
            inner: Mutex::new(Inner {
                blob_id: info.id,
                version: resolved.version,
                base_size: resolved.size,
                size,
                pinned: version.is_some_and(|v| v != info.latest_version),
                ids,
                st,
                dirty,
                inflight: Default::default(),
                changed: true,
                seen: vec![false; n],
                order: Vec::new(),
                profile_saved_len: 0,
            }),
            gate: RwLock::new(()),
            shadow: Mutex::new(Shadow::default()),
            commit_lock: Arc::default(),
            flush_lock: Mutex::new(()),
            stats: Stats::default(),
            metrics,
            demand: AtomicUsize::new(0),
            ra: super::readahead::ReadAhead::new(),
            store_lock: Mutex::default(),
            policy: Mutex::default(),
            last_error: Mutex::default(),
            err_seq: AtomicU64::new(0),
            gone: std::sync::atomic::AtomicBool::new(false),
            handles: AtomicU64::new(0),
            writers: AtomicU64::new(0),
            lease: tokio::sync::Mutex::new(None),
        });
        if !clean {
            let mm = m.clone();
            let changed = tokio::task::spawn_blocking(move || mm.verify_present())
                .await
                .map_err(|e| {
                    MirrorError::io("verify", &data_path, std::io::Error::other(e.to_string()))
                })?;
            if changed > 0 {
                tracing::warn!(volume = name, chunks = changed, "after an unclean stop, chunks whose local bytes differ from their version are treated as written");
            }
        }
        let target = match version {
            Some(v) => Some(v),
            None if saved.is_some() && resolved.version < info.latest_version => {
                Some(info.latest_version)
            }
            None => None,
        };
        if let Some(v) = target.filter(|v| *v != resolved.version) {
            if !m.has_changes() {
                m.rebase(v, version.is_some()).await?;
            } else if version.is_none() && m.adopt_published(v).await? {
                tracing::warn!(
                    volume = name,
                    from = resolved.version,
                    version = v,
                    "the mirror's last commit was published before mirrord stopped; the mirror now builds on it"
                );
            } else {
                tracing::warn!(
                    volume = name,
                    version = resolved.version,
                    "the cached mirror has uncommitted changes; it stays on its version"
                );
            }
        }
        m.flush_state(false)?;
        Ok(m)
    }

    /// After an unclean stop: a present chunk whose bytes do not hash to
    /// its id was written after the last flush; it becomes dirty. Returns
    /// how many changed.
    fn verify_present(&self) -> usize {
        let cs = self.chunk_size;
        let (size, work): (u64, Vec<(u64, Option<ChunkId>)>) = {
            let inner = lock(&self.inner);
            let w = inner
                .st
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == ChunkState::Present)
                .map(|(i, _)| (i as u64, inner.ids[i]))
                .collect();
            (inner.size, w)
        };
        let mut bad = Vec::new();
        for (i, id) in work {
            let mut buf = vec![0u8; chunk_len(size, cs, i) as usize];
            let ok = read_full_at(&self.data, &mut buf, i * cs).is_ok()
                && match id {
                    Some(id) => id.verifies(&buf),
                    None => is_zero(&buf),
                };
            if !ok {
                bad.push(i);
            }
        }
        let mut inner = lock(&self.inner);
        for &i in &bad {
            inner.st[i as usize] = ChunkState::Dirty;
            inner.dirty.insert(i);
        }
        bad.len()
    }

    /// Moves an unchanged mirror to `version` of its volume: present chunks
    /// whose id differs there become absent.
    pub async fn rebase(&self, version: u64, pinned: bool) -> Result<(), MirrorError> {
        let name = self.name();
        let r = resolve_wanted(&self.repo, &name, Some(version)).await?;
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut inner = lock(&self.inner);
        if !inner.dirty.is_empty() || inner.st.contains(&ChunkState::Dirty) {
            return Err(MirrorError::Stale {
                name,
                version: inner.version,
            });
        }
        let n = chunk_count(r.size, r.chunk_size) as usize;
        let last_old =
            (!inner.size.is_multiple_of(self.chunk_size)).then(|| inner.size / self.chunk_size);
        for i in 0..inner.st.len().min(n) {
            let short_changed = last_old == Some(i as u64) && r.size != inner.size;
            if inner.ids[i] != r.chunks[i] || short_changed {
                inner.st[i] = ChunkState::Absent;
            }
        }
        inner.st.resize(n, ChunkState::Absent);
        inner.seen.resize(n, false);
        inner.ids = r.chunks;
        inner.ids.resize(n, None);
        self.data
            .set_len(r.size)
            .map_err(|e| MirrorError::io("resize", &self.dir().join("data"), e))?;
        inner.size = r.size;
        inner.base_size = r.size;
        inner.version = r.version;
        inner.pinned = pinned;
        inner.changed = true;
        tracing::info!(volume = %name, version = r.version, "mirror moved to a newer version");
        Ok(())
    }

    /// After a stop between publishing a version and saving the state map:
    /// the mirror holds changes on top of its version V while poold has a
    /// newer version W. When W differs from V only in chunks this mirror
    /// holds dirty (so W is this mirror's own publish, or indistinguishable
    /// from it), the mirror moves onto W: dirty chunks whose bytes equal W's
    /// become present, the others stay dirty. Returns false (and changes
    /// nothing) when W holds changes of someone else.
    pub(crate) async fn adopt_published(
        self: &Arc<Self>,
        latest: u64,
    ) -> Result<bool, MirrorError> {
        let name = self.name();
        let w: Resolved = self
            .repo
            .resolve(&name, latest)
            .await
            .map_err(|e| MirrorError::repo(&name, e))?;
        let cs = self.chunk_size;
        let (size, dirty) = {
            let inner = lock(&self.inner);
            let id_w = |i: usize| w.chunks.get(i).copied().flatten();
            let n = inner.st.len();
            let others = (0..n.max(w.chunks.len())).any(|i| {
                let local_dirty = i < n && inner.st[i] == ChunkState::Dirty;
                let id_v = if i < n { inner.ids[i] } else { None };
                !local_dirty && id_v != id_w(i)
            });
            if others || w.chunk_size as u64 != cs {
                return Ok(false);
            }
            let dirty: Vec<(u64, Option<ChunkId>)> = (0..n)
                .filter(|&i| inner.st[i] == ChunkState::Dirty)
                .map(|i| (i as u64, id_w(i)))
                .collect();
            (inner.size, dirty)
        };
        let m = self.clone();
        let same: Vec<u64> = tokio::task::spawn_blocking(move || {
            dirty
                .into_iter()
                .filter(|&(i, id)| {
                    let mut buf = vec![0u8; chunk_len(size, cs, i) as usize];
                    read_full_at(&m.data, &mut buf, i * cs).is_ok()
                        && match id {
                            Some(id) => id.verifies(&buf),
                            None => is_zero(&buf),
                        }
                })
                .map(|(i, _)| i)
                .collect()
        })
        .await
        .map_err(|e| {
            MirrorError::io(
                "verify",
                &self.dir().join("data"),
                std::io::Error::other(e.to_string()),
            )
        })?;
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut inner = lock(&self.inner);
        let n = inner.st.len();
        for &i in &same {
            inner.st[i as usize] = ChunkState::Present;
            inner.dirty.remove(&i);
        }
        inner.ids = w.chunks;
        inner.ids.resize(n, None);
        inner.version = w.version;
        inner.base_size = w.size;
        inner.pinned = false;
        inner.changed = true;
        Ok(true)
    }

    /// Drops local changes: dirty chunks become absent (refetched from the
    /// base version when read) and the size returns to the base size.
    pub async fn discard(&self) -> Result<(), MirrorError> {
        let (version, pinned) = {
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut inner = lock(&self.inner);
            for s in inner.st.iter_mut() {
                if *s == ChunkState::Dirty {
                    *s = ChunkState::Absent;
                }
            }
            inner.dirty.clear();
            inner.changed = true;
            (inner.version, inner.pinned)
        };
        self.rebase(version, pinned).await
    }
}
