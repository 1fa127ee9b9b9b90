//! Writer leases: a volume is writable on one node at a time. The lease is
//! taken from poold on the first writable open, renewed in the background
//! and released after the last writer closed (and its changes committed).

use std::time::Duration;

use blobvirt_core::proto as pb;
use blobvirt_core::Repo;

/// How often a held lease is renewed (poold's default lifetime is 10 s).
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// A held writer lease; renewed until [`Lease::release`].
pub struct Lease {
    name: String,
    holder: String,
    repo: Repo,
    renew: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("volume {name} is open for writing by {holder}; close it there first")]
    Held { name: String, holder: String },
    #[error("cannot take the writer lease of volume {name}: {msg}")]
    Pool { name: String, msg: String },
}

/// Takes the writer lease of `name` for `holder`.
pub async fn acquire(repo: &Repo, name: &str, holder: &str) -> Result<Lease, LeaseError> {
    let req = pb::LeaseRequest {
        name: name.into(),
        holder: holder.into(),
        ttl_ms: 0,
    };
    let renew = match repo.pool().acquire_lease(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if !r.granted {
                tracing::warn!(volume = name, holder = %r.holder, "writable open refused: the volume's writer lease is held by {}", r.holder);
                return Err(LeaseError::Held {
                    name: name.into(),
                    holder: r.holder,
                });
            }
            Some(tokio::spawn(renew_loop(
                repo.clone(),
                name.into(),
                holder.into(),
            )))
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            tracing::warn!(
                volume = name,
                "poold does not implement writer leases; writing without one"
            );
            None
        }
        Err(s) => {
            return Err(LeaseError::Pool {
                name: name.into(),
                msg: s.message().into(),
            })
        }
    };
    Ok(Lease {
        name: name.into(),
        holder: holder.into(),
        repo: repo.clone(),
        renew,
    })
}

async fn renew_loop(repo: Repo, name: String, holder: String) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let req = pb::LeaseRequest {
            name: name.clone(),
            holder: holder.clone(),
            ttl_ms: 0,
        };
        match repo.pool().renew_lease(req).await {
            Ok(r) if r.get_ref().granted => {}
            Ok(r) => {
                tracing::error!(volume = %name, holder = %r.get_ref().holder, "lost the writer lease of the volume")
            }
            Err(s) => {
                tracing::warn!(volume = %name, "cannot renew the writer lease: {}", s.message())
            }
        }
    }
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops renewing and gives the lease back.
    pub async fn release(mut self) {
        if let Some(t) = self.renew.take() {
            t.abort();
            let req = pb::LeaseRequest {
                name: self.name.clone(),
                holder: self.holder.clone(),
                ttl_ms: 0,
            };
            if let Err(s) = self.repo.pool().release_lease(req).await {
                tracing::warn!(volume = %self.name, "cannot release the writer lease: {}", s.message());
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(t) = self.renew.take() {
            t.abort();
        }
    }
}
