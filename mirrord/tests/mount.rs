//! The mount takes the commands people type: `cp` and `dd` into new and
//! existing files, `mv`, `fallocate` in its modes, and `chmod`/`chown`
//! that survive a mirrord restart. Each through a real FUSE mount.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::Command;

use testbed::harness::daemons::*;
use testbed::harness::data::*;

const MIB: usize = 1 << 20;
const CS: usize = 256 * 1024;

fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap()
}

#[test]
fn cp_and_dd_write_new_and_existing_volumes() {
    let c = Cluster::start(2, 1);
    let m = Mirrord::start(&c.pool, c.dir.path());
    let src = c.dir.path().join("src.raw");
    let data = random_bytes(1, 3 * MIB + 12_345);
    std::fs::write(&src, &data).unwrap();
    let dst = m.path("copied");
    let o = sh("cp", &[src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(o.status.success(), "cp: {o:?}");
    // The close committed: the repository has it when cp returns.
    assert!(c.export("copied", 0) == data);
    assert!(std::fs::read(&dst).unwrap() == data);
    // dd into a new file, in 1 MiB writes, with fsync.
    let o = sh(
        "dd",
        &[
            &format!("if={}", src.display()),
            &format!("of={}", m.path("dd-new").display()),
            "bs=1M",
            "conv=fsync",
        ],
    );
    assert!(o.status.success(), "dd: {o:?}");
    assert!(c.export("dd-new", 0) == data);
    // cp over an existing volume replaces its content (a new version).
    let smaller = random_bytes(2, MIB + 7);
    std::fs::write(&src, &smaller).unwrap();
    let before = c.latest("copied");
    let o = sh("cp", &[src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(o.status.success(), "cp over: {o:?}");
    assert!(c.export("copied", 0) == smaller);
    assert!(c.latest("copied") > before);
    assert!(c.export("copied", before) == data, "the old version stays");
    // Appending with small writes grows the file chunk by chunk.
    let f = std::fs::OpenOptions::new().append(true).open(&dst).unwrap();
    let mut want = smaller.clone();
    for i in 0..40u64 {
        let piece = random_bytes(100 + i, 10_000);
        std::io::Write::write_all(&mut &f, &piece).unwrap();
        want.extend_from_slice(&piece);
    }
    assert_eq!(f.metadata().unwrap().len(), want.len() as u64);
    drop(f);
    assert!(c.export("copied", 0) == want);
}

#[test]
fn mv_renames_a_volume_and_never_replaces_one() {
    let c = Cluster::start(2, 1);
    let img = image(3, 2 * MIB, CS);
    c.import("a", &img, CS as u32);
    let other = image(4, MIB, CS);
    c.import("c", &other, CS as u32);
    let m = Mirrord::start(&c.pool, c.dir.path());
    m.wait_for("a");
    // Read it first so a mirror is attached, then rename.
    assert!(std::fs::read(m.path("a")).unwrap() == img);
    let o = sh(
        "mv",
        &[m.path("a").to_str().unwrap(), m.path("b").to_str().unwrap()],
    );
    assert!(o.status.success(), "mv: {o:?}");
    assert!(!m.path("a").exists());
    assert!(std::fs::read(m.path("b")).unwrap() == img);
    assert!(c.export("b", 0) == img);
    let e = c.rt.block_on(c.repo.get_blob("a")).unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::NotFound), "{e}");
    // Onto an existing volume: refused, both intact.
    let e = std::fs::rename(m.path("b"), m.path("c")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
    assert!(c.export("b", 0) == img && c.export("c", 0) == other);
    // While open: refused.
    let f = std::fs::File::open(m.path("b")).unwrap();
    let e = std::fs::rename(m.path("b"), m.path("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
    drop(f);
    // A write through the renamed mirror commits into the new name.
    pwrite(&m.path("b"), 10, b"renamed");
    let mut want = img.clone();
    want[10..17].copy_from_slice(b"renamed");
    assert!(c.export("b", 0) == want);
}

fn fallocate(f: &std::fs::File, mode: i32, off: u64, len: u64) -> nix::Result<()> {
    let mode = nix::fcntl::FallocateFlags::from_bits_retain(mode);
    nix::fcntl::fallocate(f.as_raw_fd(), mode, off as i64, len as i64)
}

#[test]
fn fallocate_grows_the_file_and_punch_hole_keeps_its_size() {
    let c = Cluster::start(1, 1);
    let m = Mirrord::start(&c.pool, c.dir.path());
    let p = m.path("fa");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let len = |f: &std::fs::File| f.metadata().unwrap().len();
    assert_eq!(len(&f), 0);
    fallocate(&f, 0, 0, MIB as u64).unwrap();
    assert_eq!(len(&f), MIB as u64, "default mode grows");
    f.write_all_at(&[0xaa; 200_000], 100_000).unwrap();
    fallocate(
        &f,
        libc::FALLOC_FL_ZERO_RANGE,
        MIB as u64 - 4096,
        MIB as u64 / 2,
    )
    .unwrap();
    assert_eq!(len(&f), 3 * MIB as u64 / 2 - 4096, "ZERO_RANGE grows");
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(&f, punch, 150_000, 50_000).unwrap();
    fallocate(&f, punch, 2 * MIB as u64, MIB as u64).unwrap();
    assert_eq!(
        len(&f),
        3 * MIB as u64 / 2 - 4096,
        "punch-hole keeps the size"
    );
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 4 * MIB as u64).unwrap();
    assert_eq!(
        len(&f),
        3 * MIB as u64 / 2 - 4096,
        "KEEP_SIZE keeps the size"
    );
    drop(f);
    let mut want = vec![0u8; 3 * MIB / 2 - 4096];
    want[100_000..300_000].fill(0xaa);
    want[150_000..200_000].fill(0);
    assert!(std::fs::read(&p).unwrap() == want);
    assert!(c.export("fa", 0) == want);
}

#[test]
fn chmod_and_chown_survive_a_restart() {
    let c = Cluster::start(1, 1);
    c.import("own", &image(5, MIB, CS), CS as u32);
    c.import("plain", &image(6, MIB, CS), CS as u32);
    let base = c.dir.path().join("m");
    let mut m = Mirrord::start(&c.pool, &base);
    m.wait_for("own");
    std::fs::set_permissions(m.path("own"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(m.path("own"), Some(1234), Some(5678)).unwrap();
    let show = |m: &Mirrord, n: &str| {
        let md = std::fs::metadata(m.path(n)).unwrap();
        (md.mode() & 0o7777, md.uid(), md.gid())
    };
    assert_eq!(show(&m, "own"), (0o640, 1234, 5678));
    let plain = show(&m, "plain");
    assert_eq!(plain, (0o600, 0, 0), "the default owner and mode");
    assert_eq!(m.stop().map(|s| s.success()), Some(true));
    let m = Mirrord::start(&c.pool, &base);
    m.wait_for("own");
    assert_eq!(show(&m, "own"), (0o640, 1234, 5678), "after a restart");
    assert_eq!(show(&m, "plain"), plain);
    // A volume deleted and made again under that name starts afresh.
    std::fs::remove_file(m.path("own")).unwrap();
    c.import("own", &image(7, MIB, CS), CS as u32);
    m.wait_for("own");
    assert_eq!(show(&m, "own"), plain);
}
