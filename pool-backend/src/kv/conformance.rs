//! The conformance suite every [`Kv`] engine must pass; the engines' unit
//! tests run it (see the bottom of this file). `open` opens the engine's
//! store in a directory; it is called again on the same directory to check
//! that committed data survives a reopen.

use std::path::Path;
use std::sync::Arc;

use super::{Kv, KvError, KvExt, ReadTxExt};

pub type Open<'a> = &'a dyn Fn(&Path) -> Arc<dyn Kv>;

/// One named check of the suite.
pub type Check = (&'static str, for<'a> fn(Open<'a>, &Path));

fn put_all(kv: &dyn Kv, pairs: &[(&[u8], &[u8])]) {
    kv.write(|tx| {
        for (k, v) in pairs {
            tx.put(k, v)?;
        }
        Ok::<_, KvError>(())
    })
    .unwrap();
}

fn keys(pairs: Vec<super::Pair>) -> Vec<Vec<u8>> {
    pairs.into_iter().map(|(k, _)| k).collect()
}

/// put / get / delete / range / prefix on committed data.
pub fn basic(open: Open, dir: &Path) {
    let kv = open(dir);
    put_all(
        &*kv,
        &[
            (b"a1", b"x"),
            (b"a2", b"yy"),
            (b"b1", b"z"),
            (b"a\xff", b"w"),
        ],
    );
    kv.read(|tx| {
        assert_eq!(tx.get(b"a1")?, Some(b"x".to_vec()));
        assert_eq!(tx.get(b"a3")?, None);
        assert_eq!(
            keys(tx.prefix(b"a")?),
            vec![b"a1".to_vec(), b"a2".to_vec(), b"a\xff".to_vec()]
        );
        assert_eq!(
            keys(tx.range(b"a2", Some(b"b1"))?),
            vec![b"a2".to_vec(), b"a\xff".to_vec()]
        );
        assert_eq!(keys(tx.range(b"a2", None)?).len(), 3);
        assert!(tx.range(b"b", Some(b"a"))?.is_empty());
        let mut first = Vec::new();
        tx.scan(b"", None, &mut |k, _| {
            first.push(k.to_vec());
            false
        })?;
        assert_eq!(first, vec![b"a1".to_vec()]);
        Ok::<_, KvError>(())
    })
    .unwrap();
    kv.write(|tx| {
        tx.delete(b"a2")?;
        tx.delete(b"missing")?;
        tx.put(b"a1", b"new")?;
        Ok::<_, KvError>(())
    })
    .unwrap();
    kv.read(|tx| {
        assert_eq!(tx.get(b"a2")?, None);
        assert_eq!(tx.get(b"a1")?, Some(b"new".to_vec()));
        assert_eq!(tx.prefix(b"")?.len(), 3);
        Ok::<_, KvError>(())
    })
    .unwrap();
    // A large value round-trips.
    let big = vec![7u8; 300_000];
    kv.write(|tx| tx.put(b"big", &big)).unwrap();
    assert_eq!(kv.read(|tx| tx.get(b"big")).unwrap(), Some(big));
}

/// Reads inside a write transaction see its pending writes, merged into
/// ranges in key order; nothing is visible outside before commit.
pub fn overlay(open: Open, dir: &Path) {
    let kv = open(dir);
    put_all(&*kv, &[(b"k1", b"1"), (b"k3", b"3"), (b"k5", b"5")]);
    kv.write(|tx| {
        tx.put(b"k2", b"2")?;
        tx.delete(b"k3")?;
        tx.put(b"k5", b"five")?;
        tx.put(b"k6", b"6")?;
        assert_eq!(tx.get(b"k2")?, Some(b"2".to_vec()));
        assert_eq!(tx.get(b"k3")?, None);
        assert_eq!(tx.get(b"k5")?, Some(b"five".to_vec()));
        let all = tx.as_read().prefix(b"k")?;
        let want: Vec<(Vec<u8>, Vec<u8>)> = [("k1", "1"), ("k2", "2"), ("k5", "five"), ("k6", "6")]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(all, want);
        assert_eq!(
            keys(tx.as_read().range(b"k2", Some(b"k6"))?),
            vec![b"k2".to_vec(), b"k5".to_vec()]
        );
        tx.put(b"k3", b"back")?;
        assert_eq!(tx.get(b"k3")?, Some(b"back".to_vec()));
        Ok::<_, KvError>(())
    })
    .unwrap();
    kv.read(|tx| {
        assert_eq!(tx.prefix(b"k")?.len(), 5);
        assert_eq!(tx.get(b"k3")?, Some(b"back".to_vec()));
        Ok::<_, KvError>(())
    })
    .unwrap();
}

#[derive(Debug, PartialEq)]
enum Fail {
    Mine,
    Kv,
}
impl From<KvError> for Fail {
    fn from(_: KvError) -> Self {
        Fail::Kv
    }
}

/// A write closure that returns `Err` leaves nothing behind and its error
/// comes back unchanged.
pub fn abort(open: Open, dir: &Path) {
    let kv = open(dir);
    put_all(&*kv, &[(b"keep", b"1")]);
    let r: Result<(), Fail> = kv.write(|tx| {
        tx.put(b"new", b"x")?;
        tx.delete(b"keep")?;
        tx.put(b"keep2", b"y")?;
        Err(Fail::Mine)
    });
    assert_eq!(r, Err(Fail::Mine));
    kv.read(|tx| {
        assert_eq!(tx.get(b"new")?, None);
        assert_eq!(tx.get(b"keep2")?, None);
        assert_eq!(tx.get(b"keep")?, Some(b"1".to_vec()));
        Ok::<_, KvError>(())
    })
    .unwrap();
    // The store still works after an abort.
    put_all(&*kv, &[(b"after", b"2")]);
    assert_eq!(kv.read(|tx| tx.get(b"after")).unwrap(), Some(b"2".to_vec()));
}

/// Committed data survives closing and reopening the store.
pub fn reopen(open: Open, dir: &Path) {
    {
        let kv = open(dir);
        put_all(&*kv, &[(b"p", b"1"), (b"q", b"2")]);
        kv.write(|tx| tx.delete(b"q")).unwrap();
        let _: Result<(), Fail> = kv.write(|tx| {
            tx.put(b"r", b"3")?;
            Err(Fail::Mine)
        });
    }
    let kv = open(dir);
    kv.read(|tx| {
        assert_eq!(tx.get(b"p")?, Some(b"1".to_vec()));
        assert_eq!(tx.get(b"q")?, None);
        assert_eq!(tx.get(b"r")?, None);
        Ok::<_, KvError>(())
    })
    .unwrap();
}

/// Readers never see a write transaction half applied: a writer moves units
/// between two keys while readers check that the total stays the same.
pub fn consistent_reads(open: Open, dir: &Path) {
    let kv = open(dir);
    let enc = |n: u64| n.to_le_bytes();
    let dec = |v: Option<Vec<u8>>| u64::from_le_bytes(v.unwrap().try_into().unwrap());
    put_all(&*kv, &[(b"x", &enc(1000)), (b"y", &enc(0))]);
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            for _ in 0..100 {
                kv.write(|tx| {
                    let x = dec(tx.get(b"x")?);
                    let y = dec(tx.get(b"y")?);
                    tx.put(b"x", &enc(x - 1))?;
                    tx.put(b"y", &enc(y + 1))?;
                    Ok::<_, KvError>(())
                })
                .unwrap();
            }
        });
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..300 {
                    let sum = kv
                        .read(|tx| Ok::<_, KvError>(dec(tx.get(b"x")?) + dec(tx.get(b"y")?)))
                        .unwrap();
                    assert_eq!(sum, 1000);
                }
            });
        }
        w.join().unwrap();
    });
    assert_eq!(kv.read(|tx| tx.get(b"y")).map(dec).unwrap(), 100);
}

/// Runs every check, each in a fresh subdirectory of `dir`.
pub fn run_all(open: Open, dir: &Path) {
    let checks: [Check; 5] = [
        ("basic", basic),
        ("overlay", overlay),
        ("abort", abort),
        ("reopen", reopen),
        ("consistent_reads", consistent_reads),
    ];
    for (name, check) in checks {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).unwrap();
        check(open, &sub);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::{etcd_engine, open, Engine};

    #[test]
    fn redb_conforms() {
        let d = tempfile::tempdir().unwrap();
        run_all(&|dir| open(Engine::Redb, dir, None).unwrap(), d.path());
    }

    #[test]
    fn sled_conforms() {
        let d = tempfile::tempdir().unwrap();
        run_all(&|dir| open(Engine::Sled, dir, None).unwrap(), d.path());
    }

    /// On a real 3-member etcd cluster; each directory is a key prefix, so
    /// a reopen is a new client on the same keys.
    #[test]
    fn etcd_conforms() {
        let etcd = testbed::harness::etcd::EtcdCluster::start(3);
        let d = tempfile::tempdir().unwrap();
        let eps = etcd.endpoints();
        run_all(
            &|dir| {
                let o = etcd_engine::EtcdOptions::new(eps.clone(), format!("{}/", dir.display()));
                open(Engine::Etcd, dir, Some(&o)).unwrap()
            },
            d.path(),
        );
    }
}
