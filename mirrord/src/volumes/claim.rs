//! Claims: a volume reserved for one owner on this node (the libvirt hook
//! claims a domain's writable disks for the domain from `prepare` to
//! `release`). A claim holds the volume's writer lease from poold, so a
//! domain on another node is refused at start time too, and gives it back
//! in `unclaim` only after the close-to-open commit. Claims live in memory:
//! after a mirrord restart the hook's `reconnect` claims again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{OpError, Volumes};
use crate::lease;
use crate::mirror::{lock, OnClose};
pub use mirrord_client::{Claim, ClaimOutcome, UnclaimOutcome};

/// How long `unclaim` waits for the owner's files to close (FUSE delivers
/// the last close of a QEMU process asynchronously).
const CLOSE_WAIT: Duration = Duration::from_secs(30);

fn busy(name: &str, owner: &str) -> OpError {
    OpError::new(
        libc::EBUSY,
        format!("volume {name} is in use by {owner} on this node; stop {owner} first or give this one another volume"),
    )
}

impl Volumes {
    /// The owner of `name`'s claim.
    pub fn claim_owner(&self, name: &str) -> Option<String> {
        lock(&self.claims).get(name).cloned()
    }

    /// Every claim, sorted by volume.
    pub fn claim_list(&self) -> Vec<Claim> {
        let mut v: Vec<Claim> = lock(&self.claims)
            .iter()
            .map(|(n, o)| Claim {
                name: n.clone(),
                owner: o.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Claims `name` for `owner`: attaches it (the volume must exist) and
    /// takes its writer lease. Idempotent for the same owner.
    pub async fn claim(self: &Arc<Self>, name: &str, owner: &str) -> Result<ClaimOutcome, OpError> {
        if owner.is_empty() {
            return Err(OpError::new(
                libc::EINVAL,
                format!("a claim of volume {name} needs an owner; pass the domain name"),
            ));
        }
        if let Some(o) = self.claim_owner(name).filter(|o| o != owner) {
            return Err(busy(name, &o));
        }
        let m = self.mirror(name, None).await?;
        if lock(&m.inner).pinned {
            return Err(OpError::new(libc::EROFS, format!("volume {name} is attached at the older version {}; attach its latest version before starting a domain on it", m.version())));
        }
        // Claims are changed only under the lease lock: no race between
        // two claimers of the same volume.
        let mut l = m.lease.lock().await;
        let new = match self.claim_owner(name) {
            Some(o) if o != owner => return Err(busy(name, &o)),
            Some(_) => false,
            None => true,
        };
        if l.is_none() {
            *l = Some(lease::acquire(&self.repo, name, &self.holder).await?);
        }
        lock(&self.claims).insert(name.to_string(), owner.to_string());
        drop(l);
        if new {
            tracing::info!(volume = name, owner, "claimed");
        }
        Ok(ClaimOutcome {
            name: name.into(),
            owner: owner.into(),
            version: m.version(),
            new,
        })
    }

    /// Gives `owner`'s claim of `name` back: waits until its files are
    /// closed and their close-to-open commit is done, then drops the claim
    /// and the writer lease. A no-op when `owner` does not hold the claim.
    /// A failed commit keeps the claim (and the lease) and is returned.
    pub async fn unclaim(
        self: &Arc<Self>,
        name: &str,
        owner: &str,
    ) -> Result<UnclaimOutcome, OpError> {
        let not_ours = |other: Option<String>| UnclaimOutcome {
            name: name.into(),
            released: false,
            version: None,
            owner: other,
        };
        match self.claim_owner(name) {
            None => return Ok(not_ours(None)),
            Some(o) if o != owner => return Ok(not_ours(Some(o))),
            Some(_) => {}
        }
        let Some(m) = self.attached(name) else {
            lock(&self.claims).remove(name);
            return Ok(not_ours(None));
        };
        let t = Instant::now();
        while m.handles.load(Ordering::SeqCst) > 0 {
            if t.elapsed() > CLOSE_WAIT {
                return Err(OpError::new(libc::EBUSY, format!("volume {name} is still open on this node {} s after {owner} stopped; find the process holding it (fuser) and close it, then unclaim again", CLOSE_WAIT.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The last writer's close commits in the background; commit() runs
        // after it (commit lock) and publishes anything still dirty.
        let version = match m.policy() {
            OnClose::Commit => m.commit().await.map(|o| o.version),
            OnClose::Keep | OnClose::Discard => m.wait_commit().await,
        }
        .map_err(|e| OpError::new(e.errno(), format!("the close-to-open commit of volume {name} failed ({e}); the changes stay in the local mirror and the claim stays, retry with blobvirt commit {name}")))?;
        let mut l = m.lease.lock().await;
        let still_ours = lock(&self.claims).get(name).is_some_and(|o| o == owner);
        if still_ours {
            lock(&self.claims).remove(name);
            if m.writers.load(Ordering::SeqCst) == 0 {
                if let Some(lease) = l.take() {
                    lease.release().await;
                }
            }
        }
        drop(l);
        tracing::info!(volume = name, owner, version, "unclaimed");
        Ok(UnclaimOutcome {
            name: name.into(),
            released: still_ours,
            version: Some(version),
            owner: None,
        })
    }
}
