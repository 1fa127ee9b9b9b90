//! Crash safety and shutdown: SIGKILL leaves a stale mount that the next
//! start cleans, fsynced bytes survive and commit works; SIGTERM commits
//! per policy, unmounts and exits 0.

mod common;

use std::os::unix::fs::FileExt;

use common::*;

const MIB: usize = 1 << 20;
const CS: usize = 256 * 1024;

#[test]
fn sigkill_restart_keeps_fsynced_bytes_and_commit_works() {
    let c = Cluster::start(2, 2);
    let img = image(50, 16 * MIB, CS);
    c.import("crash", &img, CS as u32);
    let base = c.dir.path().join("m");
    let mut m = Mirrord::start(&c.pool, &base);
    m.wait_for("crash");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("crash"))
        .unwrap();
    let mut want = img.clone();
    // A fetched chunk, a hole chunk (partly), and a span of chunks.
    for (off, len, seed) in [
        (100_000usize, 5000usize, 1u64),
        (4 * CS + 10, 300, 2),
        (3 * MIB + 7, 700_000, 3),
    ] {
        let d = random_bytes(seed, len);
        f.write_all_at(&d, off as u64).unwrap();
        want[off..off + len].copy_from_slice(&d);
    }
    f.sync_all().unwrap();
    m.crash();
    // The mount is stale now.
    assert!(mirrord::daemon::is_mounted(&m.mount));
    let err = std::fs::metadata(m.path("crash")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    drop(f);
    assert_eq!(c.latest("crash"), 1, "nothing may be committed by a crash");

    let m2 = Mirrord::start_with(&c.pool, &m.mount, &m.cache, &base.join("mirrord2.log"));
    assert!(
        m2.log_text().contains("stale mount"),
        "the stale mount was not reported"
    );
    m2.wait_for("crash");
    let got = std::fs::read(m2.path("crash")).unwrap();
    assert!(got == want, "fsynced bytes were lost across the crash");
    let st = m2.status(&c.rt, "crash");
    assert!(
        st.chunks_dirty >= 3,
        "written chunks must still be dirty: {st:?}"
    );
    let out = c.rt.block_on(m2.client().commit("crash", true)).unwrap();
    assert_eq!(out.version, 2);
    assert!(c.export("crash", 2) == want);
    assert!(c.export("crash", 1) == img);
}

#[test]
fn sigterm_commits_per_policy_unmounts_and_exits_zero() {
    let c = Cluster::start(2, 2);
    let img = image(60, 8 * MIB, CS);
    c.import("term", &img, CS as u32);
    c.import("kept", &img, CS as u32);
    let base = c.dir.path().join("m");
    let mut m = Mirrord::start(&c.pool, &base);
    m.wait_for("term");
    m.wait_for("kept");
    c.rt.block_on(m.client().set_policy("kept", mirrord::OnClose::Keep))
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("term"))
        .unwrap();
    let g = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("kept"))
        .unwrap();
    f.write_all_at(b"committed at shutdown", 1234).unwrap();
    g.write_all_at(b"kept locally", 1234).unwrap();
    g.sync_all().unwrap();
    let status = m.stop().expect("mirrord exited");
    assert!(status.success(), "mirrord exited with {status:?}");
    assert!(
        !mirrord::daemon::is_mounted(&m.mount),
        "mirrord left its mount behind"
    );
    drop((f, g));
    let mut want = img.clone();
    want[1234..1234 + 21].copy_from_slice(b"committed at shutdown");
    assert_eq!(c.latest("term"), 2);
    assert!(c.export("term", 2) == want);
    assert_eq!(c.latest("kept"), 1, "policy keep must not commit");
    // The kept change is still in the cache after a restart.
    let m2 = Mirrord::start_with(&c.pool, &m.mount, &m.cache, &base.join("mirrord2.log"));
    m2.wait_for("kept");
    let mut b = [0u8; 12];
    std::fs::File::open(m2.path("kept"))
        .unwrap()
        .read_exact_at(&mut b, 1234)
        .unwrap();
    assert_eq!(&b, b"kept locally");
}
