//! Metadata that survives a dead host (issue 11), on three emulated hosts
//! installed as README.md says: an etcd member on each (from
//! `packaging/etcd/etcd.env`: client and peer TLS with certificates of
//! blobvirt's CA), poold on hosts 1 and 2 (`engine = "etcd"`, one active,
//! one standby), a chunkd on each and mirrord on host 3. Two streams run
//! all along: whole-image publishes (`vol-import --new-version`) on
//! host 1, and writes plus `blobvirt commit` through host 3's mount.
//!
//! In the middle of the streams the active poold is SIGKILLed: the standby
//! listens within 10 s (measured), and no request of either stream fails;
//! later etcd's leader member is SIGKILLed, and no request fails either. Then
//! every acknowledged version exports exactly its content, each volume has
//! exactly one version per acknowledged publish (none twice, none half
//! there), and `fsck` is clean.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testbed::harness::data::*;
use testbed::harness::install::{self, cli, start, try_cli, wait};
use testbed::harness::wait_until;
use testbed::{Host, Hosts};

const IMAGE: usize = 2 * MIB as usize;
const PIECE: usize = 64 * 1024;

/// The version `name@V` in a command's output.
fn version_in(out: &str, name: &str) -> u64 {
    let at = format!("{name}@");
    let i = out
        .find(&at)
        .unwrap_or_else(|| panic!("no {at} in {out:?}"))
        + at.len();
    let digits: String = out[i..].chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no version in {out:?}"))
}

/// What one stream saw: acknowledged (version, content hash), failed
/// requests (when, what).
#[derive(Default)]
struct Log {
    acked: Vec<(u64, [u8; 32], Instant)>,
    failed: Vec<(Instant, String)>,
}

type Shared = Arc<Mutex<Log>>;

fn acks_since(log: &Shared, t: Instant) -> usize {
    log.lock().unwrap().acked.iter().filter(|a| a.2 > t).count()
}

/// Stream A on host 1: each round changes one piece of the image and
/// imports the whole file as the next version of `vola`.
fn publishes(h: Host, img: Vec<u8>, stop: Arc<AtomicBool>, log: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut img = img;
        let file = h.path("/var/lib/blobvirt/a.raw");
        for k in 1u64.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let off = (k as usize * 5 % (IMAGE / PIECE)) * PIECE;
            img[off..off + PIECE].copy_from_slice(&random_bytes(1000 + k, PIECE));
            std::fs::write(&file, &img).unwrap();
            let r = try_cli(
                &h,
                &[
                    "vol-import",
                    "/var/lib/blobvirt/a.raw",
                    "vola",
                    "--new-version",
                ],
            );
            let mut l = log.lock().unwrap();
            match r {
                Ok(out) => l
                    .acked
                    .push((version_in(&out, "vola"), sha256(&img), Instant::now())),
                Err(e) => l.failed.push((Instant::now(), format!("{e:#}"))),
            }
        }
    })
}

/// Stream B on host 3: each round writes one piece through the mount
/// (its close commits too) and then runs `blobvirt commit disk`, whose
/// answer is the acknowledged version holding every write so far.
fn commits(h: Host, img: Vec<u8>, stop: Arc<AtomicBool>, log: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut img = img;
        let patch = h.path("/var/lib/blobvirt/b.raw");
        for k in 1u64.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let i = k as usize * 7 % (IMAGE / PIECE);
            let data = random_bytes(5000 + k, PIECE);
            img[i * PIECE..(i + 1) * PIECE].copy_from_slice(&data);
            std::fs::write(&patch, &data).unwrap();
            // A close whose commit failed keeps the write in the mirror
            // (the commit below publishes it); its status is not the ack.
            let _ = h.run(
                "dd",
                &[
                    "if=/var/lib/blobvirt/b.raw",
                    "of=/var/lib/blobvirt/pool/disk",
                    "bs=64K",
                    &format!("seek={i}"),
                    "conv=notrunc",
                    "status=none",
                ],
            );
            let r = try_cli(&h, &["commit", "disk"]);
            let mut l = log.lock().unwrap();
            match r {
                Ok(out) => l
                    .acked
                    .push((version_in(&out, "disk"), sha256(&img), Instant::now())),
                Err(e) => l.failed.push((Instant::now(), format!("{e:#}"))),
            }
        }
    })
}

fn wait_acks(what: &str, logs: &[&Shared], since: Instant, n: usize) {
    assert!(
        wait_until(Duration::from_secs(120), || logs
            .iter()
            .all(|l| acks_since(l, since) >= n)),
        "{what}: the streams did not get {n} acknowledgements each within 120 s"
    );
}

/// The host whose etcd member leads (`etcd_server_is_leader 1` in its
/// metrics, read with the host's client certificate).
fn etcd_leader(hosts: &Hosts) -> usize {
    let leads = |h: &Host| {
        let tls = |f: &str| format!("/etc/blobvirt/tls/{f}");
        h.run(
            "curl",
            &[
                "-sf",
                "--cacert",
                &tls("ca.pem"),
                "--cert",
                &tls(&format!("{}.pem", h.name)),
                "--key",
                &tls(&format!("{}.key", h.name)),
                &format!("https://{}:2379/metrics", h.addr),
            ],
        )
        .unwrap_or_else(|e| panic!("etcd metrics on {}: {e:#}", h.name))
        .lines()
        .any(|l| l == "etcd_server_is_leader 1")
    };
    let found: Vec<usize> = hosts
        .hosts
        .iter()
        .filter(|h| leads(h))
        .map(|h| h.index)
        .collect();
    assert_eq!(found.len(), 1, "one etcd member leads: {found:?}");
    found[0]
}

/// Every acknowledged version of `name` exports as its content, and the
/// volume has exactly the versions `first` and the acknowledged ones.
fn check_volume(h: &Host, name: &str, first: u64, log: &Shared) {
    let l = log.lock().unwrap();
    let mut want: Vec<u64> = l.acked.iter().map(|a| a.0).collect();
    want.push(first);
    want.sort_unstable();
    want.dedup();
    let info: serde_json::Value =
        serde_json::from_str(&cli(h, &["vol-info", name, "--json"])).unwrap();
    let have: Vec<u64> = info["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        have, want,
        "volume {name} has other versions than were acknowledged"
    );
    for (v, hash, _) in &l.acked {
        let out = format!("/var/lib/blobvirt/{name}-{v}.raw");
        cli(h, &["vol-export", &format!("{name}@{v}"), &out]);
        assert!(
            sha256_file(&h.path(&out)) == *hash,
            "{name}@{v} does not export as the content acknowledged for it"
        );
        std::fs::remove_file(h.path(&out)).unwrap();
    }
}

#[test]
fn failover_under_load_on_three_hosts() {
    let bed = install::Bed::new("ha-hosts", "bvh", 3);
    let (hosts, logs) = (&bed.hosts, &bed.logs);
    let (h1, h2, h3) = (hosts.host(0), hosts.host(1), hosts.host(2));
    let all: Vec<&Host> = hosts.hosts.iter().collect();
    for h in &all {
        let text = install::config(h, &[h1, h2], &all);
        std::fs::write(h.path("/etc/blobvirt/blobvirt.toml"), text).unwrap();
    }

    let mut etcd: Vec<_> = all
        .iter()
        .map(|h| install::start_etcd(h, &all, logs))
        .collect();
    let mut poold1 = start(h1, "blobvirt-poold.service", logs);
    wait("poold on host 1 active", || {
        try_cli(h1, &["vol-list"]).is_ok()
    });
    let _poold2 = start(h2, "blobvirt-poold.service", logs);
    let mut daemons = Vec::new();
    for h in [h1, h2, h3] {
        daemons.push(start(h, "blobvirt-chunkd.service", logs));
    }
    wait("three chunkd nodes registered", || {
        try_cli(h1, &["cluster", "status", "--json"]).is_ok_and(|o| {
            serde_json::from_str::<serde_json::Value>(&o).is_ok_and(|v| v["nodes_alive"] == 3)
        })
    });
    daemons.push(start(h3, "blobvirt-mirrord.service", logs));
    wait("mirrord's control socket", || {
        h3.path("/run/blobvirt/mirrord.sock").exists()
    });

    // The two volumes, version 1 each.
    let a = random_bytes(1, IMAGE);
    let b = random_bytes(2, IMAGE);
    std::fs::write(h1.path("/var/lib/blobvirt/a.raw"), &a).unwrap();
    std::fs::write(h1.path("/var/lib/blobvirt/b0.raw"), &b).unwrap();
    cli(h1, &["vol-import", "/var/lib/blobvirt/a.raw", "vola"]);
    cli(h1, &["vol-import", "/var/lib/blobvirt/b0.raw", "disk"]);
    wait("disk on host 3's mount", || {
        h3.run("test", &["-f", "/var/lib/blobvirt/pool/disk"])
            .is_ok()
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (la, lb): (Shared, Shared) = Default::default();
    let ta = publishes(h1.clone(), a, stop.clone(), la.clone());
    let tb = commits(h3.clone(), b, stop.clone(), lb.clone());
    let t = Instant::now();
    wait_acks("before the kill", &[&la, &lb], t, 3);

    // SIGKILL the active poold; measure until the standby listens.
    let killed = Instant::now();
    poold1.sigkill();
    let standby = format!("https://{}:7000", h2.addr);
    assert!(
        wait_until(Duration::from_secs(30), || try_cli(
            h2,
            &["vol-list", "--pool", &standby]
        )
        .is_ok()),
        "the standby poold on host 2 did not take over within 30 s"
    );
    let takeover = killed.elapsed();
    eprintln!("the standby poold answered {takeover:?} after the active one was SIGKILLed");
    assert!(
        takeover < Duration::from_secs(10),
        "the standby took {takeover:?} to become active"
    );
    wait_acks("after the takeover", &[&la, &lb], killed + takeover, 3);

    // SIGKILL the etcd leader under the same load: the two others elect
    // a new one.
    let leader = etcd_leader(hosts);
    eprintln!(
        "SIGKILL etcd's leader, the member on {}",
        hosts.host(leader).name
    );
    let lost = Instant::now();
    etcd[leader].sigkill();
    wait_acks("after an etcd member was lost", &[&la, &lb], lost, 5);
    stop.store(true, Ordering::Relaxed);
    ta.join().unwrap();
    tb.join().unwrap();

    for (name, l) in [("vola", &la), ("disk", &lb)] {
        let l = l.lock().unwrap();
        let gap = |from: Instant, to: Instant| {
            l.acked
                .windows(2)
                .filter(|w| w[1].2 > from && w[0].2 < to)
                .map(|w| w[1].2 - w[0].2)
                .max()
                .unwrap_or_default()
        };
        eprintln!(
            "{name}: {} versions acknowledged, {} requests failed; longest wait between two acknowledgements {:?} around the poold kill, {:?} around the etcd leader's",
            l.acked.len(),
            l.failed.len(),
            gap(killed, lost),
            gap(lost, Instant::now()),
        );
        assert!(
            l.failed.is_empty(),
            "requests on {name} failed during the faults: {:?}",
            l.failed
                .iter()
                .map(|(at, e)| format!("{:?} after the start: {e}", at.duration_since(t)))
                .collect::<Vec<_>>()
        );
    }
    check_volume(h1, "vola", 1, &la);
    check_volume(h1, "disk", 1, &lb);
    let out = cli(h1, &["fsck"]);
    eprintln!("{out}");
    drop(daemons);
    drop(etcd);
}
