//! `blobvirt pool-define`: libvirt's `virsh vol-*` on the pool change the
//! repository and the repository's changes show in `virsh vol-list`; the
//! pool definition is idempotent, checked and removable. Needs root and
//! libvirt (started by the harness when not running).

use std::time::Duration;
use testbed::harness::libvirt::*;
use testbed::harness::*;

use rand::{RngCore, SeedableRng};
use serde_json::Value;

const MIB: usize = 1 << 20;

#[test]
fn virsh_volume_commands_change_the_repository_and_back() {
    let lab = Lab::up("pl");
    let p = lab.pool.clone();
    let path = |name: &str| lab.tmp.path().join(name).display().to_string();

    // virsh -> repository
    virsh_ok(&[
        "vol-create-as",
        &p,
        "a1",
        "8M",
        "--format",
        "raw",
        "--allocation",
        "0",
    ]);
    assert!(
        lab.volumes().contains(&"a1".to_string()),
        "{:?}",
        lab.volumes()
    );
    let info: Value = serde_json::from_str(&lab.ok(&["vol-info", "a1", "--json"])).unwrap();
    assert_eq!(info["size"], 8 * MIB as u64);

    // vol-upload, then vol-download gives the same bytes; so does the
    // repository once the close-to-open commit is done.
    let mut data = vec![0u8; 8 * MIB];
    rand::rngs::SmallRng::seed_from_u64(4).fill_bytes(&mut data[..5 * MIB]);
    std::fs::write(path("up.raw"), &data).unwrap();
    let before = lab.latest_version("a1");
    virsh_ok(&["vol-upload", "--pool", &p, "a1", &path("up.raw")]);
    virsh_ok(&["vol-download", "--pool", &p, "a1", &path("down.raw")]);
    assert!(
        std::fs::read(path("down.raw")).unwrap() == data,
        "vol-download differs from vol-upload"
    );
    assert!(
        wait_until(Duration::from_secs(30), || lab.latest_version("a1")
            > before),
        "vol-upload was not committed"
    );
    lab.ok(&["vol-export", "a1", &path("export.raw")]);
    assert!(
        std::fs::read(path("export.raw")).unwrap() == data,
        "the repository holds other bytes"
    );

    // repository -> virsh
    std::fs::write(path("b1.raw"), vec![3u8; 2 * MIB]).unwrap();
    lab.ok(&["vol-import", &path("b1.raw"), "b1"]);
    lab.wait_virsh_volume("b1", true);
    let xml = virsh_ok(&["vol-dumpxml", "--pool", &p, "b1"]);
    assert!(
        xml.contains(&format!("<capacity unit='bytes'>{}</capacity>", 2 * MIB)),
        "{xml}"
    );

    // Deleting on either side removes it on the other.
    virsh_ok(&["vol-delete", "--pool", &p, "a1"]);
    assert!(!lab.volumes().contains(&"a1".to_string()));
    lab.ok(&["vol-delete", "b1"]);
    lab.wait_virsh_volume("b1", false);
    assert!(lab.volumes().is_empty(), "{:?}", lab.volumes());
}

#[test]
fn pool_define_is_idempotent_checked_and_undefinable() {
    let lab = Lab::up("pd");
    let (p, d) = (lab.pool.clone(), lab.dir.display().to_string());
    let info = virsh_ok(&["pool-info", &p]);
    assert!(
        info.contains("running") && info.contains("Autostart:      yes"),
        "{info}"
    );
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string("/etc/blobvirt/hook.json").unwrap()).unwrap();
    let entry = cfg["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == p.as_str())
        .cloned();
    let entry = entry.expect("hook.json has the pool");
    assert_eq!(
        entry["mount"],
        lab.mount.canonicalize().unwrap().display().to_string()
    );
    assert_eq!(entry["control"], lab.control.display().to_string());
    let hook = std::path::Path::new("/etc/libvirt/hooks/qemu.d/50-blobvirt");
    assert!(
        std::fs::read(hook).unwrap() == std::fs::read(bin("blobvirt-hook")).unwrap(),
        "installed hook is not this build"
    );

    // Again: fine, nothing changes.
    let out = lab.ok(&["pool-define", "--name", &p, "--dir", &d]);
    assert!(out.contains("already running"), "{out}");
    // The same name on another directory: refused, the pool stays.
    let other = lab.tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let o = lab.blobvirt(&[
        "pool-define",
        "--name",
        &p,
        "--mount",
        &other.display().to_string(),
        "--control",
        "/nonexistent.sock",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no mirrord is mounted"), "{err}");
    let fake = lab.tmp.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let other_pool = format!("bvother-{}", lab.suffix);
    virsh_ok(&[
        "pool-create-as",
        &other_pool,
        "dir",
        "--target",
        &fake.display().to_string(),
    ]);
    let o = lab.blobvirt(&["pool-define", "--name", &other_pool, "--dir", &d]);
    let _ = virsh(&["pool-destroy", &other_pool]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("libvirt pool {other_pool} already exists")) && err.contains("; "),
        "{err}"
    );
    assert!(virsh_ok(&["pool-info", &p]).contains("running"));

    // Undefine: gone from libvirt and from the hook configuration.
    lab.ok(&["pool-undefine", "--name", &p]);
    assert!(!virsh(&["pool-info", &p]).status.success());
    let cfg = std::fs::read_to_string("/etc/blobvirt/hook.json").unwrap();
    assert!(!cfg.contains(&format!("\"{p}\"")), "{cfg}");
    let o = lab.blobvirt(&["pool-undefine", "--name", &p]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a second undefine should say the pool does not exist"
    );
}

/// Stops the cluster and removes the pool even when the test fails.
struct Down<'a> {
    lab: &'a Lab,
    dir: String,
    pool: String,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .blobvirt(&["cluster", "down", "--dir", &self.dir, "--force"]);
        let _ = self.lab.blobvirt(&["pool-undefine", "--name", &self.pool]);
    }
}

#[test]
fn cluster_up_libvirt_defines_the_pool_and_down_removes_it() {
    // The lab's own cluster is not used: this test runs a second one.
    let lab = Lab::cluster("cu");
    let dir = lab.tmp.path().join("c2").display().to_string();
    let mnt = lab.tmp.path().join("mnt2").display().to_string();
    let pool = format!("bvcu-{}", lab.suffix);
    let _down = Down {
        lab: &lab,
        dir: dir.clone(),
        pool: pool.clone(),
    };
    let out = lab.ok(&[
        "cluster",
        "up",
        "--nodes",
        "1",
        "--dir",
        &dir,
        "--mount",
        &mnt,
        "--libvirt",
        "--libvirt-pool",
        &pool,
    ]);
    assert!(
        out.contains(&format!("libvirt pool {pool} defined and started")),
        "{out}"
    );
    assert!(virsh_ok(&["pool-info", &pool]).contains("running"));
    let out = lab.ok(&["cluster", "down", "--dir", &dir]);
    assert!(
        out.contains(&format!("libvirt pool {pool} removed")),
        "{out}"
    );
    assert!(
        !virsh(&["pool-info", &pool]).status.success(),
        "pool {pool} survived cluster down"
    );
    let cfg = std::fs::read_to_string("/etc/blobvirt/hook.json").unwrap();
    assert!(!cfg.contains(&format!("\"{pool}\"")), "{cfg}");
    assert!(!is_mounted(std::path::Path::new(&mnt)));
}

/// A volume imported or cloned on this host is in the libvirt pool when the
/// command returns, so `virsh start` of a domain on a fresh clone works at
/// once (it used to fail with "Storage volume not found" until mirrord's
/// next poll and a `virsh pool-refresh`).
#[test]
fn a_clone_is_in_the_pool_and_starts_when_the_command_returns() {
    let lab = Lab::up("cs");
    let p = lab.pool.clone();
    let ctl = lab.control.display().to_string();
    let src = lab.tmp.path().join("base.raw");
    std::fs::write(&src, vec![0u8; 4 * MIB]).unwrap();
    lab.ok(&[
        "vol-import",
        &src.display().to_string(),
        "base",
        "--control",
        &ctl,
    ]);
    // No pool-refresh and no waiting: libvirt knows the volume already.
    virsh_ok(&["vol-info", "--pool", &p, "base"]);
    lab.ok(&["vol-clone", "base", "c1", "--control", &ctl]);
    virsh_ok(&["vol-info", "--pool", &p, "c1"]);
    let dom = format!("bvcs-{}", lab.suffix);
    lab.define(&dom, &lab.guest_xml(&dom, "c1"));
    virsh_ok(&["start", &dom]);
    assert_eq!(domstate(&dom), "running");
    virsh_ok(&["destroy", &dom]);
    // A delete leaves the pool at once too.
    assert!(
        wait_until(Duration::from_secs(30), || lab.claims().is_empty()),
        "{:?}",
        lab.claims()
    );
    lab.ok(&["vol-delete", "c1", "--control", &ctl]);
    let o = virsh(&["vol-info", "--pool", &p, "c1"]);
    assert!(!o.status.success(), "{}", show("virsh vol-info", &o));
}
