//! `cluster status`: every chunkd's own counters (Stats) and poold's totals.
//!
//! JSON fields: `pool`, `replicas`, `nodes` (each `id`, `addr`, `alive` =
//! its Stats answered, `registered_alive` = poold's heartbeat view, `state`
//! = `up`, `down` or `out`, `draining`, `chunks`, `bytes`, `free_bytes`,
//! `total_bytes`), `nodes_alive`, `stored_chunks`, `stored_bytes` (sums
//! over the nodes, replicas included), poold's `blobs`, `versions`,
//! `meta_nodes`, `live_chunks`, `gc_pending`, `gc_deferred`, and
//! self-healing's `recovery` (`running`, `degraded_chunks`, `lost_chunks`,
//! `copied_chunks`, `copied_bytes`, `last_pass_unix`); with a
//! cluster dir whose mirrord runs, `mirror` (see `mirror::MountStatus`);
//! with a cluster dir, the `/metrics` addresses from its `cluster.json`:
//! `metrics` of each node, `poold_metrics`, `mirrord_metrics` (each only
//! when recorded).

use std::time::Duration;

use anyhow::{anyhow, Result};
use blobvirt_core::client::{channel, chunk_client, pool_channel, pool_client};
use blobvirt_core::proto as pb;
use serde::Serialize;

use crate::cli::ClusterStatus;
use crate::output::{human_size, print_json, Table};

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub addr: String,
    pub alive: bool,
    pub registered_alive: bool,
    pub state: String,
    pub draining: bool,
    pub chunks: u64,
    pub bytes: u64,
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// `HOST:PORT` of its `/metrics`, when the cluster file records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pool: String,
    pub replicas: u32,
    pub nodes: Vec<NodeStatus>,
    pub nodes_alive: usize,
    pub stored_chunks: u64,
    pub stored_bytes: u64,
    /// Number of volumes (the field names are in virsh-ext/README.md).
    pub volume_count: u64,
    /// Number of versions of all volumes.
    pub version_count: u64,
    pub meta_nodes: u64,
    pub live_chunks: u64,
    pub gc_pending: u64,
    /// GC deletions waiting for down nodes.
    pub gc_deferred: u64,
    pub recovery: Recovery,
    /// The cluster's mirrord, when `--dir` names a cluster started with `--mount`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<crate::mirror::MountStatus>,
    /// `HOST:PORT` of poold's `/metrics`, when the cluster file records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poold_metrics: Option<String>,
    /// `HOST:PORT` of mirrord's `/metrics`, when the cluster file records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirrord_metrics: Option<String>,
}

/// Self-healing as poold reports it.
#[derive(Debug, Serialize)]
pub struct Recovery {
    pub running: bool,
    /// Referenced chunks with fewer live replicas than configured, after
    /// the last pass.
    pub degraded_chunks: u64,
    pub lost_chunks: u64,
    /// Totals since poold started.
    pub copied_chunks: u64,
    pub copied_bytes: u64,
    pub last_pass_unix: i64,
}

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

fn unreachable(url: &str, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "cannot reach poold at {url} ({why}); check --pool or BLOBVIRT_POOL and that poold runs"
    )
}

/// Collects the status of the pool at `url`.
pub async fn collect(url: &str) -> Result<Status> {
    let mut pool = pool_client(pool_channel(url).map_err(|e| unreachable(url, e))?);
    let nodes = tokio::time::timeout(RPC_TIMEOUT, pool.nodes(pb::NodesRequest {}))
        .await
        .map_err(|_| unreachable(url, "timed out"))?
        .map_err(|s| unreachable(url, s.message().to_string()))?
        .into_inner();
    let stats = tokio::time::timeout(RPC_TIMEOUT, pool.stats(pb::PoolStatsRequest {}))
        .await
        .map_err(|_| unreachable(url, "timed out"))?
        .map_err(|s| unreachable(url, s.message().to_string()))?
        .into_inner();
    let mut out = Vec::new();
    for n in nodes.nodes {
        let st = match channel(&n.addr) {
            Ok(ch) => {
                let mut c = chunk_client(ch);
                match tokio::time::timeout(RPC_TIMEOUT, c.stats(pb::StatsRequest {})).await {
                    Ok(Ok(r)) => Some(r.into_inner()),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let s = st.clone().unwrap_or_default();
        out.push(NodeStatus {
            id: n.id,
            addr: n.addr,
            alive: st.is_some(),
            registered_alive: n.alive,
            state: n.state,
            draining: n.draining,
            chunks: s.chunks,
            bytes: s.bytes,
            free_bytes: s.free_bytes,
            total_bytes: s.total_bytes,
            metrics: None,
        });
    }
    out.sort_by_key(|n| natural_key(&n.id));
    Ok(Status {
        pool: url.to_string(),
        replicas: nodes.replicas,
        nodes_alive: out.iter().filter(|n| n.alive).count(),
        stored_chunks: out.iter().map(|n| n.chunks).sum(),
        stored_bytes: out.iter().map(|n| n.bytes).sum(),
        nodes: out,
        volume_count: stats.blobs,
        version_count: stats.versions,
        meta_nodes: stats.meta_nodes,
        live_chunks: stats.live_chunks,
        gc_pending: stats.gc_pending,
        gc_deferred: stats.gc_deferred,
        recovery: Recovery {
            running: stats.recovery_running,
            degraded_chunks: stats.degraded_chunks,
            lost_chunks: stats.lost_chunks,
            copied_chunks: stats.recovery_copied_chunks,
            copied_bytes: stats.recovery_copied_bytes,
            last_pass_unix: stats.last_repair_unix,
        },
        mirror: None,
        poold_metrics: None,
        mirrord_metrics: None,
    })
}

/// Sorts `node-10` after `node-9`.
fn natural_key(s: &str) -> (String, u64) {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, num) = s.split_at(s.len() - digits);
    (head.to_string(), num.parse().unwrap_or(0))
}

pub async fn status(pool: Option<&str>, a: ClusterStatus) -> Result<()> {
    // The cluster's own record beats a BLOBVIRT_POOL that may be stale.
    let url = match (pool, &a.dir) {
        (_, Some(d)) => crate::cluster::load(d)?.pool,
        (Some(u), None) => u.to_string(),
        (None, None) => {
            return Err(anyhow!(
                "no pool is given; pass --pool URL, set BLOBVIRT_POOL or pass --dir of a cluster started with blobvirt cluster up"
            ))
        }
    };
    let mut s = collect(&url).await?;
    if let Some(c) = a.dir.as_deref().and_then(|d| crate::cluster::load(d).ok()) {
        s.mirror = crate::mirror::mount_status(&c).await;
        add_metrics(&mut s, &c);
    }
    if a.json {
        return print_json(&s);
    }
    println!("pool {}  replicas {}", s.pool, s.replicas);
    let mut t = Table::new(&["NODE", "ADDR", "STATE", "CHUNKS", "BYTES", "METRICS"]);
    for n in &s.nodes {
        t.row(vec![
            n.id.clone(),
            n.addr.clone(),
            crate::heal::state_word(n),
            n.chunks.to_string(),
            human_size(n.bytes),
            n.metrics.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.print();
    println!(
        "{}/{} nodes alive, {} chunks ({}) stored; {} volumes, {} versions, {} metadata nodes, {} live chunks, {} awaiting GC",
        s.nodes_alive,
        s.nodes.len(),
        s.stored_chunks,
        human_size(s.stored_bytes),
        s.volume_count,
        s.version_count,
        s.meta_nodes,
        s.live_chunks,
        s.gc_pending
    );
    let r = &s.recovery;
    println!(
        "self-healing: {}{} chunks below {} replicas, {} with no replica left; {} chunks ({}) copied since poold started{}",
        if r.running { "a pass is running; " } else { "" },
        r.degraded_chunks,
        s.replicas,
        r.lost_chunks,
        r.copied_chunks,
        human_size(r.copied_bytes),
        if s.gc_deferred > 0 {
            format!("; {} deletions wait for down nodes", s.gc_deferred)
        } else {
            String::new()
        }
    );
    let daemons: Vec<String> = [("poold", &s.poold_metrics), ("mirrord", &s.mirrord_metrics)]
        .into_iter()
        .filter_map(|(n, a)| a.as_ref().map(|a| format!("{n} http://{a}/metrics")))
        .collect();
    if !daemons.is_empty() {
        println!("metrics: {}", daemons.join(", "));
    }
    if let Some(m) = &s.mirror {
        crate::mirror::print_mount_status(m);
    }
    Ok(())
}

/// Fills the `/metrics` addresses that `c` records.
fn add_metrics(s: &mut Status, c: &crate::cluster::ClusterFile) {
    for p in &c.processes {
        match p.binary.as_str() {
            "poold" => s.poold_metrics = p.metrics.clone(),
            "mirrord" => s.mirrord_metrics = p.metrics.clone(),
            _ => {
                if let Some(n) = s
                    .nodes
                    .iter_mut()
                    .find(|n| Some(&n.id) == p.node_id.as_ref())
                {
                    n.metrics = p.metrics.clone();
                }
            }
        }
    }
}
