//! Writer leases: a volume is writable on one node at a time. A lease's
//! holder is kept in the metadata store whenever it changes (granted to a
//! new holder, released, dropped with its volume), so a poold restart keeps
//! every lease: a loaded lease lives at least one default lifetime after
//! the restart, so its holder can renew, and an expired one frees its
//! volume as before. Renewals by the holder stay in memory (no write).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blobvirt_core::proto as pb;

use crate::meta::cluster::LeaseRec;
use crate::meta::{Meta, Result};

struct Lease {
    holder: String,
    expires_ms: u64,
}

/// The lease table.
pub struct Leases {
    default_ttl: Duration,
    map: Mutex<HashMap<String, Lease>>,
    meta: Option<Meta>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Leases {
    /// An in-memory table (tests).
    pub fn new(default_ttl: Duration) -> Self {
        Leases {
            default_ttl,
            map: Mutex::default(),
            meta: None,
        }
    }

    /// The table persisted in `meta`, loaded from it (blocking).
    pub fn load(meta: Meta, default_ttl: Duration) -> Result<Self> {
        let floor = now_ms() + default_ttl.as_millis() as u64;
        let map = meta
            .leases()?
            .into_iter()
            .map(|(name, l)| {
                let lease = Lease {
                    holder: l.holder,
                    expires_ms: l.expires_ms.max(floor),
                };
                (name, lease)
            })
            .collect();
        Ok(Leases {
            default_ttl,
            map: Mutex::new(map),
            meta: Some(meta),
        })
    }

    fn persist(&self, name: &str, l: Option<&Lease>) -> Result<()> {
        match &self.meta {
            Some(m) => m.put_lease(
                name,
                l.map(|l| LeaseRec {
                    holder: l.holder.clone(),
                    expires_ms: l.expires_ms,
                })
                .as_ref(),
            ),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants `name` to `holder` when it is free, expired, or already
    /// theirs (then it is extended); otherwise reports the current holder.
    /// Acquire and renew are the same operation. Blocks when the holder
    /// changes (it is persisted).
    pub fn acquire(&self, name: &str, holder: &str, ttl_ms: u32) -> Result<pb::LeaseReply> {
        let ttl = if ttl_ms == 0 {
            self.default_ttl.as_millis() as u64
        } else {
            ttl_ms as u64
        };
        let now = now_ms();
        let mut map = self.lock();
        let mut changed = true;
        if let Some(l) = map.get(name) {
            if l.holder != holder && l.expires_ms > now {
                return Ok(pb::LeaseReply {
                    granted: false,
                    holder: l.holder.clone(),
                    expires_unix_ms: l.expires_ms,
                });
            }
            changed = l.holder != holder;
        }
        let lease = Lease {
            holder: holder.to_string(),
            expires_ms: now + ttl,
        };
        if changed {
            self.persist(name, Some(&lease))?;
        }
        let expires_ms = lease.expires_ms;
        map.insert(name.to_string(), lease);
        Ok(pb::LeaseReply {
            granted: true,
            holder: holder.to_string(),
            expires_unix_ms: expires_ms,
        })
    }

    /// Frees `name` if `holder` holds it (granted = true when the caller no
    /// longer holds it afterwards, i.e. released or already free).
    pub fn release(&self, name: &str, holder: &str) -> Result<pb::LeaseReply> {
        let now = now_ms();
        let mut map = self.lock();
        Ok(match map.get(name) {
            Some(l) if l.holder != holder && l.expires_ms > now => pb::LeaseReply {
                granted: false,
                holder: l.holder.clone(),
                expires_unix_ms: l.expires_ms,
            },
            _ => {
                if map.remove(name).is_some() {
                    self.persist(name, None)?;
                }
                pb::LeaseReply {
                    granted: true,
                    holder: String::new(),
                    expires_unix_ms: 0,
                }
            }
        })
    }

    /// Drops the lease of a deleted volume (blocking).
    pub fn forget(&self, name: &str) -> Result<()> {
        if self.lock().remove(name).is_some() {
            self.persist(name, None)?;
        }
        Ok(())
    }

    /// The holder of `name`'s lease while it is live.
    pub fn holder(&self, name: &str) -> Option<String> {
        let now = now_ms();
        self.lock()
            .get(name)
            .filter(|l| l.expires_ms > now)
            .map(|l| l.holder.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let l = Leases::new(Duration::from_millis(10_000));
        let a = l.acquire("v", "a", 0).unwrap();
        assert!(a.granted);
        assert!(a.expires_unix_ms >= now_ms() + 9_000);
        let b = l.acquire("v", "b", 0).unwrap();
        assert!(!b.granted);
        assert_eq!(b.holder, "a");
        assert!(
            l.acquire("v", "a", 50).unwrap().granted,
            "the holder renews"
        );
        assert!(
            !l.release("v", "b").unwrap().granted,
            "others cannot release"
        );
        std::thread::sleep(Duration::from_millis(80));
        let b = l.acquire("v", "b", 0).unwrap();
        assert!(b.granted, "an expired lease is free");
        assert!(l.release("v", "b").unwrap().granted);
        assert!(l.acquire("v", "c", 0).unwrap().granted);
        assert_eq!(l.holder("v").as_deref(), Some("c"));
        l.forget("v").unwrap();
        assert_eq!(l.holder("v"), None);
        assert!(l.acquire("v", "d", 0).unwrap().granted);
    }

    #[test]
    fn a_restart_keeps_the_holder_and_an_expired_lease_frees() {
        let d = tempfile::tempdir().unwrap();
        let meta = Meta::open(crate::kv::Engine::Redb, d.path()).unwrap();
        let ttl = Duration::from_millis(300);
        let l = Leases::load(meta.clone(), ttl).unwrap();
        assert!(l.acquire("v", "a", 0).unwrap().granted);
        assert!(l.acquire("w", "a", 0).unwrap().granted);
        assert!(l.release("w", "a").unwrap().granted);
        drop(l);
        let l = Leases::load(meta.clone(), ttl).unwrap();
        assert_eq!(l.holder("v").as_deref(), Some("a"), "kept across a restart");
        assert_eq!(l.holder("w"), None);
        assert!(!l.acquire("v", "b", 0).unwrap().granted);
        std::thread::sleep(Duration::from_millis(400));
        assert!(l.acquire("v", "b", 0).unwrap().granted, "expired: free");
        let l = Leases::load(meta, ttl).unwrap();
        assert_eq!(l.holder("v").as_deref(), Some("b"));
    }
}
