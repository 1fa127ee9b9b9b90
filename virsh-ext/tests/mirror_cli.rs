//! `cluster up --mount` and the mirrord commands (`mirror-status`, `commit`,
//! `clone`, `attach`, `detach`) against real daemons: reads through the
//! mount, commits that `vol-export` agrees with, clones, errors, and no
//! mount or process left by `cluster down`, even after a SIGKILLed mirrord.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::harness::cli::*;
use testbed::harness::data::*;
use testbed::harness::mounted::*;
use testbed::harness::*;

#[test]
fn mount_read_write_commit_clone() {
    let mut m = Mounted::up(2, 2, &[]);
    let cj = m.c.cluster_json();
    assert_eq!(
        cj["mirror"]["mount"].as_str().unwrap(),
        m.mnt.to_str().unwrap()
    );
    let control = PathBuf::from(cj["mirror"]["control"].as_str().unwrap());
    assert!(
        control.starts_with(m.c.dir.join("mirror-cache")),
        "{control:?}"
    );
    assert!(
        is_mounted(&m.mnt),
        "cluster up returned before the mount was live"
    );
    assert!(m.c.dir.join("logs/mirrord.log").is_file());
    let pid = m.mirrord_pid();
    assert!(running_in(pid, &m.mnt));

    // 4 MiB, the second MiB a hole: 12 data chunks of 256 KiB.
    let img = m.c.tmp.path().join("img.raw");
    write_image(&img, 4 * MIB, &[(MIB, MIB)], 11);
    m.c.ok(&["vol-import", img.to_str().unwrap(), "disk"]);
    let orig = read_all(&img);
    let file = m.wait_file("disk");
    assert!(
        read_all(&file) == orig,
        "the mount does not read back the image"
    );

    let out = m.ok(&["attach", "disk"]);
    assert!(out.starts_with("attached disk@1 (4.0 MiB"), "{out}");
    // Fetched chunks reach the cache file a moment after the read that
    // fetched them is answered.
    let t = std::time::Instant::now();
    while m.vol_status("disk")["chunks_present"].as_u64() < Some(12)
        && t.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let s = m.vol_status("disk");
    for f in [
        "version",
        "chunks_present",
        "chunks_dirty",
        "bytes_fetched",
        "bytes_committed",
        "fetches",
        "prefetched",
    ] {
        assert!(s[f].is_u64(), "field {f} missing: {s}");
    }
    assert_eq!(s["version"], 1);
    assert_eq!(s["chunks_dirty"], 0);
    // Only the data chunks were fetched; the hole came for free.
    assert_eq!(s["bytes_fetched"].as_u64().unwrap(), 3 * MIB, "{s}");
    assert!(s["chunks_present"].as_u64().unwrap() >= 12, "{s}");
    let table = m.ok(&["mirror-status"]);
    assert!(
        table.starts_with("NAME") && table.contains("\ndisk "),
        "{table}"
    );

    // A second cluster cannot mount on a live mount point; it starts nothing.
    let other = m.c.tmp.path().join("other");
    let (o, mnt) = (other.to_str().unwrap(), m.mnt.to_str().unwrap());
    let e = fail(
        None,
        &["cluster", "up", "--nodes", "1", "--dir", o, "--mount", mnt],
    );
    assert!(e.contains("already a live mount point"), "{e}");
    assert!(procs_in(&other).is_empty() && !other.join("cluster.json").exists());
    assert!(read_all(&file) == orig);

    // cluster status shows the mount and the volume.
    let st = m.c.json(&["cluster", "status", "--json", "--dir", &m.d()]);
    assert_eq!(st["mirror"]["mounted"], true, "{st}");
    assert_eq!(st["mirror"]["running"], true, "{st}");
    assert_eq!(st["mirror"]["volumes"][0]["name"], "disk", "{st}");
    let human = m.c.ok(&["cluster", "status", "--dir", &m.d()]);
    assert!(
        human.contains(&format!("mount {} (mounted", m.mnt.display())),
        "{human}"
    );
    assert!(human.contains("  disk@1: "), "{human}");

    // Writes through the mount, committed while the writer keeps the file
    // open (its close would commit by itself).
    let w = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    let mut want = orig.clone();
    for (off, len, seed) in [(100 * KIB, 10 * KIB, 1), (1280 * KIB, 300 * KIB, 2)] {
        let b = random_bytes(seed, len as usize);
        w.write_all_at(&b, off).unwrap();
        want[off as usize..(off + len) as usize].copy_from_slice(&b);
    }
    w.sync_data().unwrap();
    assert_eq!(m.vol_status("disk")["chunks_dirty"], 3);
    let out = m.ok(&["commit", "disk"]);
    assert_eq!(out.trim(), "disk@2");
    assert!(read_all(&file) == want, "the mirror lost a write");
    assert_eq!(m.c.export_sha("disk@2"), sha256(&want));
    assert_eq!(m.c.export_sha("disk@1"), sha256(&orig));
    let s = m.vol_status("disk");
    assert_eq!(
        (s["version"].as_u64(), s["chunks_dirty"].as_u64()),
        (Some(2), Some(0))
    );
    let committed = s["bytes_committed"].as_u64().unwrap();
    assert!(committed > 0 && committed <= 3 * 256 * KIB * 2, "{s}");

    // --no-wait returns after phase 1; the version follows.
    let b = random_bytes(3, 64 * KIB as usize);
    w.write_all_at(&b, 3 * MIB).unwrap();
    want[3 * MIB as usize..(3 * MIB + 64 * KIB) as usize].copy_from_slice(&b);
    let out = m.ok(&["commit", "disk", "--no-wait"]);
    assert!(
        out.contains("phase 1 done") && out.contains("on top of disk@2"),
        "{out}"
    );
    let t = Instant::now();
    while m.c.latest_version("disk") < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "disk@3 never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(m.c.export_sha("disk@3"), sha256(&want));
    drop(w);

    // Nothing dirty: reports the current version, publishes nothing.
    std::thread::sleep(Duration::from_millis(300));
    let o = m.run(&["commit", "disk"]);
    let out = stdout_ok(&["commit", "disk"], o);
    assert_eq!(out.trim(), "disk@3");
    assert_eq!(m.c.latest_version("disk"), 3);

    // CLONE: the mirror's content becomes a new volume, in vol-list and
    // in the mount.
    let out = m.ok(&["clone", "disk", "copy"]);
    assert!(out.trim().starts_with("copy@"), "{out}");
    let names: Vec<String> =
        m.c.vol_list()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
    assert!(names.contains(&"copy".to_string()), "{names:?}");
    let copy = m.wait_file("copy");
    assert!(read_all(&copy) == want, "the clone differs from the mirror");
    assert_eq!(m.c.export_sha(out.trim()), sha256(&want));
    assert!(read_all(&file) == want);

    // attach at a version, detach.
    let out = m.ok(&["attach", "disk@1"]);
    assert!(out.starts_with("attached disk@1"), "{out}");
    assert_eq!(m.vol_status("disk")["version"], 1);
    assert_eq!(m.ok(&["detach", "disk"]).trim(), "detached disk");
    assert!(m.mirror_status().iter().all(|v| v["name"] != "disk"));

    // Errors: mirrord's sentences, nothing changed.
    let before = m.c.vol_list();
    let e = m.fail(&["attach", "nosuch"]);
    assert!(e.contains("nosuch") && e.contains("does not exist"), "{e}");
    let e = m.fail(&["commit", "nosuch"]);
    assert!(e.contains("nosuch"), "{e}");
    let e = m.fail(&["detach", "nosuch"]);
    assert!(e.contains("nosuch") && e.contains("not attached"), "{e}");
    assert_eq!(m.c.vol_list(), before);

    // The socket from the environment, and from --control.
    let ctl = control.to_string_lossy().to_string();
    let args = ["mirror-status", "--json"];
    let v: Value = serde_json::from_str(&stdout_ok(
        &args,
        cli(None, &[("BLOBVIRT_CONTROL", &ctl)], &args),
    ))
    .unwrap();
    assert!(
        v.as_array().unwrap().iter().any(|v| v["name"] == "copy"),
        "{v}"
    );
    let d = m.d();
    let out = stdout_ok(&args, cli(None, &[("BLOBVIRT_CLUSTER_DIR", &d)], &args));
    assert!(out.contains("\"copy\""), "{out}");
    let nope = m.c.tmp.path().join("nope.sock");
    let args = ["mirror-status", "--control", nope.to_str().unwrap()];
    let e = fail(None, &args);
    assert_eq!(
        e,
        format!("error: mirrord is not running at {}; if blobvirt cluster up started it, start it again with blobvirt cluster restart --dir DIR mirrord, else start mirrord or pass --control", nope.display())
    );

    // down: mirrord stops first, nothing mounted, no process.
    m.c.down();
    assert!(!is_mounted(&m.mnt), "cluster down left the mount");
    assert!(!running_in(pid, &m.mnt));
}

#[test]
fn killed_mirrord_restart_and_down() {
    let cache_tmp = tempfile::tempdir().unwrap();
    let cache = cache_tmp.path().join("cache");
    let mut m = Mounted::up(1, 1, &["--cache", cache.to_str().unwrap()]);
    let cj = m.c.cluster_json();
    assert_eq!(
        cj["mirror"]["control"].as_str().unwrap(),
        cache
            .canonicalize()
            .unwrap()
            .join("control.sock")
            .to_str()
            .unwrap()
    );
    let img = m.c.tmp.path().join("small.raw");
    write_image(&img, 2 * MIB, &[], 5);
    m.c.ok(&["vol-import", img.to_str().unwrap(), "small"]);
    let f = m.wait_file("small");
    assert!(read_all(&f) == read_all(&img));

    // SIGKILL: the mount goes stale, the commands say mirrord is not running.
    let pid = m.mirrord_pid();
    sigkill(pid);
    assert!(wait_gone(pid, 10));
    assert!(is_mounted(&m.mnt), "a killed FUSE daemon leaves its mount");
    let e = m.fail(&["mirror-status"]);
    assert!(e.contains("mirrord is not running at"), "{e}");

    // restart brings it back on the same mount.
    let out = m.c.ok(&["cluster", "restart", "--dir", &m.d(), "mirrord"]);
    assert!(out.contains("restarted mirrord"), "{out}");
    let pid2 = m.mirrord_pid();
    assert_ne!(pid, pid2);
    assert!(is_mounted(&m.mnt));
    assert!(read_all(&m.wait_file("small")) == read_all(&img));
    assert!(m.mirror_status().iter().any(|v| v["name"] == "small"));

    // Killed again, then down: the stale mount is lazily unmounted.
    sigkill(pid2);
    assert!(wait_gone(pid2, 10));
    m.c.down();
    assert!(!is_mounted(&m.mnt), "cluster down left the stale mount");
    assert!(!running_in(pid2, &m.mnt));
}

#[test]
fn guard_unmounts_and_stops_everything_on_panic() {
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut m = Mounted::up(1, 1, &[]);
        let mirrord = m.mirrord_pid();
        *seen.lock().unwrap() = Some((m.mnt.clone(), m.c.dir.clone(), m.c.pids()));
        // A killed mirrord leaves a stale mount behind.
        sigkill(mirrord);
        assert!(wait_gone(mirrord, 10));
        panic!("a failing test");
    }));
    assert!(r.is_err());
    let (mnt, dir, pids) = seen.lock().unwrap().take().unwrap();
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(!is_mounted(&mnt), "the guard left the mount");
    for pid in pids {
        assert!(
            !running_in(pid, &dir) && !running_in(pid, &mnt),
            "pid {pid} left"
        );
    }
}
