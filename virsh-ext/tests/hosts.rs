//! Three emulated hosts (crate `testbed`: a network and a mount namespace
//! each), installed the way README.md "Install on a cluster" says: a CA
//! and a certificate per host, one `/etc/blobvirt/blobvirt.toml` per host,
//! the daemons started with the exact command lines of the systemd units'
//! `ExecStart` (there is no systemd here; only the binaries' directory
//! differs). Host 1 runs poold and a chunkd, hosts 2 and 3 a chunkd and
//! mirrord. Import on host 1, read through host 2's mount, write and commit
//! through host 3's mount, export on host 1: byte-identical, and the bytes
//! crossed the emulated links. Then drain host 3's chunkd: its chunks move
//! to hosts 1 and 2 node to node (chunkd `Pull` over mutual TLS), the
//! export stays exact and `fsck` is clean.

use testbed::harness::blobvirt;
use testbed::harness::data::*;
use testbed::harness::install::{self, cli, start, wait};
use testbed::Host;

const IMAGE: u64 = 8 * MIB;
const PATCH: u64 = MIB;
const PATCH_AT: u64 = 2 * MIB;

#[test]
fn three_hosts_import_read_write_export() {
    let bed = install::Bed::new("hosts", "bvt", 3);
    let (hosts, logs) = (&bed.hosts, &bed.logs);
    let (h1, h2, h3) = (hosts.host(0), hosts.host(1), hosts.host(2));
    for h in &hosts.hosts {
        let text = install::config(h, &[h1], &[]);
        std::fs::write(h.path("/etc/blobvirt/blobvirt.toml"), text).unwrap();
    }
    let mut daemons = vec![start(h1, "blobvirt-poold.service", logs)];
    for h in [h1, h2, h3] {
        daemons.push(start(h, "blobvirt-chunkd.service", logs));
    }
    wait("three chunkd nodes registered", || {
        let mut c = h1.cmd(blobvirt());
        c.args(["cluster", "status", "--json"]);
        c.output().ok().is_some_and(|o| {
            serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .is_ok_and(|v| v["nodes_alive"] == 3)
        })
    });
    for h in [h2, h3] {
        daemons.push(start(h, "blobvirt-mirrord.service", logs));
        wait("mirrord's control socket", || {
            h.path("/run/blobvirt/mirrord.sock").exists()
        });
    }
    let before_rx = hosts.net.received_bytes().unwrap();
    let before_tx = hosts.net.sent_bytes().unwrap();

    // Import on host 1.
    let img = h1.path("/var/lib/blobvirt/img.raw");
    write_image(&img, IMAGE, &[], 42);
    cli(h1, &["vol-import", "/var/lib/blobvirt/img.raw", "disk"]);

    // Read through host 2's mount.
    let want = hex(&sha256_file(&img));
    wait("the volume on host 2's mount", || {
        h2.run("test", &["-f", "/var/lib/blobvirt/pool/disk"])
            .is_ok()
    });
    let got = h2
        .run("sha256sum", &["/var/lib/blobvirt/pool/disk"])
        .unwrap();
    assert_eq!(
        got.split_whitespace().next(),
        Some(want.as_str()),
        "host 2 read other bytes"
    );

    // Write through host 3's mount; the close commits version 2.
    let patch = h3.path("/var/lib/blobvirt/patch.raw");
    write_image(&patch, PATCH, &[], 43);
    h3.run(
        "dd",
        &[
            "if=/var/lib/blobvirt/patch.raw",
            "of=/var/lib/blobvirt/pool/disk",
            "bs=1M",
            &format!("seek={}", PATCH_AT / MIB),
            "conv=notrunc",
            "status=none",
        ],
    )
    .unwrap();
    wait("version 2 of disk", || {
        let v: serde_json::Value =
            serde_json::from_str(&cli(h1, &["vol-info", "disk", "--json"])).unwrap();
        v["latest_version"] == 2
    });

    // Export on host 1: the image with the patch in place.
    cli(h1, &["vol-export", "disk", "/var/lib/blobvirt/out.raw"]);
    let mut expect = std::fs::read(&img).unwrap();
    let p = std::fs::read(&patch).unwrap();
    expect[PATCH_AT as usize..(PATCH_AT + PATCH) as usize].copy_from_slice(&p);
    let out = std::fs::read(h1.path("/var/lib/blobvirt/out.raw")).unwrap();
    assert!(
        out == expect,
        "the export differs from the image with host 3's write"
    );

    // The bytes crossed the links (switch port counters; index 0 is the
    // unused server namespace, host i is i + 1).
    let rx = hosts.net.received_bytes().unwrap();
    let tx = hosts.net.sent_bytes().unwrap();
    let sent = |i: usize| tx[i + 1] - before_tx[i + 1];
    let got = |i: usize| rx[i + 1] - before_rx[i + 1];
    assert!(
        sent(0) >= IMAGE,
        "host 1 sent {} bytes for an {IMAGE}-byte import",
        sent(0)
    );
    assert!(
        got(1) >= IMAGE / 4,
        "host 2 received only {} bytes for its read",
        got(1)
    );
    assert!(
        sent(2) >= PATCH,
        "host 3 sent only {} bytes for a {PATCH}-byte commit",
        sent(2)
    );

    // Self-healing across hosts: drain host 3's chunkd.
    let nodes = |h: &Host| -> Vec<serde_json::Value> {
        serde_json::from_str(&cli(h, &["node", "list", "--json"])).unwrap()
    };
    let held = |h: &Host, id: &str| {
        nodes(h).into_iter().find(|n| n["id"] == id).unwrap()["bytes"]
            .as_u64()
            .unwrap()
    };
    let on3 = held(h1, &h3.name);
    assert!(on3 > 0, "host 3 holds chunks before the drain");
    let tx = hosts.net.sent_bytes().unwrap();
    let out = cli(h1, &["node", "drain", &h3.name]);
    assert!(out.contains("is draining"), "{out}");
    wait("host 3's chunkd emptied by the drain", || {
        held(h1, &h3.name) == 0
    });
    let n3 = nodes(h1)
        .into_iter()
        .find(|n| n["id"] == h3.name.as_str())
        .unwrap();
    assert_eq!(n3["draining"], true);
    // Every chunk on host 3 has its other replica on host 1 or 2, and
    // copies come from a replica that stays: hosts 1 and 2 send each other
    // the chunks, node to node.
    let now = hosts.net.sent_bytes().unwrap();
    let moved = (now[1] - tx[1]) + (now[2] - tx[2]);
    assert!(
        moved >= on3,
        "hosts 1 and 2 sent {moved} bytes to replace {on3} bytes of chunks on host 3"
    );
    cli(h1, &["vol-export", "disk", "/var/lib/blobvirt/out2.raw"]);
    assert!(
        std::fs::read(h1.path("/var/lib/blobvirt/out2.raw")).unwrap() == expect,
        "the export after the drain differs"
    );
    cli(h1, &["fsck"]);
    drop(daemons);
}
