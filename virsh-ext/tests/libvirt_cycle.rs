//! The libvirt cycle under real libvirtd/QEMU (TCG): `blobvirt deploy` of
//! the test guest to many domains, `snapshot-create` of a running domain,
//! `snapshot-revert`, `snapshot-export` booted by plain QEMU, and
//! `snapshot-create-all` with one failing domain. Needs root, libvirt and
//! the guest's build tools; uses the libvirt lab of `testbed::harness` ([`Lab`]: own
//! cluster, mount and pool, cleaned up by Drop guards even on failure).
//!
//! `BLOBVIRT_DEPLOY_COUNT` sets how many domains the deploy part boots
//! (default 8).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::harness::libvirt::*;
use testbed::harness::*;

/// libvirt only trusts its cached QEMU capabilities when the KVM access it
/// probed with still holds for QEMU's user; with /dev/kvm root-only (no
/// udev here) every define re-probes QEMU for ~45 s. Give /dev/kvm the
/// mode udev gives it on Debian (root:kvm 0660). Domains stay TCG.
fn kvm_perms() {
    let kvm = Path::new("/dev/kvm");
    if kvm.exists() {
        let _ = Command::new("chown")
            .args(["root:kvm", "/dev/kvm"])
            .status();
        let _ = Command::new("chmod").args(["0660", "/dev/kvm"]).status();
    }
}

/// Destroys and undefines (with snapshot metadata) the domains it holds;
/// declared after the [`Lab`] so it runs first.
#[derive(Default)]
struct Domains(Mutex<Vec<String>>);

impl Domains {
    fn add(&self, names: impl IntoIterator<Item = String>) {
        self.0.lock().unwrap().extend(names);
    }
}

impl Drop for Domains {
    fn drop(&mut self) {
        for d in self.0.lock().unwrap().iter() {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", d, "--snapshots-metadata"]);
        }
    }
}

fn run(lab: &Lab, args: &[&str]) -> Output {
    let o = lab.blobvirt(args);
    eprintln!(
        "$ blobvirt {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json(lab: &Lab, args: &[&str]) -> Value {
    let o = run(lab, args);
    assert!(o.status.success(), "{}", show(&args.join(" "), &o));
    serde_json::from_slice(&o.stdout).expect("JSON output")
}

/// The real uid of the QEMU process of running domain `dom`.
fn qemu_uid(dom: &str) -> u32 {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{dom}.pid")).unwrap();
    let st = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("a Uid line")
}

/// (mode, uid, gid) of `p`.
fn mode_uid_gid(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn wait_state(names: &[String], state: &str, secs: u64) {
    assert!(
        wait_until(Duration::from_secs(secs), || names
            .iter()
            .all(|n| domstate(n) == state)),
        "not all {state} after {secs} s: {:?}",
        names.iter().map(|n| (n, domstate(n))).collect::<Vec<_>>()
    );
}

fn fetched(lab: &Lab, prefix: &str) -> u64 {
    lab.mirror_status()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"].as_str().unwrap_or("").starts_with(prefix))
        .map(|v| v["bytes_fetched"].as_u64().unwrap_or(0))
        .sum()
}

fn ticks(image: &Path) -> u64 {
    let o = Command::new(root().join("guest/read-marker.sh"))
        .arg(image)
        .arg("ticks")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn template(lab: &Lab) -> PathBuf {
    let t = lab.tmp.path().join("template.xml");
    std::fs::write(&t, lab.guest_xml("TEMPLATE", "TEMPLATE")).unwrap();
    t
}

#[test]
fn deploy_snapshot_revert_export_cycle() {
    kvm_perms();
    let lab = Lab::up("cy");
    let doms = Domains::default();
    let s = lab.suffix.clone();
    let ctl = lab.control.display().to_string();
    let tmpl = template(&lab);
    let tmpl = tmpl.to_str().unwrap();
    let img = lab.build_guest();
    let image = format!("g{s}");
    lab.ok(&["vol-import", img.to_str().unwrap(), &image]);
    let img_size = std::fs::metadata(&img).unwrap().len();

    // 1. deploy: N clones boot at once, each writes its own marker.
    let n: usize = std::env::var("BLOBVIRT_DEPLOY_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let prefix = format!("d{s}");
    let names: Vec<String> = (1..=n).map(|i| format!("{prefix}-{i}")).collect();
    doms.add(names.clone());
    let t0 = Instant::now();
    let cnt = n.to_string();
    let rep = json(
        &lab,
        &[
            "deploy",
            &image,
            "--count",
            &cnt,
            "--template",
            tmpl,
            "--name-prefix",
            &prefix,
            "--json",
        ],
    );
    let rep = rep.as_array().unwrap();
    assert_eq!(rep.len(), n);
    for d in rep {
        assert_eq!(d["ok"], true, "{d}");
        eprintln!(
            "deploy: {} running after {} ms",
            d["domain"], d["running_ms"]
        );
    }
    wait_state(&names, "shut off", 240);
    eprintln!(
        "deploy: {n} domains booted and powered off in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let total = fetched(&lab, &prefix);
    eprintln!(
        "deploy: fetched {:.1} MiB in total for {n} domains ({:.1} MiB each), image {} MiB, {n} x image = {} MiB",
        total as f64 / 1048576.0,
        total as f64 / n as f64 / 1048576.0,
        img_size >> 20,
        (n as u64 * img_size) >> 20
    );
    assert!(
        total > 0 && total < n as u64 * img_size / 3,
        "fetched {total} bytes"
    );
    let info = json(&lab, &["vol-info", &image, "--json"]);
    assert_eq!(info["latest_version"], 1, "the image changed: {info}");
    let back = lab.tmp.path().join("image-back.raw");
    lab.ok(&["vol-export", &image, back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == std::fs::read(&img).unwrap(),
        "the image's bytes changed"
    );
    for name in &names {
        let f = lab.tmp.path().join(format!("{name}.raw"));
        assert!(
            wait_until(Duration::from_secs(30), || json(
                &lab,
                &["vol-info", name, "--json"]
            )["latest_version"]
                == 2),
            "the close-to-open commit of {name} did not happen"
        );
        lab.ok(&["vol-export", name, f.to_str().unwrap()]);
        assert_eq!(
            lab.read_marker(&f, "marker"),
            format!("name={name} boots=1")
        );
        std::fs::remove_file(&f).unwrap();
    }

    // 2. A running domain (stay mode): snapshot, more writes, revert, export.
    let stay = lab.tmp.path().join("stay.raw");
    std::fs::copy(&img, &stay).unwrap();
    stay_on(&stay);
    let simage = format!("s{s}");
    lab.ok(&["vol-import", stay.to_str().unwrap(), &simage]);
    let rp = format!("r{s}");
    let run3: Vec<String> = (1..=3).map(|i| format!("{rp}-{i}")).collect();
    doms.add(run3.clone());
    json(
        &lab,
        &[
            "deploy",
            &simage,
            "--count",
            "3",
            "--template",
            tmpl,
            "--name-prefix",
            &rp,
            "--json",
        ],
    );
    let r1 = run3[0].clone();
    let live = lab.mount.join(&r1);
    assert!(
        wait_until(Duration::from_secs(120), || ticks(&live) >= 2),
        "{r1} does not tick"
    );
    // libvirt's DAC driver gave the disk to QEMU's user with chown; the
    // mode stays 0600, so no one else may open it (docs/mount.md).
    let qemu_uid = qemu_uid(&r1);
    assert_ne!(qemu_uid, 0, "QEMU runs as root: the relabel is not tested");
    assert_eq!(mode_uid_gid(&live).0, 0o600);
    assert_eq!(mode_uid_gid(&live).1, qemu_uid);
    let snap = json(
        &lab,
        &["snapshot-create", &r1, "snap1", "--json", "--control", &ctl],
    );
    let o = &snap[0];
    assert_eq!(o["ok"], true, "{o}");
    assert_eq!(o["quiesce"], "pause");
    eprintln!(
        "snapshot-create: paused {} ms, durable {} ms",
        o["paused_ms"], o["durable_ms"]
    );
    assert_eq!(domstate(&r1), "running");
    let listed = virsh_ok(&["snapshot-list", &r1, "--name"]);
    assert!(listed.lines().any(|l| l.trim() == "snap1"), "{listed}");
    let sl = json(&lab, &["snapshot-list", &r1, "--json"]);
    assert_eq!(sl[0]["name"], "snap1");
    let version = sl[0]["disks"][0]["version"].as_u64().unwrap();
    assert_eq!(sl[0]["disks"][0]["volume"], r1.as_str());
    let exp = lab.tmp.path().join("exp1");
    lab.ok(&["snapshot-export", &r1, "snap1", exp.to_str().unwrap()]);
    let raw = exp.join("vda.raw");
    let t_snap = ticks(&raw);
    assert!(t_snap >= 2, "snapshot holds {t_snap} ticks");
    assert!(
        wait_until(Duration::from_secs(60), || ticks(&live) >= t_snap + 3),
        "{r1} stopped writing"
    );
    let o = run(&lab, &["snapshot-revert", &r1, "snap1", "--control", &ctl]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(
        domstate(&r1),
        "running",
        "a refused revert must not stop the domain"
    );
    lab.ok(&[
        "snapshot-revert",
        &r1,
        "snap1",
        "--force",
        "--control",
        &ctl,
    ]);
    assert_eq!(domstate(&r1), "shut off");
    // ... and gave it back to root when the domain stopped.
    assert_eq!(mode_uid_gid(&live), (0o600, 0, 0));
    let info = json(&lab, &["vol-info", &r1, "--json"]);
    let last = info["versions"].as_array().unwrap().last().unwrap().clone();
    assert!(last["version"].as_u64().unwrap() > version, "{info}");
    let cur = lab.tmp.path().join("current.raw");
    lab.ok(&["vol-export", &r1, cur.to_str().unwrap()]);
    assert!(
        std::fs::read(&cur).unwrap() == std::fs::read(&raw).unwrap(),
        "revert did not bring back the snapshot's bytes"
    );
    // Through the mount too (mirrord dropped its mirror of the old content).
    assert!(
        std::fs::read(&live).unwrap() == std::fs::read(&raw).unwrap(),
        "the mount shows other bytes"
    );
    assert_eq!(
        lab.read_marker(&raw, "marker"),
        format!("name={r1} boots=1")
    );
    let o = Command::new(root().join("guest/boot-test.sh"))
        .args(["--serial", "plainqemu", "--stay", "2", "-q"])
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}",
        show("boot-test.sh on the export", &o)
    );
    assert_eq!(lab.read_marker(&raw, "marker"), "name=plainqemu boots=2");

    // 3. snapshot-create-all: two running domains, then one that does not exist.
    let (r2, r3) = (run3[1].clone(), run3[2].clone());
    let all = json(
        &lab,
        &[
            "snapshot-create-all",
            &r2,
            &r3,
            "--name",
            "all1",
            "--json",
            "--control",
            &ctl,
        ],
    );
    for o in all.as_array().unwrap() {
        assert_eq!(o["ok"], true, "{o}");
        let (p, d) = (
            o["paused_ms"].as_f64().unwrap(),
            o["durable_ms"].as_f64().unwrap(),
        );
        assert!(p > 0.0 && d >= p, "{o}");
        eprintln!(
            "snapshot-create-all: {} paused {p} ms, durable {d} ms",
            o["domain"]
        );
    }
    let nope = format!("nope{s}");
    let args = [
        "snapshot-create-all",
        &r2,
        &r3,
        &nope,
        "--name",
        "all2",
        "--json",
        "--control",
        &ctl,
    ];
    let o = run(&lab, &args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        show("create-all with a missing domain", &o)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let by = |d: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|o| o["domain"] == d)
            .unwrap()
            .clone()
    };
    assert_eq!(by(&r2)["ok"], true);
    assert_eq!(by(&r3)["ok"], true);
    assert_eq!(by(&nope)["ok"], false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().last().unwrap().contains(&nope), "{err}");
    for d in [&r2, &r3] {
        assert_eq!(domstate(d), "running");
        let l = virsh_ok(&["snapshot-list", d, "--name"]);
        assert!(l.contains("all1") && l.contains("all2"), "{l}");
    }
    // Delete: libvirt's metadata and the versions go, the disk stays.
    lab.ok(&["snapshot-delete", &r2, "all1"]);
    assert!(!virsh_ok(&["snapshot-list", &r2, "--name"]).contains("all1"));
    let sl = json(&lab, &["snapshot-list", &r2, "--json"]);
    let left: Vec<&str> = sl
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["all2"]);
    // all2 is r3's latest version (the disk's current content): deleting
    // the snapshot keeps the version and only clears its label.
    let before = json(&lab, &["vol-info", &r3, "--json"]);
    lab.ok(&["snapshot-delete", &r3, "all2"]);
    let after = json(&lab, &["vol-info", &r3, "--json"]);
    assert_eq!(before["latest_version"], after["latest_version"]);
    let labels: Vec<&str> = after["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    assert!(!labels.iter().any(|l| l.contains("/all2/")), "{labels:?}");
    assert!(labels.iter().any(|l| l.contains("/all1/")), "{labels:?}");
    for d in [&r2, &r3] {
        virsh_ok(&["destroy", d]);
    }
}
