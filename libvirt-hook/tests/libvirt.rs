//! The installed hook under a real libvirtd (TCG guests): a missing
//! volume fails the start with the hook's sentence in virsh's error, a
//! second domain on a running domain's volume is refused, a domain without
//! blobvirt disks is untouched, and the test guest boots from
//! `<disk type='volume'>` in the pool and its marker is committed.

use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::harness::libvirt::*;
use testbed::harness::*;

fn stderr_of(args: &[&str]) -> (bool, String) {
    let o = virsh(args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn hook_refuses_missing_and_busy_volumes_and_ignores_other_domains() {
    let lab = Lab::up("hk");
    let guest = lab.build_guest();
    lab.ok(&["vol-import", &guest.display().to_string(), "g1"]);
    lab.wait_virsh_volume("g1", true);
    let s = lab.suffix.clone();

    // A missing volume: the hook's sentence is in virsh's error.
    let missing = format!("bvmiss-{s}");
    lab.define(&missing, &lab.guest_xml(&missing, "nope"));
    let (ok, err) = stderr_of(&["start", &missing]);
    assert!(!ok);
    assert!(
        err.contains(&format!("blobvirt: domain {missing} cannot start: volume nope does not exist; list volumes with blobvirt vol-list")),
        "virsh error: {err}"
    );
    assert!(lab.claims().is_empty());

    // A running domain on g1 (stay mode: it ticks until destroyed).
    let o = std::process::Command::new(root().join("guest/set-stay.sh"))
        .arg(lab.mount.join("g1"))
        .arg("on")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show("set-stay.sh", &o));
    let first = format!("bvfirst-{s}");
    lab.define(&first, &lab.guest_xml(&first, "g1"));
    virsh_ok(&["start", &first]);
    assert_eq!(lab.claims(), vec![("g1".to_string(), first.clone())]);

    // A second domain on g1 is refused while the first runs.
    let second = format!("bvsecond-{s}");
    lab.define(&second, &lab.guest_xml(&second, "g1"));
    let (ok, err) = stderr_of(&["start", &second]);
    assert!(!ok, "the second domain started on a busy volume");
    assert!(
        err.contains(&format!(
            "blobvirt: domain {second} cannot start: volume g1 is in use by {first}"
        )),
        "virsh error: {err}"
    );
    assert_eq!(
        domstate(&first),
        "running",
        "the first domain was disturbed"
    );
    assert_eq!(lab.claims(), vec![("g1".to_string(), first.clone())]);

    // A domain without blobvirt disks (its own copy of the guest, outside
    // the mount) starts and runs untouched by the hook.
    let plain = format!("bvplain-{s}");
    let copy = lab.tmp.path().join("plain.raw");
    std::fs::copy(&guest, &copy).unwrap();
    let xml = lab.guest_xml(&plain, "unused").replace(
        &format!("<disk type='volume' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source pool='{}' volume='unused'/>", lab.pool),
        &format!("<disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>", copy.display()),
    );
    assert!(xml.contains("type='file'"), "template changed: {xml}");
    lab.define(&plain, &xml);
    let before = lab.mirror_status();
    virsh_ok(&["start", &plain]);
    assert!(
        wait_until(Duration::from_secs(120), || domstate(&plain) == "shut off"),
        "{plain} did not power off: {}",
        lab.console(&plain)
    );
    assert_eq!(
        lab.read_marker(&copy, "marker"),
        format!("name={plain} boots=1")
    );
    let after = lab.mirror_status();
    assert_eq!(before["claims"], after["claims"]);
    let names = |v: &Value| -> Vec<String> {
        v["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].to_string())
            .collect()
    };
    assert_eq!(
        names(&before),
        names(&after),
        "mirrord attached something for {plain}"
    );

    // Once the first domain is gone, its claim is released and the
    // second domain may start.
    virsh_ok(&["destroy", &first]);
    assert!(
        wait_until(Duration::from_secs(60), || lab.claims().is_empty()),
        "claim of {first} not released: {:?}",
        lab.claims()
    );
    virsh_ok(&["start", &second]);
    assert_eq!(lab.claims(), vec![("g1".to_string(), second.clone())]);
    virsh_ok(&["destroy", &second]);
    assert!(wait_until(Duration::from_secs(60), || lab
        .claims()
        .is_empty()));
}

#[test]
fn guest_boots_from_the_pool_and_its_marker_is_committed() {
    let lab = Lab::up("bt");
    let guest = lab.build_guest();
    lab.ok(&["vol-import", &guest.display().to_string(), "g1"]);
    lab.wait_virsh_volume("g1", true);
    assert_eq!(lab.latest_version("g1"), 1);
    let dom = format!("bvboot-{}", lab.suffix);
    lab.define(&dom, &lab.guest_xml(&dom, "g1"));
    let t = Instant::now();
    virsh_ok(&["start", &dom]);
    let started = t.elapsed();
    assert!(
        wait_until(Duration::from_secs(180), || domstate(&dom) == "shut off"),
        "{dom} did not power off; console:\n{}",
        lab.console(&dom)
    );
    let off = t.elapsed();
    assert!(
        lab.console(&dom)
            .contains(&format!("marker: name={dom} boots=1")),
        "{}",
        lab.console(&dom)
    );
    // The release hook commits the guest's writes (close-to-open).
    assert!(
        wait_until(Duration::from_secs(60), || lab.claims().is_empty()
            && lab.latest_version("g1") >= 2),
        "no commit after {dom} stopped"
    );
    let committed = t.elapsed();
    let out = lab.tmp.path().join("g1.latest.raw");
    lab.ok(&["vol-export", "g1", &out.display().to_string()]);
    assert_eq!(
        lab.read_marker(&out, "marker"),
        format!("name={dom} boots=1")
    );
    // The first version is the imported image, unchanged.
    let v1 = lab.tmp.path().join("g1.v1.raw");
    lab.ok(&["vol-export", "g1@1", &v1.display().to_string()]);
    let o = std::process::Command::new(root().join("guest/read-marker.sh"))
        .arg(&v1)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "version 1 already has a marker");
    eprintln!(
        "timings: virsh start {:.1} s, shut off {:.1} s, committed {:.1} s",
        started.as_secs_f64(),
        off.as_secs_f64(),
        committed.as_secs_f64()
    );
    let _ = Duration::ZERO;
}
