//! The OpenNebula drivers across two emulated hosts (crate `testbed`: a
//! network and a mount namespace each, with its own mirrord and its own
//! libvirtd), installed as README.md says; host 1 is also the front-end.
//! `SSH host-N CMD` runs CMD in host N. A VM is deployed on host 1 (DS
//! cp, TM clone) and boots; OpenNebula's cold migration follows: the VM
//! is off, TM `mv` moves its disk symlink and its directory to host 2,
//! and the VM boots there from the same disk, which host 2 can now write
//! (the writer lease followed the close on host 1). Needs root, libvirt
//! and the guest's build tools.

use std::process::Command;
use std::time::Duration;

use testbed::harness::install::{self, cli};
use testbed::harness::libvirt::build_guest_at;
use testbed::harness::opennebula::{deployment_xml, image_xml, Driver, Target};
use testbed::harness::*;
use testbed::Host;

const SYS: &str = "/var/lib/blobvirt/one/datastores/0";

/// `virsh create` of VM `vmid`'s deployment file on `h` (the guest writes
/// its marker and powers off), until the transient domain is gone.
fn boot_once(h: &Host, vmid: u32, want: &str) {
    let dom = format!("one-{vmid}");
    let dep = format!("{SYS}/{vmid}/deployment.0");
    h.virsh(&["create", &dep])
        .unwrap_or_else(|e| panic!("starting {dom} on {}: {e:#}", h.name));
    let log = h.libvirt_path(&format!("/var/log/libvirt/{dom}.console"));
    assert!(
        wait_until(Duration::from_secs(240), || {
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains(want))
                && h.virsh(&["domstate", &dom]).is_err()
        }),
        "{dom} on {} did not print {want:?} and power off: {}",
        h.name,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn cold_migration_moves_a_vm_between_hosts() {
    let bed = install::Bed::new("onehosts", "onh", 2);
    let daemons = install::cluster_with_libvirt(&bed);
    let (hosts, logs) = (&bed.hosts, &bed.logs);
    let (h1, h2) = (hosts.host(0), hosts.host(1));

    // Register the guest on the front-end (host 1).
    let img = h1.path("/var/lib/blobvirt/guest.raw");
    build_guest_at(&img);
    let drv = Driver::new(
        logs,
        &[("host-1", Target::In(h1)), ("host-2", Target::In(h2))],
        Some(h1),
        &[],
    );
    let xml = image_xml("0", "/var/lib/blobvirt/guest.raw", "", "");
    assert_eq!(drv.ds_ok("cp", "0", &xml), "one-0 raw\n");

    // Deploy VM 42 on host 1 and boot it.
    let vmid = 42;
    let disk = format!("{SYS}/{vmid}/disk.0");
    drv.tm_ok(
        "clone",
        &["host-1:one-0", &format!("host-1:{disk}"), "42", "100"],
    );
    let dep = deployment_xml(
        vmid,
        &[disk.clone().into()],
        std::path::Path::new(&format!("/var/log/libvirt/one-{vmid}.console")),
    );
    std::fs::write(h1.path(&format!("{SYS}/{vmid}/deployment.0")), dep).unwrap();
    boot_once(h1, vmid, "marker: name=one-42 boots=1");

    // Cold migration: the disk, then the VM directory, to host 2.
    drv.tm_ok(
        "mv",
        &[
            &format!("host-1:{disk}"),
            &format!("host-2:{disk}"),
            "42",
            "100",
        ],
    );
    let dir = format!("{SYS}/{vmid}");
    drv.tm_ok(
        "mv",
        &[
            &format!("host-1:{dir}"),
            &format!("host-2:{dir}"),
            "42",
            "0",
        ],
    );
    assert!(!h1.path(&dir).exists(), "the VM directory left on host 1");
    assert_eq!(
        std::fs::read_link(h2.path(&disk)).unwrap(),
        std::path::Path::new("/var/lib/blobvirt/pool/one-42-0")
    );
    boot_once(h2, vmid, "marker: name=one-42 boots=2");

    // What host 2 wrote is the volume's content, as host 1 exports it.
    cli(h1, &["vol-export", "one-42-0", "/var/lib/blobvirt/out.raw"]);
    let o = Command::new(root().join("guest/read-marker.sh"))
        .arg(h1.path("/var/lib/blobvirt/out.raw"))
        .arg("marker")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "name=one-42 boots=2"
    );

    // Terminate on host 2: the clone goes, the image stays.
    drv.tm_ok("delete", &[&format!("host-2:{disk}"), "42", "100"]);
    drv.tm_ok("delete", &[&format!("host-2:{dir}"), "42", "0"]);
    let vols = cli(h1, &["vol-list", "--json"]);
    assert!(
        !vols.contains("one-42-0") && vols.contains("one-0"),
        "{vols}"
    );
    drop(daemons);
}
