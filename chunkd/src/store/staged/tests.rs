//! Unit tests of staged Puts, PutLocal batches and Flush.

use super::*;
use crate::durable::Durability;

fn chunk(n: u8) -> (ChunkId, Vec<u8>) {
    let d = vec![n; 4096];
    (ChunkId::of(&d), d)
}

fn kinds(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            p.extension().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Writes a batch file of `chunks` in `tmp/` as a client would.
fn batch(dir: &std::path::Path, name: &str, chunks: &[&(ChunkId, Vec<u8>)]) {
    let f = File::create_new(dir.join("tmp").join(name)).unwrap();
    let mut off = 0;
    for (id, d) in chunks {
        off = pack::write_record(&f, off, id, d).unwrap();
    }
}

#[test]
fn staged_chunks_are_served_and_become_durable_on_flush() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let (a, da) = chunk(1);
    assert!(s.put_staged(&a, &da).unwrap());
    assert!(!s.put_staged(&a, &da).unwrap(), "staged twice");
    assert!(s.put_staged(&a, b"wrong").is_err());
    assert_eq!(s.has(&[a]), vec![false], "not durable yet");
    assert_eq!(&s.get(&a).unwrap()[..], &da[..]);
    assert_eq!((s.stats().unwrap().chunks, s.staged_len()), (0, 1));
    assert_eq!(kinds(t.path()), ["staged"]);
    assert_eq!(s.flush().unwrap(), 1);
    assert_eq!(kinds(t.path()), ["pack"]);
    assert_eq!(s.has(&[a]), vec![true]);
    assert_eq!((s.stats().unwrap().chunks, s.staged_len()), (1, 0));
    assert_eq!(s.flush().unwrap(), 0);
    assert!(!s.put_staged(&a, &da).unwrap(), "already stored");
    assert!(!s.put(&a, &da).unwrap(), "already stored");
}

#[test]
fn a_durable_put_of_a_staged_chunk_makes_it_durable_at_once() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let (a, da) = chunk(9);
    assert!(s.put_staged(&a, &da).unwrap());
    assert!(s.put(&a, &da).unwrap());
    assert_eq!(s.has(&[a]), vec![true]);
    assert_eq!((s.stats().unwrap().chunks, s.staged_len()), (1, 0));
    assert_eq!(s.flush().unwrap(), 0);
    drop(s);
    let s = Store::open(t.path(), "n1").unwrap();
    assert_eq!(s.has(&[a]), vec![true]);
    assert_eq!(s.stats().unwrap().chunks, 1);
}

#[test]
fn a_batch_written_by_a_local_client_is_verified_then_adopted() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let tmp = t.path().join("tmp");
    let (a, b, c) = (chunk(2), chunk(3), chunk(4));
    // Names outside the PutLocal convention are refused untouched.
    std::fs::write(tmp.join("x"), &a.1).unwrap();
    for bad in ["x", "../x", "in./../x", ""] {
        assert!(
            matches!(s.put_local_batch(bad), Err(StoreError::BadFile(_))),
            "{bad:?}"
        );
    }
    assert!(tmp.join("x").exists());
    std::fs::remove_file(tmp.join("x")).unwrap();
    // Not in the record format: refused and removed.
    std::fs::write(tmp.join("in.raw"), &a.1).unwrap();
    assert!(matches!(
        s.put_local_batch("in.raw"),
        Err(StoreError::BadFile(_))
    ));
    assert!(!tmp.join("in.raw").exists());
    // A record whose bytes do not hash to its id: the batch is refused.
    batch(t.path(), "in.lie", &[&a, &(b.0, c.1.clone())]);
    assert!(matches!(
        s.put_local_batch("in.lie"),
        Err(StoreError::HashMismatch { .. })
    ));
    assert!(!tmp.join("in.lie").exists());
    assert_eq!(s.has(&[a.0]), vec![false]);
    // A symbolic link is not followed.
    batch(t.path(), "elsewhere", &[&a]);
    std::os::unix::fs::symlink(tmp.join("elsewhere"), tmp.join("in.l")).unwrap();
    assert!(matches!(
        s.put_local_batch("in.l"),
        Err(StoreError::BadFile(_))
    ));
    std::fs::remove_file(tmp.join("elsewhere")).unwrap();
    // A good batch is staged (served, not yet in Has), then flushed; a
    // chunk already there is not counted twice.
    assert!(s.put(&c.0, &c.1).unwrap());
    batch(t.path(), "in.good", &[&a, &b, &c]);
    assert_eq!(s.put_local_batch("in.good").unwrap(), (2, 3 * 4096));
    assert!(!tmp.join("in.good").exists(), "moved into packs/");
    assert_eq!(s.has(&[a.0, b.0, c.0]), vec![false, false, true]);
    assert_eq!(&s.get(&b.0).unwrap()[..], &b.1[..]);
    assert_eq!(s.flush().unwrap(), 2);
    assert_eq!(s.has(&[a.0, b.0, c.0]), vec![true; 3]);
    assert_eq!(s.stats().unwrap().chunks, 3);
    drop(s);
    let s = Store::open(t.path(), "n1").unwrap();
    assert_eq!(s.stats().unwrap().chunks, 3);
    assert_eq!(&s.get(&a.0).unwrap()[..], &a.1[..]);
}

#[test]
fn flush_syncs_through_the_syncer_in_both_modes() {
    for mode in [Durability::PerPut, Durability::Syncfs] {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open_with(t.path(), "n1", mode).unwrap();
        let base = s.sync.rounds_done();
        for n in 4..7 {
            let (id, d) = chunk(n);
            assert!(s.put_staged(&id, &d).unwrap());
        }
        assert_eq!(
            s.sync.rounds_done(),
            base,
            "{mode:?}: staging syncs nothing"
        );
        assert_eq!(s.flush().unwrap(), 3);
        // PerPut syncs only the staged segments and packs/, never the
        // whole file system; Syncfs shares two rounds.
        let rounds = if mode == Durability::Syncfs { 2 } else { 0 };
        assert_eq!(
            s.sync.rounds_done() - base,
            rounds,
            "{mode:?}: syncfs rounds of one flush"
        );
        assert_eq!(s.flush().unwrap(), 0);
        assert_eq!(
            s.sync.rounds_done() - base,
            rounds,
            "{mode:?}: nothing staged"
        );
        assert_eq!(s.has(&[chunk(4).0, chunk(6).0]), vec![true, true]);
    }
}

#[test]
fn unflushed_chunks_vanish_at_restart_and_delete_drops_staged() {
    let t = tempfile::tempdir().unwrap();
    let (a, da) = chunk(2);
    let (b, db) = chunk(3);
    {
        let s = Store::open(t.path(), "n1").unwrap();
        s.put_staged(&a, &da).unwrap();
        s.put_staged(&b, &db).unwrap();
        assert_eq!(s.delete(&[b]).unwrap(), 0);
        assert!(s.get(&b).is_err());
        assert_eq!(s.staged_len(), 1);
    }
    let s = Store::open(t.path(), "n1").unwrap();
    assert!(matches!(s.get(&a), Err(StoreError::NotFound { .. })));
    assert_eq!(s.stats().unwrap().chunks, 0);
    assert!(
        kinds(t.path()).is_empty(),
        "staged segments removed at start"
    );
}
