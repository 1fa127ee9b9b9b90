//! Keeping the mount in step with poold: the background refresh of the
//! listing, the immediate one a CLI command on this host asks for, and what
//! each does to an attached mirror.
//!
//! For an attached mirror whose volume changed in poold:
//! * idle (no open file, no local change): it follows the latest version
//!   (unless attached at an older version on purpose), also when its base
//!   version was deleted; a deleted volume's mirror is dropped;
//! * open or holding changes: it stays on its version; a deleted volume or
//!   base version is recorded as the mirror's failure, which open files
//!   report at their next fsync or close and `mirror-status` shows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use blobvirt_core::proto as pb;

use super::{OpError, Volumes};
use crate::mirror::{lock, Mirror, MirrorError};

impl Volumes {
    /// Reloads the listing from poold: new volumes appear, deleted ones
    /// disappear (unless this node has them open), and attached mirrors
    /// follow their volumes (see the module doc).
    pub async fn refresh(&self) -> Result<(), MirrorError> {
        let gen = lock(&self.table).gen;
        let blobs = self
            .repo
            .list_blobs()
            .await
            .map_err(|e| MirrorError::repo("(listing)", e))?;
        let names: HashSet<&str> = blobs.iter().map(|b| b.name.as_str()).collect();
        let open: HashSet<String> = lock(&self.mirrors)
            .iter()
            .filter(|(_, m)| m.handles.load(Ordering::Relaxed) > 0)
            .map(|(n, _)| n.clone())
            .collect();
        let owners: Vec<_> = {
            let o = lock(&self.owners);
            blobs.iter().map(|b| o.get(&b.name, b.id)).collect()
        };
        {
            let mut t = lock(&self.table);
            // A change made here while the listing was on its way is newer
            // than the listing: apply it at the next refresh.
            if t.gen != gen {
                return Ok(());
            }
            for (b, o) in blobs.iter().zip(owners) {
                t.upsert(b, o);
            }
            t.entries
                .retain(|_, e| names.contains(e.name.as_str()) || open.contains(&e.name));
        }
        let by_name: HashMap<&str, &pb::BlobInfo> =
            blobs.iter().map(|b| (b.name.as_str(), b)).collect();
        for m in self.mirrors() {
            let b = by_name.get(m.name().as_str()).copied();
            self.reconcile(&m, b).await;
        }
        Ok(())
    }

    /// Brings volume `name` in step with poold now and makes the kernel
    /// drop what it cached of it: a change made on this host (import,
    /// clone, delete, revert) shows in the mount when the command returns.
    pub async fn sync_volume(&self, name: &str) -> Result<(), OpError> {
        let b = match self.repo.get_blob(name).await {
            Ok(b) => Some(b),
            Err(e) if e.code() == Some(tonic::Code::NotFound) => None,
            Err(e) => return Err(MirrorError::repo(name, e).into()),
        };
        match &b {
            Some(b) => {
                self.upsert(b);
            }
            None => {
                let open = self
                    .attached(name)
                    .is_some_and(|m| m.handles.load(Ordering::SeqCst) > 0);
                if !open {
                    lock(&self.table).remove(name);
                }
            }
        }
        if let Some(m) = self.attached(name) {
            self.reconcile(&m, b.as_ref()).await;
        }
        self.invalidate(name);
        Ok(())
    }

    /// Moves mirror `m` along with its volume `b` as poold has it (`None`:
    /// not listed).
    pub(crate) async fn reconcile(&self, m: &Arc<Mirror>, b: Option<&pb::BlobInfo>) {
        let name = m.name();
        let idle = m.handles.load(Ordering::SeqCst) == 0 && !m.has_changes();
        let Some(b) = b.filter(|b| b.id == m.blob_id()) else {
            // Ask again: the listing may predate a create on this node.
            let deleted = match self.repo.get_blob(&name).await {
                Ok(x) => x.id != m.blob_id(),
                Err(e) => e.code() == Some(tonic::Code::NotFound),
            };
            if !deleted {
                return;
            }
            if idle {
                let gone = {
                    let mut ms = lock(&self.mirrors);
                    let same = ms.get(&name).is_some_and(|x| Arc::ptr_eq(x, m));
                    same.then(|| ms.remove(&name)).flatten()
                };
                if let Some(g) = gone {
                    tracing::info!(volume = %name, "the volume was deleted; dropping its mirror");
                    let _ = std::fs::remove_dir_all(g.dir());
                }
            } else {
                m.mark_gone();
            }
            self.invalidate(&name);
            return;
        };
        let version = m.version();
        let base_exists = b.versions.iter().any(|v| v.version == version);
        let pinned = lock(&m.inner).pinned;
        let follow = !base_exists || (!pinned && b.latest_version > version);
        if !follow {
            return;
        }
        if idle {
            match m.rebase(b.latest_version, false).await {
                Ok(()) => self.invalidate(&name),
                Err(e) => {
                    tracing::warn!(volume = %name, "cannot move the mirror to the latest version: {e}")
                }
            }
        } else if !base_exists && m.has_changes() {
            let e = MirrorError::BaseGone { name, version };
            if m.last_failure().map(|f| f.msg) != Some(e.to_string()) {
                tracing::error!("{e}");
                m.fail(e.errno(), e.to_string());
            }
        }
    }

    /// `attach NAME` with no version: the latest version. A mirror that was
    /// attached at an older version moves to the latest when nothing is
    /// open; otherwise this is refused.
    pub async fn attach_latest(self: &Arc<Self>, name: &str) -> Result<Arc<Mirror>, OpError> {
        let m = self.mirror(name, None).await?;
        if !lock(&m.inner).pinned {
            return Ok(m);
        }
        if m.handles.load(Ordering::SeqCst) > 0 || m.has_changes() {
            return Err(OpError::new(
                libc::EBUSY,
                format!(
                    "volume {name} is attached at the older version {} and has open files; close them before attaching the latest version",
                    m.version()
                ),
            ));
        }
        let latest = self
            .repo
            .get_blob(name)
            .await
            .map_err(|e| MirrorError::repo(name, e))?
            .latest_version;
        m.rebase(latest, false).await?;
        self.invalidate(name);
        Ok(m)
    }
}
