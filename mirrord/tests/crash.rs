//! Crash safety and shutdown: SIGKILL leaves a stale mount that the next
//! start cleans, fsynced bytes survive and commit works; SIGTERM commits
//! per policy, unmounts and exits 0.

use std::os::unix::fs::FileExt;

use testbed::harness::daemons::*;
use testbed::harness::data::*;

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

/// A mirrord killed between publishing a version and saving its state map
/// finds, after a restart, that the newer version in poold is its own
/// commit: it moves onto it, and the next commit succeeds (it used to fail
/// with ESTALE) and exports exactly what was written.
#[test]
fn crash_between_publish_and_state_flush_reconciles() {
    let c = Cluster::start(2, 1);
    let img = image(60, 4 * MIB, CS);
    c.import("rec", &img, CS as u32);
    let base = c.dir.path().join("m");
    let (mount, cache, log) = (base.join("mnt"), base.join("cache"), base.join("log"));
    let mut m = Mirrord::start_env(
        &c.pool,
        &mount,
        &cache,
        &log,
        &[("BLOBVIRT_FAILPOINT", "mirrord-after-publish")],
    );
    m.wait_for("rec");
    let mut want = img.clone();
    let a = random_bytes(61, 300_000);
    want[70_000..370_000].copy_from_slice(&a);
    // Written and fsynced; the close commits, publishes version 2 and dies.
    pwrite(&m.path("rec"), 70_000, &a);
    assert!(m.wait_exit(), "the failpoint did not stop mirrord");
    assert!(m.log_text().contains("failpoint reached"));
    assert_eq!(c.latest("rec"), 2, "the commit was published");
    let v2 = want.clone();

    let m = Mirrord::start_with(&c.pool, &mount, &cache, &log);
    m.wait_for("rec");
    assert!(std::fs::read(m.path("rec")).unwrap() == want);
    let st = m.status(&c.rt, "rec");
    assert_eq!((st.version, st.chunks_dirty), (2, 0), "{st:?}");
    let b = random_bytes(62, 5000);
    want[3 * MIB..3 * MIB + 5000].copy_from_slice(&b);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("rec"))
        .unwrap();
    f.write_all_at(&b, 3 * MIB as u64).unwrap();
    let out = c.rt.block_on(m.client().commit("rec", true)).unwrap();
    assert_eq!((out.version, out.published), (3, true), "{out:?}");
    drop(f);
    assert!(c.export("rec", 3) == want);
    assert!(c.export("rec", 2) == v2);
    assert!(m
        .log_text()
        .contains("the mirror's last commit was published before mirrord stopped"));
}
