//! Tests of the etcd engine on real etcd members: the fence, the limits
//! and paging, and the read cache.

use super::*;
use crate::kv::{KvExt, ReadTxExt};

fn connect(etcd: &testbed::harness::etcd::EtcdCluster, prefix: &str) -> EtcdKv {
    EtcdKv::connect(EtcdOptions::new(etcd.endpoints(), prefix)).unwrap()
}

fn put(kv: &EtcdKv, k: &[u8], v: &[u8]) -> KvResult<()> {
    kv.write(|tx| tx.put(k, v))
}

/// A fenced commit succeeds while the fence key keeps its create
/// revision, and fails, writing nothing, once the key was re-created.
#[test]
fn a_deposed_writer_commits_nothing() {
    let etcd = testbed::harness::etcd::EtcdCluster::start(1);
    let kv = connect(&etcd, "/f/");
    let other = connect(&etcd, "/other/");
    // The "election key" is an etcd key outside the prefix.
    let mut c = kv.kv.clone();
    let r = kv
        .run(async move { c.put("/election/poold", "a", None).await })
        .unwrap()
        .unwrap();
    let rev = r.header().unwrap().revision();
    kv.set_fence(Some((b"/election/poold".to_vec(), rev)));
    put(&kv, b"k", b"1").unwrap();
    // Another instance takes over: the key is deleted and re-created.
    let mut c = other.kv.clone();
    other
        .run(async move {
            c.delete("/election/poold", None).await.unwrap();
            c.put("/election/poold", "b", None).await.unwrap();
        })
        .unwrap();
    let e = put(&kv, b"k", b"2").unwrap_err();
    assert!(matches!(e, KvError::Fenced(_)), "{e}");
    assert!(e.to_string().contains("no longer the active one"), "{e}");
    assert_eq!(kv.read(|tx| tx.get(b"k")).unwrap(), Some(b"1".to_vec()));
    kv.set_fence(None);
    put(&kv, b"k", b"3").unwrap();
    assert_eq!(kv.read(|tx| tx.get(b"k")).unwrap(), Some(b"3".to_vec()));
}

/// Repeated reads come from the cache and see this engine's own
/// commits; once the lease deadline has passed the cache is not used,
/// so a write by another instance is seen.
#[test]
fn the_cache_answers_reads_and_steps_aside_without_a_lease() {
    let etcd = testbed::harness::etcd::EtcdCluster::start(1);
    let kv = connect(&etcd, "/c/");
    let other = connect(&etcd, "/c/");
    put(&kv, b"k", b"1").unwrap();
    let before = kv.cache_hits();
    for _ in 0..5 {
        assert_eq!(kv.read(|tx| tx.get(b"k")).unwrap(), Some(b"1".to_vec()));
    }
    assert!(kv.cache_hits() >= before + 5, "the reads missed the cache");
    put(&kv, b"k", b"2").unwrap();
    assert_eq!(kv.read(|tx| tx.get(b"k")).unwrap(), Some(b"2".to_vec()));
    assert_eq!(kv.read(|tx| tx.get(b"none")).unwrap(), None);
    put(&kv, b"none", b"x").unwrap();
    assert_eq!(kv.read(|tx| tx.get(b"none")).unwrap(), Some(b"x".to_vec()));
    // Another writer (what the election prevents), and no lease.
    put(&other, b"k", b"3").unwrap();
    *lock(&kv.cache_deadline()) = Some(Instant::now());
    assert_eq!(kv.read(|tx| tx.get(b"k")).unwrap(), Some(b"3".to_vec()));
}

/// A change over the limits is refused before it is sent, with the
/// settings to raise, and nothing of it is written; scans page through
/// more keys than one request returns.
#[test]
fn over_the_limits_is_refused_whole_and_scans_page() {
    let etcd = testbed::harness::etcd::EtcdCluster::start(1);
    let mut o = EtcdOptions::new(etcd.endpoints(), "/l/");
    o.max_txn_ops = 3000;
    let kv = EtcdKv::connect(o).unwrap();
    let n = 2 * PAGE as usize + 17;
    kv.write(|tx| {
        for i in 0..n {
            tx.put(format!("a{i:06}").as_bytes(), b"v")?;
        }
        Ok::<_, KvError>(())
    })
    .unwrap();
    let all = kv.read(|tx| tx.prefix(b"a")).unwrap();
    assert_eq!(all.len(), n);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    let e = kv
        .write(|tx| {
            for i in 0..3001 {
                tx.put(format!("b{i:06}").as_bytes(), b"v")?;
            }
            Ok::<_, KvError>(())
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("3001 keys") && msg.contains("--max-txn-ops"),
        "{msg}"
    );
    assert!(kv.read(|tx| tx.prefix(b"b")).unwrap().is_empty());
    // Unreachable endpoints: a clear error, not a hang.
    let dead = EtcdKv::connect(EtcdOptions::new(vec!["http://127.0.0.1:1".into()], "/x/"));
    assert!(dead.is_err() || put(&dead.unwrap(), b"k", b"v").is_err());
}

/// Every commit checks and moves the commit token, so a second writer
/// on the same prefix (what the election prevents) is noticed: the
/// writer whose token is stale is refused with a sentence and writes
/// nothing, and commits go on through a lost member.
#[test]
fn the_commit_token_refuses_a_stale_writer() {
    let etcd = testbed::harness::etcd::EtcdCluster::start(3);
    let a = connect(&etcd, "/t/");
    let b = connect(&etcd, "/t/");
    put(&a, b"k", b"1").unwrap();
    let token = a.token_now().unwrap().expect("a token after a commit");
    put(&a, b"k", b"2").unwrap();
    assert_ne!(a.token_now().unwrap(), Some(token), "each commit moves it");
    // b reads the token at its first commit, so that one applies; a's
    // next one then holds a stale token.
    put(&b, b"k", b"b").unwrap();
    let e = put(&a, b"k", b"3").unwrap_err().to_string();
    assert!(e.contains("another writer") && e.contains("/t/"), "{e}");
    assert_eq!(a.read(|tx| tx.get(b"k")).unwrap(), Some(b"b".to_vec()));
    // A member lost: commits go on through the two others.
    let mut etcd = etcd;
    etcd.kill(0);
    put(&b, b"k", b"4").unwrap();
    assert_eq!(b.read(|tx| tx.get(b"k")).unwrap(), Some(b"4".to_vec()));
}
