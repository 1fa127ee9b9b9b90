//! Writer leases between two mirrords, and bad input: unknown volumes,
//! writes past the end, an unreachable chunkd, a full cache disk.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use testbed::harness::bin;
use testbed::harness::daemons::*;
use testbed::harness::data::*;

const MIB: usize = 1 << 20;
const CS: usize = 256 * 1024;

fn open_rw(p: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).open(p)
}

#[test]
fn second_mirrord_gets_ebusy_until_the_first_closes() {
    let c = Cluster::start(1, 1);
    let img = image(70, 4 * MIB, CS);
    c.import("shared", &img, CS as u32);
    let a = Mirrord::start(&c.pool, &c.dir.path().join("a"));
    let b = Mirrord::start(&c.pool, &c.dir.path().join("b"));
    a.wait_for("shared");
    b.wait_for("shared");
    let fa = open_rw(&a.path("shared")).unwrap();
    fa.write_all_at(b"from a", 10).unwrap();
    let err = open_rw(&b.path("shared")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    assert!(
        b.log_text().contains("mirrord@") && b.log_text().contains(&a.mount.display().to_string()),
        "the refusal must name the holder: {}",
        b.log_text()
    );
    // Reading is always allowed.
    let mut buf = [0u8; 4];
    std::fs::File::open(b.path("shared"))
        .unwrap()
        .read_exact_at(&mut buf, 100)
        .unwrap();
    assert_eq!(&buf, &img[100..104]);
    drop(fa);
    let t = Instant::now();
    let fb = loop {
        match open_rw(&b.path("shared")) {
            Ok(f) => break f,
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && t.elapsed() < Duration::from_secs(15) =>
            {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("the second mirrord could not open after the first closed: {e}"),
        }
    };
    // The first writer's close committed, so the second sees its write.
    let mut got = [0u8; 6];
    fb.read_exact_at(&mut got, 10).unwrap();
    assert_eq!(&got, b"from a");
}

#[test]
fn bad_input_is_refused_clearly() {
    let c = Cluster::start(1, 1);
    let img = image(80, 2 * MIB, CS);
    c.import("small", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("small");
    let cl = m.client();
    let e =
        c.rt.block_on(cl.attach("no-such-volume", None))
            .unwrap_err();
    assert!(
        e.to_string().contains("no-such-volume") && e.to_string().contains("does not exist"),
        "{e}"
    );
    assert_eq!(
        std::fs::File::open(m.path("no-such-volume"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    // Attach with a version works and reports it.
    let r = c.rt.block_on(cl.attach("small", None)).unwrap();
    assert_eq!((r.version, r.size), (1, 2 * MIB as u64));
    // Commit with nothing dirty: no new version.
    let out = c.rt.block_on(cl.commit("small", true)).unwrap();
    assert_eq!((out.version, out.published), (1, false));
    // A write past the largest volume size fails with EFBIG and changes
    // nothing (writes past the end grow the file: see tests/mount.rs).
    let f = open_rw(&m.path("small")).unwrap();
    let err = f
        .write_at(&[7u8; 100], mirrord::mirror::MAX_SIZE)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    assert_eq!(f.metadata().unwrap().len(), 2 * MIB as u64);
    drop(f);
    assert!(std::fs::read(m.path("small")).unwrap() == img);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.latest("small"), 1);
    // Control requests for volumes that are not attached.
    let e = c.rt.block_on(cl.detach("nothing", false)).unwrap_err();
    assert!(e.to_string().contains("nothing"), "{e}");
    let e =
        c.rt.block_on(cl.clone_volume("small", "small"))
            .unwrap_err();
    assert!(e.to_string().contains("small"), "{e}");
}

#[test]
fn unreachable_chunkd_gives_eio_logged_with_volume_chunk_and_node() {
    let mut c = Cluster::start(2, 1);
    let img = random_bytes(90, 8 * MIB);
    c.import("frail", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("frail");
    let f = std::fs::File::open(m.path("frail")).unwrap();
    // Fetch the first MiB while everything runs.
    let mut buf = vec![0u8; MIB];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == img[..MIB]);
    c.kill_chunkd(0);
    let mut eio = 0;
    let mut ok = 0;
    for i in 1..8 {
        match f.read_exact_at(&mut buf, (i * MIB) as u64) {
            Ok(()) => {
                assert!(buf == img[i * MIB..(i + 1) * MIB]);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                eio += 1;
            }
        }
    }
    assert!(
        eio > 0,
        "no read failed although half the chunks were on the dead node"
    );
    // Already fetched data is still served.
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == img[..MIB]);
    let log = m.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("giving up on chunk"))
        .unwrap_or_else(|| panic!("no error line in the log:\n{log}"));
    assert!(
        line.contains("frail") && line.contains("chunk=") && line.contains("node-0"),
        "{line}"
    );
    let _ = ok;
}

#[test]
fn full_cache_disk_gives_enospc_and_loses_nothing_committed() {
    let c = Cluster::start(1, 1);
    let img = image(95, 32 * MIB, CS);
    c.import("full", &img, CS as u32);
    let base = c.dir.path().join("m");
    let cache = base.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &cache,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=6m"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _tmpfs = Unmount(cache.clone());
    let m = Mirrord::start_with(
        &c.pool,
        &base.join("mnt"),
        &cache,
        &base.join("mirrord.log"),
    );
    m.wait_for("full");
    let f = open_rw(&m.path("full")).unwrap();
    let first = random_bytes(1, MIB);
    f.write_all_at(&first, 0).unwrap();
    let v = mirrord::ioctl::commit(&f).unwrap();
    assert_eq!(v, 2);
    let mut want = img.clone();
    want[..MIB].copy_from_slice(&first);
    // Fill the cache disk.
    let mut err = None;
    for i in 1..32 {
        if let Err(e) = f.write_all_at(&random_bytes(i as u64 + 10, MIB), (i * MIB) as u64) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a 6 MiB cache disk took 31 MiB of writes");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // What was committed is intact in the repository and still readable here.
    assert!(c.export("full", 2) == want);
    let mut b = vec![0u8; MIB];
    f.read_exact_at(&mut b, 0).unwrap();
    assert!(b == first);
    drop(f);
}

#[test]
fn listing_follows_volumes_created_and_deleted_elsewhere() {
    let c = Cluster::start(1, 1);
    let m = Mirrord::start(&c.pool, c.dir.path());
    let one = random_bytes(1, MIB);
    c.import("elsewhere", &one, CS as u32);
    m.wait_for("elsewhere");
    assert!(std::fs::read(m.path("elsewhere")).unwrap() == one);
    let listed = |name: &str| {
        std::fs::read_dir(&m.mount)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_str() == Some(name))
    };
    assert!(listed("elsewhere"));
    c.rt.block_on(c.repo.delete("elsewhere", 0)).unwrap();
    let t = Instant::now();
    while listed("elsewhere") || m.path("elsewhere").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a deleted volume stayed in the mount"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Same name, new volume: the old mirror must not leak into it.
    let two = random_bytes(2, 2 * MIB);
    c.import("elsewhere", &two, CS as u32);
    m.wait_for("elsewhere");
    assert!(std::fs::read(m.path("elsewhere")).unwrap() == two);
}

/// A second mirrord on the same cache directory is refused with one
/// sentence before it touches anything; the first keeps its mount and its
/// control socket.
#[test]
fn second_mirrord_on_the_same_cache_is_refused() {
    let c = Cluster::start(1, 1);
    let img = image(81, MIB, CS);
    c.import("kept", &img, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("kept");
    let other = c.dir.path().join("other-mnt");
    std::fs::create_dir_all(&other).unwrap();
    let o = std::process::Command::new(bin("mirrord"))
        .args(["--pool", &c.pool])
        .arg("--mount")
        .arg(&other)
        .arg("--cache")
        .arg(&m.cache)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another mirrord already uses") && err.contains("--cache"),
        "{err}"
    );
    assert!(!mirrord::daemon::is_mounted(&other));
    assert!(std::fs::read(m.path("kept")).unwrap() == img);
    assert!(c.rt.block_on(m.client().status()).is_ok());
}

/// A read-ahead beyond what mirrord accepts is refused in one sentence
/// that names the setting, before anything is mounted.
#[test]
fn too_large_read_ahead_is_refused() {
    let c = Cluster::start(1, 1);
    let mnt = c.dir.path().join("ra-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let o = std::process::Command::new(bin("mirrord"))
        .args(["--pool", &c.pool, "--read-ahead-kib", "1000000"])
        .arg("--mount")
        .arg(&mnt)
        .arg("--cache")
        .arg(c.dir.path().join("ra-cache"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("read-ahead of 1000000 KiB is too large") && err.contains("read_ahead_kib"),
        "{err}"
    );
    assert!(!mirrord::daemon::is_mounted(&mnt));
}
