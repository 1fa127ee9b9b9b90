//! Self-healing end to end: poold and several chunkd processes on
//! loopback. Recovery after a chunkd dies for good, rebalance onto new
//! nodes, drain and remove, scrub of flipped bytes, GC while a node is
//! down, and fsck. The data sizes are small for CI; `bench/heal.sh` runs
//! the recovery with 2 GiB (`HEAL_MIB`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use blobvirt_core::client::{channel, chunk_client};
use blobvirt_core::proto as pb;
use blobvirt_core::ChunkId;
use bytes::Bytes;
use testbed::harness::cli;
use testbed::harness::daemons::Cluster;
use testbed::harness::data::{chunk_on_disk, random_bytes, ChunkOnDisk, MIB};
use testbed::harness::wait_until;

const CHUNK: u32 = 256 * 1024;

/// Every chunk id that some version of some volume references.
fn referenced(c: &Cluster) -> BTreeSet<ChunkId> {
    let mut out = BTreeSet::new();
    for b in c.rt.block_on(c.repo.list_blobs()).unwrap() {
        for v in &b.versions {
            let r = c.rt.block_on(c.repo.resolve(&b.name, v.version)).unwrap();
            out.extend(r.chunks.iter().flatten().copied());
        }
    }
    out
}

/// Replicas of each of `ids`, asked with Has of every live chunkd.
fn replicas(c: &Cluster, ids: &BTreeSet<ChunkId>) -> HashMap<ChunkId, usize> {
    let _rt = c.rt.enter();
    let ids: Vec<ChunkId> = ids.iter().copied().collect();
    let mut n: HashMap<ChunkId, usize> = ids.iter().map(|i| (*i, 0)).collect();
    c.rt.block_on(c.repo.refresh()).unwrap();
    for m in c.repo.placement().members().iter().filter(|m| m.alive) {
        let mut cl = chunk_client(channel(&m.addr).unwrap());
        for batch in ids.chunks(1000) {
            let req = pb::HasRequest {
                ids: batch.iter().map(|i| Bytes::copy_from_slice(&i.0)).collect(),
            };
            let Ok(r) = c.rt.block_on(cl.has(req)) else {
                continue;
            };
            for (id, p) in batch.iter().zip(r.into_inner().present) {
                if p {
                    *n.get_mut(id).unwrap() += 1;
                }
            }
        }
    }
    n
}

fn all_at(c: &Cluster, want: usize) -> bool {
    let refs = referenced(c);
    replicas(c, &refs).values().all(|n| *n >= want)
}

fn stats(c: &Cluster) -> pb::PoolStatsReply {
    let _rt = c.rt.enter();
    c.rt.block_on(c.poold.client().stats(pb::PoolStatsRequest {}))
        .unwrap()
        .into_inner()
}

/// Volumes v0..vN of `mib` MiB in all, plus a second version of v0 with
/// its first quarter rewritten; returns (name, version, bytes) of each.
fn volumes(c: &Cluster, n: usize, mib: u64) -> Vec<(String, u64, Vec<u8>)> {
    let each = (mib * MIB / n as u64) as usize;
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("v{i}");
        let data = random_bytes(100 + i as u64, each);
        let v = c.import(&name, &data, CHUNK);
        out.push((name, v, data));
    }
    let mut d2 = out[0].2.clone();
    d2[..each / 4].copy_from_slice(&random_bytes(7, each / 4));
    let p = c.dir.path().join("v0-2.import");
    std::fs::write(&p, &d2).unwrap();
    let opts = blobvirt_core::transfer::ImportOpts {
        new_version: true,
        ..Default::default()
    };
    let r =
        c.rt.block_on(blobvirt_core::transfer::import_file(
            &c.repo, &p, "v0", &opts, None,
        ))
        .unwrap();
    std::fs::remove_file(&p).unwrap();
    out.push(("v0".into(), r.version, d2));
    out
}

fn exports_exact(c: &Cluster, vols: &[(String, u64, Vec<u8>)]) {
    c.rt.block_on(c.repo.refresh()).unwrap();
    for (name, v, data) in vols {
        assert!(
            c.export(name, *v) == *data,
            "{name}@{v} does not export exactly"
        );
    }
}

fn mib_from_env() -> u64 {
    std::env::var("HEAL_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48)
}

#[test]
fn a_dead_node_is_replaced_and_a_second_death_loses_nothing() {
    let mib = mib_from_env();
    let mut c = Cluster::start_with(
        6,
        2,
        &[
            "--heartbeat-timeout-ms",
            "1000",
            "--out-after-secs",
            "3",
            "--recovery-mbps",
            "0",
        ],
    );
    let vols = volumes(&c, 3, mib);
    assert!(all_at(&c, 2), "every chunk starts with 2 replicas");
    let before = stats(&c).recovery_copied_chunks;
    c.kill_chunkd(2);
    let killed = Instant::now();
    // Down first: degraded, and nothing is copied before the out time.
    assert!(c.wait_up(5));
    let refs = referenced(&c);
    let degraded = replicas(&c, &refs).values().filter(|n| **n < 2).count();
    assert!(degraded > 0, "node-2 held replicas");
    let healed = wait_until(Duration::from_secs(60 + mib / 8), || all_at(&c, 2));
    let took = killed.elapsed();
    assert!(
        healed,
        "2 live replicas of every chunk within the out time plus recovery"
    );
    // Out 3 s after the last heartbeat (every 250 ms) before the kill.
    assert!(
        took >= Duration::from_millis(2500),
        "recovery waited for the out time: {took:?}"
    );
    let s = stats(&c);
    assert_eq!(
        s.recovery_copied_chunks - before,
        degraded as u64,
        "one copy per degraded chunk"
    );
    assert_eq!(s.degraded_chunks, 0);
    assert!(!s.recovery_running || s.recovery_copied_bytes > 0);
    eprintln!(
        "recovery: {degraded} chunks ({} MiB) in {:.1} s after the kill (3 s out time): {:.0} MiB/s after it",
        s.recovery_copied_bytes / MIB,
        took.as_secs_f64(),
        s.recovery_copied_bytes as f64 / MIB as f64 / (took.as_secs_f64() - 3.0).max(0.1)
    );
    // The status shows it.
    let st = cli::ok(Some(&c.pool), &["cluster", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["recovery"]["degraded_chunks"], 0);
    assert!(st["recovery"]["copied_chunks"].as_u64().unwrap() >= degraded as u64);
    let node2 = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node-2")
        .unwrap()
        .clone();
    assert_eq!(node2["state"], "out");
    // A second death: everything still exports exactly.
    c.kill_chunkd(4);
    assert!(c.wait_up(4));
    exports_exact(&c, &vols);
    // And fsck finds nothing wrong once the second node is replaced too.
    assert!(wait_until(Duration::from_secs(60), || all_at(&c, 2)));
    cli::ok(Some(&c.pool), &["fsck"]);
}

#[test]
fn new_nodes_take_their_share_and_old_copies_go() {
    let mut c = Cluster::start_with(4, 2, &["--recovery-mbps", "20"]);
    // 64 KiB chunks: enough of them for the balance to be measurable.
    let data = random_bytes(5, 96 * MIB as usize);
    c.import("big", &data, 64 * 1024);
    let refs = referenced(&c);
    c.add_chunkd();
    c.add_chunkd();
    assert!(c.wait_up(6));
    // Exports are exact while chunks move (throttled to 20 MB/s).
    let mut exports = 0;
    let settled = wait_until(Duration::from_secs(120), || {
        assert!(
            c.export("big", 1) == data,
            "an export during the rebalance differs"
        );
        exports += 1;
        let total: usize = (0..6).map(|i| c.chunks_of(i).len()).sum();
        total == refs.len() * 2 && (4..6).all(|i| !c.chunks_of(i).is_empty())
    });
    assert!(settled, "stored copies return to data x replicas");
    assert!(exports >= 2, "exports ran during the rebalance");
    let counts: Vec<usize> = (0..6).map(|i| c.chunks_of(i).len()).collect();
    let (mx, mn) = (*counts.iter().max().unwrap(), *counts.iter().min().unwrap());
    assert!(mx as f64 <= 1.25 * mn as f64, "balanced: {counts:?}");
    assert!(all_at(&c, 2));
    assert!(c.stored_bytes() <= data.len() as u64 * 2);
}

#[test]
fn a_drained_node_ends_empty_and_remove_refuses_last_copies() {
    let mut c = Cluster::start_with(4, 2, &["--heartbeat-timeout-ms", "1000"]);
    let vols = volumes(&c, 2, 24);
    let pool = c.pool.clone();
    let p = Some(pool.as_str());
    let out = cli::ok(p, &["node", "drain", "node-1"]);
    assert!(out.contains("node-1 is draining"), "{out}");
    assert!(
        wait_until(Duration::from_secs(60), || c.chunks_of(1).is_empty()),
        "node-1 still holds {} chunks",
        c.chunks_of(1).len()
    );
    assert!(all_at(&c, 2));
    exports_exact(&c, &vols);
    let list: serde_json::Value =
        serde_json::from_str(&cli::ok(p, &["node", "list", "--json"])).unwrap();
    let n1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node-1")
        .unwrap()
        .clone();
    assert_eq!(n1["draining"], true);
    assert_eq!(n1["chunks"], 0);
    // Kill node-3: the chunks it shared with node-0 now live on node-0 only.
    c.kill_chunkd(3);
    assert!(c.wait_up(3));
    let refs = referenced(&c);
    let on3: BTreeSet<ChunkId> = c.chunks_of(3).into_iter().collect();
    let only0 = c
        .chunks_of(0)
        .into_iter()
        .filter(|id| refs.contains(id) && on3.contains(id))
        .count();
    assert!(only0 > 0);
    let err = cli::fail(p, &["node", "remove", "node-0"]);
    assert!(
        err.contains(&format!("holds the only copy of {only0} referenced chunks")),
        "{err}"
    );
    let err = cli::fail(p, &["node", "remove", "node-1"]);
    assert!(err.contains("while its chunkd runs"), "{err}");
    let err = cli::fail(p, &["node", "remove", "node-9"]);
    assert!(err.contains("node node-9 is not a member"), "{err}");
    // node-3 is down and holds no last copy: it can go, and its chunks
    // get new replicas at once.
    let out = cli::ok(p, &["node", "remove", "node-3"]);
    assert!(out.contains("node-3 is removed"), "{out}");
    assert!(wait_until(Duration::from_secs(60), || all_at(&c, 2)));
    exports_exact(&c, &vols);
}

/// Chunk `id` as node `node` holds it on disk.
fn on_disk(c: &Cluster, node: usize, id: &ChunkId) -> Option<ChunkOnDisk> {
    chunk_on_disk(&c.chunkds[node].dir, id)
}

#[test]
fn scrub_repairs_flipped_bytes_and_names_what_is_lost() {
    let c = Cluster::start(4, 2);
    let vols = volumes(&c, 2, 24);
    let p = Some(c.pool.as_str());
    // 20 distinct chunks, one replica each, spread over the nodes.
    let mut flipped = Vec::new();
    let mut done = BTreeSet::new();
    'outer: for round in 0.. {
        for n in 0..4 {
            let ids = c.chunks_of(n);
            if let Some(id) = ids.iter().skip(round).find(|id| !done.contains(*id)) {
                on_disk(&c, n, id).unwrap().flip();
                done.insert(*id);
                flipped.push((n, *id));
                if flipped.len() == 20 {
                    break 'outer;
                }
            }
        }
    }
    let r: serde_json::Value =
        serde_json::from_str(&cli::ok(p, &["scrub", "--now", "--json"])).unwrap();
    assert_eq!(r["corrupt_replicas"], 20, "{r}");
    assert_eq!(r["copied_chunks"], 20, "{r}");
    assert_eq!(r["degraded_chunks_after"], 0, "{r}");
    for (n, id) in &flipped {
        let b = on_disk(&c, *n, id).expect("repaired copy").read();
        assert!(id.verifies(&b), "chunk {id} on node-{n} is repaired");
    }
    assert!(all_at(&c, 2));
    exports_exact(&c, &vols);
    // Both replicas of one chunk of v1 corrupt: reported with its user.
    let v1 = c.rt.block_on(c.repo.resolve("v1", 1)).unwrap();
    let id = v1.chunks[3].unwrap();
    for n in 0..4 {
        if let Some(o) = on_disk(&c, n, &id) {
            o.flip();
        }
    }
    let o = cli::run(p, &["scrub", "--now"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        out.contains(&format!(
            "lost: chunk {} has no good replica left; used by v1@1",
            id.to_hex()
        )),
        "{out}"
    );
    assert!(
        err.contains("1 chunks have no good replica on any live node (used by v1@1)"),
        "{err}"
    );
}

#[test]
fn gc_goes_on_while_a_node_is_down_and_catches_up_when_it_returns() {
    let mut c = Cluster::start_with(
        4,
        2,
        &["--heartbeat-timeout-ms", "1000", "--gc-grace-secs", "0"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _rt = rt.enter();
    let keep = random_bytes(1, 8 * MIB as usize);
    let gone = random_bytes(2, 16 * MIB as usize);
    c.import("keep", &keep, CHUNK);
    c.import("gone", &gone, CHUNK);
    let gone_ids: BTreeSet<ChunkId> =
        c.rt.block_on(c.repo.resolve("gone", 1))
            .unwrap()
            .chunks
            .iter()
            .flatten()
            .copied()
            .collect();
    let on2_before = c
        .chunks_of(2)
        .iter()
        .filter(|i| gone_ids.contains(i))
        .count();
    assert!(on2_before > 0);
    c.kill_chunkd(2);
    assert!(c.wait_up(3));
    cli::ok(Some(&c.pool), &["vol-delete", "gone"]);
    // The explicit pass or a background one (grace 0) frees the live nodes.
    let freed = wait_until(Duration::from_secs(30), || {
        let _ =
            c.rt.block_on(c.poold.client().gc(pb::GcRequest { now: true }));
        [0, 1, 3]
            .iter()
            .all(|n| !c.chunks_of(*n).iter().any(|i| gone_ids.contains(i)))
    });
    assert!(
        freed,
        "the live nodes still hold chunks of the deleted volume"
    );
    assert_eq!(
        stats(&c).gc_deferred as usize,
        gone_ids.len(),
        "deferred for node-2"
    );
    assert_eq!(
        c.chunks_of(2)
            .iter()
            .filter(|i| gone_ids.contains(i))
            .count(),
        on2_before,
        "node-2 is down: untouched"
    );
    c.restart_chunkd(2);
    assert!(c.wait_up(4));
    let caught_up = wait_until(Duration::from_secs(30), || {
        let _ =
            c.rt.block_on(c.poold.client().gc(pb::GcRequest { now: true }));
        !c.chunks_of(2).iter().any(|i| gone_ids.contains(i))
    });
    assert!(caught_up, "node-2's share is freed once it is back");
    assert_eq!(stats(&c).gc_deferred, 0);
    assert!(c.export("keep", 1) == keep);
    cli::ok(Some(&c.pool), &["fsck"]);
}

#[test]
fn fsck_finds_orphans_and_repair_hands_them_to_gc() {
    let c = Cluster::start_with(3, 2, &["--gc-grace-secs", "0"]);
    let _rt = c.rt.enter();
    let data = random_bytes(9, 4 * MIB as usize);
    c.import("a", &data, CHUNK);
    let p = Some(c.pool.as_str());
    cli::ok(p, &["fsck"]);
    // A chunk nobody references, stored straight on a node.
    let orphan = random_bytes(10, 4096);
    let id = ChunkId::of(&orphan);
    let addr = c.repo.placement().members()[0].addr.clone();
    let mut cl = chunk_client(channel(&addr).unwrap());
    c.rt.block_on(cl.put(pb::PutRequest {
        id: Bytes::copy_from_slice(&id.0),
        data: Bytes::from(orphan),
        staged: false,
    }))
    .unwrap();
    let err = cli::fail(p, &["fsck"]);
    assert!(
        err.contains("1 chunks on the nodes are referenced by nothing; run blobvirt fsck --repair"),
        "{err}"
    );
    let out = cli::ok(p, &["fsck", "--repair"]);
    assert!(
        out.contains("repaired: queued 1 orphan chunks for garbage collection"),
        "{out}"
    );
    c.rt.block_on(c.poold.client().gc(pb::GcRequest { now: true }))
        .unwrap();
    assert!(!c.chunks_of(0).contains(&id));
    cli::ok(p, &["fsck"]);
    assert!(c.export("a", 1) == data);
}

#[test]
fn leases_survive_a_poold_restart_and_expire() {
    let d = testbed::harness::tempdir("lease");
    let dir = d.path().join("poold");
    let args = ["--listen", "127.0.0.1:0", "--lease-ttl-ms", "1500"];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _rt = rt.enter();
    let mut p = testbed::harness::daemons::Poold::start_logged(&dir, &args);
    let mut cl = p.client();
    let req = pb::PublishRequest {
        name: "v".into(),
        create: true,
        chunk_size: CHUNK,
        size: 0,
        ..Default::default()
    };
    rt.block_on(cl.publish(req)).unwrap();
    let lease = |cl: &mut blobvirt_core::proto::pool_client::PoolClient<
        blobvirt_core::client::PoolChannel,
    >,
                 holder: &str| {
        rt.block_on(cl.acquire_lease(pb::LeaseRequest {
            name: "v".into(),
            holder: holder.into(),
            ttl_ms: 0,
        }))
        .unwrap()
        .into_inner()
    };
    assert!(lease(&mut cl, "mirrord@a").granted);
    p.kill();
    let p = testbed::harness::daemons::Poold::start_logged(&dir, &args);
    let mut cl = p.client();
    let r = lease(&mut cl, "mirrord@b");
    assert!(!r.granted, "the lease survived the restart");
    assert_eq!(r.holder, "mirrord@a");
    let err = rt
        .block_on(cl.delete_volume(pb::DeleteVolumeRequest {
            name: "v".into(),
            version: 0,
            force: false,
        }))
        .unwrap_err();
    assert!(
        err.message().contains("open for writing by mirrord@a"),
        "{}",
        err.message()
    );
    // Nobody renews: it expires and frees the volume.
    assert!(wait_until(Duration::from_secs(10), || lease(
        &mut cl,
        "mirrord@b"
    )
    .granted));
}
