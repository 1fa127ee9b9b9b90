//! How the etcd engine's requests survive a lost member or a leader
//! election: each try waits at most [`ATTEMPT`] (etcd answers a proposal
//! lost with its leader only after about 7 s), failures that another try
//! can mend are tried again for up to [`RETRY_FOR`], a member that refuses
//! connections is taken out of the client's balancer for [`SHUN_FOR`], and
//! every commit carries a token ([`EtcdKv::commit_key`]) so that sending
//! it again never applies it twice.

use std::future::Future;
use std::time::{Duration, Instant};

use super::etcd_engine::{lock_pub as lock, EtcdKv};
use super::KvResult;
use crate::kv::etcd_engine::engine;

impl EtcdKv {
    /// Runs the request `mk` makes, again while it fails the way a lost
    /// member or a leader election does, for up to [`RETRY_FOR`]. A retry
    /// is safe: reads are pinned at a revision, and a commit carries its
    /// token (it applies once, see [`EtcdKv::commit_key`]).
    pub(super) fn retrying<T: Send + 'static, F>(
        &self,
        what: &str,
        mut mk: impl FnMut() -> F,
    ) -> KvResult<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            match self.run(mk())? {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && Instant::now() < deadline => {
                    tracing::debug!("etcd: {what}: {e}; trying again");
                    self.shun(&e);
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => return Err(engine(what, e)),
            }
        }
    }
}

impl EtcdKv {
    /// Takes a member that refused a connection out of the client's
    /// balancer for [`SHUN_FOR`] (the balancer goes on picking a dead
    /// member otherwise, so retries would keep failing there), then puts
    /// it back. The last member in the balancer is never taken out.
    pub(super) fn shun(&self, e: &etcd_client::Error) {
        let why = format!("{e:?}");
        if !why.contains("ConnectError") {
            return;
        }
        let Some(ep) = self.opts.endpoints.iter().find(|ep| {
            let hp = ep.split_once("://").map_or(ep.as_str(), |(_, r)| r);
            why.contains(hp.trim_end_matches('/'))
        }) else {
            return;
        };
        {
            let mut out = lock(&self.shunned);
            if out.contains(ep) || out.len() + 1 >= self.opts.endpoints.len() {
                return;
            }
            out.insert(ep.clone());
        }
        tracing::info!("etcd: {ep} refused a connection; sending requests to the other members for {SHUN_FOR:?}");
        let (client, ep, shunned) = (self.client.clone(), ep.clone(), self.shunned.clone());
        self.rt.get().spawn(async move {
            let _ = client.remove_endpoint(&ep).await;
            tokio::time::sleep(SHUN_FOR).await;
            let _ = client.add_endpoint(&ep).await;
            lock(&shunned).remove(&ep);
        });
    }
}

impl EtcdKv {
    /// The key of the commit token, beside the prefix (like the election
    /// key): every commit checks it holds the token of the commit before
    /// and writes a new one, so a commit applies once however often it is
    /// sent, and a late copy of one already retried cannot apply.
    pub(super) fn commit_key(&self) -> Vec<u8> {
        let p = String::from_utf8_lossy(&self.opts.prefix);
        format!("{}.commit", p.trim_end_matches('/')).into_bytes()
    }

    /// The commit token in etcd now (linearizable read).
    pub(super) fn token_now(&self) -> KvResult<Option<Vec<u8>>> {
        let k = self.commit_key();
        let r = self.retrying("reading the commit token", || {
            let (mut c, k) = (self.kv.clone(), k.clone());
            async move { attempt(c.get(k, None)).await }
        })?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// True while the fence's key still has the fence's create revision.
    pub(super) fn fence_holds(&self) -> KvResult<bool> {
        let Some((key, rev)) = lock(&self.fence).clone() else {
            return Ok(true);
        };
        let r = self.retrying("reading the election key", || {
            let (mut c, k) = (self.kv.clone(), key.clone());
            async move { attempt(c.get(k, None)).await }
        })?;
        Ok(r.kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == rev))
    }
}

/// Longest wait for one try of a request. etcd answers a proposal lost
/// with its leader only after about 7 s ("request timed out"); a new try
/// after this long goes to the new leader instead (safe for commits: see
/// [`EtcdKv::commit_key`]).
pub const ATTEMPT: Duration = Duration::from_secs(2);

/// `f`, given up as a transient failure after [`ATTEMPT`].
pub(super) async fn attempt<T>(
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    match tokio::time::timeout(ATTEMPT, f).await {
        Ok(r) => r,
        Err(_) => Err(etcd_client::Error::GRpcStatus(
            tonic::Status::deadline_exceeded(format!("no answer within {ATTEMPT:?}")),
        )),
    }
}

/// How long a member that refused a connection gets no requests.
pub const SHUN_FOR: Duration = Duration::from_secs(5);

/// How long a request is tried again after a member was lost (longer than
/// an etcd leader election, which takes about a second by default).
pub const RETRY_FOR: Duration = Duration::from_secs(8);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// True for the failures of a lost member, a lost connection or an
/// election under way, after which the same request can be sent again.
pub(super) fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ),
        _ => false,
    }
}
