//! Lazy reads through the mount: byte-identical, only the covering chunks
//! are fetched, holes fetch nothing; fio with crc32c verification,
//! buffered and O_DIRECT.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::process::Command;

use testbed::harness::daemons::*;
use testbed::harness::data::*;

const MIB: usize = 1 << 20;
const CS: usize = 256 * 1024;

#[test]
fn lazy_reads_fetch_only_covering_chunks_and_no_holes() {
    let c = Cluster::start(2, 2);
    let img = image(1, 64 * MIB, CS);
    c.import("lazy", &img, CS as u32);
    // Kernel read-ahead at 64 KiB (the default 128 KiB may read that much
    // past a buffered read), so the bound below is mirrord's own.
    let base = c.dir.path();
    let m = Mirrord::start_env(
        &c.pool,
        &base.join("mnt"),
        &base.join("cache"),
        &base.join("mirrord.log"),
        &[("BLOBVIRT_READ_AHEAD_KIB", "64")],
    );
    assert_eq!(read_ahead_kib(&m), 64, "--read-ahead-kib was not applied");
    m.wait_for("lazy");
    let f = std::fs::File::open(m.path("lazy")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), img.len() as u64);

    // 10 MiB at an unaligned offset inside the data region.
    let off = 7 * MIB + 12345;
    let mut buf = vec![0u8; 10 * MIB];
    f.read_exact_at(&mut buf, off as u64).unwrap();
    assert!(
        buf == img[off..off + 10 * MIB],
        "10 MiB read differs from the image"
    );
    let st = m.status(&c.rt, "lazy");
    let covering = ((off + 10 * MIB - 1) / CS - off / CS + 1) as u64;
    assert!(st.bytes_fetched > 0);
    assert!(
        st.bytes_fetched <= (covering + 2) * CS as u64,
        "fetched {} bytes for a 10 MiB read covering {covering} chunks",
        st.bytes_fetched
    );
    assert_eq!(st.readahead, 0, "one 10 MiB read started read-ahead");

    // The last quarter is a hole: reading it fetches nothing.
    let before = m.status(&c.rt, "lazy").bytes_fetched;
    let mut hole = vec![1u8; 8 * MIB];
    f.read_exact_at(&mut hole, (56 * MIB) as u64).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    assert_eq!(
        m.status(&c.rt, "lazy").bytes_fetched,
        before,
        "a hole read fetched data"
    );

    // Whole file, byte-identical; never more than the non-hole chunks.
    let mut all = Vec::new();
    std::fs::File::open(m.path("lazy"))
        .unwrap()
        .read_to_end(&mut all)
        .unwrap();
    assert!(all == img, "full read differs from the image");
    let non_hole = img.chunks(CS).filter(|c| c.iter().any(|&b| b != 0)).count() as u64;
    let st = m.status(&c.rt, "lazy");
    assert_eq!(
        st.fetches, non_hole,
        "each non-hole chunk is fetched exactly once"
    );
    assert!(
        st.readahead > 0,
        "a 64 MiB sequential read fetched nothing ahead"
    );
    assert_eq!(st.chunks_dirty, 0);

    // O_DIRECT reads work and agree.
    let out = Command::new("dd")
        .arg(format!("if={}", m.path("lazy").display()))
        .args(["of=/dev/null", "bs=1M", "iflag=direct"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dd iflag=direct: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel read-ahead of `m`'s mount, from sysfs.
fn read_ahead_kib(m: &Mirrord) -> u64 {
    use std::os::linux::fs::MetadataExt;
    let dev = std::fs::metadata(&m.mount).unwrap().st_dev();
    let p = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::read_to_string(&p).unwrap().trim().parse().unwrap()
}

/// By default the mount reads 128 KiB ahead of a buffered reader, and a
/// cold buffered read through it is still exact.
#[test]
fn default_read_ahead_is_set_on_the_mount() {
    let c = Cluster::start(2, 2);
    let img = image(3, 24 * MIB, CS);
    c.import("ra", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    assert_eq!(read_ahead_kib(&m), mirrord::daemon::DEFAULT_READ_AHEAD_KIB);
    m.wait_for("ra");
    let all = std::fs::read(m.path("ra")).unwrap();
    assert!(all == img, "cold buffered read differs from the image");
    let non_hole = img.chunks(CS).filter(|c| c.iter().any(|&b| b != 0)).count() as u64;
    assert_eq!(m.status(&c.rt, "ra").fetches, non_hole);
}

#[test]
fn concurrent_readers_share_fetches() {
    let c = Cluster::start(2, 2);
    let img = image(2, 32 * MIB, CS);
    c.import("shared", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("shared");
    let path = m.path("shared");
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let path = path.clone();
            let img = img.clone();
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .unwrap();
                // Every thread reads the same 8 MiB in a different order.
                let mut order: Vec<usize> = (0..8).collect();
                order.rotate_left(t);
                let mut buf = AlignedBuf::new(MIB);
                for i in order {
                    f.read_exact_at(buf.as_mut(), (4 * MIB + i * MIB) as u64)
                        .unwrap();
                    assert!(buf.as_mut() == &img[4 * MIB + i * MIB..5 * MIB + i * MIB]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let non_hole = img[4 * MIB..12 * MIB]
        .chunks(CS)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64;
    let st = m.status(&c.rt, "shared");
    assert_eq!(st.fetches, non_hole);
    assert_eq!(st.readahead, 0, "8 MiB of reads started read-ahead");
}

#[test]
fn sequential_direct_reads_fetch_ahead_once_per_chunk() {
    let c = Cluster::start(2, 2);
    let img = image(4, 96 * MIB, CS);
    c.import("seq", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("seq");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("seq"))
        .unwrap();
    let mut buf = AlignedBuf::new(MIB);
    // 40 MiB from 8 MiB on, in 1 MiB requests.
    for k in 8..48 {
        f.read_exact_at(buf.as_mut(), (k * MIB) as u64).unwrap();
        assert!(
            buf.as_mut() == &img[k * MIB..(k + 1) * MIB],
            "MiB {k} differs"
        );
    }
    let st = m.status(&c.rt, "seq");
    assert!(
        st.readahead > 0,
        "a 40 MiB sequential read fetched nothing ahead"
    );
    // Every fetch is of a distinct non-hole chunk, none beyond the window.
    let window_end = 48 * MIB / CS + 64;
    let possible = img[8 * MIB..window_end * CS]
        .chunks(CS)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64;
    let read = img[8 * MIB..48 * MIB]
        .chunks(CS)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64;
    assert!(
        st.fetches >= read && st.fetches <= possible,
        "{} fetches for {read} chunks read (at most {possible} with read-ahead)",
        st.fetches
    );
    // A random read far away then reads nothing ahead of itself.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = m.status(&c.rt, "seq");
    f.read_exact_at(buf.as_mut(), (70 * MIB) as u64).unwrap();
    let after = m.status(&c.rt, "seq");
    assert_eq!(
        after.readahead, before.readahead,
        "a random read fetched ahead"
    );
    assert!(after.fetches - before.fetches <= 4);
}

use std::os::unix::fs::OpenOptionsExt;

/// A page-aligned buffer for O_DIRECT.
struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let off = (4096 - (v.as_ptr() as usize % 4096)) % 4096;
        AlignedBuf { v, off, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

fn fio(path: &std::path::Path, direct: bool) {
    if Command::new("fio").arg("--version").output().is_err() {
        panic!("fio is not installed; install it with apt-get install -y fio");
    }
    let out = Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=psync",
            "--rw=randrw",
            "--bsrange=4k-1m",
            "--size=8m",
            "--numjobs=3",
            "--offset_increment=8m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--randrepeat=0",
            "--group_reporting",
            "--verify_state_save=0",
        ])
        .current_dir(path.parent().unwrap().parent().unwrap())
        .arg(format!("--direct={}", direct as u8))
        .arg(format!("--filename={}", path.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fio (direct={direct}) failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fio_verify_buffered_and_direct_then_commit_matches_export() {
    let c = Cluster::start(2, 2);
    let img = image(3, 64 * MIB, CS);
    c.import("fio", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("fio");
    fio(&m.path("fio"), false);
    fio(&m.path("fio"), true);
    // The close-to-open commit publishes what fio wrote.
    let t = std::time::Instant::now();
    while m.status(&c.rt, "fio").chunks_dirty > 0 {
        assert!(
            t.elapsed().as_secs() < 30,
            "close-to-open commit did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let v = c.rt.block_on(m.client().wait("fio")).unwrap().version;
    assert!(v > 1);
    let mirror = std::fs::read(m.path("fio")).unwrap();
    assert!(
        c.export("fio", v) == mirror,
        "export differs from the mirror after fio"
    );
    assert!(c.export("fio", 1) == img, "version 1 changed");
}
