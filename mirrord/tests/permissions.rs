//! Local users and the mount (`docs/mount.md`, "Who may do what"): a user
//! who is neither root nor in group `blobvirt` can neither read, write,
//! create, delete, rename nor list volumes, nor read the mirrors in the
//! cache, nor use the control socket; a member of `blobvirt` manages
//! names and uses the socket but still cannot read another user's disk; a
//! disk chowned to a user (libvirt's relabel to QEMU's user) is that
//! user's until it is chowned back; the CLONE ioctl, which the kernel does
//! not check, is refused to non-members. Nothing stored changes.
//!
//! Runs as root, with `setpriv` (util-linux) and the group `blobvirt`
//! (`scripts/install-deps.sh` creates it). The mount lives in a directory
//! every user can reach, so a refusal comes from the mount itself.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testbed::harness::bin;
use testbed::harness::daemons::*;
use testbed::harness::data::*;

const MIB: usize = 1 << 20;
const CS: usize = 64 * 1024;
const NOBODY: u32 = 65534;

/// The gid mirrord gives the mount root and the socket: group
/// `blobvirt`'s, or 0 without that group.
fn admin_gid() -> u32 {
    nix::unistd::Group::from_name("blobvirt")
        .unwrap()
        .map_or(0, |g| g.gid.as_raw())
}

/// The gid of group `blobvirt`.
fn blobvirt_gid() -> u32 {
    nix::unistd::Group::from_name("blobvirt")
        .unwrap()
        .expect("group blobvirt is missing; create it with scripts/install-deps.sh")
        .gid
        .as_raw()
}

/// A world-reachable directory for the mount and the cache (temp dirs are
/// 0700), with the cache made before mirrord so the umask does not matter.
fn reachable_base() -> tempfile::TempDir {
    let base = tempfile::Builder::new()
        .prefix("blobvirt-perm-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(base.path().join("cache")).unwrap();
    for p in [base.path(), &base.path().join("cache")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    base
}

/// Runs `cmd args` as nobody:nogroup with the supplementary `groups`.
fn as_nobody(groups: &[u32], cmd: &Path, args: &[&str]) -> Output {
    let groups = match groups {
        [] => "--clear-groups".to_string(),
        g => format!(
            "--groups={}",
            g.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        ),
    };
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", &groups, "--"])
        .arg(cmd)
        .args(args)
        .env_remove("BLOBVIRT_CONTROL")
        .env_remove("BLOBVIRT_CLUSTER_DIR")
        .output()
        .expect("run setpriv")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that `o` failed with `why` (an strerror text) in its message.
fn refused(what: &str, o: &Output, why: &str) {
    assert!(
        !o.status.success() && stderr(o).contains(why),
        "{what} as nobody: expected {why:?}, got {} / {}",
        o.status,
        stderr(o)
    );
}

fn succeeded(what: &str, o: &Output) {
    assert!(o.status.success(), "{what}: {} / {}", o.status, stderr(o));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (mode, uid, gid) of `p`.
fn owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn exists(c: &Cluster, name: &str) -> bool {
    c.rt.block_on(c.repo.get_blob(name)).is_ok()
}

/// Waits until no one holds the writer lease of `name`: mirrord gives it
/// back in the background after the kernel's release of the closed file,
/// and a rename before that is refused with `EBUSY`.
fn settle(c: &Cluster, name: &str) {
    let t = std::time::Instant::now();
    loop {
        match c
            .rt
            .block_on(mirrord::lease::acquire(&c.repo, name, "permissions-test"))
        {
            Ok(l) => return c.rt.block_on(l.release()),
            Err(mirrord::lease::LeaseError::Held { .. }) => {
                assert!(
                    t.elapsed().as_secs() < 10,
                    "{name} stays leased after its close"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The CLI, copied where nobody may run it.
fn cli_copy(base: &Path) -> PathBuf {
    let p = base.join("blobvirt");
    std::fs::copy(bin("blobvirt"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_local_user_can_do_nothing_to_volumes_and_the_control_socket() {
    let c = Cluster::start(1, 1);
    let img = image(1, 2 * MIB, CS);
    let v1 = c.import("disk", &img, CS as u32);
    let base = reachable_base();
    let blobvirt = cli_copy(base.path());
    let m = Mirrord::start(&c.pool, base.path());
    m.wait_for("disk");
    let disk = m.path("disk");
    // Root reads it (so its mirror is in the cache) and sees the modes.
    assert!(std::fs::read(&disk).unwrap() == img);
    let gid = admin_gid();
    assert_eq!(owner(&disk), (0o600, 0, 0));
    assert_eq!(owner(&m.mount), (0o771, 0, gid));
    let sock = m.cache.join("control.sock");
    assert_eq!(owner(&sock), (0o660, 0, gid));
    let data = m.cache.join("vols/disk/data");
    assert!(data.exists());
    assert_eq!(owner(&m.cache.join("vols")).0, 0o700);

    let mnt = |n: &str| s(&m.mount.join(n)).to_string();
    let run = |cmd: &str, args: &[&str]| as_nobody(&[], Path::new(cmd), args);
    let denied = "Permission denied";
    refused("cat", &run("cat", &[&mnt("disk")]), denied);
    let of = format!("of={}", mnt("disk"));
    let dd = [
        "if=/dev/zero",
        &of,
        "bs=4096",
        "count=1",
        "conv=notrunc",
        "status=none",
    ];
    refused("dd", &run("dd", &dd), denied);
    refused(
        "truncate",
        &run("truncate", &["-s", "0", &mnt("disk")]),
        denied,
    );
    refused("touch", &run("touch", &[&mnt("new")]), denied);
    refused("rm", &run("rm", &["-f", &mnt("disk")]), denied);
    refused("mv", &run("mv", &[&mnt("disk"), &mnt("moved")]), denied);
    refused("ls", &run("ls", &[s(&m.mount)]), denied);
    let not_owner = "Operation not permitted";
    refused("chmod", &run("chmod", &["0666", &mnt("disk")]), not_owner);
    refused("cat of the cache", &run("cat", &[s(&data)]), denied);
    let want = format!(
        "error: permission denied on mirrord's control socket {}; run as root or as a member of group blobvirt",
        sock.display()
    );
    for args in [
        &["mirror-status", "--control", s(&sock)][..],
        &["detach", "disk", "--control", s(&sock)][..],
    ] {
        let o = as_nobody(&[], &blobvirt, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().last(), Some(&*want));
    }

    // Nothing changed: the same version and bytes, no new names.
    assert_eq!(c.latest("disk"), v1);
    assert!(c.export("disk", 0) == img);
    assert!(std::fs::read(&disk).unwrap() == img);
    assert_eq!(names(&m.mount), ["disk"]);
    assert!(!exists(&c, "new") && !exists(&c, "moved"));
    let st = m.status(&c.rt, "disk");
    assert_eq!((st.version, st.chunks_dirty), (v1, 0));
    assert_eq!(owner(&disk), (0o600, 0, 0));

    // The root's owner and mode are fixed, even for root; setting what it
    // already is succeeds (libvirt's pool build does that).
    let perm = |m: u32| std::fs::Permissions::from_mode(m);
    let e = std::fs::set_permissions(&m.mount, perm(0o777)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    std::fs::set_permissions(&m.mount, perm(0o771)).unwrap();
    std::os::unix::fs::chown(&m.mount, Some(0), Some(gid)).unwrap();
    assert_eq!(owner(&m.mount), (0o771, 0, gid));

    // Root still can: write (the close commits), create, rename, delete.
    pwrite(&disk, 10, b"root was here");
    let mut want_img = img.clone();
    want_img[10..23].copy_from_slice(b"root was here");
    assert_eq!(c.latest("disk"), v1 + 1);
    assert!(c.export("disk", 0) == want_img);
    std::fs::write(m.path("made"), b"by root").unwrap();
    assert_eq!(owner(&m.path("made")), (0o600, 0, 0));
    settle(&c, "made");
    std::fs::rename(m.path("made"), m.path("made2")).unwrap();
    assert!(exists(&c, "made2") && !exists(&c, "made"));
    std::fs::remove_file(m.path("made2")).unwrap();
    assert!(!exists(&c, "made2"));
}

#[test]
fn a_blobvirt_member_manages_names_but_reads_no_one_elses_disk() {
    let c = Cluster::start(1, 1);
    let img = image(2, MIB, CS);
    let v1 = c.import("disk", &img, CS as u32);
    let base = reachable_base();
    let blobvirt = cli_copy(base.path());
    let m = Mirrord::start(&c.pool, base.path());
    m.wait_for("disk");
    let g = [blobvirt_gid()];
    let mnt = |n: &str| s(&m.mount.join(n)).to_string();
    let run = |cmd: &str, args: &[&str]| as_nobody(&g, Path::new(cmd), args);

    let o = run("ls", &[s(&m.mount)]);
    succeeded("ls", &o);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "disk\n");
    refused("cat", &run("cat", &[&mnt("disk")]), "Permission denied");
    succeeded("touch", &run("touch", &[&mnt("mine")]));
    assert!(exists(&c, "mine"));
    // The creator owns the new file; others get no bits.
    assert_eq!(owner(&m.path("mine")), (0o600, NOBODY, NOBODY));
    let of = format!("of={}", mnt("mine"));
    let dd = ["if=/dev/urandom", &of, "bs=4096", "count=2", "status=none"];
    succeeded("dd into its own file", &run("dd", &dd));
    assert_eq!(c.latest("mine"), 2, "its close committed");
    settle(&c, "mine");
    succeeded("mv", &run("mv", &[&mnt("mine"), &mnt("renamed")]));
    assert!(exists(&c, "renamed") && !exists(&c, "mine"));
    succeeded("rm", &run("rm", &[&mnt("renamed")]));
    assert!(!exists(&c, "renamed"));
    let sock = m.cache.join("control.sock");
    let o = as_nobody(&g, &blobvirt, &["mirror-status", "--control", s(&sock)]);
    succeeded("mirror-status", &o);
    assert_eq!(c.latest("disk"), v1);
    assert!(c.export("disk", 0) == img);
}

/// Runs `f` in a child as nobody with the supplementary `groups`, between
/// fork and exec (of `true`); returns the errno `f` failed with.
fn in_child_as_nobody(
    groups: Vec<libc::gid_t>,
    f: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
) -> Option<i32> {
    let mut cmd = Command::new("true");
    // SAFETY: between fork and exec only system calls run (no allocation):
    // setgroups/setgid/setuid and what `f` does.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            f()
        });
    }
    match cmd.status() {
        Ok(st) => {
            assert!(st.success());
            None
        }
        Err(e) => Some(e.raw_os_error().expect("an errno from the child")),
    }
}

/// CLONE on the open `fd` into `new`, called in the child.
fn clone_in_child(fd: i32, new: &'static str) -> impl Fn() -> std::io::Result<()> + Send + Sync {
    move || mirrord::ioctl::clone(&fd, new).map(|_| ())
}

#[test]
fn a_chowned_disk_is_its_users_and_clone_needs_the_group() {
    let c = Cluster::start(1, 1);
    let img = image(3, MIB, CS);
    let v1 = c.import("vm", &img, CS as u32);
    let base = reachable_base();
    let m = Mirrord::start(&c.pool, base.path());
    m.wait_for("vm");
    let vm = m.path("vm");
    let vm_s = s(&vm).to_string();
    let run = |cmd: &str, args: &[&str]| as_nobody(&[], Path::new(cmd), args);
    refused("cat", &run("cat", &[&vm_s]), "Permission denied");

    // What libvirt's DAC driver does before QEMU starts as its user.
    std::os::unix::fs::chown(&vm, Some(NOBODY), Some(NOBODY)).unwrap();
    let o = run("cat", &[&vm_s]);
    succeeded("cat of its own disk", &o);
    assert!(o.stdout == img);
    let of = format!("of={vm_s}");
    // Zeros into the second chunk, which holds data.
    let dd = [
        "if=/dev/zero",
        &of,
        "bs=4096",
        "count=1",
        "seek=16",
        "conv=notrunc",
        "status=none",
    ];
    succeeded("dd into its own disk", &run("dd", &dd));
    assert_eq!(c.latest("vm"), v1 + 1, "its close committed");
    let mut want = img.clone();
    want[CS..CS + 4096].fill(0);
    assert!(c.export("vm", 0) == want);

    // Its own disk open for writing does not let it make volumes.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vm)
        .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let e = in_child_as_nobody(vec![], clone_in_child(fd, "stolen"));
    assert_eq!(e, Some(libc::EACCES));
    assert!(!exists(&c, "stolen"));
    drop(f);
    // COMMIT and CLONE need a file open for writing.
    let ro = std::fs::File::open(&vm).unwrap();
    let e = mirrord::ioctl::commit(&ro).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    drop(ro);
    // A member of the group may clone (a scratch volume: the mirror then
    // goes on as the clone).
    c.import("scratch", &img, CS as u32);
    m.wait_for("scratch");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("scratch"))
        .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let e = in_child_as_nobody(vec![blobvirt_gid()], clone_in_child(fd, "copy"));
    assert_eq!(e, None);
    drop(f);
    assert!(c.export("copy", 0) == img);

    // Chowned back (libvirt's restore): nobody is out again.
    std::os::unix::fs::chown(&vm, Some(0), Some(0)).unwrap();
    refused("cat", &run("cat", &[&vm_s]), "Permission denied");
    assert_eq!(owner(&vm), (0o600, 0, 0));
}
