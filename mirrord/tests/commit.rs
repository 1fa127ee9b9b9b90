//! COMMIT and CLONE through the mount and the control API: random writes,
//! upload bounds, exact snapshots under concurrent overwrites, CLONE, holes.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use testbed::harness::daemons::*;
use testbed::harness::data::*;

const MIB: usize = 1 << 20;
const CS: usize = 256 * 1024;

#[test]
fn random_writes_commit_export_matches_and_uploads_are_bounded() {
    let c = Cluster::start(2, 2);
    let img = image(10, 64 * MIB, CS);
    c.import("rw", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("rw");
    let cl = m.client();
    // Keep changes local on close so only the explicit commit publishes.
    c.rt.block_on(cl.set_policy("rw", mirrord::OnClose::Keep))
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("rw"))
        .unwrap();
    let mut model = img.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut written = 0;
    while written < 15 * MIB {
        let len = rng.gen_range(1..=512 * 1024);
        let off = rng.gen_range(0..64 * MIB - len);
        let data = random_bytes(rng.gen(), len);
        f.write_all_at(&data, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&data);
        written += len;
    }
    f.sync_all().unwrap();
    let st = m.status(&c.rt, "rw");
    let dirty = st.chunks_dirty;
    assert!(dirty > 0);
    let stored_before = c.stored_bytes();
    let out = c.rt.block_on(cl.commit("rw", true)).unwrap();
    assert_eq!(out.version, 2);
    assert!(out.published);
    let st = m.status(&c.rt, "rw");
    assert_eq!(st.chunks_dirty, 0);
    assert_eq!(st.version, 2);
    assert!(
        st.bytes_committed <= dirty * CS as u64,
        "uploaded {} for {dirty} dirty chunks",
        st.bytes_committed
    );
    let stored = c.stored_bytes() - stored_before;
    assert!(
        stored <= dirty * CS as u64 * 2,
        "chunkd stored {stored} bytes for {dirty} dirty chunks x 2 replicas"
    );
    let mut mirror = vec![0u8; 64 * MIB];
    f.read_exact_at(&mut mirror, 0).unwrap();
    assert!(mirror == model, "mirror differs from the model");
    assert!(
        c.export("rw", 2) == model,
        "export of the commit differs from the mirror"
    );
    assert!(c.export("rw", 1) == img, "the previous version changed");

    // Nothing dirty: a no-op that reports the current version.
    let out = c.rt.block_on(cl.commit("rw", true)).unwrap();
    assert_eq!((out.version, out.published), (2, false));
    assert_eq!(c.latest("rw"), 2);
}

#[test]
fn commit_under_concurrent_overwrites_holds_phase1_content() {
    let c = Cluster::start(2, 2);
    let size = 48 * MIB;
    let img = image(20, size, CS);
    c.import("snap", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("snap");
    let cl = m.client();
    c.rt.block_on(cl.set_policy("snap", mirrord::OnClose::Keep))
        .unwrap();
    let f = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("snap"))
            .unwrap(),
    );
    // Dirty the first 32 MiB, then read back the content at the snapshot point.
    for i in 0..32 {
        f.write_all_at(&vec![i as u8 + 1; MIB], (i * MIB) as u64)
            .unwrap();
    }
    let mut expected = vec![0u8; size];
    f.read_exact_at(&mut expected, 0).unwrap();

    let out = c.rt.block_on(cl.commit("snap", false)).unwrap();
    assert!(!out.published, "phase 1 returns before publishing");
    // Phase 1 froze exactly the dirty set (its duration is a benchmark's
    // business, not a test's: these machines are shared).
    assert_eq!(out.chunks_changed, (32 * MIB / CS) as u64, "{out:?}");
    // Overwrite the frozen region while phase 2 uploads.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (f, stop) = (f.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut round = 0u8;
            while !stop.load(Ordering::Relaxed) {
                round = round.wrapping_add(1);
                for i in (0..32 * 4).rev() {
                    f.write_all_at(&vec![0xA0 ^ round; CS], (i * CS) as u64)
                        .unwrap();
                }
            }
        })
    };
    let v = c.rt.block_on(cl.wait("snap")).unwrap().version;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(v, 2);
    assert!(
        c.export("snap", 2) == expected,
        "the version does not hold the phase-1 content"
    );
    let st = m.status(&c.rt, "snap");
    assert!(
        st.cow_copies > 0,
        "no write hit a frozen chunk; the test proved nothing"
    );
    assert!(st.chunks_dirty > 0, "the overwrites must stay dirty");
    // The overwrites are committed by the next commit.
    let out = c.rt.block_on(cl.commit("snap", true)).unwrap();
    let mut now = vec![0u8; size];
    f.read_exact_at(&mut now, 0).unwrap();
    assert!(c.export("snap", out.version) == now);
}

#[test]
fn clone_continues_on_new_volume_and_leaves_old_unchanged() {
    let c = Cluster::start(2, 2);
    let img = image(30, 16 * MIB, CS);
    c.import("orig", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("orig");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("orig"))
        .unwrap();
    f.write_all_at(b"written before the clone", 5000).unwrap();
    let v = mirrord::ioctl::clone(&f, "copy").unwrap();
    assert!(v >= 1);
    // Writes after the clone go to the clone.
    f.write_all_at(b"after", 9_000_000).unwrap();
    let v2 = mirrord::ioctl::commit(&f).unwrap();
    assert!(v2 > v);
    let mut want = img.clone();
    want[5000..5024].copy_from_slice(b"written before the clone");
    want[9_000_000..9_000_005].copy_from_slice(b"after");
    assert!(c.export("copy", v2) == want);
    assert!(c.export("orig", 0) == img, "the original volume changed");
    assert_eq!(c.latest("orig"), 1);
    m.wait_for("copy");
    assert!(std::fs::read(m.path("copy")).unwrap() == want);
    drop(f);
    // The original, opened again, shows its own content.
    assert!(std::fs::read(m.path("orig")).unwrap() == img);
    // Control API clone too.
    let r =
        c.rt.block_on(m.client().clone_volume("orig", "copy2"))
            .unwrap();
    assert_eq!(r.name, "copy2");
    assert!(c.export("copy2", 0) == img);
}

#[test]
fn punch_hole_seek_and_volume_lifecycle() {
    let c = Cluster::start(2, 2);
    let img = random_bytes(40, 4 * MIB);
    c.import("holes", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("holes");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("holes"))
        .unwrap();
    use nix::fcntl::FallocateFlags as F;
    use std::os::fd::AsRawFd;
    // Chunks 2 and 3 entirely, plus a partial piece of chunk 5.
    nix::fcntl::fallocate(
        f.as_raw_fd(),
        F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
        (2 * CS) as i64,
        (2 * CS) as i64,
    )
    .unwrap();
    nix::fcntl::fallocate(
        f.as_raw_fd(),
        F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
        (5 * CS + 100) as i64,
        1000,
    )
    .unwrap();
    let data_at = nix::unistd::lseek(
        f.as_raw_fd(),
        (2 * CS) as i64,
        nix::unistd::Whence::SeekData,
    )
    .unwrap();
    assert_eq!(data_at as usize, 4 * CS);
    let hole_at = nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekHole).unwrap();
    assert_eq!(hole_at as usize, 2 * CS);
    let v = mirrord::ioctl::commit(&f).unwrap();
    let mut want = img.clone();
    want[2 * CS..4 * CS].fill(0);
    want[5 * CS + 100..5 * CS + 1100].fill(0);
    assert!(c.export("holes", v) == want);
    let r = c.rt.block_on(c.repo.resolve("holes", v)).unwrap();
    assert_eq!(r.chunks[2], None);
    assert_eq!(r.chunks[3], None);
    assert!(r.chunks[5].is_some());
    drop(f);

    // create + ftruncate + write + close → a new volume with that content.
    let p = m.path("fresh");
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .unwrap();
        f.set_len(MIB as u64).unwrap();
        f.write_all_at(b"hello", 300_000).unwrap();
    }
    let t = std::time::Instant::now();
    let mut want = vec![0u8; MIB];
    want[300_000..300_005].copy_from_slice(b"hello");
    loop {
        let ok =
            c.rt.block_on(c.repo.get_blob("fresh"))
                .map(|b| b.latest_version >= 3)
                .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            t.elapsed().as_secs() < 20,
            "the new volume was not committed on close"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(c.export("fresh", 0) == want);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), MIB as u64);
    // unlink deletes the volume.
    std::fs::remove_file(&p).unwrap();
    assert!(c.rt.block_on(c.repo.get_blob("fresh")).is_err());
    assert!(!p.exists());
}
