//! Self-healing from the command line: `node list|drain|remove`, `scrub`
//! and `fsck`. The work is poold's (`pool-backend/src/heal`); these ask it
//! and print what it found.
//!
//! JSON: `node list --json` prints the `nodes` of `cluster status --json`;
//! `scrub --json` and `fsck --json` print poold's `RepairReply` fields
//! (`referenced_chunks`, `degraded_chunks_before`, `degraded_chunks_after`, `copied_chunks`,
//! `copied_bytes`, `removed_copies`, `lost` (each `id`, `used_by`),
//! `scrubbed_chunks`, `corrupt_replicas`, `orphan_chunks`, `problems`,
//! `repaired`, `seconds`).

use anyhow::{anyhow, bail, Result};
use blobvirt_core::client::{pool_channel, pool_client};
use blobvirt_core::proto as pb;
use blobvirt_core::proto::pool_client::PoolClient;
use serde::Serialize;

use crate::cli::{Fsck, JsonFlag, NodeDrain, NodeRemove, Scrub};
use crate::output::{human_size, print_json, Table};
use crate::status::NodeStatus;

fn pool(url: &str) -> Result<PoolClient<blobvirt_core::client::PoolChannel>> {
    Ok(pool_client(pool_channel(url).map_err(|e| {
        anyhow!("pool URL {url} cannot be used ({e}); pass --pool https://HOST:PORT")
    })?))
}

fn sentence(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}

/// One word for a node's state: up, down, out, plus "draining".
pub fn state_word(n: &NodeStatus) -> String {
    let st = if n.state.is_empty() {
        if n.alive {
            "up"
        } else {
            "down"
        }
    } else {
        &n.state
    };
    if n.draining {
        format!("{st},draining")
    } else {
        st.to_string()
    }
}

pub async fn node_list(p: Option<&str>, a: JsonFlag) -> Result<()> {
    let s = crate::status::collect(&crate::vol::pool_url(p)?).await?;
    if a.json {
        return print_json(&s.nodes);
    }
    let mut t = Table::new(&["NODE", "ADDR", "STATE", "CHUNKS", "BYTES", "FREE"]);
    for n in &s.nodes {
        t.row(vec![
            n.id.clone(),
            n.addr.clone(),
            state_word(n),
            n.chunks.to_string(),
            human_size(n.bytes),
            human_size(n.free_bytes),
        ]);
    }
    t.print();
    Ok(())
}

pub async fn node_drain(p: Option<&str>, a: NodeDrain) -> Result<()> {
    let req = pb::NodeRequest {
        id: a.node,
        undo: a.undo,
        force: false,
    };
    let r = pool(&crate::vol::pool_url(p)?)?
        .drain_node(req)
        .await
        .map_err(sentence)?;
    println!("{}", r.into_inner().message);
    Ok(())
}

pub async fn node_remove(p: Option<&str>, a: NodeRemove) -> Result<()> {
    let req = pb::NodeRequest {
        id: a.node,
        undo: false,
        force: a.force,
    };
    let r = pool(&crate::vol::pool_url(p)?)?
        .remove_node(req)
        .await
        .map_err(sentence)?;
    println!("{}", r.into_inner().message);
    Ok(())
}

#[derive(Serialize)]
struct Lost {
    id: String,
    used_by: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    referenced_chunks: u64,
    degraded_chunks_before: u64,
    degraded_chunks_after: u64,
    copied_chunks: u64,
    copied_bytes: u64,
    removed_copies: u64,
    lost: Vec<Lost>,
    scrubbed_chunks: u64,
    corrupt_replicas: u64,
    orphan_chunks: u64,
    problems: Vec<String>,
    repaired: Vec<String>,
    seconds: f64,
}

impl From<pb::RepairReply> for Report {
    fn from(r: pb::RepairReply) -> Self {
        Report {
            referenced_chunks: r.referenced,
            degraded_chunks_before: r.degraded_before,
            degraded_chunks_after: r.degraded_after,
            copied_chunks: r.copied_chunks,
            copied_bytes: r.copied_bytes,
            removed_copies: r.removed_copies,
            lost: r
                .lost
                .into_iter()
                .map(|l| Lost {
                    id: blobvirt_core::ChunkId::from_slice(&l.id)
                        .map_or_else(String::new, |c| c.to_hex()),
                    used_by: l.used_by,
                })
                .collect(),
            scrubbed_chunks: r.scrubbed_chunks,
            corrupt_replicas: r.corrupt_replicas,
            orphan_chunks: r.orphan_chunks,
            problems: r.problems,
            repaired: r.repaired,
            seconds: r.seconds,
        }
    }
}

async fn repair(p: Option<&str>, req: pb::RepairRequest) -> Result<Report> {
    let r = pool(&crate::vol::pool_url(p)?)?
        .repair(req)
        .await
        .map_err(sentence)?;
    Ok(r.into_inner().into())
}

fn print_lost(r: &Report) {
    for l in &r.lost {
        let used = if l.used_by.is_empty() {
            "no version".to_string()
        } else {
            l.used_by.join(", ")
        };
        println!(
            "lost: chunk {} has no good replica left; used by {used}",
            l.id
        );
    }
}

/// Fails when chunks are lost, naming how many and what uses them.
fn lost_error(r: &Report) -> Result<()> {
    if r.lost.is_empty() {
        return Ok(());
    }
    let mut vols: Vec<&str> = r
        .lost
        .iter()
        .flat_map(|l| l.used_by.iter().map(String::as_str))
        .collect();
    vols.sort_unstable();
    vols.dedup();
    bail!(
        "{} chunks have no good replica on any live node (used by {}); bring back the nodes that are down, or restore those volumes from a backup",
        r.lost.len(),
        if vols.is_empty() { "no version".into() } else { vols.join(", ") }
    )
}

pub async fn scrub(p: Option<&str>, a: Scrub) -> Result<()> {
    if !a.now {
        bail!("chunkd scrubs in the background at [chunkd] scrub_mbps; pass --now to run a full pass now and wait for it");
    }
    let req = pb::RepairRequest {
        scrub: true,
        fsck: false,
        repair: false,
    };
    let r = repair(p, req).await?;
    if a.json {
        print_json(&r)?;
    } else {
        println!(
            "scrubbed {} chunk replicas: {} corrupt, quarantined and copied again from good replicas; {} replicas copied in all ({}), {} of {} referenced chunks below the replica count now ({:.1} s)",
            r.scrubbed_chunks,
            r.corrupt_replicas,
            r.copied_chunks,
            human_size(r.copied_bytes),
            r.degraded_chunks_after,
            r.referenced_chunks,
            r.seconds
        );
        print_lost(&r);
    }
    lost_error(&r)
}

pub async fn fsck(p: Option<&str>, a: Fsck) -> Result<()> {
    let req = pb::RepairRequest {
        scrub: false,
        fsck: true,
        repair: a.repair,
    };
    // Without --repair the pass still copies missing replicas: self-healing
    // does that anyway; --repair adds the orphans.
    let r = repair(p, req).await?;
    if a.json {
        print_json(&r)?;
    } else {
        println!(
            "{} referenced chunks: {} below the replica count before, {} after; {} orphan chunks on the nodes; {} metadata problems",
            r.referenced_chunks,
            r.degraded_chunks_before,
            r.degraded_chunks_after,
            r.orphan_chunks,
            r.problems.len()
        );
        for pr in &r.problems {
            println!("problem: {pr}");
        }
        for fix in &r.repaired {
            println!("repaired: {fix}");
        }
        print_lost(&r);
    }
    lost_error(&r)?;
    if !r.problems.is_empty() {
        bail!(
            "the metadata store has {} inconsistencies; keep a copy of poold's directory and report them",
            r.problems.len()
        );
    }
    if r.orphan_chunks > 0 && !a.repair {
        bail!(
            "{} chunks on the nodes are referenced by nothing; run blobvirt fsck --repair to hand them to garbage collection",
            r.orphan_chunks
        );
    }
    if r.degraded_chunks_after > 0 {
        bail!(
            "{} chunks still have fewer replicas than configured; bring nodes back or add nodes, then run blobvirt fsck again",
            r.degraded_chunks_after
        );
    }
    Ok(())
}
