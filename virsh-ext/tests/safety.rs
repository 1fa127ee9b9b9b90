//! No silent loss, tried through the CLI as a user would: deleting a
//! volume that is being written, deleting the latest version under a
//! mirror, a commit that fails, `attach NAME` after `attach NAME@old`, and
//! changes made by the CLI visible in the mount when the command returns.

use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;

use testbed::harness::cli::*;
use testbed::harness::data::*;
use testbed::harness::mounted::*;
use testbed::harness::*;

/// Closes `f` and returns the errno `close(2)` gave (0: success).
fn close_errno(f: std::fs::File) -> i32 {
    match nix::unistd::close(f.into_raw_fd()) {
        Ok(()) => 0,
        Err(e) => e as i32,
    }
}

fn errno_of(r: std::io::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn import(m: &Mounted, name: &str, data: &[u8], extra: &[&str]) {
    let f = m.c.tmp.path().join(format!("{name}.src"));
    std::fs::write(&f, data).unwrap();
    let fs = f.display().to_string();
    let mut args = vec!["vol-import", &fs, name, "--chunk-size", "64K"];
    args.extend_from_slice(extra);
    m.ok(&args);
}

#[test]
fn deleting_a_volume_being_written_is_refused_unless_forced() {
    let m = Mounted::up(2, 1, &[]);
    let img = random_bytes(1, 2 * MIB as usize);
    import(&m, "w", &img, &[]);
    let p = m.wait_file("w");
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(b"dirty", 1000).unwrap();
    f.sync_all().unwrap();
    // This host has it open: refused, naming the host's mirrord.
    let e = m.fail(&["vol-delete", "w"]);
    assert!(
        e.contains("volume w cannot be deleted")
            && e.contains("open on this host")
            && e.contains("--force"),
        "{e}"
    );
    let e = m.fail(&["vol-delete", "w@1"]);
    assert!(e.contains("w@1") && e.contains("--force"), "{e}");
    // Asked from elsewhere (no mirrord of ours): poold refuses, naming the
    // lease holder, i.e. the host and mount that write it.
    let o = cli(
        m.c.p(),
        &[],
        &["vol-delete", "w", "--control", "/nonexistent.sock"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("open for writing by mirrord@") && err.contains(&m.mnt.display().to_string()),
        "{err}"
    );
    // Nothing was lost: the close commits the write.
    assert_eq!(close_errno(f), 0);
    let mut want = img.clone();
    want[1000..1005].copy_from_slice(b"dirty");
    assert!(read_all(&p) == want);
    let out = m.c.tmp.path().join("w.out");
    m.c.ok(&["vol-export", "w", &out.display().to_string()]);
    assert!(read_all(&out) == want);

    // --force deletes it; the writer learns at once: its writes fail with
    // ESTALE and its close reports it too, never success.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(b"lost", 0).unwrap();
    m.ok(&["vol-delete", "--force", "w"]);
    let e = f.write_all_at(b"more", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
    assert_eq!(close_errno(f), libc::ESTALE);
    let st = m.vol_status("w");
    let why = st["last_error"].as_str().unwrap_or("");
    assert!(
        why.contains("was deleted") && why.contains("detach --discard"),
        "{st}"
    );
    // Its mirror is kept until the user says so.
    let e = m.fail(&["detach", "w"]);
    assert!(
        e.contains("uncommitted changes") && e.contains("--discard"),
        "{e}"
    );
    m.ok(&["detach", "--discard", "w"]);
    assert!(m.mirror_status().iter().all(|v| v["name"] != "w"));
    assert!(!p.exists());
}

#[test]
fn deleting_the_latest_version_under_a_mirror_moves_it_back() {
    let m = Mounted::up(2, 1, &[]);
    let v1 = random_bytes(2, MIB as usize);
    let v2 = random_bytes(3, MIB as usize + 4096);
    import(&m, "d", &v1, &[]);
    import(&m, "d", &v2, &["--new-version"]);
    let p = m.wait_file("d");
    assert!(read_all(&p) == v2);
    assert_eq!(m.vol_status("d")["version"], 2);
    m.ok(&["vol-delete", "d@2"]);
    // At once, with no error: the mirror is back on version 1.
    assert!(read_all(&p) == v1);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), v1.len() as u64);
    assert_eq!(m.vol_status("d")["version"], 1);
    // And it is writable again.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"again", 7).unwrap();
    assert_eq!(close_errno(f), 0);
    let mut want = v1.clone();
    want[7..12].copy_from_slice(b"again");
    assert!(read_all(&p) == want);
    assert_eq!(m.c.latest_version("d"), 3);
}

#[test]
fn a_failed_commit_shows_in_status_fsync_and_close() {
    let m = Mounted::up(2, 1, &[]);
    let img = random_bytes(4, MIB as usize);
    import(&m, "fc", &img, &[]);
    let p = m.wait_file("fc");
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(&random_bytes(5, 200_000), 300_000).unwrap();
    f.sync_all().unwrap();
    for (name, _) in m.c.procs() {
        if name.starts_with("chunkd") {
            m.c.kill9(&name);
        }
    }
    let e = m.fail(&["commit", "fc"]);
    assert!(e.contains("fc"), "{e}");
    let st = m.vol_status("fc");
    assert!(
        st["last_error"].as_str().is_some_and(|s| !s.is_empty()),
        "{st}"
    );
    assert!(st["commit_failures"].as_u64().unwrap() >= 1, "{st}");
    assert!(
        st["chunks_dirty"].as_u64().unwrap() > 0,
        "the changes are kept: {st}"
    );
    // The open file hears of it once, at its next fsync...
    assert_eq!(errno_of(f.sync_all()), libc::EIO);
    assert_eq!(errno_of(f.sync_all()), 0, "reported once");
    // ...and the commit at close fails again: close says so.
    assert_eq!(close_errno(f), libc::EIO);
    assert_eq!(m.c.latest_version("fc"), 1);
}

#[test]
fn attach_goes_back_to_the_latest_and_cli_changes_show_at_once() {
    let m = Mounted::up(2, 1, &[]);
    let v1 = random_bytes(6, MIB as usize);
    let v2 = random_bytes(7, 2 * MIB as usize);
    import(&m, "a", &v1, &[]);
    import(&m, "a", &v2, &["--new-version"]);
    let e = m.fail(&["attach", "a@99"]);
    assert!(e.contains("volume a has no version 99"), "{e}");
    let out = m.ok(&["attach", "a@1"]);
    assert!(out.contains("a@1"), "{out}");
    let e = m.fail(&["attach", "a@99"]);
    assert!(e.contains("volume a has no version 99"), "{e}");
    let p = m.wait_file("a");
    assert!(read_all(&p) == v1);
    let e = OpenOptions::new().write(true).open(&p).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let out = m.ok(&["attach", "a"]);
    assert!(out.contains("a@2"), "{out}");
    assert!(read_all(&p) == v2);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    assert_eq!(close_errno(f), 0);
    assert_eq!(m.c.latest_version("a"), 3);

    // A new version, a clone and a delete show in the mount when the
    // command returns (the listing alone would take up to 2 s).
    let v4 = random_bytes(8, 3 * MIB as usize);
    import(&m, "a", &v4, &["--new-version"]);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), v4.len() as u64);
    assert!(read_all(&p) == v4);
    m.ok(&["vol-clone", "a", "a-clone"]);
    // CLONE of the mirror onto a taken name: one plain sentence.
    let e = m.fail(&["clone", "a", "a-clone"]);
    assert!(
        e.ends_with("volume a-clone already exists; pick another name"),
        "{e}"
    );
    assert!(read_all(&m.mnt.join("a-clone")) == v4);
    m.ok(&["vol-delete", "a-clone"]);
    assert!(!m.mnt.join("a-clone").exists());
    import(&m, "fresh", &v1, &[]);
    assert!(read_all(&m.mnt.join("fresh")) == v1);
    // A whole-volume delete says what it took with it.
    let out = m.ok(&["vol-delete", "a"]);
    assert_eq!(out.trim(), "deleted volume a with all its 4 versions");
    assert!(!p.exists());
}

#[test]
fn cluster_down_waits_for_open_writers_unless_forced() {
    let mut m = Mounted::up(2, 1, &[]);
    import(&m, "busy", &random_bytes(9, MIB as usize), &[]);
    let p = m.wait_file("busy");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"open", 0).unwrap();
    let d = m.d();
    let e = fail(None, &["cluster", "down", "--dir", &d]);
    assert!(
        e.contains("busy (1 writers)") && e.contains("--force"),
        "{e}"
    );
    assert!(is_mounted(&m.mnt), "a refused cluster down changed nothing");
    assert_eq!(close_errno(f), 0);
    m.c.down();
    assert!(!is_mounted(&m.mnt));
}
