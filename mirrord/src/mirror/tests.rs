//! Unit tests of the mirror core (`io`, `commit`, `attach`) against a real
//! poold and chunkd run in this process: COMMIT phase 2 with a chunk
//! rewritten after phase 1 (the copy aside), growth past the end, and a
//! mirror moving onto its own published version after a lost state flush.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blobvirt_core::transfer::{export_file, import_file, ImportOpts};
use blobvirt_core::Repo;
use clap::Parser;

use super::{Mirror, SharedRepo};
use crate::statemap::ChunkState;

pub(crate) const CS: usize = 64 * 1024;

/// poold and one chunkd as tasks of this runtime; dropped with it.
pub(crate) async fn repository(dir: &Path) -> Repo {
    let pd = dir.join("poold");
    let o =
        pool_backend::Opts::parse_from(["poold", "--dir", pd.to_str().unwrap(), "--replicas", "1"]);
    tokio::spawn(pool_backend::run(o));
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(pd.join("poold.addr")) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let url = format!("http://{}", addr.trim());
    let cd = dir.join("chunkd");
    let o = chunkd::Opts::parse_from([
        "chunkd",
        "--dir",
        cd.to_str().unwrap(),
        "--pool",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--id",
        "n1",
    ]);
    tokio::spawn(chunkd::run_until(o, std::future::pending()));
    for _ in 0..500 {
        if let Ok(r) = Repo::connect(&url).await {
            if r.placement().members().iter().any(|m| m.alive) {
                return r;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the in-process chunkd never registered");
}

pub(crate) fn pattern(byte: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| byte ^ (i % 251) as u8).collect()
}

pub(crate) async fn import(repo: &Repo, dir: &Path, name: &str, data: &[u8]) {
    let p = dir.join(format!("{name}.src"));
    std::fs::write(&p, data).unwrap();
    let opts = ImportOpts {
        chunk_size: Some(CS as u32),
        ..Default::default()
    };
    import_file(repo, &p, name, &opts, None).await.unwrap();
}

pub(crate) async fn export(repo: &Repo, dir: &Path, name: &str, version: u64) -> Vec<u8> {
    let p = dir.join(format!("{name}-{version}.out"));
    export_file(repo, name, version, &p, None).await.unwrap();
    std::fs::read(&p).unwrap()
}

async fn setup(dir: &Path, data: &[u8]) -> (Repo, Arc<Mirror>) {
    let repo = repository(dir).await;
    import(&repo, dir, "v", data).await;
    let vols = dir.join("vols");
    std::fs::create_dir_all(&vols).unwrap();
    let shared: SharedRepo = Arc::new(repo.clone());
    let m = Mirror::attach(&shared, &vols, "v", None).await.unwrap();
    (repo, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_rewritten_during_phase_2_is_copied_aside() {
    let t = tempfile::tempdir().unwrap();
    let base = pattern(1, 4 * CS);
    let (repo, m) = setup(t.path(), &base).await;
    let b = pattern(2, CS);
    m.write(CS as u64, &b).await.unwrap();
    // Phase 1 freezes chunk 1 with content B...
    let fz = m.freeze();
    // ...a write of C over it before phase 2 reads it is copied aside...
    let c = pattern(3, CS / 2);
    m.write(CS as u64, &c).await.unwrap();
    assert_eq!(
        m.stats
            .cow_copies
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // ...so the version holds B, and the mirror keeps C as a change.
    let out = m.finish(fz).await.unwrap();
    assert_eq!(
        (out.version, out.published, out.chunks_changed),
        (2, true, 1)
    );
    let mut v2 = base.clone();
    v2[CS..2 * CS].copy_from_slice(&b);
    assert!(export(&repo, t.path(), "v", 2).await == v2);
    let mut now = v2.clone();
    now[CS..CS + CS / 2].copy_from_slice(&c);
    assert!(m.read(0, now.len() as u64).await.unwrap() == now);
    assert_eq!(m.status().chunks_dirty, 1);
    let out = m.commit().await.unwrap();
    assert_eq!(out.version, 3);
    assert!(export(&repo, t.path(), "v", 3).await == now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_end_grow_the_mirror_and_commit_the_size() {
    let t = tempfile::tempdir().unwrap();
    let base = pattern(4, CS + 1000);
    let (repo, m) = setup(t.path(), &base).await;
    let tail = pattern(5, 3000);
    let at = 3 * CS as u64 + 10;
    m.write(at, &tail).await.unwrap();
    assert_eq!(m.size(), at + 3000);
    let mut want = base.clone();
    want.resize(at as usize, 0);
    want.extend_from_slice(&tail);
    assert!(m.read(0, want.len() as u64).await.unwrap() == want);
    let out = m.commit().await.unwrap();
    assert!(out.published);
    assert!(export(&repo, t.path(), "v", 0).await == want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_flush_is_adopted_only_when_the_version_is_ours() {
    let t = tempfile::tempdir().unwrap();
    let base = pattern(6, 4 * CS);
    let (repo, m) = setup(t.path(), &base).await;
    let a = pattern(7, CS);
    m.write(2 * CS as u64, &a).await.unwrap();
    // Publish as COMMIT would, but keep the mirror's record on version 1.
    let vols = t.path().join("vols");
    let mut v2 = base.clone();
    v2[2 * CS..3 * CS].copy_from_slice(&a);
    import(&repo, t.path(), "scratch", &v2).await;
    std::fs::write(t.path().join("v2.raw"), &v2).unwrap();
    let opts = ImportOpts {
        new_version: true,
        ..Default::default()
    };
    import_file(&repo, &t.path().join("v2.raw"), "v", &opts, None)
        .await
        .unwrap();
    assert!(
        m.adopt_published(2).await.unwrap(),
        "version 2 is this mirror's content"
    );
    assert_eq!((m.version(), m.status().chunks_dirty), (2, 0));
    // A newer version that changed another chunk is someone else's.
    let shared: SharedRepo = Arc::new(repo.clone());
    let m2 = Mirror::attach(&shared, &vols, "scratch", None)
        .await
        .unwrap();
    m2.write(0, &pattern(8, 100)).await.unwrap();
    let mut other = v2.clone();
    other[3 * CS..3 * CS + 10].fill(9);
    std::fs::write(t.path().join("o.raw"), &other).unwrap();
    import_file(&repo, &t.path().join("o.raw"), "scratch", &opts, None)
        .await
        .unwrap();
    assert!(!m2.adopt_published(2).await.unwrap());
    assert_eq!(m2.version(), 1);
    assert_eq!(lock_state(&m2, 0), ChunkState::Dirty);
}

fn lock_state(m: &Mirror, i: usize) -> ChunkState {
    super::lock(&m.inner).st[i]
}
