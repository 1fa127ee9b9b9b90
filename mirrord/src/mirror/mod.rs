//! One local mirror of a volume: a sparse data file and a chunk-state map in
//! `CACHE/vols/NAME/`, the base version's chunk map, and the bookkeeping that
//! the read/write path (`io`), COMMIT/CLONE (`commit`) and attach/restart
//! (`attach`) share.
//!
//! Concurrency model:
//! * `inner` (a short-held mutex) owns the chunk states, the base chunk map,
//!   the dirty set and the in-flight fetch map. Little I/O is done under it:
//!   zeroing a hole chunk that a write only partly covers, and the rare
//!   operations that change the data file's shape or place (resize, the
//!   directory rename of a CLONE or rename, `SEEK_DATA` probes of local
//!   chunks). Reads, writes, fetches and hashing never hold it.
//! * `gate` is held shared by every local write for the whole
//!   check-mark-write sequence, and exclusively by COMMIT phase 1 (and
//!   resize/rebase), so phase 1 sees no half-done write.
//! * `shadow` holds the chunks frozen by phase 1 that phase 2 has not read
//!   yet, and the copies writers made of them before overwriting them.
//! * a fetch is one [`Fetch`] per chunk in `inner.inflight`: every reader of
//!   the chunk awaits the same cell, so each chunk is fetched once. The
//!   readers are answered from the fetched bytes as soon as they arrive;
//!   the copy into the data file is written in the background, and the
//!   entry stays in `inflight` until it is, so writers (and anything that
//!   needs the chunk in the data file) wait for the store, never readers.
//! * `ra` detects sequential streams and fetches ahead of them (`readahead`).

mod attach;
mod commit;
mod io;
mod readahead;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_faults;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use blobvirt_core::{ChunkId, RepoError, Repository};
use bytes::Bytes;

use crate::statemap::{ChunkState, StateError, StateMap};

pub use mirrord_client::{CommitOutcome, OnClose, VolumeStatus};

/// The largest volume a mirror grows to (16 TiB): writes past it fail
/// with `EFBIG`.
pub const MAX_SIZE: u64 = 16 << 40;

/// An errno value (`libc::E*`) for the FUSE layer.
pub type Errno = i32;

/// What one fetch produced: `None` when the chunk was local already, the
/// fetched bytes (being stored in the data file in the background, or not
/// storable: cache disk full), an errno on failure.
type Fetched = Result<Option<Bytes>, Errno>;

/// One chunk's fetch: the result readers share, and whether the fetched
/// bytes have reached the data file (or failed to) and the entry left
/// `inflight`.
#[derive(Default)]
pub(crate) struct Fetch {
    pub(crate) cell: tokio::sync::OnceCell<Fetched>,
    stored: tokio::sync::watch::Sender<bool>,
}

impl Fetch {
    /// Returns once the fetch is over and its bytes are in the data file
    /// (or could not be written there).
    pub(crate) async fn stored(&self) {
        let mut rx = self.stored.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    fn done(&self) {
        self.stored.send_replace(true);
    }
}

/// Errors of mirror operations.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("volume {0} does not exist; list volumes with blobvirt vol-list")]
    UnknownVolume(String),
    #[error(
        "volume {name} has no version {version}; list its versions with blobvirt vol-info {name}"
    )]
    NoVersion { name: String, version: u64 },
    #[error("volume {0} already exists; pick another name")]
    Exists(String),
    #[error("volume {name}: {source}")]
    Repo {
        name: String,
        #[source]
        source: RepoError,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {name} has a newer version than {version} made elsewhere, and this mirror holds uncommitted changes based on {version}; save them as a new volume with blobvirt clone {name} NEWNAME, or drop them with blobvirt detach --discard {name}")]
    Stale { name: String, version: u64 },
    #[error("version {version} of volume {name} was deleted while this mirror held uncommitted changes based on it; copy the mounted file elsewhere if you need them, then drop them with blobvirt detach --discard {name}")]
    BaseGone { name: String, version: u64 },
    #[error("volume {name} was deleted while this node had it open or held uncommitted changes of it; those changes cannot be published; copy the mounted file elsewhere if you need them, then drop them with blobvirt detach --discard {name}")]
    Gone { name: String },
    /// A commit failed earlier (in the background or at close); `errno`
    /// is the one the failure had.
    #[error("volume {name}: the last commit failed: {msg}")]
    CommitFailed {
        name: String,
        errno: Errno,
        msg: String,
    },
    #[error("volume {name}: {source}")]
    Publish {
        name: String,
        #[source]
        source: blobvirt_core::publish::PublishError<std::io::Error>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("volume {name}: {msg}")]
    Invalid { name: String, msg: String },
}

impl MirrorError {
    pub fn errno(&self) -> Errno {
        match self {
            MirrorError::UnknownVolume(_) | MirrorError::NoVersion { .. } => libc::ENOENT,
            MirrorError::Exists(_) => libc::EEXIST,
            MirrorError::Repo { source, .. } => match source.code() {
                Some(tonic::Code::NotFound) => libc::ENOENT,
                Some(tonic::Code::AlreadyExists) => libc::EEXIST,
                Some(tonic::Code::InvalidArgument) => libc::EINVAL,
                Some(tonic::Code::FailedPrecondition) => libc::ESTALE,
                _ => libc::EIO,
            },
            MirrorError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            MirrorError::Stale { .. } | MirrorError::BaseGone { .. } | MirrorError::Gone { .. } => {
                libc::ESTALE
            }
            MirrorError::CommitFailed { errno, .. } => *errno,
            MirrorError::State(_) | MirrorError::Publish { .. } => libc::EIO,
            MirrorError::Invalid { .. } => libc::EINVAL,
        }
    }

    pub(crate) fn repo(name: &str, source: RepoError) -> Self {
        if source.code() == Some(tonic::Code::NotFound) {
            return MirrorError::UnknownVolume(name.to_string());
        }
        MirrorError::Repo {
            name: name.to_string(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        MirrorError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Counters shown by `status`.
#[derive(Default, Debug)]
pub struct Stats {
    pub bytes_fetched: AtomicU64,
    pub fetches: AtomicU64,
    pub bytes_committed: AtomicU64,
    pub prefetched: AtomicU64,
    /// Chunks fetched by sequential read-ahead.
    pub readahead: AtomicU64,
    pub last_freeze_us: AtomicU64,
    pub commits: AtomicU64,
    /// Frozen chunks copied aside because a write hit them during phase 2.
    pub cow_copies: AtomicU64,
    /// Commits that failed.
    pub commit_failures: AtomicU64,
}

/// A failed commit or a lost volume. It stays until the next successful
/// commit, and each open file reports it once, at its next fsync or close
/// (as Linux reports writeback errors with `errseq_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Increases with every failure of this mirror.
    pub seq: u64,
    pub errno: Errno,
    pub msg: String,
}

pub(crate) struct Inner {
    pub(crate) blob_id: u64,
    pub(crate) version: u64,
    /// Size of the base version (a commit is needed when `size` differs).
    pub(crate) base_size: u64,
    /// Current size of the mirror.
    pub(crate) size: u64,
    /// Attached at an explicit older version: no automatic rebase.
    pub(crate) pinned: bool,
    /// Chunk map of the base version, extended with holes to `size`.
    pub(crate) ids: Vec<Option<ChunkId>>,
    pub(crate) st: Vec<ChunkState>,
    /// Chunks written since the last COMMIT phase 1.
    pub(crate) dirty: BTreeSet<u64>,
    pub(crate) inflight: HashMap<u64, Arc<Fetch>>,
    /// The state map changed since it was last written.
    pub(crate) changed: bool,
    /// First-read order since attach (boot profile).
    pub(crate) seen: Vec<bool>,
    pub(crate) order: Vec<u64>,
    pub(crate) profile_saved_len: usize,
}

#[derive(Default)]
pub(crate) struct Shadow {
    /// Frozen chunks phase 2 has not read yet.
    pub(crate) frozen: HashSet<u64>,
    /// Size of the volume at phase 1.
    pub(crate) size: u64,
    /// Phase-1 content of frozen chunks that were overwritten since.
    pub(crate) copies: HashMap<u64, Bytes>,
}

/// The repository a mirror reads from and publishes to: [`blobvirt_core::Repo`]
/// in the daemon, a wrapper around it in tests that inject faults.
pub type SharedRepo = Arc<dyn Repository>;

/// A mirrored volume.
pub struct Mirror {
    repo: SharedRepo,
    name: RwLock<String>,
    dir: RwLock<PathBuf>,
    data: File,
    chunk_size: u64,
    pub(crate) inner: Mutex<Inner>,
    gate: RwLock<()>,
    shadow: Mutex<Shadow>,
    commit_lock: Arc<tokio::sync::Mutex<()>>,
    flush_lock: Mutex<()>,
    /// Held by each background store of a fetched chunk into `data`: the
    /// stores queue here, asleep, instead of spinning on the data file's
    /// inode lock in the kernel (ext4 takes it for every buffered write).
    store_lock: Mutex<()>,
    pub stats: Stats,
    /// The daemon-wide counters (shared by every mirror).
    pub(crate) metrics: crate::metrics::Metrics,
    /// On-demand fetches being awaited (prefetch yields to them).
    demand: AtomicUsize,
    /// Sequential read-ahead.
    ra: readahead::ReadAhead,
    pub(crate) policy: Mutex<OnClose>,
    pub(crate) last_error: Mutex<Option<Failure>>,
    err_seq: AtomicU64,
    /// The volume was deleted while this mirror had open files or changes.
    gone: AtomicBool,
    /// Open FUSE handles and writable ones (maintained by the volume table).
    pub(crate) handles: AtomicU64,
    pub(crate) writers: AtomicU64,
    /// Serialises lease acquisition and release for this volume.
    pub(crate) lease: tokio::sync::Mutex<Option<crate::lease::Lease>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Length of chunk `i` of a volume of `size` bytes.
pub(crate) fn chunk_len(size: u64, cs: u64, i: u64) -> u64 {
    cs.min(size.saturating_sub(i * cs))
}

impl Mirror {
    pub fn name(&self) -> String {
        self.name.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn size(&self) -> u64 {
        lock(&self.inner).size
    }

    pub fn version(&self) -> u64 {
        lock(&self.inner).version
    }

    pub fn blob_id(&self) -> u64 {
        lock(&self.inner).blob_id
    }

    pub fn policy(&self) -> OnClose {
        *lock(&self.policy)
    }

    pub fn set_policy(&self, p: OnClose) {
        *lock(&self.policy) = p;
    }

    /// True when local changes exist that no version holds yet.
    pub fn has_changes(&self) -> bool {
        let i = lock(&self.inner);
        !i.dirty.is_empty() || i.st.contains(&ChunkState::Dirty) || i.size != i.base_size
    }

    /// Allocated size in 512-byte blocks (chunks that are not holes).
    pub fn blocks(&self) -> u64 {
        let i = lock(&self.inner);
        let n =
            i.st.iter()
                .zip(&i.ids)
                .filter(|(s, id)| s.is_local() || id.is_some())
                .count() as u64;
        (n * self.chunk_size).min(i.size.div_ceil(512) * 512) / 512
    }

    pub fn status(&self) -> VolumeStatus {
        let i = lock(&self.inner);
        let s = &self.stats;
        VolumeStatus {
            name: self.name(),
            version: i.version,
            size: i.size,
            chunk_size: self.chunk_size as u32,
            chunks: i.st.len() as u64,
            chunks_present: i.st.iter().filter(|s| s.is_local()).count() as u64,
            chunks_dirty: i.st.iter().filter(|s| **s == ChunkState::Dirty).count() as u64,
            bytes_fetched: s.bytes_fetched.load(Ordering::Relaxed),
            bytes_committed: s.bytes_committed.load(Ordering::Relaxed),
            fetches: s.fetches.load(Ordering::Relaxed),
            prefetched: s.prefetched.load(Ordering::Relaxed),
            readahead: s.readahead.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            cow_copies: s.cow_copies.load(Ordering::Relaxed),
            last_freeze_us: s.last_freeze_us.load(Ordering::Relaxed),
            open_handles: self.handles.load(Ordering::Relaxed),
            writers: self.writers.load(Ordering::Relaxed),
            on_close: self.policy(),
            last_error: lock(&self.last_error).as_ref().map(|f| f.msg.clone()),
            commit_failures: s.commit_failures.load(Ordering::Relaxed),
        }
    }

    /// Records a failure that open files report at their next fsync/close.
    pub(crate) fn fail(&self, errno: Errno, msg: String) {
        let seq = self.err_seq.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.last_error) = Some(Failure { seq, errno, msg });
    }

    /// The sequence number of the newest failure (0: none yet); an open file
    /// remembers it and reports only newer failures.
    pub fn error_seq(&self) -> u64 {
        self.err_seq.load(Ordering::SeqCst)
    }

    /// The current failure if it is newer than `seen`.
    pub fn error_since(&self, seen: u64) -> Option<Failure> {
        lock(&self.last_error).clone().filter(|f| f.seq > seen)
    }

    /// The current failure, if any.
    pub fn last_failure(&self) -> Option<Failure> {
        lock(&self.last_error).clone()
    }

    /// Marks the volume as deleted under this mirror: writes fail with
    /// `ESTALE` and open files report it at their next fsync or close.
    pub(crate) fn mark_gone(&self) {
        if !self.gone.swap(true, Ordering::SeqCst) {
            let e = MirrorError::Gone { name: self.name() };
            tracing::error!("{e}");
            self.fail(libc::ESTALE, e.to_string());
        }
    }

    /// True once the volume was deleted under this mirror.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Makes the data file and then the state map durable. With `clean`,
    /// marks the map as written at a clean shutdown (no verify on restart).
    pub fn flush_state(&self, clean: bool) -> Result<(), MirrorError> {
        let _f = lock(&self.flush_lock);
        let map = {
            let mut i = lock(&self.inner);
            i.changed = false;
            StateMap {
                clean,
                chunk_size: self.chunk_size as u32,
                blob_id: i.blob_id,
                version: i.version,
                size: i.size,
                name: self.name(),
                states: i.st.clone(),
            }
        };
        let dir = self.dir();
        let res = self
            .data
            .sync_data()
            .map_err(|e| MirrorError::io("sync", &dir.join("data"), e))
            .and_then(|_| {
                map.write(&dir.join("state"))
                    .map_err(|e| MirrorError::io("write", &dir.join("state"), e))
            });
        if res.is_err() {
            lock(&self.inner).changed = true;
        }
        res
    }

    /// Flushes the state map if it changed since the last flush.
    pub fn flush_if_changed(&self) -> Result<(), MirrorError> {
        if lock(&self.inner).changed {
            self.flush_state(false)
        } else {
            Ok(())
        }
    }

    /// The recorded first-read order, if it grew since the last call.
    pub(crate) fn take_profile(&self) -> Option<Vec<u64>> {
        let mut i = lock(&self.inner);
        if i.order.len() > i.profile_saved_len {
            i.profile_saved_len = i.order.len();
            Some(i.order.clone())
        } else {
            None
        }
    }
}
