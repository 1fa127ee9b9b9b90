//! Several poold instances on one etcd cluster (3 members on loopback):
//! one is active, the others wait; when the active one is SIGKILLed a
//! standby takes over with every acknowledged version, and an active one
//! that was paused (SIGSTOP) past its lease cannot commit after it resumes.

use std::time::{Duration, Instant};

use blobvirt_core::proto as pb;
use blobvirt_core::ChunkId;
use bytes::Bytes;
use testbed::harness::daemons::Poold;
use testbed::harness::etcd::EtcdCluster;

const CS: u32 = 65536;
const N: u64 = 64;

fn cid(label: u64) -> Bytes {
    Bytes::copy_from_slice(&ChunkId::of(&label.to_le_bytes()).0)
}

type Client = pb::pool_client::PoolClient<blobvirt_core::client::PoolChannel>;

async fn publish(p: &Poold, base: u64, changes: &[(u64, u64)]) -> Result<u64, tonic::Status> {
    publish_via(&mut p.client(), base, changes).await
}

async fn publish_via(
    c: &mut Client,
    base: u64,
    changes: &[(u64, u64)],
) -> Result<u64, tonic::Status> {
    // As every blobvirt client publishes (`Repo::publish`): with a request
    // id, marked idempotent, so the channel may send it again after a lost
    // connection (a plain publish on a connection to a just-killed poold
    // fails by design, and did in a CI run).
    let r = c
        .publish(blobvirt_core::failover::idempotent(pb::PublishRequest {
            name: "vol".into(),
            create: base == 0,
            base_version: base,
            chunk_size: CS,
            size: N * CS as u64,
            changes: changes
                .iter()
                .map(|&(i, c)| pb::ChunkChange {
                    index: i,
                    id: cid(c),
                })
                .collect(),
            request_id: blobvirt_core::failover::request_id(),
            ..Default::default()
        }))
        .await?;
    Ok(r.into_inner().version)
}

async fn resolve(p: &Poold, v: u64) -> Vec<Bytes> {
    p.client()
        .resolve(pb::ResolveRequest {
            name: "vol".into(),
            version: v,
            first_chunk: 0,
            count: 0,
        })
        .await
        .expect("resolve")
        .into_inner()
        .chunks
}

async fn latest(p: &Poold) -> u64 {
    p.client()
        .get_blob(pb::GetBlobRequest { name: "vol".into() })
        .await
        .expect("get volume")
        .into_inner()
        .latest_version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_and_a_paused_active_is_fenced() {
    let etcd = EtcdCluster::start(3);
    let eps = etcd.endpoints_arg();
    let base = tempfile::tempdir().unwrap();
    // Fixed ports, so one client can be given all three endpoints.
    let ports: Vec<u16> = {
        let ls: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
    };
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let args = |i: usize| {
        vec![
            "--etcd-endpoints".to_string(),
            eps.clone(),
            "--election-ttl-secs".into(),
            "3".into(),
            "--gc-interval-secs".into(),
            "3600".into(),
            "--listen".into(),
            listen[i].clone(),
        ]
    };
    let (a0, a1, a2) = (args(0), args(1), args(2));
    let r0: Vec<&str> = a0.iter().map(String::as_str).collect();
    let r1: Vec<&str> = a1.iter().map(String::as_str).collect();
    let r2: Vec<&str> = a2.iter().map(String::as_str).collect();
    // One client over every endpoint: it follows the active poold.
    let mut cl: Client = blobvirt_core::client::pool_client(
        blobvirt_core::client::pool_channel(&listen.join(",")).unwrap(),
    );
    let mut a = Poold::start(&base.path().join("a"), "etcd", &r0).await;
    let b = Poold::spawn_logged(&base.path().join("b"), "etcd", &r1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !b.dir.join("poold.addr").exists(),
        "the second poold listens while the first is active"
    );

    // Versions 1..=5 through the active one; `want[v]` is version v.
    let mut want: Vec<Vec<Bytes>> = vec![Vec::new()];
    let mut map: Vec<Bytes> = vec![Bytes::new(); N as usize];
    for v in 1..=5u64 {
        let changes: Vec<(u64, u64)> = (0..8).map(|k| ((v * 7 + k * 5) % N, v * 100 + k)).collect();
        assert_eq!(publish_via(&mut cl, v - 1, &changes).await.unwrap(), v);
        for &(i, c) in &changes {
            map[i as usize] = cid(c);
        }
        want.push(map.clone());
    }

    // SIGKILL the active one: the standby takes over, and the client's
    // next publish waits for it instead of failing.
    let t = Instant::now();
    a.kill();
    assert_eq!(publish_via(&mut cl, 5, &[(1, 600)]).await.unwrap(), 6);
    let took = t.elapsed();
    eprintln!("the first publish after the active poold was killed returned {took:?} later, through the standby");
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    let b = tokio::task::spawn_blocking(move || b.wait_ready())
        .await
        .unwrap();
    assert_eq!(latest(&b).await, 6);
    for (v, m) in want.iter().enumerate().skip(1) {
        assert_eq!(
            &resolve(&b, v as u64).await,
            m,
            "version {v} after the takeover"
        );
    }

    // Pause the active one past its lease; a third instance takes over;
    // the paused one resumes and cannot commit, then exits by itself.
    nix::sys::signal::kill(b.pid(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let c = Poold::spawn_logged(&base.path().join("c"), "etcd", &r2);
    let c = tokio::task::spawn_blocking(move || c.wait_ready())
        .await
        .unwrap();
    nix::sys::signal::kill(b.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    let late = publish(&b, 6, &[(2, 700)]).await;
    assert!(late.is_err(), "the deposed poold published {late:?}");
    assert_eq!(latest(&c).await, 6, "a deposed poold's publish is visible");
    let mut b = b;
    let t = Instant::now();
    let exited = loop {
        if let Some(st) = b.child.try_wait().unwrap() {
            break Some(st);
        }
        if t.elapsed() > Duration::from_secs(15) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exited.is_some(), "the deposed poold kept running");
    assert_eq!(publish(&c, 6, &[(2, 800)]).await.unwrap(), 7);
    assert_eq!(publish_via(&mut cl, 7, &[(3, 900)]).await.unwrap(), 8);
    drop(etcd);
}
