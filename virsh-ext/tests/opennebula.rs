//! OpenNebula's DS and TM `blobvirt` drivers, called exactly as oned's
//! drivers call them (OpenNebula itself cannot be installed here): the
//! scripts of `packaging/opennebula/remotes/`, DS actions with the ID as
//! the argument and base64 `DS_DRIVER_ACTION_DATA` on stdin, TM actions
//! with `host:path` arguments and `SSH` pointing at a stand-in that runs
//! the command on the named host (`kvm-1`, this machine, which runs the
//! cluster's mirrord and libvirtd) and fails like ssh for any other host.
//! The domain XML is what OpenNebula's KVM driver writes: a file disk at
//! the system datastore's `disk.N`, `cache='none'`, started with `virsh
//! create`. Needs root, libvirt and the guest's build tools.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testbed::harness::libvirt::*;
use testbed::harness::opennebula::{deployment_xml, image_xml, one_line_failure, Driver, Target};
use testbed::harness::*;

/// The drivers of a lab, and its system datastore's directory
/// (`DATASTORE_LOCATION/0`) on `kvm-1`, this machine.
struct One {
    drv: Driver,
    sys: PathBuf,
}

impl One {
    fn new(lab: &Lab) -> One {
        let sys = lab.tmp.path().join("datastores/0");
        std::fs::create_dir_all(&sys).unwrap();
        let env = [
            ("BLOBVIRT_CONFIG", lab.dir.join("blobvirt.toml").into()),
            ("BLOBVIRT_POOL", lab.pool_url.clone().into()),
            ("BLOBVIRT_CONTROL", lab.control.clone().into()),
            ("BLOBVIRT_MOUNT", lab.mount.clone().into()),
        ];
        let drv = Driver::new(lab.tmp.path(), &[("kvm-1", Target::Local)], None, &env);
        One { drv, sys }
    }

    fn ds(&self, action: &str, id: &str, xml: &str) -> std::process::Output {
        self.drv.ds(action, id, xml)
    }

    fn ds_ok(&self, action: &str, id: &str, xml: &str) -> String {
        self.drv.ds_ok(action, id, xml)
    }

    fn tm(&self, action: &str, args: &[&str]) -> std::process::Output {
        self.drv.tm(action, args)
    }

    fn tm_ok(&self, action: &str, args: &[&str]) {
        self.drv.tm_ok(action, args)
    }

    /// `kvm-1:SYS/VMID/disk.I`, and the local path.
    fn disk(&self, vmid: u32, i: u32) -> (String, PathBuf) {
        let p = self.sys.join(format!("{vmid}/disk.{i}"));
        (format!("kvm-1:{}", p.display()), p)
    }
}

/// The domain OpenNebula's KVM driver writes for VM `vmid`, as its
/// `deployment.0`.
fn deployment(one: &One, vmid: u32, disks: &[PathBuf], console: &Path) -> PathBuf {
    let f = one.sys.join(format!("{vmid}/deployment.0"));
    std::fs::write(&f, deployment_xml(vmid, disks, console)).unwrap();
    f
}

/// Destroys the transient domains it names, also when the test fails.
struct Transient(Vec<String>);

impl Drop for Transient {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = virsh(&["destroy", d]);
        }
    }
}

fn console_has(log: &Path, what: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|s| s.contains(what))
}

/// `virsh create` (OpenNebula's deploy), until the console shows `want`.
fn boot(dep: &Path, dom: &str, log: &Path, want: &str) {
    let _ = std::fs::remove_file(log);
    virsh_ok(&["create", dep.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(240), || console_has(log, want)),
        "{dom} did not print {want:?}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// `virsh shutdown` (the ACPI button ends the guest's stay mode), until the
/// transient domain is gone.
fn shutdown(dom: &str) {
    virsh_ok(&["shutdown", dom]);
    assert!(
        wait_until(Duration::from_secs(120), || !virsh(&["domstate", dom])
            .status
            .success()),
        "{dom} did not shut down: {}",
        domstate(dom)
    );
}

fn sha(p: &Path) -> Vec<u8> {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(o.status.success(), "{}", show("sha256sum", &o));
    o.stdout.split(|b| *b == b' ').next().unwrap().to_vec()
}

fn export(lab: &Lab, vol: &str) -> PathBuf {
    let f = lab.tmp.path().join(format!("{vol}.export.raw"));
    lab.ok(&["vol-export", vol, f.to_str().unwrap()]);
    f
}

fn labels(lab: &Lab, vol: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&lab.ok(&["vol-info", vol, "--json"])).unwrap();
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_vm_lifecycle_through_the_driver_scripts() {
    let lab = Lab::up("one");
    let one = One::new(&lab);
    let guest = lab.build_guest();
    stay_on(&guest);
    let qcow = lab.tmp.path().join("guest.qcow2");
    let o = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&guest)
        .arg(&qcow)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show("qemu-img convert", &o));

    // Register: DS stat, then cp, from a raw file and from a qcow2 file.
    let g = guest.to_str().unwrap();
    let q = qcow.to_str().unwrap();
    assert_eq!(one.ds_ok("stat", "0", &image_xml("0", q, "", "")), "64\n");
    assert_eq!(
        one.ds_ok("cp", "0", &image_xml("0", g, "", "")),
        "one-0 raw\n"
    );
    assert_eq!(
        one.ds_ok("cp", "1", &image_xml("1", q, "", "")),
        "one-1 raw\n"
    );
    assert_eq!(sha(&export(&lab, "one-1")), sha(&guest), "qcow2 import");
    // A persistent empty datablock, used in place (TM ln).
    assert_eq!(
        one.ds_ok("mkfs", "2", &image_xml("2", "", "", "<SIZE>8</SIZE>")),
        "one-2\n"
    );

    // Deploy VM: disk.0 cloned from image 0, disk.1 the datablock.
    let vmid = 40_000 + u32::from_str_radix(&lab.suffix[..4], 16).unwrap() % 10_000;
    let dom = format!("one-{vmid}");
    let (d0, p0) = one.disk(vmid, 0);
    let (d1, p1) = one.disk(vmid, 1);
    let v = vmid.to_string();
    one.tm_ok("clone", &["frontend:one-0", &d0, &v, "100"]);
    one.tm_ok("ln", &["frontend:one-2", &d1, &v, "100"]);
    let vol0 = format!("one-{vmid}-0");
    assert_eq!(std::fs::read_link(&p0).unwrap(), lab.mount.join(&vol0));
    assert_eq!(std::fs::read_link(&p1).unwrap(), lab.mount.join("one-2"));
    let console = lab.tmp.path().join("console.log");
    let dep = deployment(&one, vmid, &[p0.clone(), p1.clone()], &console);
    let _guard = Transient(vec![dom.clone()]);
    boot(&dep, &dom, &console, "tick 2");
    assert!(console_has(
        &console,
        &format!("marker: name={dom} boots=1")
    ));

    // A live disk snapshot of the running VM.
    one.tm_ok("snap_create_live", &[&d0, "0", &v, "100"]);
    assert!(labels(&lab, &vol0).contains(&"one-snap-0".to_string()));
    shutdown(&dom);

    // Boot once more, so that the disk moves past the snapshot.
    boot(&dep, &dom, &console, "tick 1");
    assert!(console_has(
        &console,
        &format!("marker: name={dom} boots=2")
    ));
    shutdown(&dom);

    // Save-as: the new image exports as the disk's content.
    one.ds_ok(
        "mkfs",
        "3",
        &image_xml("3", "", "", "<SIZE>64</SIZE>").replace("<FORMAT>raw", "<FORMAT>save_as"),
    );
    one.tm_ok("cpds", &[&d0, "one-3", "-1", &v, "100"]);
    let saved = export(&lab, "one-3");
    assert_eq!(sha(&saved), sha(&lab.mount.join(&vol0)), "cpds content");
    assert_eq!(
        lab.read_marker(&saved, "marker"),
        format!("name={dom} boots=2")
    );

    // Revert to the snapshot (VM off): the disk says boots=1 again, and the
    // VM boots from the reverted content.
    one.tm_ok("snap_revert", &[&d0, "0", &v, "100"]);
    let f = lab.mount.join(&vol0);
    assert!(
        wait_until(Duration::from_secs(20), || lab.read_marker(&f, "marker")
            == format!("name={dom} boots=1")),
        "after snap_revert: {}",
        lab.read_marker(&f, "marker")
    );
    boot(&dep, &dom, &console, "tick 1");
    assert!(
        console_has(&console, &format!("marker: name={dom} boots=2")),
        "the reverted disk booted as its second boot"
    );
    shutdown(&dom);
    one.tm_ok("snap_delete", &[&d0, "0", &v, "100"]);
    assert!(!labels(&lab, &vol0).contains(&"one-snap-0".to_string()));

    // Terminate: the VM's clone goes, the images stay.
    one.tm_ok("delete", &[&d0, &v, "100"]);
    one.tm_ok("delete", &[&d1, &v, "100"]);
    let vmdir = format!("kvm-1:{}", one.sys.join(&v).display());
    one.tm_ok("delete", &[&vmdir, &v, "0"]);
    assert!(!one.sys.join(&v).exists());
    let vols = lab.volumes();
    assert!(!vols.contains(&vol0), "{vols:?}");
    for keep in ["one-0", "one-1", "one-2", "one-3"] {
        assert!(vols.contains(&keep.to_string()), "{keep} lost: {vols:?}");
    }
    assert_eq!(sha(&export(&lab, "one-0")), sha(&guest), "image 0 kept");

    // DS rm of an image.
    one.ds_ok("rm", "1", &image_xml("1", "", "one-1", ""));
    assert!(!lab.volumes().contains(&"one-1".to_string()));
}

/// DS monitor against `cluster status`; wrong input; 8 VMs from one image.
#[test]
fn monitor_wrong_input_and_eight_clones() {
    let lab = Lab::cluster("onx");
    let one = One::new(&lab);
    let img = lab.tmp.path().join("img.raw");
    data::write_image(&img, 32 << 20, &[], 7);
    let p = img.to_str().unwrap();
    assert_eq!(
        one.ds_ok("cp", "5", &image_xml("5", p, "", "")),
        "one-5 raw\n"
    );

    // Monitor: the three numbers from cluster status --json.
    let out = one.ds_ok("monitor", "100", &image_xml("", "", "", ""));
    let st: Value = serde_json::from_str(&lab.ok(&["cluster", "status", "--json"])).unwrap();
    let r = st["replicas"].as_u64().unwrap();
    let sum = |k: &str| -> u64 {
        st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["alive"] == true)
            .map(|n| n[k].as_u64().unwrap())
            .sum()
    };
    let mb = |b: u64| b / r / (1 << 20);
    let got = |k: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {out}"))
            .parse()
            .unwrap()
    };
    assert_eq!(got("USED_MB"), mb(st["stored_bytes"].as_u64().unwrap()));
    assert!(got("USED_MB") >= 32, "32 MiB image stored: {out}");
    assert_eq!(got("TOTAL_MB"), mb(sum("total_bytes")));
    // Free space moves with the rest of the machine: within 64 MB.
    assert!(got("FREE_MB").abs_diff(mb(sum("free_bytes"))) < 64, "{out}");

    // Wrong input: one sentence each, nothing stored is lost.
    let e = one_line_failure(&one.ds("cp", "6", &image_xml("6", "/nonexistent.raw", "", "")));
    assert!(e.contains("does not exist"), "{e}");
    let e = one_line_failure(&one.ds("clone", "6", &image_xml("6", "one:5", "", "")));
    assert!(e.contains("colon"), "{e}");
    let (d, _) = one.disk(77, 0);
    let e = one_line_failure(&one.tm("clone", &["frontend:one:5", &d, "77", "100"]));
    assert!(e.contains("colon"), "{e}");
    let e = one_line_failure(&one.tm("clone", &["frontend:one-404", &d, "77", "100"]));
    assert!(e.contains("one-404"), "{e}");
    let full = image_xml("6", p, "", "").replace(
        "<TEMPLATE><DS_MAD>",
        &format!(
            "<TEMPLATE><LIMIT_MB>{}</LIMIT_MB><DS_MAD>",
            got("USED_MB") + 8
        ),
    );
    let e = one_line_failure(&one.ds("cp", "6", &full));
    assert!(e.contains("is full") && e.contains("32 MB"), "{e}");
    let e = one_line_failure(&one.ds("cp", "5", &image_xml("5", p, "", "")));
    assert!(e.contains("already exists"), "{e}");
    let e = one_line_failure(&one.tm("clone", &["frontend:one-5", "kvm-9:/x/disk.0", "78", "1"]));
    assert!(e.contains("kvm-9"), "{e}");
    let e = one_line_failure(&one.tm("premigrate", &["kvm-1", "kvm-2", "/x", "79", "0"]));
    assert!(e.contains("not supported"), "{e}");
    assert!(!lab.volumes().contains(&"one-6".to_string()));
    assert_eq!(sha(&export(&lab, "one-5")), sha(&img), "image 5 intact");

    // 8 VMs from one image: 8 O(1) clones, no chunk stored twice.
    let before: Value = serde_json::from_str(&lab.ok(&["cluster", "status", "--json"])).unwrap();
    for vm in 100..108u32 {
        let (d, _) = one.disk(vm, 0);
        one.tm_ok("clone", &["frontend:one-5", &d, &vm.to_string(), "100"]);
    }
    // A retried clone (onevm recover --retry) uses the clone it made.
    let (d, _) = one.disk(100, 0);
    one.tm_ok("clone", &["frontend:one-5", &d, "100", "100"]);
    let after: Value = serde_json::from_str(&lab.ok(&["cluster", "status", "--json"])).unwrap();
    assert_eq!(after["stored_chunks"], before["stored_chunks"]);
    assert_eq!(after["stored_bytes"], before["stored_bytes"]);
    let list: Value = serde_json::from_str(&lab.ok(&["vol-list", "--json"])).unwrap();
    let clones: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"].as_str().unwrap().ends_with("-0"))
        .collect();
    assert_eq!(clones.len(), 8, "{list}");
    for c in &clones {
        assert_eq!(c["origin"], "one-5@1", "{c}");
    }
    for vm in [100u32, 107] {
        let (_, p) = one.disk(vm, 0);
        assert_eq!(sha(&p), sha(&img), "VM {vm}'s disk through its symlink");
    }
    // A failed deploy's clean-up deletes only the VM directory: its clone
    // goes with it, the image stays.
    let dir = format!("kvm-1:{}", one.sys.join("107").display());
    one.tm_ok("delete", &[&dir, "107", "0"]);
    let vols = lab.volumes();
    assert!(!vols.contains(&"one-107-0".to_string()), "{vols:?}");
    assert!(vols.contains(&"one-5".to_string()) && vols.contains(&"one-106-0".to_string()));
}

/// Image snapshots of a persistent image used in place (TM ln): TM
/// snap_create with the VM off, DS snap_revert, snap_flatten and
/// snap_delete; TM resize; TM mvds; DS mkfs with a file system.
#[test]
fn persistent_image_snapshots_resize_mvds_and_mkfs() {
    let lab = Lab::cluster("onp");
    let one = One::new(&lab);
    let img = lab.tmp.path().join("img.raw");
    data::write_image(&img, 16 << 20, &[], 11);
    let p = img.to_str().unwrap();
    assert_eq!(
        one.ds_ok("cp", "7", &image_xml("7", p, "", "")),
        "one-7 raw\n"
    );
    let src = image_xml("7", "", "one-7", "");
    let snap = |s: u32| {
        src.replace(
            "</IMAGE>",
            &format!("<TARGET_SNAPSHOT>{s}</TARGET_SNAPSHOT></IMAGE>"),
        )
    };
    let (d, path) = one.disk(300, 0);
    one.tm_ok("ln", &["frontend:one-7", &d, "300", "100"]);

    // Snapshot 0 of the untouched image, then a write through the disk.
    one.tm_ok("snap_create", &[&d, "0", "300", "100"]);
    let e = one_line_failure(&one.tm("snap_create", &[&d, "0", "300", "100"]));
    assert!(e.contains("already has snapshot 0"), "{e}");
    data::overwrite(&path, 1 << 20, 1 << 20, 12);
    let changed = sha(&path);
    assert_ne!(changed, sha(&img));
    // Snapshot 1 of the changed image (the close committed the write).
    one.tm_ok("snap_create", &[&d, "1", "300", "100"]);
    assert!(labels(&lab, "one-7").contains(&"one-snap-1".to_string()));

    // DS snap_revert to 0: the image's content is the imported one again.
    one.ds_ok("snap_revert", "7", &snap(0));
    assert!(
        wait_until(Duration::from_secs(20), || sha(&path) == sha(&img)),
        "snap_revert 0 did not bring the imported content back"
    );
    // DS snap_flatten to 1: the changed content, and no snapshot left.
    one.ds_ok("snap_flatten", "7", &snap(1));
    assert!(
        wait_until(Duration::from_secs(20), || sha(&path) == changed),
        "snap_flatten 1 did not keep snapshot 1's content"
    );
    assert!(
        !labels(&lab, "one-7")
            .iter()
            .any(|l| l.starts_with("one-snap-")),
        "{:?}",
        labels(&lab, "one-7")
    );
    let e = one_line_failure(&one.ds("snap_delete", "7", &snap(1)));
    assert!(e.contains("no snapshot 1"), "{e}");
    // A snapshot that is the current content: deleting it keeps the content.
    one.tm_ok("snap_create", &[&d, "2", "300", "100"]);
    one.ds_ok("snap_delete", "7", &snap(2));
    assert_eq!(sha(&path), changed);

    // TM resize grows the disk and refuses to shrink it.
    one.tm_ok("resize", &[&d, "24", "300", "100"]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 24 << 20);
    let e = one_line_failure(&one.tm("resize", &[&d, "8", "300", "100"]));
    assert!(e.contains("cannot shrink"), "{e}");
    let info: Value = serde_json::from_str(&lab.ok(&["vol-info", "one-7", "--json"])).unwrap();
    assert_eq!(info["size"], 24u64 << 20, "the new size is published");

    // TM mvds: the persistent disk goes back to its image, which stays.
    one.tm_ok("mvds", &[&d, "one-7", "300", "100"]);
    assert!(path.symlink_metadata().is_err(), "the symlink is gone");
    assert!(lab.volumes().contains(&"one-7".to_string()));

    // DS mkfs: an 8 MB ext4 datablock (the ext4 magic 0xEF53 at byte 1080).
    let xml = image_xml("8", "", "", "<SIZE>8</SIZE><FS>ext4</FS>");
    assert_eq!(one.ds_ok("mkfs", "8", &xml), "one-8\n");
    let raw = std::fs::read(export(&lab, "one-8")).unwrap();
    assert_eq!(raw.len(), 8 << 20);
    assert_eq!(&raw[1080..1082], &[0x53, 0xEF], "no ext4 superblock");
}
