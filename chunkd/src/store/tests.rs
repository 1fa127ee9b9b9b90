//! Unit tests of the on-disk store.

use super::*;
use blobvirt_core::pack;
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
        let at = s.locate(&id).unwrap();
        assert!(at.file.starts_with(t.path().join("packs")), "{at:?}");
        assert_eq!(at.file.extension().unwrap(), "open");
        let f = fs::File::open(&at.file).unwrap();
        assert_eq!(
            pack::read_data(&f, at.data_at - pack::HEADER, at.len).unwrap(),
            data
        );
        assert_eq!(
            pack::find(&t.path().join("packs"), &id)
                .unwrap()
                .unwrap()
                .data_at,
            at.data_at
        );
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
    let at = s.locate(&id).unwrap();
    let mut bad = data.clone();
    bad[4000] ^= 0x20;
    crate::store::scan::tests::flip(&at.file, at.data_at + 4000);

    let err = s.get(&id).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { chunk, .. } if *chunk == id));
    assert_eq!(
        err.to_string(),
        format!(
            "chunk {} on chunkd node node-x is corrupt; it has been quarantined",
            id.to_hex()
        )
    );
    assert!(matches!(s.locate(&id), Err(StoreError::NotFound { .. })));
    let quarantined: Vec<_> = fs::read_dir(t.path().join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(
        fs::read(&quarantined[0]).unwrap() == bad,
        "the copy holds the bad bytes"
    );
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
    let at = s.locate(&id).unwrap();
    let f = fs::File::options().write(true).open(&at.file).unwrap();
    f.set_len(at.data_at + 10).unwrap();
    assert!(matches!(s.get(&id), Err(StoreError::Corrupt { .. })));
    assert_eq!(s.has(&[id]), vec![false], "dropped from the store");
    drop(s);
    let s = Store::open(t.path(), "n1").unwrap();
    assert_eq!(s.has(&[id]), vec![false]);
    assert!(s.put(&id, &data).unwrap());
    assert_eq!(&s.get(&id).unwrap()[..], &data[..]);
}

#[test]
fn an_unsynced_record_of_an_open_segment_is_cut_at_start_and_later_ones_with_it() {
    let t = tempfile::tempdir().unwrap();
    let cs: Vec<_> = (30..34).map(|i| chunk(i, 2000)).collect();
    let second = {
        let s = Store::open(t.path(), "n1").unwrap();
        for (id, d) in &cs {
            s.put(id, d).unwrap();
        }
        s.locate(&cs[1].0).unwrap()
    };
    // The second record's data never reached the disk (zeros, as after a
    // crash before its sync): it and everything after it are dropped.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::options().write(true).open(&second.file).unwrap();
        f.write_all_at(&vec![0u8; 2000], second.data_at).unwrap();
    }
    let s = Store::open(t.path(), "n1").unwrap();
    let ids: Vec<_> = cs.iter().map(|(i, _)| *i).collect();
    assert_eq!(s.has(&ids), vec![true, false, false, false]);
    assert_eq!(s.stats().unwrap().chunks, 1);
    let packs: Vec<_> = fs::read_dir(t.path().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        packs.iter().all(|p| p.extension().unwrap() == "pack"),
        "sealed at start: {packs:?}"
    );
}

#[test]
fn deleted_chunks_free_their_space_and_stay_deleted_after_a_restart() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let cs: Vec<_> = (40..48).map(|i| chunk(i, 256 * 1024)).collect();
    let ids: Vec<_> = cs.iter().map(|(i, _)| *i).collect();
    {
        let s = Store::open(t.path(), "n1").unwrap();
        for (id, d) in &cs {
            s.put_staged(id, d).unwrap();
        }
        s.flush().unwrap();
        let seg = s.locate(&ids[0]).unwrap().file;
        let before = fs::metadata(&seg).unwrap().blocks();
        assert_eq!(s.delete(&ids[..4]).unwrap(), 4);
        let after = fs::metadata(&seg).unwrap().blocks();
        assert!(
            after * 10 < before * 6,
            "punched: {before} -> {after} blocks"
        );
        assert_eq!(s.has(&ids), [vec![false; 4], vec![true; 4]].concat());
    }
    let s = Store::open(t.path(), "n1").unwrap();
    assert_eq!(s.has(&ids), [vec![false; 4], vec![true; 4]].concat());
    assert_eq!(&s.get(&ids[5]).unwrap()[..], &cs[5].1[..]);
    // A segment with nothing live left is removed.
    assert_eq!(s.delete(&ids[4..]).unwrap(), 4);
    assert_eq!(fs::read_dir(t.path().join("packs")).unwrap().count(), 0);
    assert_eq!(s.stats().unwrap().chunks, 0);
}

#[test]
fn the_one_file_per_chunk_layout_is_moved_into_segments_once() {
    let t = tempfile::tempdir().unwrap();
    let cs: Vec<_> = (50..53).map(|i| chunk(i, 5000)).collect();
    for (id, d) in &cs {
        let f = blobvirt_core::chunk::chunk_file(&t.path().join("chunks"), id);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, d).unwrap();
    }
    let (bad, _) = chunk(54, 10);
    let f = blobvirt_core::chunk::chunk_file(&t.path().join("chunks"), &bad);
    fs::create_dir_all(f.parent().unwrap()).unwrap();
    fs::write(&f, b"not this chunk").unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let ids: Vec<_> = cs.iter().map(|(i, _)| *i).collect();
    assert_eq!(s.has(&ids), vec![true; 3]);
    assert_eq!(s.has(&[bad]), vec![false]);
    assert!(!t.path().join("chunks").exists());
    assert_eq!(fs::read_dir(t.path().join("corrupt")).unwrap().count(), 1);
    drop(s);
    let s = Store::open(t.path(), "n1").unwrap();
    assert_eq!(s.stats().unwrap().chunks, 3);
    assert_eq!(&s.get(&ids[2]).unwrap()[..], &cs[2].1[..]);
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
    fs::write(t.path().join("packs/not-a-segment"), b"x").unwrap();
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

#[test]
fn locate_run_returns_the_live_records_after_a_chunk_in_file_order() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), "n1").unwrap();
    let cs: Vec<_> = (0..6).map(|i| chunk(100 + i, 4096 + i as usize)).collect();
    for (id, d) in &cs {
        s.put(id, d).unwrap();
    }
    s.delete(&[cs[3].0]).unwrap();
    let run = s.locate_run(&cs[1].0, 3).unwrap();
    let ids: Vec<ChunkId> = run.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        vec![cs[1].0, cs[2].0, cs[4].0, cs[5].0],
        "deleted record 3 skipped"
    );
    for ((id, at), (_, d)) in run.iter().zip([&cs[1], &cs[2], &cs[4], &cs[5]]) {
        assert_eq!(at, &s.locate(id).unwrap());
        let f = fs::File::open(&at.file).unwrap();
        assert_eq!(
            &pack::read_data(&f, at.data_at - pack::HEADER, at.len).unwrap(),
            d
        );
    }
    assert_eq!(
        s.locate_run(&cs[5].0, 10).unwrap().len(),
        1,
        "last record: nothing after it"
    );
    assert_eq!(
        s.locate_run(&cs[0].0, 2).unwrap().len(),
        3,
        "capped at `more`"
    );
}
