//! `mirrord --trace-reads FILE`: every FUSE read of a volume file becomes
//! one line `NAME OFFSET LENGTH` (length clipped to the volume size), the
//! lines reach the file within a few seconds while mirrord runs, and all of
//! them are there after SIGTERM.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use testbed::harness::daemons::*;
use testbed::harness::data::*;

const KIB: u64 = 1024;
const CS: usize = 256 * 1024;

/// Starts mirrord with `--trace-reads trace` under `base` (the harness's
/// guard stops it and unmounts).
fn start_traced(pool: &str, base: &Path, trace: &Path) -> Mirrord {
    Mirrord::start_args(
        pool,
        &base.join("mnt"),
        &base.join("cache"),
        &base.join("mirrord.log"),
        &[],
        &["--trace-reads".as_ref(), trace.as_os_str()],
    )
}

fn lines(trace: &Path) -> Vec<String> {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn reads_are_traced_in_order_and_clipped() {
    let c = Cluster::start(2, 1);
    // Not a multiple of the chunk size, so the last read is clipped.
    let size = 4 * CS + 1000;
    let img = random_bytes(7, size);
    c.import("vm", &img, CS as u32);
    let base = c.dir.path().join("m");
    let trace = c.dir.path().join("reads.log");
    let mut m = start_traced(&c.pool, &base, &trace);
    m.wait_for("vm");

    // O_DIRECT: the kernel forwards each read as issued (no page cache, no
    // readahead), so the trace must be exactly these requests.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("vm"))
        .unwrap();
    let reads: [(u64, u64); 5] = [
        (3 * CS as u64, 64 * KIB),
        (0, 4 * KIB),
        (CS as u64 + 4096, 128 * KIB),
        (0, 4 * KIB),
        (4 * CS as u64, 64 * KIB),
    ];
    let mut want = Vec::new();
    for &(off, len) in &reads {
        let mut buf = vec![0u8; len as usize];
        let n = f.read_at(&mut buf, off).unwrap();
        let got = len.min(size as u64 - off);
        assert_eq!(n as u64, got, "read at {off}");
        assert!(buf[..n] == img[off as usize..off as usize + n]);
        want.push(format!("vm {off} {got}"));
    }
    // The background flush writes the lines while mirrord still runs.
    let t = Instant::now();
    while lines(&trace).len() < want.len() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the trace was not flushed within 5 s: {:?}",
            lines(&trace)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lines(&trace), want);

    // A read after the last flush tick is still written on SIGTERM.
    let mut buf = vec![0u8; 8192];
    f.read_exact_at(&mut buf, 2 * CS as u64).unwrap();
    want.push(format!("vm {} 8192", 2 * CS));
    drop(f);
    let st = m.stop().expect("mirrord was running");
    assert!(st.success(), "mirrord exited with {st}");
    assert_eq!(lines(&trace), want);
}
