//! Crash consistency of the real poold binary on every engine: a client
//! streams publishes, poold is SIGKILLed mid-stream and restarted on the
//! same directory, and then every acknowledged version must resolve exactly
//! to its expected chunk map, and no other version may exist except the one
//! in flight at the kill (which must then be complete).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blobvirt_core::proto as pb;
use blobvirt_core::ChunkId;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use testbed::harness::daemons::Poold;

const CS: u32 = 65536;

type Map = Vec<Option<u64>>;

fn cid(label: u64) -> ChunkId {
    ChunkId::of(&label.to_le_bytes())
}

fn bytes_of(c: Option<u64>) -> Bytes {
    c.map_or_else(Bytes::new, |l| Bytes::copy_from_slice(&cid(l).0))
}

async fn resolve(p: &Poold, v: u64) -> Vec<Bytes> {
    let r = p
        .client()
        .resolve(pb::ResolveRequest {
            name: "vol".into(),
            version: v,
            first_chunk: 0,
            count: 0,
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(r.version, v);
    assert_eq!(r.size, r.chunks.len() as u64 * CS as u64);
    r.chunks
}

fn want(map: &Map) -> Vec<Bytes> {
    map.iter().map(|c| bytes_of(*c)).collect()
}

/// The operation a client had in flight when poold died.
#[derive(Clone, Debug)]
enum Op {
    Publish(u64, Map),
    Delete(u64),
}

/// Checks the restarted poold against what the client saw, and brings
/// `acked` up to date with the in-flight operation if it happened.
async fn verify(p: &Poold, acked: &mut BTreeMap<u64, Map>, inflight: Option<Op>) {
    let info = p
        .client()
        .get_blob(pb::GetBlobRequest { name: "vol".into() })
        .await
        .expect("get_blob")
        .into_inner();
    let present: BTreeSet<u64> = info.versions.iter().map(|v| v.version).collect();
    if let Some(Op::Delete(v)) = &inflight {
        if !present.contains(v) {
            acked.remove(v);
        }
    }
    for (v, map) in acked.iter() {
        assert!(present.contains(v), "acknowledged version {v} is gone");
        assert_eq!(resolve(p, *v).await, want(map), "version {v} differs");
    }
    for v in &present {
        if acked.contains_key(v) {
            continue;
        }
        let Some(Op::Publish(fv, map)) = &inflight else {
            panic!("version {v} exists but was never published");
        };
        assert_eq!(v, fv, "version {v} exists but only {fv} was in flight");
        assert_eq!(
            resolve(p, *v).await,
            want(map),
            "in-flight version {v} is partial"
        );
    }
    if let Some(Op::Publish(fv, map)) = inflight {
        if present.contains(&fv) {
            acked.insert(fv, map);
        }
    }
}

/// `etcd`: the members' endpoints, for `--engine etcd`.
async fn crash_run(engine: &str, seed: u64, etcd: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--gc-interval-secs", "3600"];
    if let Some(e) = &etcd {
        args.extend(["--etcd-endpoints", e.as_str()]);
    }
    let etcd_opts = etcd.as_ref().map(|e| {
        pool_backend::kv::etcd_engine::EtcdOptions::new(
            e.split(',').map(str::to_string).collect(),
            "/blobvirt/",
        )
    });
    let mut p = Poold::start(dir.path(), engine, &args).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acked: BTreeMap<u64, Map> = BTreeMap::new();

    let first: Map = (0..512).map(|i| (i % 3 == 0).then_some(i)).collect();
    let r = p
        .client()
        .publish(pb::PublishRequest {
            name: "vol".into(),
            create: true,
            chunk_size: CS,
            size: first.len() as u64 * CS as u64,
            changes: first
                .iter()
                .enumerate()
                .map(|(i, c)| pb::ChunkChange {
                    index: i as u64,
                    id: bytes_of(*c),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.version, 1);
    acked.insert(1, first);

    for round in 0..4 {
        let shared = Arc::new(Mutex::new(acked.clone()));
        let inflight: Arc<Mutex<Option<Op>>> = Arc::default();
        let stream = {
            let (shared, inflight) = (shared.clone(), inflight.clone());
            let mut client = p.client();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + round);
            tokio::spawn(async move {
                let mut n = 0u32;
                loop {
                    let (base, map, old) = {
                        let a = shared.lock().unwrap();
                        let (v, m) = a.last_key_value().unwrap();
                        let old: Vec<u64> = a.keys().copied().filter(|o| o != v).collect();
                        (*v, m.clone(), old)
                    };
                    // Now and then drop an old version (never the latest).
                    if old.len() > 3 && rng.gen_bool(0.15) {
                        let v = old[rng.gen_range(0..old.len())];
                        *inflight.lock().unwrap() = Some(Op::Delete(v));
                        let req = pb::DeleteVolumeRequest {
                            name: "vol".into(),
                            version: v,
                            force: false,
                        };
                        match client.delete_volume(req).await {
                            Ok(_) => {
                                shared.lock().unwrap().remove(&v);
                                *inflight.lock().unwrap() = None;
                                continue;
                            }
                            Err(_) => return n,
                        }
                    }
                    let mut next = map.clone();
                    if rng.gen_bool(0.1) {
                        next.resize(rng.gen_range(300..800), None);
                    }
                    let mut changes = Vec::new();
                    for _ in 0..rng.gen_range(1..60) {
                        let i = rng.gen_range(0..next.len());
                        let c = rng.gen_bool(0.9).then(|| rng.gen_range(0..5000u64));
                        next[i] = c;
                        changes.push(pb::ChunkChange {
                            index: i as u64,
                            id: bytes_of(c),
                        });
                    }
                    *inflight.lock().unwrap() = Some(Op::Publish(base + 1, next.clone()));
                    let req = pb::PublishRequest {
                        name: "vol".into(),
                        base_version: base,
                        size: next.len() as u64 * CS as u64,
                        changes,
                        ..Default::default()
                    };
                    match client.publish(req).await {
                        Ok(r) => {
                            let r = r.into_inner();
                            assert!(r.reupload.is_empty());
                            assert_eq!(r.version, base + 1, "versions are consecutive here");
                            shared.lock().unwrap().insert(r.version, next);
                            *inflight.lock().unwrap() = None;
                            n += 1;
                        }
                        Err(_) => return n,
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..900))).await;
        p.kill();
        let n = tokio::time::timeout(Duration::from_secs(30), stream)
            .await
            .expect("the client notices the crash")
            .unwrap();
        assert!(n > 0, "round {round}: no publish was acknowledged");
        acked = shared.lock().unwrap().clone();
        let inflight = inflight.lock().unwrap().clone();
        // Every reference count and counter on disk is consistent.
        {
            use clap::ValueEnum;
            let e = pool_backend::kv::Engine::from_str(engine, true).unwrap();
            let kv = pool_backend::kv::open(e, dir.path(), etcd_opts.as_ref()).unwrap();
            let meta = pool_backend::Meta::new(kv).unwrap();
            assert_eq!(meta.check().unwrap(), Vec::<String>::new(), "round {round}");
        }
        p = Poold::start(dir.path(), engine, &args).await;
        verify(&p, &mut acked, inflight).await;
        eprintln!(
            "{engine} round {round}: {n} publishes acknowledged, {} versions",
            acked.len()
        );
    }

    // Reference counts survived the crashes: the live chunks are exactly
    // those of the versions, and deleting the volume frees everything.
    let s = p
        .client()
        .stats(pb::PoolStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let live: BTreeSet<u64> = acked.values().flatten().flatten().copied().collect();
    assert_eq!(s.live_chunks, live.len() as u64);
    assert_eq!(s.versions, acked.len() as u64);
    p.client()
        .delete_volume(pb::DeleteVolumeRequest {
            name: "vol".into(),
            version: 0,
            force: false,
        })
        .await
        .unwrap();
    let s = p
        .client()
        .stats(pb::PoolStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.blobs, s.versions, s.meta_nodes, s.live_chunks),
        (0, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_redb() {
    crash_run("redb", 1, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sled() {
    crash_run("sled", 2, None).await;
}

/// On a 3-member etcd cluster on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_etcd() {
    let etcd = testbed::harness::etcd::EtcdCluster::start(3);
    crash_run("etcd", 3, Some(etcd.endpoints_arg())).await;
}
