//! Self-healing: keeps every referenced chunk at its replica count on the
//! nodes its ranking names, by itself.
//!
//! A pass (see [`plan`]) lists every live chunkd's durable chunks, counts
//! each referenced chunk's replicas, has each missing home copy the chunk
//! from a surviving replica (chunkd `Pull`: node to node, hash-checked,
//! durable before it answers), and then deletes the copies on nodes that
//! are no longer homes (a node that was out and came back, a node that
//! joined and took over, a draining node). A misplaced copy goes only once
//! every home of its chunk is up and holds it durably. Passes run when the
//! membership changes (a node goes out, comes back, joins, or is drained),
//! every `repair_interval`, and on request (`Repair`, for `blobvirt scrub`
//! and `blobvirt fsck`). A pass holds the GC lock, so GC never deletes a
//! chunk a pass is copying. Copies are throttled: `recovery_concurrency`
//! Pulls at once, at most `recovery_mbps`.
//!
//! The background loop also hands a returning node its deferred GC
//! deletions (`Meta::gc_undefer`), and a pass hands GC the orphan chunks
//! (on a node, referenced by nothing, unknown to GC: uploads cut short by
//! a crash) that were orphans a minute before too.

pub mod plan;
mod run;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blobvirt_core::proto as pb;
use prometheus_client::metrics::counter::Counter;

use crate::gc::Gc;
use crate::membership::Membership;
use crate::meta::Meta;

/// Throttles and timing of self-healing.
#[derive(Clone, Debug)]
pub struct HealConfig {
    /// Interval of the background pass.
    pub interval: Duration,
    /// Copy bandwidth in bytes per second (0 = unlimited).
    pub bytes_per_sec: u64,
    /// Pulls running at once.
    pub concurrency: usize,
}

/// What a pass should also do.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassOpts {
    pub scrub: bool,
    pub fsck: bool,
    pub repair: bool,
}

/// Self-healing's state: the last pass's findings and running totals.
pub struct Healer {
    meta: Meta,
    members: Arc<Membership>,
    gc: Arc<Gc>,
    replicas: usize,
    cfg: HealConfig,
    one: tokio::sync::Mutex<()>,
    kick: tokio::sync::Notify,
    running: AtomicBool,
    last: Mutex<Option<pb::RepairReply>>,
    last_unix: AtomicU64,
    /// When the orphans of an earlier pass were taken, and which they were.
    prev_orphans: Mutex<(
        Option<std::time::Instant>,
        std::collections::HashSet<blobvirt_core::ChunkId>,
    )>,
    /// Chunks and bytes copied by all passes (`blobvirt_poold_recovery_*`).
    pub copied_chunks: Counter,
    pub copied_bytes: Counter,
    pub removed_copies: Counter,
}

impl Healer {
    pub fn new(
        meta: Meta,
        members: Arc<Membership>,
        gc: Arc<Gc>,
        replicas: usize,
        cfg: HealConfig,
    ) -> Self {
        Healer {
            meta,
            members,
            gc,
            replicas: replicas.max(1),
            cfg,
            one: Default::default(),
            kick: Default::default(),
            running: AtomicBool::new(false),
            last: Mutex::new(None),
            last_unix: AtomicU64::new(0),
            prev_orphans: Mutex::default(),
            copied_chunks: Counter::default(),
            copied_bytes: Counter::default(),
            removed_copies: Counter::default(),
        }
    }

    /// Asks the background loop for a pass soon (a node was drained).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Fills the self-healing fields of poold's Stats answer.
    pub fn fill_stats(&self, s: &mut pb::PoolStatsReply) {
        if let Some(r) = self.last.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            s.degraded_chunks = r.degraded_after;
            s.lost_chunks = r.lost.len() as u64;
        }
        s.recovery_copied_chunks = self.copied_chunks.get();
        s.recovery_copied_bytes = self.copied_bytes.get();
        s.recovery_running = self.running.load(Ordering::Relaxed);
        s.last_repair_unix = self.last_unix.load(Ordering::Relaxed) as i64;
    }

    /// The last pass's report, if any.
    pub fn last(&self) -> Option<pb::RepairReply> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs background passes until the task is dropped: on membership
    /// changes, on a kick, and every interval.
    pub async fn run(self: Arc<Self>) {
        let mut seen = String::new();
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                _ = self.kick.notified() => { seen.clear(); },
            }
            let nodes = self.members.nodes();
            let now: String = nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}={}{};",
                        n.id,
                        n.state,
                        if n.draining { "+d" } else { "" }
                    )
                })
                .collect();
            self.undefer(&nodes).await;
            if now == seen && since.elapsed() < self.cfg.interval {
                continue;
            }
            seen = now;
            since = tokio::time::Instant::now();
            if let Err(e) = self.pass(PassOpts::default()).await {
                tracing::warn!("self-healing pass failed: {e}");
            }
        }
    }

    /// Hands every up node its deferred GC deletions.
    async fn undefer(&self, nodes: &[pb::NodeInfo]) {
        let meta = self.meta.clone();
        let up: Vec<String> = nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.id.clone())
            .collect();
        let r = tokio::task::spawn_blocking(move || {
            let mut n = 0;
            for (node, _) in meta.gc_deferred()? {
                if up.contains(&node) {
                    n += meta.gc_undefer(&node)?;
                }
            }
            Ok::<u64, crate::meta::MetaError>(n)
        })
        .await;
        match r {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(
                    chunks = n,
                    "deferred GC deletions of returning nodes are queued"
                )
            }
            Ok(Err(e)) => tracing::warn!("cannot hand deferred GC deletions over: {e}"),
            Err(e) => tracing::warn!("deferred GC task failed: {e}"),
        }
    }
}
