//! Which poold is active, when several share one etcd cluster: etcd's
//! election on a lease.
//!
//! * [`EtcdKv::campaign`] grants a lease of `ttl` seconds, keeps it alive
//!   from the engine's runtime (every `ttl / 3`), and waits in etcd's
//!   `Campaign` until this instance leads. It then fences the engine on the
//!   election key it got (its create revision), so from here on a commit
//!   succeeds only while that key exists: once the lease lapses (a killed,
//!   paused or cut-off poold) etcd deletes the key, another instance wins,
//!   and every later commit of this one fails with `KvError::Fenced` and
//!   writes nothing.
//! * A renewal that fails (its member died, the connection broke) opens
//!   a new keep-alive stream, which goes to a live member, so losing one
//!   etcd member does not cost the active poold its lease.
//! * [`Leadership::lost`] resolves when the lease could not be kept alive
//!   (etcd said it is gone, or no answer for a whole `ttl`); poold then
//!   exits rather than serve from a store it no longer owns.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::etcd_engine::{engine, lock_pub, EtcdKv};
use super::KvResult;

/// This instance leads: the election key and how to learn it ended.
pub struct Leadership {
    /// The election key (`NAME/LEASE`), the fence's key.
    pub key: Vec<u8>,
    /// Its create revision, the fence's value.
    pub rev: i64,
    /// How long the campaign waited.
    pub waited: Duration,
    lost: watch::Receiver<bool>,
}

impl Leadership {
    /// Resolves once the lease is lost (never while it is kept).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }
}

impl EtcdKv {
    /// Campaigns under `name` with `value` (the instance's address, shown
    /// to operators) on a lease of `ttl`; returns once elected, with the
    /// engine fenced on the election key.
    pub fn campaign(&self, name: &str, value: &str, ttl: Duration) -> KvResult<Leadership> {
        let started = Instant::now();
        let ttl_s = ttl.as_secs().max(2) as i64;
        let lease = self
            .retrying("granting the election lease", || {
                let mut c = self.client();
                async move { c.lease_grant(ttl_s, None).await }
            })?
            .id();
        let (tx, rx) = watch::channel(false);
        let (mut keeper, mut stream) = self.retrying("keeping the election lease alive", || {
            let mut c = self.client();
            async move { c.lease_keep_alive(lease).await }
        })?;
        let every = Duration::from_millis((ttl_s as u64 * 1000) / 3);
        let limit = Duration::from_secs(ttl_s as u64);
        // The read cache stays usable for two thirds of the lease's life
        // after each renewal (engine docs).
        let deadline = self.cache_deadline();
        let usable = limit * 2 / 3;
        *lock_pub(&deadline) = Some(Instant::now() + usable);
        // The keep-alive loop runs on the engine's runtime until the lease
        // is gone or its last renewal is older than the lease's life.
        let mut c = self.client();
        self.run(async move {
            tokio::spawn(async move {
                let mut renewed = Instant::now();
                loop {
                    let beat = async {
                        keeper.keep_alive().await?;
                        stream.message().await
                    };
                    let failed = match tokio::time::timeout(every, beat).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {
                            renewed = Instant::now();
                            *lock_pub(&deadline) = Some(renewed + usable);
                            false
                        }
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => {
                            tracing::warn!("renewing the election lease: {e}");
                            true
                        }
                        Err(_) => {
                            tracing::warn!("etcd did not answer a lease renewal");
                            true
                        }
                    };
                    if renewed.elapsed() >= limit {
                        break;
                    }
                    if failed {
                        // The stream's member may be gone: open a new
                        // stream, which the client sends to a live one.
                        let again = tokio::time::timeout(every, c.lease_keep_alive(lease)).await;
                        if let Ok(Ok((k, s))) = again {
                            (keeper, stream) = (k, s);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    tokio::time::sleep(every.saturating_sub(renewed.elapsed().min(every))).await;
                }
                *lock_pub(&deadline) = Some(Instant::now());
                let _ = tx.send(true);
            });
        })?;
        // Campaign waits until elected; a request timeout only means "not
        // yet" (campaigning again on the same lease is the same campaign).
        let (name, value) = (name.to_string(), value.to_string());
        loop {
            let mut c = self.client();
            let (n, v) = (name.clone(), value.clone());
            match self.run(async move { c.campaign(n, v, lease).await })? {
                Ok(r) => {
                    let l = r.leader().ok_or_else(|| {
                        engine("campaigning", "etcd answered without a leader key")
                    })?;
                    let (key, rev) = (l.key().to_vec(), l.rev());
                    self.set_fence(Some((key.clone(), rev)));
                    return Ok(Leadership {
                        key,
                        rev,
                        waited: started.elapsed(),
                        lost: rx,
                    });
                }
                Err(e) if e.to_string().to_lowercase().contains("deadline") => continue,
                Err(e) if *rx.borrow() => {
                    return Err(engine("campaigning (the election lease was lost)", e))
                }
                Err(e) => {
                    tracing::warn!("campaigning for the active poold: {e}; trying again");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}
