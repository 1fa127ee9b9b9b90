//! The hook against real mirrords (no libvirt): claims per domain, refusal
//! of a second domain and of a second node (writer lease), rollback of a
//! half-done prepare, and release waiting for the close-to-open commit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use blobvirt_hook::config::{HookConfig, PoolConfig};
use serde_json::Value;
use testbed::harness::daemons::Mirrord;
use testbed::harness::libvirt::*;

fn hook(cfg: &Path, dom: &str, op: &str, sub: &str, xml: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blobvirt-hook"))
        .args([dom, op, sub, "-"])
        .env("BLOBVIRT_HOOK_CONFIG", cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

fn xml(dom: &str, vols: &[&str]) -> String {
    let disks: String = vols
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "<disk type='volume'><source pool='bvcl' volume='{v}'/><target dev='vd{}'/></disk>",
                (b'a' + i as u8) as char
            )
        })
        .collect();
    format!("<domain type='qemu'><name>{dom}</name><devices>{disks}</devices></domain>")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim_end().to_string()
}

/// One control request straight to a mirrord socket.
fn ctl(sock: &Path, req: &str) -> Value {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).expect("json")
}

/// A second mirrord ("another node") on the same repository, stopped and
/// unmounted by its guard.
fn node2(lab: &Lab) -> Mirrord {
    let t = lab.tmp.path();
    Mirrord::start_args(
        &lab.pool_url,
        &t.join("mnt2"),
        &t.join("cache2"),
        &t.join("mirrord2.log"),
        &[],
        &[
            "--config".as_ref(),
            lab.dir.join("blobvirt.toml").as_os_str(),
        ],
    )
}

#[test]
fn claims_leases_and_close_to_open_commit() {
    let lab = Lab::cluster("cl");
    let img = lab.tmp.path().join("v.raw");
    std::fs::write(&img, vec![7u8; 2 << 20]).unwrap();
    let p = img.display().to_string();
    lab.ok(&["vol-import", &p, "v1"]);
    lab.ok(&["vol-import", &p, "v2"]);
    let cfg = lab.tmp.path().join("hook.json");
    HookConfig::upsert(
        &cfg,
        PoolConfig {
            name: "bvcl".into(),
            mount: lab.mount.clone(),
            control: lab.control.clone(),
            pool_url: lab.pool_url.clone(),
            connect: String::new(),
        },
    )
    .unwrap();

    // A missing volume fails the start with mirrord's sentence.
    let o = hook(&cfg, "d0", "prepare", "begin", &xml("d0", &["nope"]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "blobvirt: domain d0 cannot start: volume nope does not exist; list volumes with blobvirt vol-list"
    );

    // d1 claims v1 (twice: idempotent).
    for _ in 0..2 {
        let o = hook(&cfg, "d1", "prepare", "begin", &xml("d1", &["v1"]));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(lab.claims(), vec![("v1".to_string(), "d1".to_string())]);

    // d2 is refused, naming d1; its release (libvirt runs it after a
    // failed start) leaves d1's claim alone.
    let o = hook(&cfg, "d2", "prepare", "begin", &xml("d2", &["v1"]));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.starts_with("blobvirt: domain d2 cannot start: volume v1 is in use by d1"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1);
    assert!(hook(&cfg, "d2", "release", "end", &xml("d2", &["v1"]))
        .status
        .success());
    assert_eq!(lab.claims(), vec![("v1".to_string(), "d1".to_string())]);

    // reconnect (libvirtd restarted) re-claims idempotently; a conflict
    // is only a warning (the running domain is not killed).
    let o = hook(&cfg, "d1", "reconnect", "begin", &xml("d1", &["v1"]));
    assert!(o.status.success() && o.stderr.is_empty(), "{}", stderr(&o));
    let o = hook(&cfg, "d4", "reconnect", "begin", &xml("d4", &["v1"]));
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("warning: domain d4 runs on volume v1 without its claim"),
        "{}",
        stderr(&o)
    );
    assert_eq!(lab.claims(), vec![("v1".to_string(), "d1".to_string())]);

    // d3 wants v2 (free) and v1 (held): refused, and v2 is given back.
    let o = hook(&cfg, "d3", "prepare", "begin", &xml("d3", &["v2", "v1"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("in use by d1"), "{}", stderr(&o));
    assert_eq!(lab.claims(), vec![("v1".to_string(), "d1".to_string())]);

    // Another node cannot claim v1: node 1 holds the writer lease.
    let node2 = node2(&lab);
    let node2_control = node2.cache.join("control.sock");
    let r = ctl(&node2_control, r#"{"op":"claim","name":"v1","owner":"d9"}"#);
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("v1") && e.contains("open for writing by mirrord@"),
        "{e}"
    );
    // ... but v2 is free there.
    let r = ctl(&node2_control, r#"{"op":"claim","name":"v2","owner":"d9"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = ctl(
        &node2_control,
        r#"{"op":"unclaim","name":"v2","owner":"d9"}"#,
    );
    assert_eq!(r["result"]["released"], true, "{r}");

    // d1 writes through the mount and closes; release commits it.
    assert_eq!(lab.latest_version("v1"), 1);
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(lab.mount.join("v1"))
            .unwrap();
        f.write_all_at(b"written by d1", 4096).unwrap();
        f.sync_all().unwrap();
    }
    let o = hook(&cfg, "d1", "release", "end", &xml("d1", &["v1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(lab.claims().is_empty());
    assert_eq!(
        lab.latest_version("v1"),
        2,
        "release did not wait for the commit"
    );
    let out = lab.tmp.path().join("v1.out");
    lab.ok(&["vol-export", "v1", &out.display().to_string()]);
    let data = std::fs::read(&out).unwrap();
    assert_eq!(&data[4096..4096 + 13], b"written by d1");
    assert_eq!(data[0], 7);

    // A reconnect of a domain whose claim mirrord lost (restart) claims again.
    let o = hook(&cfg, "d5", "reconnect", "begin", &xml("d5", &["v2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lab.claims(), vec![("v2".to_string(), "d5".to_string())]);
    assert!(hook(&cfg, "d5", "release", "end", &xml("d5", &["v2"]))
        .status
        .success());
    assert!(lab.claims().is_empty());

    // The lease is free again: node 2 may claim v1 now.
    let r = ctl(&node2_control, r#"{"op":"claim","name":"v1","owner":"d9"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let st = ctl(&node2_control, r#"{"op":"status"}"#);
    assert_eq!(st["result"]["claims"][0]["owner"], "d9", "{st}");
    let r = ctl(
        &node2_control,
        r#"{"op":"unclaim","name":"v1","owner":"d9"}"#,
    );
    assert_eq!(r["ok"], true, "{r}");
}
