//! The thrasher in CI: 20 SIGKILLs of random daemons (a chunkd, poold or
//! a mirrord) under load, then every check of `testbed::harness::thrash`
//! and a clean `blobvirt fsck`. `bench/thrash.sh` runs 100 kills
//! (`THRASH_KILLS`).

use std::time::Duration;

use testbed::harness::cli;
use testbed::harness::daemons::Cluster;
use testbed::harness::thrash::{run, ThrashOpts};

#[test]
fn daemons_killed_under_load_lose_nothing() {
    let kills = std::env::var("THRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("THRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut c = Cluster::start_with(
        4,
        2,
        &[
            "--heartbeat-timeout-ms",
            "1000",
            "--out-after-secs",
            "30",
            "--gc-grace-secs",
            "1",
            "--gc-interval-secs",
            "2",
            "--lease-ttl-ms",
            "3000",
        ],
    );
    let o = ThrashOpts {
        kills,
        seed,
        every: Duration::from_millis(2500),
        volume_mib: 8,
    };
    let rep = run(&mut c, &o);
    eprintln!("thrash report: {rep:#?}");
    assert!(rep.commits_acked > 0 && rep.imports_acked > 0 && rep.fsyncs > 0);
    // Uploads cut short by a kill leave orphan chunks: fsck --repair hands
    // them to GC; then fsck must find nothing at all.
    let p = Some(c.pool.as_str());
    cli::ok(p, &["fsck", "--repair"]);
    std::thread::sleep(Duration::from_secs(2));
    let _rt = c.rt.enter();
    c.rt.block_on(
        c.poold
            .client()
            .gc(blobvirt_core::proto::GcRequest { now: true }),
    )
    .unwrap();
    let out = cli::ok(p, &["fsck"]);
    assert!(
        out.contains("0 orphan chunks on the nodes; 0 metadata problems"),
        "{out}"
    );
}
