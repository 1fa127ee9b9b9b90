//! The hook without libvirt and without mirrord: XML parsing, the disks it
//! ignores, malformed input, and that domains without blobvirt disks never
//! reach the control socket (a listening socket the test watches).

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use blobvirt_hook::config::{HookConfig, PoolConfig};
use blobvirt_hook::disks::{parse, XmlError};

fn cfg(dir: &Path) -> HookConfig {
    HookConfig {
        pools: vec![PoolConfig {
            name: "bv".into(),
            mount: dir.join("mnt"),
            control: dir.join("control.sock"),
            pool_url: String::new(),
            connect: String::new(),
        }],
    }
}

fn write_cfg(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("hook.json");
    HookConfig::upsert(&p, cfg(dir).pools[0].clone()).unwrap();
    p
}

fn hook(cfg: &Path, args: &[&str], stdin: &str) -> (Output, Duration) {
    let t = Instant::now();
    let mut c = Command::new(env!("CARGO_BIN_EXE_blobvirt-hook"))
        .args(args)
        .env("BLOBVIRT_HOOK_CONFIG", cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The hook may exit without reading stdin (operations it ignores).
    let _ = c.stdin.take().unwrap().write_all(stdin.as_bytes());
    let o = c.wait_with_output().unwrap();
    (o, t.elapsed())
}

fn domain(disks: &str) -> String {
    format!("<domain type='qemu'><name>d1</name><devices>{disks}</devices></domain>")
}

#[test]
fn finds_volume_and_file_disks_and_ignores_others() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    let mnt = c.pools[0].mount.display().to_string();
    let xml = domain(&format!(
        "<disk type='volume' device='disk'><source pool='bv' volume='g1'/><target dev='vda'/></disk>\
         <disk type='volume'><source pool='default' volume='g2'/><target dev='vdb'/></disk>\
         <disk type='file'><source file='{mnt}/g3'/><target dev='vdc'/><readonly/></disk>\
         <disk type='file'><source file='/var/lib/libvirt/images/g4'/><target dev='vdd'/></disk>\
         <disk type='file'><source file='{mnt}/sub/g5'/><target dev='vde'/></disk>\
         <disk type='file'><source file='{mnt}x/g6'/><target dev='vdf'/></disk>\
         <disk type='block'><source dev='{mnt}/g7'/><target dev='vdg'/></disk>\
         <disk type='volume'><source pool='bv' volume='g8'/><target dev='vdh'/><shareable/></disk>"
    ));
    let d = parse(&xml, &c).unwrap();
    assert_eq!(d.name.as_deref(), Some("d1"));
    let got: Vec<(&str, &str, bool)> = d
        .disks
        .iter()
        .map(|x| (x.volume.as_str(), x.target.as_deref().unwrap(), x.shared))
        .collect();
    assert_eq!(
        got,
        vec![
            ("g1", "vda", false),
            ("g3", "vdc", true),
            ("g8", "vdh", true)
        ]
    );
    assert!(d.disks.iter().all(|x| x.pool.name == "bv"));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path());
    assert!(matches!(
        parse("<domain><devices><disk", &c),
        Err(XmlError::Malformed(_))
    ));
    assert!(matches!(parse("<network/>", &c), Err(XmlError::NoDomain)));
    let e = parse(
        &domain(
            "<disk type='volume'><source pool='bv' volume='../etc'/><target dev='vda'/></disk>",
        ),
        &c,
    )
    .unwrap_err();
    assert!(e.to_string().contains("vda"), "{e}");

    let p = write_cfg(tmp.path());
    for input in ["<domain><devices><disk", "\u{0}\u{1}garbage", ""] {
        let (o, _) = hook(&p, &["d1", "prepare", "begin", "-"], input);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "input {input:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("blobvirt: "), "{err}");
        assert!(err.contains("XML") || err.contains("stdin"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Wrong arguments: a usage line, exit 1.
    let (o, _) = hook(&p, &["d1"], "");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("usage"));
}

/// Accepted connections on the watched socket (non-blocking).
fn contacts(l: &UnixListener) -> usize {
    let mut n = 0;
    while l.accept().is_ok() {
        n += 1;
    }
    n
}

#[test]
fn domains_without_blobvirt_disks_never_touch_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write_cfg(tmp.path());
    let l = UnixListener::bind(tmp.path().join("control.sock")).unwrap();
    l.set_nonblocking(true).unwrap();
    let plain = domain(
        "<disk type='file'><source file='/var/lib/libvirt/images/a.qcow2'/><target dev='vda'/></disk>\
         <disk type='volume'><source pool='default' volume='g1'/><target dev='vdb'/></disk>",
    );
    for op in [
        ["prepare", "begin"],
        ["release", "end"],
        ["reconnect", "begin"],
        ["migrate", "begin"],
    ] {
        let (o, took) = hook(&p, &["d1", op[0], op[1], "-"], &plain);
        assert!(
            o.status.success(),
            "{op:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.stderr.is_empty() && o.stdout.is_empty(),
            "{op:?} printed something"
        );
        assert!(took < Duration::from_secs(2), "{op:?} took {took:?}");
    }
    // Operations the hook ignores: even garbage on stdin is fine.
    for op in [
        ["start", "begin"],
        ["started", "begin"],
        ["stopped", "end"],
        ["restore", "begin"],
        ["frobnicate", "-"],
    ] {
        let (o, _) = hook(&p, &["d1", op[0], op[1], "-"], "not xml");
        assert!(o.status.success(), "{op:?}");
    }
    assert_eq!(contacts(&l), 0, "the hook contacted mirrord");

    // A migration of a domain with a writable blobvirt disk is refused
    // before any contact; a read-only one is fine.
    let bv =
        domain("<disk type='volume'><source pool='bv' volume='g1'/><target dev='vda'/></disk>");
    let (o, _) = hook(&p, &["d1", "migrate", "begin", "-"], &bv);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot migrate") && err.contains("g1"),
        "{err}"
    );
    let ro = domain(
        "<disk type='volume'><source pool='bv' volume='g1'/><target dev='vda'/><readonly/></disk>",
    );
    assert!(hook(&p, &["d1", "migrate", "begin", "-"], &ro)
        .0
        .status
        .success());
    assert_eq!(contacts(&l), 0, "migrate contacted mirrord");

    // Without a configuration (blobvirt not set up) nothing happens.
    let (o, _) = hook(
        &tmp.path().join("missing.json"),
        &["d1", "prepare", "begin", "-"],
        &bv,
    );
    assert!(o.status.success());
    assert_eq!(contacts(&l), 0);
}

#[test]
fn a_blobvirt_disk_needs_mirrord() {
    // Positive control of the test above: with a blobvirt disk the hook
    // does go to the socket, and without mirrord the start fails clearly.
    let tmp = tempfile::tempdir().unwrap();
    let p = write_cfg(tmp.path());
    let bv =
        domain("<disk type='volume'><source pool='bv' volume='g1'/><target dev='vda'/></disk>");
    let (o, _) = hook(&p, &["d1", "prepare", "begin", "-"], &bv);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("domain d1 cannot start") && err.contains("cannot reach mirrord"),
        "{err}"
    );
    // Release without mirrord reports it too (libvirt logs it).
    let (o, _) = hook(&p, &["d1", "release", "end", "-"], &bv);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn config_updates_keep_other_pools() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("etc/hook.json");
    let mut a = cfg(tmp.path()).pools[0].clone();
    HookConfig::upsert(&p, a.clone()).unwrap();
    let mut b = a.clone();
    b.name = "other".into();
    HookConfig::upsert(&p, b.clone()).unwrap();
    a.control = "/elsewhere.sock".into();
    HookConfig::upsert(&p, a.clone()).unwrap();
    let c = HookConfig::load(&p).unwrap();
    assert_eq!(c.pools.len(), 2);
    assert_eq!(c.pool("bv"), Some(&a));
    assert!(HookConfig::remove(&p, "bv").unwrap());
    assert!(!HookConfig::remove(&p, "bv").unwrap());
    assert_eq!(HookConfig::load(&p).unwrap().pools, vec![b]);
    std::fs::write(&p, "{ not json").unwrap();
    let e = HookConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("not valid JSON") && e.contains("; "), "{e}");
}
