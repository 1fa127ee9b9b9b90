//! Writer leases: a volume is writable on one node at a time. Leases live in
//! memory only: after a poold restart every lease is free and holders
//! re-acquire on their next renewal (renew re-grants a free lease).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blobvirt_core::proto as pb;

struct Lease {
    holder: String,
    expires_ms: u64,
}

/// The lease table.
pub struct Leases {
    default_ttl: Duration,
    map: Mutex<HashMap<String, Lease>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Leases {
    pub fn new(default_ttl: Duration) -> Self {
        Leases {
            default_ttl,
            map: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants `name` to `holder` when it is free, expired, or already
    /// theirs (then it is extended); otherwise reports the current holder.
    /// Acquire and renew are the same operation.
    pub fn acquire(&self, name: &str, holder: &str, ttl_ms: u32) -> pb::LeaseReply {
        let ttl = if ttl_ms == 0 {
            self.default_ttl.as_millis() as u64
        } else {
            ttl_ms as u64
        };
        let now = now_ms();
        let mut map = self.lock();
        if let Some(l) = map.get(name) {
            if l.holder != holder && l.expires_ms > now {
                return pb::LeaseReply {
                    granted: false,
                    holder: l.holder.clone(),
                    expires_unix_ms: l.expires_ms,
                };
            }
        }
        let expires_ms = now + ttl;
        map.insert(
            name.to_string(),
            Lease {
                holder: holder.to_string(),
                expires_ms,
            },
        );
        pb::LeaseReply {
            granted: true,
            holder: holder.to_string(),
            expires_unix_ms: expires_ms,
        }
    }

    /// Frees `name` if `holder` holds it (granted = true when the caller no
    /// longer holds it afterwards, i.e. released or already free).
    pub fn release(&self, name: &str, holder: &str) -> pb::LeaseReply {
        let now = now_ms();
        let mut map = self.lock();
        match map.get(name) {
            Some(l) if l.holder != holder && l.expires_ms > now => pb::LeaseReply {
                granted: false,
                holder: l.holder.clone(),
                expires_unix_ms: l.expires_ms,
            },
            _ => {
                map.remove(name);
                pb::LeaseReply {
                    granted: true,
                    holder: String::new(),
                    expires_unix_ms: 0,
                }
            }
        }
    }

    /// Drops the lease of a deleted volume.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
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
        let a = l.acquire("v", "a", 0);
        assert!(a.granted);
        assert!(a.expires_unix_ms >= now_ms() + 9_000);
        let b = l.acquire("v", "b", 0);
        assert!(!b.granted);
        assert_eq!(b.holder, "a");
        assert!(l.acquire("v", "a", 50).granted, "the holder renews");
        assert!(!l.release("v", "b").granted, "others cannot release");
        std::thread::sleep(Duration::from_millis(80));
        let b = l.acquire("v", "b", 0);
        assert!(b.granted, "an expired lease is free");
        assert!(l.release("v", "b").granted);
        assert!(l.acquire("v", "c", 0).granted);
        assert_eq!(l.holder("v").as_deref(), Some("c"));
        l.forget("v");
        assert_eq!(l.holder("v"), None);
        assert!(l.acquire("v", "d", 0).granted);
    }
}
