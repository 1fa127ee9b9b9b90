//! Volume administration through the mount and the control API: detach,
//! create, unlink, CLONE, resize, and the SIGTERM shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blobvirt_core::chunk::DEFAULT_CHUNK_SIZE;
use blobvirt_core::proto as pb;

use super::{Entry, OpError, Volumes};
use crate::lease;
use crate::mirror::{lock, MirrorError, OnClose};

impl Volumes {
    /// Stops mirroring `name` (no open files allowed): saves the profile
    /// and a clean state; the cache stays for the next attach. A mirror
    /// with uncommitted changes is detached only with `discard`, which
    /// throws the changes and the cache away.
    pub async fn detach(&self, name: &str, discard: bool) -> Result<(), OpError> {
        let m = self
            .attached(name)
            .ok_or_else(|| OpError::new(libc::ENOENT, format!("volume {name} is not attached; see the attached volumes with blobvirt mirror-status")))?;
        if m.handles.load(Ordering::SeqCst) > 0 {
            return Err(OpError::new(libc::EBUSY, format!("volume {name} is still open on this node; close it (stop the domain) before detaching")));
        }
        if let Some(o) = self.claim_owner(name) {
            return Err(OpError::new(
                libc::EBUSY,
                format!(
                    "volume {name} is claimed by {o}; stop {o} (or unclaim it) before detaching"
                ),
            ));
        }
        m.wait_commit().await.ok();
        if m.has_changes() && !discard {
            let dirty = m.status().chunks_dirty;
            return Err(OpError::new(libc::EBUSY, format!("volume {name} has uncommitted changes ({dirty} chunks); commit them with blobvirt commit {name}, or drop them with blobvirt detach --discard {name}")));
        }
        if !m.is_gone() {
            self.save_profile(&m).await;
        }
        if let Some(l) = m.lease.lock().await.take() {
            l.release().await;
        }
        if discard {
            lock(&self.mirrors).remove(name);
            let _ = std::fs::remove_dir_all(m.dir());
            tracing::warn!(volume = name, "detached; local changes discarded");
        } else {
            m.flush_state(true)?;
            lock(&self.mirrors).remove(name);
            tracing::info!(volume = name, "detached");
        }
        if m.is_gone() {
            // Its name was kept in the listing only while it was open.
            lock(&self.table).remove(name);
        }
        self.invalidate(name);
        Ok(())
    }

    /// Creates an empty volume (size 0, default chunk size) whose file has
    /// `owner` = (mode, uid, gid) on this host.
    pub async fn create(&self, name: &str, owner: (u16, u32, u32)) -> Result<Entry, OpError> {
        let req = pb::PublishRequest {
            name: name.into(),
            create: true,
            chunk_size: DEFAULT_CHUNK_SIZE,
            base_version: 0,
            size: 0,
            changes: vec![],
            label: String::new(),
            gc_epoch: self.repo.gc_epoch(),
            request_id: Default::default(),
        };
        self.repo
            .publish(req)
            .await
            .map_err(|e| MirrorError::repo(name, e))?;
        let b = self
            .repo
            .get_blob(name)
            .await
            .map_err(|e| MirrorError::repo(name, e))?;
        let (perm, uid, gid) = owner;
        let o = super::owners::Owner {
            blob_id: b.id,
            perm,
            uid,
            gid,
        };
        lock(&self.owners).set(name, o);
        Ok(self.upsert(&b))
    }

    /// Deletes volume `name` from the repository and its local mirror.
    pub async fn unlink(&self, name: &str) -> Result<(), OpError> {
        if let Some(m) = self.attached(name) {
            if m.handles.load(Ordering::SeqCst) > 0 {
                return Err(OpError::new(
                    libc::EBUSY,
                    format!("volume {name} is open on this node; close it before deleting it"),
                ));
            }
            // A close that just committed may still hold the writer lease,
            // which poold would take for a writer elsewhere: give it back.
            self.release_idle_lease(&m).await;
        }
        self.repo
            .delete(name, 0)
            .await
            .map_err(|e| MirrorError::repo(name, e))?;
        if let Some(m) = lock(&self.mirrors).remove(name) {
            let _ = std::fs::remove_dir_all(m.dir());
        }
        lock(&self.owners).remove(name);
        lock(&self.table).remove(name);
        Ok(())
    }

    /// CLONE: the mirror of `name` continues as the new volume `new`.
    pub async fn clone_volume(self: &Arc<Self>, name: &str, new: &str) -> Result<u64, OpError> {
        let m = self.mirror(name, None).await?;
        let mut l = m.lease.lock().await;
        let out = m.clone_to(&self.vols_dir, new).await;
        {
            let mut ms = lock(&self.mirrors);
            if ms.get(name).is_some_and(|x| Arc::ptr_eq(x, &m)) && m.name() == new {
                ms.remove(name);
                ms.insert(new.to_string(), m.clone());
            }
        }
        // Writers go on writing into the clone: move the lease over.
        if m.name() == new && l.is_some() {
            match lease::acquire(&self.repo, new, &self.holder).await {
                Ok(nl) => {
                    if let Some(old) = l.replace(nl) {
                        old.release().await;
                    }
                }
                Err(e) => tracing::error!(
                    volume = new,
                    "cannot take the writer lease of the clone: {e}"
                ),
            }
        }
        drop(l);
        let _ = self.fetch_entry(new).await;
        let _ = self.fetch_entry(name).await;
        Ok(out?.version)
    }

    /// Sets the size of `name` and publishes it at once (with any other
    /// local changes), taking the writer lease for the duration if no
    /// writer holds it.
    pub async fn set_size(self: &Arc<Self>, name: &str, size: u64) -> Result<Entry, OpError> {
        let m = self.mirror(name, None).await?;
        let l = m.lease.lock().await;
        let temp = if l.is_none() {
            Some(lease::acquire(&self.repo, name, &self.holder).await?)
        } else {
            None
        };
        let res = async {
            m.resize(size).await?;
            m.commit().await
        }
        .await;
        if let Some(t) = temp {
            t.release().await;
        }
        drop(l);
        res?;
        let e = self.fetch_entry(name).await?;
        Ok(e)
    }

    /// SIGTERM: commit or keep per policy, save clean states, release leases.
    pub async fn shutdown(&self) {
        for m in self.mirrors() {
            let name = m.name();
            if m.policy() == OnClose::Commit && m.has_changes() {
                match m.commit().await {
                    Ok(o) => {
                        tracing::info!(volume = %name, version = o.version, "committed at shutdown")
                    }
                    Err(e) => {
                        tracing::error!(volume = %name, "commit at shutdown failed; the changes stay in the local mirror: {e}")
                    }
                }
            }
            let _ = m.wait_commit().await;
            self.save_profile(&m).await;
            if let Err(e) = m.flush_state(true) {
                tracing::error!(volume = %name, "cannot save the mirror state: {e}");
            }
            if let Some(l) = m.lease.lock().await.take() {
                l.release().await;
            }
        }
    }
}
