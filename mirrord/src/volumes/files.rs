//! Operations on open volume files and names that need more than the
//! mirror: fsync and close (with the close-to-open commit and failure
//! reports), `fallocate`, and renaming a volume through the mount.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Handle, OpError, Volumes};
use crate::mirror::{lock, Errno, OnClose};

/// How long a close waits for its commit. The kernel sends FUSE `flush`
/// uninterruptibly, even for a SIGKILLed process, and libvirt gives QEMU
/// about 15 s to die: a longer commit goes on in the background (its
/// failure then shows in `mirror-status` and keeps the lease).
const CLOSE_COMMIT_WAIT: Duration = Duration::from_secs(5);

impl Volumes {
    /// fsync (`closing: false`) or close (`closing: true`, FUSE `flush`) of
    /// handle `fh`. Makes the written data and the chunk-state map durable.
    /// At the close of the last writable file, with policy `commit`, it
    /// also commits, so `close` returns the commit's errno when it fails.
    /// A failure of the mirror newer than what this file reported (a
    /// background commit, a deleted volume) is returned once. `pid` is the
    /// calling thread's: a close by another process than the opener (a
    /// forked child's close-on-exec) does nothing.
    pub async fn sync_handle(&self, fh: u64, closing: bool, pid: u32) -> Result<(), OpError> {
        let Some(h) = self.handle(fh) else {
            return Ok(());
        };
        if !h.writable || (closing && tgid(pid) != h.opener) {
            return Ok(());
        }
        let m = h.mirror.clone();
        if closing
            && m.writers.load(Ordering::SeqCst) == 1
            && m.policy() == OnClose::Commit
            && m.has_changes()
            && !m.is_gone()
        {
            let mm = m.clone();
            let mut commit = tokio::spawn(async move { mm.commit().await });
            match tokio::time::timeout(CLOSE_COMMIT_WAIT, &mut commit).await {
                Ok(Ok(Err(e))) => {
                    h.seen.store(m.error_seq(), Ordering::SeqCst);
                    tracing::error!(volume = %m.name(), "the commit at close failed; the changes stay in the local mirror: {e}");
                    return Err(e.into());
                }
                Ok(Ok(Ok(_))) => {}
                Ok(Err(e)) => {
                    return Err(OpError::new(
                        libc::EIO,
                        format!("the commit at close of volume {} failed: {e}", m.name()),
                    ));
                }
                Err(_) => {
                    tracing::info!(volume = %m.name(), "the commit at close goes on in the background");
                }
            }
        }
        let mm = m.clone();
        tokio::task::spawn_blocking(move || mm.flush_state(false))
            .await
            .map_err(|e| OpError::new(libc::EIO, format!("the fsync task failed: {e}")))??;
        report(&h)
    }

    /// `fallocate` on handle `fh`. The default mode and `ZERO_RANGE`
    /// without `KEEP_SIZE` grow the file when the range ends past it, as
    /// on any file system; `PUNCH_HOLE` keeps the size.
    pub async fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let h = self.handle(fh).ok_or(libc::EBADF)?;
        if !h.writable {
            return Err(libc::EBADF);
        }
        let m = &h.mirror;
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let known = keep | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        if m.is_gone() {
            return Err(libc::ESTALE);
        }
        let end = off.checked_add(len).ok_or(libc::EFBIG)?;
        if mode & keep == 0 && end > m.size() {
            m.grow(end).await.map_err(|e| e.errno())?;
        }
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            m.punch(off, len).await?;
        }
        Ok(())
    }

    /// Renames volume `name` to `new` (`mv` in the mount). Refused while
    /// the volume is open or claimed on this node, while a writer anywhere
    /// holds its lease, and when `new` exists (no volume is replaced).
    pub async fn rename(&self, name: &str, new: &str) -> Result<(), OpError> {
        if name == new {
            return Ok(());
        }
        if let Some(m) = self.attached(name) {
            if m.handles.load(Ordering::SeqCst) > 0 {
                return Err(OpError::new(
                    libc::EBUSY,
                    format!("volume {name} is open on this node; close it before renaming it"),
                ));
            }
        }
        if let Some(o) = self.claim_owner(name) {
            return Err(OpError::new(
                libc::EBUSY,
                format!("volume {name} is claimed by {o}; stop {o} before renaming it"),
            ));
        }
        let b = self.repo.rename(name, new).await.map_err(|e| {
            let errno = match e.code() {
                Some(tonic::Code::NotFound) => libc::ENOENT,
                Some(tonic::Code::AlreadyExists) => libc::EEXIST,
                Some(tonic::Code::FailedPrecondition) => libc::EBUSY,
                Some(tonic::Code::InvalidArgument) => libc::EINVAL,
                _ => libc::EIO,
            };
            OpError::new(errno, e.to_string())
        })?;
        let moved = lock(&self.mirrors).remove(name);
        if let Some(m) = moved {
            let res = m.move_to(&self.vols_dir, new);
            let key = if res.is_ok() { new } else { name };
            lock(&self.mirrors).insert(key.to_string(), m);
            res?;
        }
        lock(&self.owners).rename(name, new);
        lock(&self.table).rename(name, new);
        self.upsert(&b);
        self.invalidate(name);
        tracing::info!(volume = name, new_name = new, "renamed");
        Ok(())
    }
}

/// The thread group (process) of thread `pid`, from `/proc`; `pid` itself
/// when it cannot be read.
pub(crate) fn tgid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(pid)
}

/// The handle's unreported failure, if any (then marked reported).
fn report(h: &Arc<Handle>) -> Result<(), OpError> {
    match h.mirror.error_since(h.seen.load(Ordering::SeqCst)) {
        Some(f) => {
            h.seen.store(f.seq, Ordering::SeqCst);
            Err(OpError::new(f.errno, f.msg))
        }
        None => Ok(()),
    }
}
