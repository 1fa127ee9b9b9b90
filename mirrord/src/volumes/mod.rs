//! The volume table shared by the FUSE file system and the control API:
//! the listing of the repository (refreshed from poold), inode numbers,
//! attached mirrors, open handles, writer leases and close-to-open commits.
//! `sync.rs` keeps attached mirrors in step with poold, `files.rs` holds
//! the per-file operations (fsync/close, rename, fallocate), `owners.rs`
//! the persisted ownership and modes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blobvirt_core::proto as pb;
use blobvirt_core::Repo;

mod admin;
mod claim;
mod files;
mod owners;
mod profile;
mod sync;

pub use claim::{Claim, ClaimOutcome, UnclaimOutcome};

use crate::lease::{self, LeaseError};
use crate::mirror::{lock, Errno, Mirror, MirrorError, OnClose};

/// A volume as the file system shows it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub ino: u64,
    pub name: String,
    /// Size of the latest version (an attached mirror's own size wins).
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// An open file.
pub struct Handle {
    pub mirror: Arc<Mirror>,
    pub writable: bool,
    /// The mirror's failure sequence this file has reported up to (see
    /// [`crate::mirror::Failure`]).
    pub seen: AtomicU64,
    /// The process (thread group) that opened it: only its closes commit
    /// and report failures, not the close-on-exec of a child it forked.
    pub opener: u32,
}

#[derive(Default)]
struct Table {
    inos: HashMap<String, u64>,
    entries: HashMap<u64, Entry>,
    next_ino: u64,
    /// Bumped by every change made on this node (create, delete, rename,
    /// lookups and refreshes of one volume): a background listing that
    /// started before such a change is stale and is not applied.
    gen: u64,
}

impl Table {
    /// Records `b` (keeping its inode number), with the saved owner `o`.
    fn upsert(&mut self, b: &pb::BlobInfo, o: Option<owners::Owner>) -> Entry {
        let ino = match self.inos.get(&b.name) {
            Some(&i) => i,
            None => {
                let i = self.next_ino;
                self.next_ino += 1;
                self.inos.insert(b.name.clone(), i);
                i
            }
        };
        let mut e = entry_of(b, ino);
        if let Some(o) = o {
            (e.perm, e.uid, e.gid) = (o.perm, o.uid, o.gid);
        }
        self.entries.insert(ino, e.clone());
        e
    }

    /// Forgets volume `name` (a local change).
    fn remove(&mut self, name: &str) {
        if let Some(ino) = self.inos.get(name).copied() {
            self.entries.remove(&ino);
        }
        self.gen += 1;
    }

    /// Gives the entry of `name` the name `new`, keeping its inode number
    /// (the kernel keeps it for the renamed dentry).
    fn rename(&mut self, name: &str, new: &str) {
        if let Some(old) = self.inos.get(new).copied() {
            self.entries.remove(&old);
        }
        if let Some(ino) = self.inos.remove(name) {
            self.inos.insert(new.to_string(), ino);
            if let Some(e) = self.entries.get_mut(&ino) {
                e.name = new.to_string();
            }
        }
        self.gen += 1;
    }
}

/// Everything mirrord knows about volumes.
pub struct Volumes {
    /// The control plane: leases, rename, listing, profiles.
    pub repo: Repo,
    /// The mirrors' data path: the repository behind the host's chunk cache.
    data_repo: crate::mirror::SharedRepo,
    pub vols_dir: PathBuf,
    /// Lease holder name: `mirrord@HOST:MOUNT`.
    pub holder: String,
    table: Mutex<Table>,
    mirrors: Mutex<HashMap<String, Arc<Mirror>>>,
    attach_lock: tokio::sync::Mutex<()>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Volume name -> owner of its claim (see `claim.rs`).
    claims: Mutex<HashMap<String, String>>,
    owners: Mutex<owners::Owners>,
    /// Tells the kernel to drop cached attributes and pages (set once the
    /// file system is mounted).
    notifier: OnceLock<fuser::Notifier>,
    /// Daemon-wide counters every mirror adds to.
    pub metrics: crate::metrics::Metrics,
}

/// An error with the errno the file system answers and a sentence for logs
/// and the control API.
#[derive(Debug)]
pub struct OpError {
    pub errno: Errno,
    pub msg: String,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for OpError {}

impl From<MirrorError> for OpError {
    fn from(e: MirrorError) -> Self {
        OpError {
            errno: e.errno(),
            msg: e.to_string(),
        }
    }
}

impl From<LeaseError> for OpError {
    fn from(e: LeaseError) -> Self {
        let errno = match e {
            LeaseError::Held { .. } => libc::EBUSY,
            LeaseError::Pool { .. } => libc::EIO,
        };
        OpError {
            errno,
            msg: e.to_string(),
        }
    }
}

impl OpError {
    pub fn new(errno: Errno, msg: impl Into<String>) -> Self {
        OpError {
            errno,
            msg: msg.into(),
        }
    }
}

fn entry_of(b: &pb::BlobInfo, ino: u64) -> Entry {
    let latest = b.versions.iter().find(|v| v.version == b.latest_version);
    Entry {
        ino,
        name: b.name.clone(),
        size: latest.map_or(0, |v| v.size),
        mtime: UNIX_EPOCH + Duration::from_secs(latest.map_or(0, |v| v.created.max(0) as u64)),
        perm: crate::fs::access::FILE_MODE,
        uid: 0,
        gid: 0,
    }
}

impl Volumes {
    /// The table over the mirrors in `vols_dir`, which is made private to
    /// mirrord's user (it holds every mirrored volume's data).
    pub fn new(repo: Repo, vols_dir: PathBuf, holder: String, chunk_cache_bytes: u64) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o700);
        if let Err(e) = std::fs::set_permissions(&vols_dir, private) {
            tracing::error!(dir = %vols_dir.display(), "cannot make the mirror directory private (mode 0700), so local users may read mirrored volumes there: {e}; fix its owner or mode");
        }
        let owners_file = vols_dir.parent().unwrap_or(&vols_dir).join("owners.json");
        let metrics = crate::metrics::Metrics::default();
        Volumes {
            owners: Mutex::new(owners::Owners::load(owners_file)),
            notifier: OnceLock::new(),
            data_repo: std::sync::Arc::new(crate::chunk_cache::HostCache::new(
                repo.clone(),
                chunk_cache_bytes,
                metrics.clone(),
            )),
            metrics,
            repo,
            vols_dir,
            holder,
            table: Mutex::new(Table {
                next_ino: 2,
                ..Default::default()
            }),
            mirrors: Mutex::default(),
            attach_lock: tokio::sync::Mutex::new(()),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            claims: Mutex::default(),
        }
    }

    /// Records volume `b` as this node learned it (a local change).
    fn upsert(&self, b: &pb::BlobInfo) -> Entry {
        let o = lock(&self.owners).get(&b.name, b.id);
        let mut t = lock(&self.table);
        t.gen += 1;
        t.upsert(b, o)
    }

    /// Looks a volume up in poold (for names not listed yet).
    pub async fn fetch_entry(&self, name: &str) -> Result<Entry, MirrorError> {
        let b = self
            .repo
            .get_blob(name)
            .await
            .map_err(|e| MirrorError::repo(name, e))?;
        Ok(self.upsert(&b))
    }

    pub fn by_name(&self, name: &str) -> Option<Entry> {
        let t = lock(&self.table);
        t.inos.get(name).and_then(|i| t.entries.get(i)).cloned()
    }

    pub fn by_ino(&self, ino: u64) -> Option<Entry> {
        lock(&self.table).entries.get(&ino).cloned()
    }

    pub fn list(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = lock(&self.table).entries.values().cloned().collect();
        v.sort_by_key(|e| e.ino);
        v
    }

    /// Sets the mode and owner of a volume file and saves them (per host)
    /// for the next mirrord run.
    pub async fn set_owner(
        &self,
        ino: u64,
        perm: Option<u16>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), MirrorError> {
        if perm.is_none() && uid.is_none() && gid.is_none() {
            return Ok(());
        }
        let Some(name) = self.by_ino(ino).map(|e| e.name) else {
            return Ok(());
        };
        let blob_id = match self.attached(&name) {
            Some(m) => m.blob_id(),
            None => {
                self.repo
                    .get_blob(&name)
                    .await
                    .map_err(|e| MirrorError::repo(&name, e))?
                    .id
            }
        };
        let mut t = lock(&self.table);
        if let Some(e) = t.entries.get_mut(&ino) {
            e.perm = perm.unwrap_or(e.perm);
            e.uid = uid.unwrap_or(e.uid);
            e.gid = gid.unwrap_or(e.gid);
            let o = owners::Owner {
                blob_id,
                perm: e.perm,
                uid: e.uid,
                gid: e.gid,
            };
            lock(&self.owners).set(&name, o);
        }
        Ok(())
    }

    /// Hands the kernel notifier over once the file system is mounted.
    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Makes the kernel forget what it cached of `name` (attributes, pages
    /// and the directory entry), so a change shows at once. The kernel
    /// calls run on a thread of their own: a FUSE request that led here
    /// (an open, a rename) may hold the very locks they wait for until it
    /// is answered.
    pub(crate) fn invalidate(&self, name: &str) {
        let Some(n) = self.notifier.get().cloned() else {
            return;
        };
        let ino = lock(&self.table).inos.get(name).copied();
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name("fuse-inval".into())
            .spawn(move || {
                if let Some(ino) = ino {
                    let _ = n.inval_inode(fuser::INodeNo(ino), 0, 0);
                }
                let _ = n.inval_entry(fuser::INodeNo::ROOT, std::ffi::OsStr::new(&name));
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a thread to refresh the kernel's cache: {e}");
        }
    }

    pub fn attached(&self, name: &str) -> Option<Arc<Mirror>> {
        lock(&self.mirrors).get(name).cloned()
    }

    pub fn mirrors(&self) -> Vec<Arc<Mirror>> {
        lock(&self.mirrors).values().cloned().collect()
    }

    pub fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        lock(&self.handles).get(&fh).cloned()
    }

    /// The attached mirror of `name`, attaching it (and starting the boot
    /// prefetch) when needed.
    pub async fn mirror(
        self: &Arc<Self>,
        name: &str,
        version: Option<u64>,
    ) -> Result<Arc<Mirror>, OpError> {
        if let Some(m) = self.attached(name) {
            if let Some(v) = version.filter(|v| *v != m.version()) {
                if m.handles.load(Ordering::Relaxed) > 0 || m.has_changes() {
                    return Err(OpError::new(libc::EBUSY, format!("volume {name} is attached at version {} with open files or local changes; close and commit them before attaching version {v}", m.version())));
                }
                m.rebase(v, true).await?;
            }
            return Ok(m);
        }
        let _a = self.attach_lock.lock().await;
        if let Some(m) = self.attached(name) {
            return Ok(m);
        }
        let m = Mirror::attach_metered(
            &self.data_repo,
            &self.vols_dir,
            name,
            version,
            self.metrics.clone(),
        )
        .await?;
        lock(&self.mirrors).insert(name.to_string(), m.clone());
        tracing::info!(volume = name, version = m.version(), "attached");
        let me = self.clone();
        let mm = m.clone();
        tokio::spawn(async move {
            let n = me.prefetch(&mm, false).await;
            if n > 0 {
                tracing::info!(volume = %mm.name(), chunks = n, "prefetching the boot profile");
            }
        });
        Ok(m)
    }

    /// Opens volume `name`; a writable open takes the writer lease.
    /// `pid` is the opening thread's (as FUSE gives it).
    pub async fn open(
        self: &Arc<Self>,
        name: &str,
        writable: bool,
        pid: u32,
    ) -> Result<(u64, Arc<Mirror>), OpError> {
        let mut m = self.mirror(name, None).await?;
        if m.handles.load(Ordering::SeqCst) == 0 && !m.has_changes() {
            // Follow the volume: a newer or deleted version, or a volume
            // deleted and made again elsewhere (then start a new mirror).
            if let Ok(b) = self.repo.get_blob(name).await {
                self.reconcile(&m, Some(&b)).await;
                if !self.attached(name).is_some_and(|x| Arc::ptr_eq(&x, &m)) {
                    m = self.mirror(name, None).await?;
                }
            }
        }
        if writable {
            if m.is_gone() {
                return Err(MirrorError::Gone { name: name.into() }.into());
            }
            if lock(&m.inner).pinned {
                return Err(OpError::new(libc::EROFS, format!("volume {name} is attached at the older version {}; attach the latest version to write", m.version())));
            }
            let mut l = m.lease.lock().await;
            if l.is_none() {
                *l = Some(lease::acquire(&self.repo, name, &self.holder).await?);
            }
            m.writers.fetch_add(1, Ordering::SeqCst);
        }
        m.handles.fetch_add(1, Ordering::SeqCst);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Arc::new(Handle {
                mirror: m.clone(),
                writable,
                seen: AtomicU64::new(m.error_seq()),
                opener: files::tgid(pid),
            }),
        );
        Ok((fh, m))
    }

    /// Closes a handle. The last writer's close commits (or keeps or
    /// discards) the changes per policy and then gives the lease back.
    pub fn release(self: &Arc<Self>, fh: u64) {
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return;
        };
        let m = h.mirror.clone();
        let last = m.handles.fetch_sub(1, Ordering::SeqCst) == 1;
        let last_writer = h.writable && m.writers.fetch_sub(1, Ordering::SeqCst) == 1;
        let me = self.clone();
        if last_writer {
            tokio::spawn(async move { me.close_writer(&m).await });
        } else if last {
            tokio::spawn(async move { me.save_profile(&m).await });
        }
    }

    async fn close_writer(&self, m: &Arc<Mirror>) {
        let name = m.name();
        match m.policy() {
            OnClose::Commit => match m.commit().await {
                Ok(o) if o.published => {
                    tracing::info!(volume = %name, version = o.version, "close-to-open commit done")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(volume = %name, "close-to-open commit failed; the changes stay in the local mirror: {e}")
                }
            },
            OnClose::Keep => {}
            OnClose::Discard => {
                if let Err(e) = m.discard().await {
                    tracing::error!(volume = %name, "cannot discard local changes: {e}");
                }
            }
        }
        if let Err(e) = m.flush_state(false) {
            tracing::error!(volume = %name, "cannot save the mirror state: {e}");
        }
        self.release_idle_lease(m).await;
        self.save_profile(m).await;
    }

    /// Gives the writer lease back when no file writes the volume and no
    /// claim holds it. With policy `commit`, changes that could not be
    /// committed keep the lease, so nobody else writes on top of an older
    /// version and `vol-delete` names this host; a later successful
    /// `commit` gives it back.
    pub(crate) async fn release_idle_lease(&self, m: &Arc<Mirror>) {
        let name = m.name();
        let mut l = m.lease.lock().await;
        // A claimed volume keeps its lease until unclaim.
        if m.writers.load(Ordering::SeqCst) > 0 || self.claim_owner(&name).is_some() {
            return;
        }
        let owed = m.policy() == OnClose::Commit && m.has_changes() && !m.is_gone();
        if owed {
            if l.is_some() {
                tracing::warn!(volume = %name, "keeping the writer lease: the volume has changes that are not committed yet; commit them with blobvirt commit {name}");
            }
        } else if let Some(lease) = l.take() {
            lease.release().await;
        }
    }
}
