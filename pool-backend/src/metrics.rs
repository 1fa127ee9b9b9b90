//! poold's metric families (`blobvirt_poold_*`, listed in
//! `docs/metrics.md`): the repository's counts and the GC backlog, read
//! from the metadata store at each scrape; chunkd liveness as poold sees
//! it; chunks reclaimed by GC. The gRPC calls are counted by
//! [`blobvirt_core::metrics::RpcMetrics`].

use std::sync::Arc;

use blobvirt_core::metrics::{encode_gauge, encode_gauges, Registry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::gc::Gc;
use crate::heal::Healer;
use crate::membership::Membership;
use crate::meta::Meta;

/// Registers poold's families in `reg`.
pub fn register(
    reg: &mut Registry,
    meta: Meta,
    members: Arc<Membership>,
    gc: &Gc,
    healer: &Arc<Healer>,
) {
    reg.register(
        "blobvirt_poold_gc_reclaimed_chunks",
        "Chunks garbage collection deleted from the chunkd nodes and forgot",
        gc.reclaimed.clone(),
    );
    reg.register(
        "blobvirt_poold_recovery_copied_chunks",
        "Chunk replicas self-healing copied to nodes that lacked them (recovery, rebalance, drain)",
        healer.copied_chunks.clone(),
    );
    reg.register(
        "blobvirt_poold_recovery_copied_bytes",
        "Bytes self-healing copied between chunkd nodes",
        healer.copied_bytes.clone(),
    );
    reg.register(
        "blobvirt_poold_recovery_removed_copies",
        "Misplaced chunk copies self-healing deleted once their homes held them",
        healer.removed_copies.clone(),
    );
    reg.register_collector(Box::new(State {
        meta,
        members,
        healer: healer.clone(),
    }));
}

/// Reads the counters and the membership at each scrape.
struct State {
    meta: Meta,
    members: Arc<Membership>,
    healer: Arc<Healer>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("poold metrics state")
    }
}

impl Collector for State {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let nodes = self.members.nodes();
        let up = nodes.iter().filter(|n| n.alive).count() as u64;
        encode_gauges(
            &mut enc,
            "blobvirt_poold_node_up",
            "1 when the chunkd node heartbeated within the timeout, else 0",
            nodes
                .iter()
                .map(|n| ([("node", n.id.clone())], i64::from(n.alive))),
        )?;
        encode_gauge(
            &mut enc,
            "blobvirt_poold_nodes",
            "chunkd nodes known to poold",
            nodes.len() as u64,
        )?;
        encode_gauge(
            &mut enc,
            "blobvirt_poold_nodes_up",
            "chunkd nodes that heartbeated within the timeout",
            up,
        )?;
        encode_gauges(
            &mut enc,
            "blobvirt_poold_node_out",
            "1 when the chunkd node is out (down for longer than the out time), else 0",
            nodes
                .iter()
                .map(|n| ([("node", n.id.clone())], i64::from(n.state == "out"))),
        )?;
        encode_gauges(
            &mut enc,
            "blobvirt_poold_node_draining",
            "1 when the chunkd node is being drained, else 0",
            nodes
                .iter()
                .map(|n| ([("node", n.id.clone())], i64::from(n.draining))),
        )?;
        let mut s = blobvirt_core::proto::PoolStatsReply::default();
        self.healer.fill_stats(&mut s);
        encode_gauge(
            &mut enc,
            "blobvirt_poold_degraded_chunks",
            "Referenced chunks with fewer live replicas than configured, after the last self-healing pass",
            s.degraded_chunks,
        )?;
        encode_gauge(
            &mut enc,
            "blobvirt_poold_lost_chunks",
            "Referenced chunks with no replica on any live node, at the last self-healing pass",
            s.lost_chunks,
        )?;
        encode_gauge(
            &mut enc,
            "blobvirt_poold_recovery_running",
            "1 while a self-healing pass runs",
            u64::from(s.recovery_running),
        )?;
        let c = match self.meta.counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot read the metadata counters for metrics: {e}");
                return Ok(());
            }
        };
        for (name, help, v) in [
            (
                "blobvirt_poold_volumes",
                "Volumes in the repository",
                c.blobs,
            ),
            (
                "blobvirt_poold_versions",
                "Versions of all volumes",
                c.versions,
            ),
            (
                "blobvirt_poold_tree_nodes",
                "Segment-tree nodes stored",
                c.nodes,
            ),
            (
                "blobvirt_poold_live_chunks",
                "Distinct chunks referenced by some version",
                c.live_chunks,
            ),
            (
                "blobvirt_poold_gc_pending_chunks",
                "Unreferenced chunks queued for deletion by garbage collection (GC backlog)",
                c.gc_pending,
            ),
        ] {
            encode_gauge(&mut enc, name, help, v)?;
        }
        Ok(())
    }
}
