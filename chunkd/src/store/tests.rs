//! Unit tests of the on-disk store.

use super::*;
use std::sync::Arc;

fn chunk(seed: u64, len: usize) -> (ChunkId, Vec<u8>) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    (ChunkId::of(&data), data)
}

fn tmp_entries(dir: &Path) -> usize {
    fs::read_dir(dir.join("tmp")).unwrap().count()
}

#[test]
fn put_get_round_trip_in_every_mode() {
    for mode in [Durability::PerPut, Durability::Syncfs] {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open_with(t.path(), "n1", mode).unwrap();
        let (id, data) = chunk(1, 256 * 1024);
        assert!(s.put(&id, &data).unwrap());
        assert_eq!(&s.get(&id).unwrap()[..], &data[..]);
        let hex = id.to_hex();
        let path = t.path().join("chunks").join(&hex[..2]).join(&hex);
        assert_eq!(fs::read(&path).unwrap(), data, "layout chunks/<xx>/<hex>");
        assert_eq!(tmp_entries(t.path()), 0, "no temp file left behind");
    }
}

#[test]
fn put_is_idempotent() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let (id, data) = chunk(2, 1000);
    assert!(s.put(&id, &data).unwrap());
    assert!(!s.put(&id, &data).unwrap(), "second put stores nothing");
    let st = s.stats().unwrap();
    assert_eq!((st.chunks, st.bytes), (1, 1000));
}

#[test]
fn concurrent_puts_of_one_chunk_store_it_once() {
    let t = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(t.path(), "n1").unwrap());
    let (id, data) = chunk(3, 64 * 1024);
    let data = Arc::new(data);
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let (s, data) = (s.clone(), data.clone());
            std::thread::spawn(move || s.put(&id, &data).unwrap())
        })
        .collect();
    let stored = hs.into_iter().map(|h| h.join().unwrap());
    assert_eq!(stored.filter(|&b| b).count(), 1);
    assert_eq!(s.stats().unwrap().chunks, 1);
    assert_eq!(tmp_entries(t.path()), 0);
}

#[test]
fn bad_hash_and_bad_id_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let (id, mut data) = chunk(4, 4096);
    data[100] ^= 1;
    assert!(matches!(
        s.put(&id, &data),
        Err(StoreError::HashMismatch { chunk, len: 4096 }) if chunk == id
    ));
    assert_eq!(s.has(&[id]), vec![false]);
    assert_eq!(s.stats().unwrap().chunks, 0);
    assert_eq!(tmp_entries(t.path()), 0);
    assert!(matches!(parse_id(&[0u8; 31]), Err(StoreError::BadId(31))));
    assert_eq!(parse_id(&id.0).unwrap(), id);
}

#[test]
fn corrupt_chunk_is_quarantined_and_never_returned() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "node-x").unwrap();
    let (id, data) = chunk(5, 8192);
    let (other, odata) = chunk(6, 100);
    s.put(&id, &data).unwrap();
    s.put(&other, &odata).unwrap();
    let path = s.chunk_path(&id);
    let mut bad = data.clone();
    bad[4000] ^= 0x40;
    fs::write(&path, &bad).unwrap();

    let err = s.get(&id).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { chunk, .. } if *chunk == id));
    assert_eq!(
        err.to_string(),
        format!(
            "chunk {} on chunkd node node-x is corrupt; it has been quarantined",
            id.to_hex()
        )
    );
    assert!(!path.exists(), "corrupt file moved away");
    let quarantined: Vec<_> = fs::read_dir(t.path().join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(fs::read(&quarantined[0]).unwrap(), bad);
    assert!(matches!(s.get(&id), Err(StoreError::NotFound { .. })));
    assert_eq!(s.has(&[id, other]), vec![false, true]);
    let st = s.stats().unwrap();
    assert_eq!((st.chunks, st.bytes), (1, 100));
    // A good copy can be stored again (repair).
    assert!(s.put(&id, &data).unwrap());
    assert_eq!(&s.get(&id).unwrap()[..], &data[..]);
}

#[test]
fn truncated_chunk_is_corrupt() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let (id, data) = chunk(7, 5000);
    s.put(&id, &data).unwrap();
    fs::write(s.chunk_path(&id), &data[..10]).unwrap();
    assert!(matches!(s.get(&id), Err(StoreError::Corrupt { .. })));
}

#[test]
fn has_delete_and_stats_count() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let cs: Vec<_> = (10..13).map(|i| chunk(i, 1000 * i as usize)).collect();
    for (id, d) in &cs {
        assert!(s.put(id, d).unwrap());
    }
    let (absent, _) = chunk(99, 10);
    assert_eq!(
        s.has(&[cs[2].0, absent, cs[0].0]),
        vec![true, false, true],
        "answers in request order"
    );
    let st = s.stats().unwrap();
    assert_eq!((st.chunks, st.bytes), (3, 10_000 + 11_000 + 12_000));
    assert_eq!(st.node_id, "n1");
    assert!(st.total_bytes > 0 && st.free_bytes <= st.total_bytes);

    assert_eq!(s.delete(&[cs[0].0, absent, cs[0].0]).unwrap(), 1);
    assert_eq!(s.has(&[cs[0].0]), vec![false]);
    let st = s.stats().unwrap();
    assert_eq!((st.chunks, st.bytes), (2, 23_000));
    assert_eq!(s.delete(&[cs[1].0, cs[2].0]).unwrap(), 2);
    assert_eq!(s.stats().unwrap().chunks, 0);
    assert_eq!(s.stats().unwrap().bytes, 0);
}

#[test]
fn reopen_scans_chunks_and_clears_tmp() {
    let t = tempfile::tempdir().unwrap();
    let ids: Vec<_> = {
        let s = Store::open(t.path(), "n1").unwrap();
        (20..25)
            .map(|i| {
                let (id, d) = chunk(i, 3000);
                s.put(&id, &d).unwrap();
                id
            })
            .collect()
    };
    fs::write(t.path().join("tmp/leftover.1"), b"half a chunk").unwrap();
    fs::write(t.path().join("chunks/ab/not-a-chunk"), b"x").unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    assert_eq!(tmp_entries(t.path()), 0, "tmp cleared at open");
    let st = s.stats().unwrap();
    assert_eq!((st.chunks, st.bytes), (5, 15_000));
    assert_eq!(s.has(&ids), vec![true; 5]);
}

/// Mounts a small tmpfs (needs root; skipped otherwise) and fills it.
#[test]
fn full_disk_is_resource_exhausted_and_leaves_no_temp_file() {
    struct Mount(std::path::PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let t = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(t.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _m = Mount(t.path().to_path_buf());
    let s = Store::open(t.path(), "full-1").unwrap();
    let mut stored = 0u64;
    let err = loop {
        let (id, d) = chunk(100 + stored, 256 * 1024);
        match s.put(&id, &d) {
            Ok(true) => stored += 1,
            Ok(false) => unreachable!("distinct chunks"),
            Err(e) => break e,
        }
        assert!(
            stored < 10,
            "a 1 MiB tmpfs cannot hold 10 chunks of 256 KiB"
        );
    };
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "chunkd node full-1 is out of disk space; free space or add nodes"
    );
    assert_eq!(tmp_entries(t.path()), 0);
    assert_eq!(s.stats().unwrap().chunks, stored);
    assert!(stored >= 2);
}
