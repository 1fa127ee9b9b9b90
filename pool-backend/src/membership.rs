//! Membership of the chunk daemons. Who exists (id → address) and who is
//! draining are persisted in the metadata store so a restarted poold still
//! knows every node; liveness is in memory. A node is *up* when it
//! heartbeated within the timeout, *down* after that (readers skip it), and
//! *out* once down for longer than the out time (its chunks get new
//! replicas; see `heal`). Nodes loaded at startup count as up for one
//! timeout, so a poold restart does not declare the whole cluster dead.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blobvirt_core::proto as pb;

use crate::meta::{Meta, Result};

struct Entry {
    addr: String,
    /// Last register/heartbeat; `None` = known from the store only.
    seen: Option<Instant>,
    draining: bool,
}

/// A node's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Out,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Out => "out",
        }
    }
}

/// The chunkd membership.
pub struct Membership {
    timeout: Duration,
    out_after: Duration,
    started: Instant,
    nodes: Mutex<BTreeMap<String, Entry>>,
}

impl Membership {
    /// Loads the persisted members (blocking); a node is out after
    /// `out_after` without a heartbeat.
    pub fn load(meta: &Meta, timeout: Duration, out_after: Duration) -> Result<Self> {
        let draining = meta.draining()?;
        let nodes = meta
            .members()?
            .into_iter()
            .map(|(id, addr)| {
                let draining = draining.contains(&id);
                (
                    id,
                    Entry {
                        addr,
                        seen: None,
                        draining,
                    },
                )
            })
            .collect();
        Ok(Membership {
            timeout,
            out_after: out_after.max(timeout),
            started: Instant::now(),
            nodes: Mutex::new(nodes),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address registered for `id`, if any.
    pub fn addr_of(&self, id: &str) -> Option<String> {
        self.lock().get(id).map(|e| e.addr.clone())
    }

    /// Marks `id` at `addr` alive now (the caller has persisted it).
    pub fn registered(&self, id: &str, addr: &str) {
        let mut m = self.lock();
        let draining = m.get(id).is_some_and(|e| e.draining);
        m.insert(
            id.to_string(),
            Entry {
                addr: addr.to_string(),
                seen: Some(Instant::now()),
                draining,
            },
        );
    }

    /// Marks `id` draining or not (the caller has persisted it); false
    /// when the node is unknown.
    pub fn set_draining(&self, id: &str, on: bool) -> bool {
        match self.lock().get_mut(id) {
            Some(e) => {
                e.draining = on;
                true
            }
            None => false,
        }
    }

    /// Forgets `id` (the caller has removed it from the store).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Records a heartbeat; false when the node is unknown (it must register).
    pub fn heartbeat(&self, id: &str) -> bool {
        match self.lock().get_mut(id) {
            Some(e) => {
                e.seen = Some(Instant::now());
                true
            }
            None => false,
        }
    }

    fn state(&self, e: &Entry, now: Instant) -> State {
        let quiet = now.duration_since(e.seen.unwrap_or(self.started));
        if quiet <= self.timeout {
            State::Up
        } else if quiet <= self.out_after {
            State::Down
        } else {
            State::Out
        }
    }

    /// Every known node, sorted by id.
    pub fn nodes(&self) -> Vec<pb::NodeInfo> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(id, e)| {
                let state = self.state(e, now);
                pb::NodeInfo {
                    id: id.clone(),
                    addr: e.addr.clone(),
                    alive: state == State::Up,
                    state: state.as_str().into(),
                    draining: e.draining,
                }
            })
            .collect()
    }

    /// Addresses of the live nodes.
    pub fn live_addrs(&self) -> Vec<String> {
        self.nodes()
            .into_iter()
            .filter(|n| n.alive)
            .map(|n| n.addr)
            .collect()
    }

    /// How often nodes should heartbeat: a quarter of the timeout.
    pub fn heartbeat_ms(&self) -> u32 {
        (self.timeout.as_millis() / 4).clamp(50, u32::MAX as u128) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_and_persistence() {
        let d = tempfile::tempdir().unwrap();
        let meta = Meta::open(crate::kv::Engine::Redb, d.path()).unwrap();
        meta.put_member("n1", "127.0.0.1:1").unwrap();
        let m = Membership::load(
            &meta,
            Duration::from_millis(150),
            Duration::from_millis(400),
        )
        .unwrap();
        // Known from the store: alive for one timeout after start.
        assert!(m.nodes()[0].alive);
        assert!(!m.heartbeat("n2"));
        meta.put_member("n2", "127.0.0.1:2").unwrap();
        m.registered("n2", "127.0.0.1:2");
        std::thread::sleep(Duration::from_millis(100));
        assert!(m.heartbeat("n2"));
        std::thread::sleep(Duration::from_millis(100));
        let nodes = m.nodes();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].id, "n1");
        assert!(!nodes[0].alive, "n1 never heartbeated");
        assert!(nodes[1].alive);
        assert_eq!(nodes[0].state, "down");
        assert_eq!(m.live_addrs(), vec!["127.0.0.1:2".to_string()]);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            m.nodes()[0].state,
            "out",
            "down for longer than the out time"
        );
        meta.set_draining("n2", true).unwrap();
        let again = Membership::load(&meta, Duration::from_secs(5), Duration::ZERO).unwrap();
        assert_eq!(again.addr_of("n2").as_deref(), Some("127.0.0.1:2"));
        assert!(again.nodes()[1].draining);
        again.registered("n2", "127.0.0.1:3");
        assert!(
            again.nodes()[1].draining,
            "a new registration keeps the mark"
        );
    }
}
