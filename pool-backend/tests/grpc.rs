//! The `Pool` service end to end: the real poold binary, real chunkd nodes
//! (processes) for garbage collection, and the core repository client.

use std::time::{Duration, Instant};

use blobvirt_core::proto as pb;
use blobvirt_core::{ChunkId, Repo};
use bytes::Bytes;
use testbed::harness::daemons::{Chunkd, Poold};
use tonic::Code;

const CS: u32 = 65536;

fn publish_req(
    name: &str,
    create: bool,
    base: u64,
    n: u64,
    ch: &[(u64, &[u8])],
) -> pb::PublishRequest {
    pb::PublishRequest {
        name: name.into(),
        create,
        chunk_size: CS,
        base_version: base,
        size: n * CS as u64,
        changes: ch
            .iter()
            .map(|(i, id)| pb::ChunkChange {
                index: *i,
                id: Bytes::copy_from_slice(id),
            })
            .collect(),
        ..Default::default()
    }
}

fn code_msg<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("the call should fail");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_leases_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let p = Poold::start(dir.path(), "redb", &[]).await;
    let mut c = p.client();
    let id = ChunkId::of(b"one").0;

    let (code, msg) = code_msg(c.get_blob(pb::GetBlobRequest { name: "x".into() }).await);
    assert_eq!(code, Code::NotFound);
    assert_eq!(
        msg,
        "volume x does not exist; list volumes with blobvirt vol-list"
    );
    let r = c
        .publish(publish_req("v", true, 0, 4, &[(1, &id)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.reupload.len()), (1, 0));
    let (code, msg) = code_msg(c.publish(publish_req("v", true, 0, 4, &[])).await);
    assert_eq!(code, Code::AlreadyExists);
    assert_eq!(
        msg,
        "volume v already exists; pick another name or add --new-version"
    );
    let mut bad = publish_req("w", true, 0, 4, &[]);
    bad.chunk_size = 12345;
    assert_eq!(code_msg(c.publish(bad).await).0, Code::InvalidArgument);
    let (code, msg) = code_msg(
        c.publish(publish_req("v", false, 1, 4, &[(0, b"short")]))
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("chunk index 0 has 5 bytes"), "{msg}");
    assert_eq!(
        code_msg(c.publish(publish_req("v", false, 1, 4, &[(9, &id)])).await).0,
        Code::InvalidArgument
    );
    let (code, msg) = code_msg(c.publish(publish_req("v", false, 7, 4, &[])).await);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.starts_with("volume v is at version 1, not 7;"), "{msg}");
    let (code, msg) = code_msg(
        c.resolve(pb::ResolveRequest {
            name: "v".into(),
            version: 3,
            first_chunk: 0,
            count: 0,
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);
    assert_eq!(msg, "volume v has no version 3; its versions are 1");
    let (code, msg) = code_msg(
        c.delete_volume(pb::DeleteVolumeRequest {
            name: "v".into(),
            version: 1,
            force: false,
        })
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("blobvirt vol-delete v"), "{msg}");
    assert_eq!(
        code_msg(
            c.clone_volume(pb::CloneRequest {
                src: "v".into(),
                version: 0,
                dst: "v".into(),
                ..Default::default()
            })
            .await
        )
        .0,
        Code::AlreadyExists
    );
    let info = c
        .clone_volume(pb::CloneRequest {
            src: "v".into(),
            version: 0,
            dst: "vm".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.origin.as_str(), info.latest_version), ("v@1", 1));
    let r = c
        .resolve(pb::ResolveRequest {
            name: "vm".into(),
            version: 0,
            first_chunk: 0,
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.chunks.len(), 4);
    assert_eq!(&r.chunks[1][..], &id[..]);
    assert!(r.chunks[0].is_empty());

    // Leases.
    let lease = |name: &str, holder: &str| pb::LeaseRequest {
        name: name.into(),
        holder: holder.into(),
        ttl_ms: 0,
    };
    let a = c
        .acquire_lease(lease("v", "node-a"))
        .await
        .unwrap()
        .into_inner();
    assert!(a.granted);
    let b = c
        .acquire_lease(lease("v", "node-b"))
        .await
        .unwrap()
        .into_inner();
    assert!(!b.granted);
    assert_eq!(b.holder, "node-a");
    assert!(
        c.renew_lease(lease("v", "node-a"))
            .await
            .unwrap()
            .into_inner()
            .granted
    );
    assert!(
        !c.renew_lease(lease("v", "node-b"))
            .await
            .unwrap()
            .into_inner()
            .granted
    );
    assert!(
        c.release_lease(lease("v", "node-a"))
            .await
            .unwrap()
            .into_inner()
            .granted
    );
    assert!(
        c.acquire_lease(lease("v", "node-b"))
            .await
            .unwrap()
            .into_inner()
            .granted
    );
    assert_eq!(
        code_msg(c.acquire_lease(lease("nope", "x")).await).0,
        Code::NotFound
    );

    // Profiles: the clone inherits its origin's.
    c.put_profile(pb::Profile {
        name: "v".into(),
        chunks: vec![3, 1],
    })
    .await
    .unwrap();
    let prof = c
        .get_profile(pb::GetProfileRequest { name: "vm".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prof.chunks, vec![3, 1]);
    assert_eq!(
        code_msg(
            c.get_profile(pb::GetProfileRequest {
                name: "nope".into()
            })
            .await
        )
        .0,
        Code::NotFound
    );

    // A volume under a writer's lease is neither renamed nor deleted
    // (unless forced); the refusal names the writer.
    let (code, msg) = code_msg(
        c.rename_volume(pb::RenameRequest {
            name: "v".into(),
            new_name: "v2".into(),
        })
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("node-b"), "{msg}");
    let (code, msg) = code_msg(
        c.delete_volume(pb::DeleteVolumeRequest {
            name: "v".into(),
            version: 0,
            force: false,
        })
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    assert!(
        msg.contains("open for writing by node-b") && msg.contains("--force"),
        "{msg}"
    );
    // A rename of a free volume; never onto an existing one.
    let (code, msg) = code_msg(
        c.rename_volume(pb::RenameRequest {
            name: "vm".into(),
            new_name: "v".into(),
        })
        .await,
    );
    assert_eq!(code, Code::AlreadyExists, "{msg}");
    let b = c
        .rename_volume(pb::RenameRequest {
            name: "vm".into(),
            new_name: "vm2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.name, "vm2");
    assert_eq!(
        code_msg(c.get_blob(pb::GetBlobRequest { name: "vm".into() }).await).0,
        Code::NotFound
    );
    // Deleting a volume with --force drops its lease.
    c.delete_volume(pb::DeleteVolumeRequest {
        name: "v".into(),
        version: 0,
        force: true,
    })
    .await
    .unwrap();
    assert_eq!(
        code_msg(c.acquire_lease(lease("v", "node-c")).await).0,
        Code::NotFound
    );
    let s = c.stats(pb::PoolStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (s.blobs, s.versions, s.live_chunks),
        (1, 1, 1),
        "the clone keeps its chunk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_survives_restart_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--replicas", "3", "--heartbeat-timeout-ms", "600"];
    let mut p = Poold::start(dir.path(), "sled", &args).await;
    let mut c = p.client();
    for (id, port) in [("n2", 2), ("n1", 1)] {
        let r = c
            .register(pb::RegisterRequest {
                id: id.into(),
                addr: format!("127.0.0.1:{port}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.heartbeat_ms > 0 && r.heartbeat_ms < 600);
    }
    assert_eq!(
        code_msg(
            c.register(pb::RegisterRequest {
                id: "".into(),
                addr: "x".into()
            })
            .await
        )
        .0,
        Code::InvalidArgument
    );
    assert!(
        !c.heartbeat(pb::HeartbeatRequest { id: "n9".into() })
            .await
            .unwrap()
            .into_inner()
            .known
    );
    // n2 moves to a new address.
    c.register(pb::RegisterRequest {
        id: "n2".into(),
        addr: "127.0.0.1:22".into(),
    })
    .await
    .unwrap();
    let n = c.nodes(pb::NodesRequest {}).await.unwrap().into_inner();
    assert_eq!(n.replicas, 3);
    let ids: Vec<_> = n
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.addr.as_str(), n.alive))
        .collect();
    assert_eq!(
        ids,
        vec![("n1", "127.0.0.1:1", true), ("n2", "127.0.0.1:22", true)]
    );
    // Only n1 keeps heartbeating.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            c.heartbeat(pb::HeartbeatRequest { id: "n1".into() })
                .await
                .unwrap()
                .into_inner()
                .known
        );
    }
    let n = c.nodes(pb::NodesRequest {}).await.unwrap().into_inner();
    let alive: Vec<_> = n.nodes.iter().map(|n| n.alive).collect();
    assert_eq!(alive, vec![true, false]);

    // SIGTERM: graceful exit with status 0.
    nix::sys::signal::kill(p.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "poold ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "poold exited with {status}");

    // A restarted poold still knows both nodes and treats them as alive.
    p = Poold::start(dir.path(), "sled", &args).await;
    let n = p
        .client()
        .nodes(pb::NodesRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = n.nodes.iter().map(|n| (n.id.as_str(), n.alive)).collect();
    assert_eq!(ids, vec![("n1", true), ("n2", true)]);
}

/// Which of `ids` the chunkd at `addr` has.
async fn has(addr: &str, ids: &[ChunkId]) -> Vec<bool> {
    let mut c = blobvirt_core::client::chunk_client(blobvirt_core::client::channel(addr).unwrap());
    c.has(pb::HasRequest {
        ids: ids.iter().map(|i| Bytes::copy_from_slice(&i.0)).collect(),
    })
    .await
    .unwrap()
    .into_inner()
    .present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_unreferenced_chunks_from_chunkd() {
    let dir = tempfile::tempdir().unwrap();
    let p = Poold::start(
        dir.path().join("pool").as_path(),
        "redb",
        &["--gc-interval-secs", "1", "--gc-grace-secs", "3600"],
    )
    .await;
    let mut chunkds = Vec::new();
    for id in ["n1", "n2"] {
        chunkds.push(Chunkd::start(&dir.path().join(id), &p.url(), id));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = p
            .client()
            .nodes(pb::NodesRequest {})
            .await
            .unwrap()
            .into_inner();
        if n.nodes.iter().filter(|n| n.alive).count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "chunkd nodes did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let repo = Repo::connect(&p.url()).await.unwrap();
    let data: Vec<Bytes> = (0..6u8)
        .map(|i| Bytes::from(vec![i + 1; CS as usize]))
        .collect();
    let ids: Vec<ChunkId> = data.iter().map(|d| ChunkId::of(d)).collect();
    repo.put_chunks(ids.iter().copied().zip(data.iter().cloned()).collect())
        .await
        .unwrap();
    // "keep" uses chunk 0; "tmp" uses all of them.
    let all: Vec<(u64, &[u8])> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (i as u64, &id.0[..]))
        .collect();
    let mut c = p.client();
    c.publish(publish_req("keep", true, 0, 1, &all[..1]))
        .await
        .unwrap();
    c.publish(publish_req("tmp", true, 0, 6, &all))
        .await
        .unwrap();
    c.delete_volume(pb::DeleteVolumeRequest {
        name: "tmp".into(),
        version: 0,
        force: false,
    })
    .await
    .unwrap();
    let s = c.stats(pb::PoolStatsRequest {}).await.unwrap().into_inner();
    assert_eq!((s.live_chunks, s.gc_pending), (1, 5));
    // The grace delay keeps the background pass from deleting anything.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.gc(pb::GcRequest { now: false })
            .await
            .unwrap()
            .into_inner()
            .chunks_deleted,
        0
    );
    let addrs: Vec<String> = ["n1", "n2"]
        .iter()
        .map(|n| std::fs::read_to_string(dir.path().join(n).join("chunkd.addr")).unwrap())
        .collect();
    for a in &addrs {
        assert_eq!(
            has(a, &ids).await,
            vec![true; 6],
            "two replicas on two nodes"
        );
    }
    let epoch_before = repo.gc_epoch();
    let r = c
        .gc(pb::GcRequest { now: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.chunks_deleted, 5);
    for a in &addrs {
        assert_eq!(
            has(a, &ids).await,
            vec![true, false, false, false, false, false]
        );
    }
    let n = c.nodes(pb::NodesRequest {}).await.unwrap().into_inner();
    assert_eq!(n.gc_epoch, epoch_before + 1);
    let s = c.stats(pb::PoolStatsRequest {}).await.unwrap().into_inner();
    assert_eq!((s.live_chunks, s.gc_pending), (1, 0));
    // A client with the old epoch must upload chunk 1 again; then it works.
    let r = c
        .publish(publish_req("again", true, 0, 2, &all[..2]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reupload, vec![Bytes::copy_from_slice(&ids[1].0)]);
    assert_eq!(r.gc_epoch, n.gc_epoch);
    repo.put_chunk(ids[1], data[1].clone()).await.unwrap();
    let mut retry = publish_req("again", true, 0, 2, &all[..2]);
    retry.gc_epoch = r.gc_epoch;
    assert_eq!(c.publish(retry).await.unwrap().into_inner().version, 1);
    drop(chunkds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_gc_drains_the_queue_after_the_grace_delay() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--gc-interval-secs", "1", "--gc-grace-secs", "1"];
    let p = Poold::start(dir.path(), "sled", &args).await;
    let mut c = p.client();
    let id = ChunkId::of(b"bg").0;
    c.publish(publish_req("v", true, 0, 3, &[(2, &id)]))
        .await
        .unwrap();
    c.delete_volume(pb::DeleteVolumeRequest {
        name: "v".into(),
        version: 0,
        force: false,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = c.stats(pb::PoolStatsRequest {}).await.unwrap().into_inner();
        let n = c.nodes(pb::NodesRequest {}).await.unwrap().into_inner();
        if s.gc_pending == 0 {
            assert_eq!(n.gc_epoch, 1);
            break;
        }
        assert_eq!(s.gc_pending, 1);
        assert!(Instant::now() < deadline, "the background GC never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_gc_goes_on_with_a_dead_node_and_defers_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--gc-interval-secs",
        "1",
        "--gc-grace-secs",
        "1",
        "--heartbeat-timeout-ms",
        "300",
    ];
    let p = Poold::start(dir.path(), "redb", &args).await;
    let mut c = p.client();
    // A node that registers and then never heartbeats again.
    c.register(pb::RegisterRequest {
        id: "ghost".into(),
        addr: "127.0.0.1:1".into(),
    })
    .await
    .unwrap();
    let id = ChunkId::of(b"wait").0;
    c.publish(publish_req("v", true, 0, 1, &[(0, &id)]))
        .await
        .unwrap();
    c.delete_volume(pb::DeleteVolumeRequest {
        name: "v".into(),
        version: 0,
        force: false,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let s = c.stats(pb::PoolStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        s.gc_pending, 0,
        "background GC does not wait for the dead node"
    );
    assert_eq!(s.gc_deferred, 1, "the dead node's deletion waits for it");
    // It comes back: its deletion goes through GC again.
    c.register(pb::RegisterRequest {
        id: "ghost".into(),
        addr: "127.0.0.1:1".into(),
    })
    .await
    .unwrap();
    let mut deferred = 1;
    for _ in 0..50 {
        let _ = c
            .heartbeat(pb::HeartbeatRequest { id: "ghost".into() })
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        deferred = c
            .stats(pb::PoolStatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .gc_deferred;
        if deferred == 0 {
            break;
        }
    }
    assert_eq!(deferred, 0, "handed back to GC once the node is up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_and_label_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let p = Poold::start(dir.path(), "redb", &[]).await;
    let repo = Repo::connect(&p.url()).await.unwrap();
    let mut c = p.client();
    let (a, b) = (ChunkId::of(b"a").0, ChunkId::of(b"b").0);
    c.publish(publish_req("v", true, 0, 4, &[(1, &a)]))
        .await
        .unwrap();
    let mut r2 = publish_req("v", false, 1, 6, &[(1, &b)]);
    r2.label = "snapshot:dom/s1".into();
    c.publish(r2).await.unwrap();
    assert_eq!(repo.revert("v", 1, "revert:dom/s0").await.unwrap(), 3);
    let info = repo.get_blob("v").await.unwrap();
    assert_eq!(info.latest_version, 3);
    let labels: Vec<_> = info.versions.iter().map(|v| v.label.as_str()).collect();
    assert_eq!(labels, ["", "snapshot:dom/s1", "revert:dom/s0"]);
    let latest = repo.resolve("v", 0).await.unwrap();
    let v1 = repo.resolve("v", 1).await.unwrap();
    assert_eq!((latest.size, &latest.chunks), (v1.size, &v1.chunks));
    let vi = repo.label_version("v", 2, "").await.unwrap();
    assert_eq!(
        (vi.version, vi.label.as_str(), vi.size),
        (2, "", 6 * CS as u64)
    );
    let e = repo.revert("v", 7, "").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    assert!(e.to_string().contains("its versions are 1, 2, 3"), "{e}");
    let e = repo.revert("nope", 1, "").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    let e = repo.revert("v", 0, "").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    assert_eq!(repo.get_blob("v").await.unwrap().versions.len(), 3);
}
