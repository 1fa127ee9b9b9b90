//! The client side of a publish that garbage collection raced: core's
//! `Publisher` against the real poold and chunkd binaries.
//! GC is forced with the Gc RPC (grace 0) after the chunks were uploaded and
//! before the publish, so poold really answers "upload these again".

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blobvirt_core::proto as pb;
use blobvirt_core::publish::{PublishError, Publisher};
use blobvirt_core::transfer::export_file;
use blobvirt_core::{ChunkId, Repo};
use bytes::Bytes;
use testbed::harness::daemons::{Chunkd, Poold};
use tonic::Code;

const CS: usize = 65536;

/// poold (grace 0, no background pass during the test) and one chunkd.
async fn cluster(dir: &std::path::Path) -> (Poold, Chunkd, Repo) {
    let args = [
        "--replicas",
        "1",
        "--gc-grace-secs",
        "0",
        "--gc-interval-secs",
        "3600",
    ];
    let p = Poold::start(&dir.join("pool"), "redb", &args).await;
    let chunkd = Chunkd::start(&dir.join("n1"), &p.url(), "n1");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let repo = Repo::connect(&p.url()).await.unwrap();
        if repo.placement().members().iter().any(|m| m.alive) {
            return (p, chunkd, repo);
        }
        assert!(Instant::now() < deadline, "chunkd did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` distinct chunks.
fn chunks(n: u8) -> Vec<(ChunkId, Bytes)> {
    (0..n)
        .map(|i| {
            let d: Vec<u8> = (0..CS).map(|j| (j % 251) as u8 ^ (i + 1)).collect();
            (ChunkId::of(&d), Bytes::from(d))
        })
        .collect()
}

fn request(name: &str, ch: &[(ChunkId, Bytes)]) -> pb::PublishRequest {
    pb::PublishRequest {
        name: name.into(),
        create: true,
        chunk_size: CS as u32,
        size: (ch.len() * CS) as u64,
        changes: ch
            .iter()
            .enumerate()
            .map(|(i, (id, _))| pb::ChunkChange {
                index: i as u64,
                id: Bytes::copy_from_slice(&id.0),
            })
            .collect(),
        ..Default::default()
    }
}

fn never(id: ChunkId) -> Result<Bytes, std::io::Error> {
    Err(std::io::Error::other(format!("chunk {id} asked again")))
}

/// Publishes `ch` as volume `name`, deletes it again and returns once its
/// chunks are queued for GC (and still on chunkd).
async fn orphan(repo: &Repo, name: &str, ch: &[(ChunkId, Bytes)]) {
    repo.refresh().await.unwrap();
    let p = Publisher::new(repo);
    for (id, d) in ch {
        p.put(*id, d.clone()).await.unwrap();
    }
    assert_eq!(p.publish(request(name, ch), never).await.unwrap(), 1);
    repo.delete(name, 0).await.unwrap();
}

async fn force_gc(repo: &Repo) -> u64 {
    repo.pool()
        .gc(pb::GcRequest { now: true })
        .await
        .unwrap()
        .into_inner()
        .chunks_deleted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_reclaimed_between_upload_and_publish_are_uploaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_poold, _chunkd, repo) = cluster(dir.path()).await;
    let ch = chunks(4);
    orphan(&repo, "old", &ch).await;

    repo.refresh().await.unwrap();
    let p = Publisher::new(&repo);
    for (id, d) in &ch {
        p.put(*id, d.clone()).await.unwrap();
    }
    // GC deletes them after the upload, before the publish.
    assert_eq!(force_gc(&repo).await, 4);
    let bytes: HashMap<ChunkId, Bytes> = ch.iter().cloned().collect();
    let asked = Mutex::new(Vec::new());
    let again = |id: ChunkId| -> Result<Bytes, std::io::Error> {
        asked.lock().unwrap().push(id);
        Ok(bytes[&id].clone())
    };
    let v = p.publish(request("new", &ch), again).await.unwrap();
    assert_eq!(v, 1);
    let mut asked = asked.into_inner().unwrap();
    asked.sort();
    let mut all: Vec<ChunkId> = ch.iter().map(|(id, _)| *id).collect();
    all.sort();
    assert_eq!(asked, all, "every reclaimed chunk was asked for again");
    assert_eq!(p.bytes_uploaded(), (8 * CS) as u64, "4 uploads + 4 again");

    let out = dir.path().join("new.raw");
    export_file(&repo, "new", 1, &out, None).await.unwrap();
    let want: Vec<u8> = ch.iter().flat_map(|(_, d)| d.to_vec()).collect();
    assert!(std::fs::read(&out).unwrap() == want, "version 1 is exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reupload_of_a_chunk_this_publish_did_not_send_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_poold, _chunkd, repo) = cluster(dir.path()).await;
    let ch = chunks(2);
    orphan(&repo, "old", &ch).await;

    repo.refresh().await.unwrap();
    let p = Publisher::new(&repo);
    // Only chunk 0 goes through this publish; the request also names 1.
    p.put(ch[0].0, ch[0].1.clone()).await.unwrap();
    assert_eq!(force_gc(&repo).await, 2);
    let again = |id: ChunkId| -> Result<Bytes, std::io::Error> {
        Ok(ch.iter().find(|(c, _)| *c == id).unwrap().1.clone())
    };
    match p.publish(request("new", &ch), again).await {
        Err(PublishError::NotSent(id)) => assert_eq!(id, ch[1].0),
        other => panic!("expected NotSent, got {other:?}"),
    }
    let e = repo.get_blob("new").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "nothing was published");
}
