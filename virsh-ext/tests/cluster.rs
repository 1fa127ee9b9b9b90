//! `cluster up|status|restart|down` on real daemons: status fields and
//! values, refusal of a second cluster in one directory, restart of killed
//! processes, data surviving down/up, and no process left after down.

use serde_json::Value;
use testbed::harness::cli::*;
use testbed::harness::data::*;
use testbed::harness::*;

fn node_ids(s: &Value) -> Vec<String> {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn status_up_restart_down() {
    let mut c = Cluster::up(3, 2);
    let d = c.dir.to_string_lossy().to_string();

    // cluster.json: poold and 3 chunkd with live pids and their logs.
    let cj = c.cluster_json();
    assert_eq!(cj["pool"].as_str().unwrap(), c.pool);
    assert!(c.pool.starts_with("https://127.0.0.1:"), "{}", c.pool);
    let procs = c.procs();
    assert_eq!(procs.len(), 4, "{procs:?}");
    for (name, pid) in &procs {
        assert!(running_in(*pid, &c.dir), "{name} (pid {pid}) does not run");
        assert!(c.dir.join("logs").join(format!("{name}.log")).is_file());
    }

    // A second cluster in the same directory is refused, nothing is touched.
    let e = fail(None, &["cluster", "up", "--nodes", "1", "--dir", &d]);
    assert!(e.contains("already runs"), "{e}");
    assert_eq!(c.procs(), procs);

    // Fresh status: 3 live nodes, nothing stored.
    let s = c.status();
    assert_eq!(s["pool"].as_str().unwrap(), c.pool);
    assert_eq!(s["replicas"], 2);
    assert_eq!(node_ids(&s), ["node-1", "node-2", "node-3"]);
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(n["alive"], true, "{n}");
        assert!(n["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{n}");
        assert_eq!(n["chunks"], 0);
        assert_eq!(n["bytes"], 0);
        let (free, total) = (
            n["free_bytes"].as_u64().unwrap(),
            n["total_bytes"].as_u64().unwrap(),
        );
        assert!(total > 0 && free <= total, "{n}");
    }
    assert_eq!(s["nodes_alive"], 3);
    assert_eq!(s["stored_bytes"], 0);
    assert!(s["meta_nodes"].is_u64(), "{s}");
    let meta0 = s["meta_nodes"].as_u64().unwrap();

    // 2 MiB of random data (8 chunks) and 1 MiB of holes: 16 stored copies.
    let img = c.tmp.path().join("img.raw");
    write_image(&img, 3 * MIB, &[(MIB, MIB)], 7);
    let o = run(c.p(), &["vol-import", img.to_str().unwrap(), "disk"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("as disk@1") && out.contains("4 holes"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "one summary line: {out}");
    assert!(
        o.stderr.is_empty(),
        "no progress bar when stdout is not a terminal"
    );
    let s = c.status();
    assert_eq!(s["stored_chunks"], 16, "{s}");
    assert_eq!(s["stored_bytes"], 2 * 2 * MIB, "{s}");
    let sum: u64 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 4 * MIB);
    assert_eq!(c.disk_bytes(), 4 * MIB, "counters agree with the files");
    assert!(s["meta_nodes"].as_u64().unwrap() > meta0, "{s}");
    assert_eq!(s["volume_count"], 1);
    assert_eq!(s["version_count"], 1);

    // The export is exact and sparse where the volume has holes.
    let out = c.tmp.path().join("disk.out");
    c.ok(&["vol-export", "disk", out.to_str().unwrap()]);
    assert_eq!(sha256_file(&out), sha256_file(&img));
    let m = std::fs::metadata(&out).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.len(), 3 * MIB);
    assert!(
        m.blocks() * 512 <= 2 * MIB + 64 * KIB,
        "not sparse: {} B allocated",
        m.blocks() * 512
    );

    // Human output is a table; --dir works without a pool URL.
    let human = c.ok(&["cluster", "status"]);
    assert!(
        human.contains("NODE") && human.contains("node-3"),
        "{human}"
    );
    let by_dir: Value =
        serde_json::from_str(&ok(None, &["cluster", "status", "--json", "--dir", &d])).unwrap();
    assert_eq!(by_dir["stored_bytes"], s["stored_bytes"]);
    let e = fail(None, &["cluster", "status"]);
    assert!(e.contains("--pool"), "{e}");

    // A SIGKILLed node shows as not alive with zeros; restart brings it back.
    c.kill9("chunkd-2");
    let s = c.status();
    let n2 = &s["nodes"][1];
    assert_eq!(n2["id"], "node-2");
    assert_eq!(n2["alive"], false, "{s}");
    assert_eq!(n2["chunks"], 0);
    let out = ok(None, &["cluster", "restart", "--dir", &d]);
    assert!(out.contains("chunkd-2"), "{out}");
    let s = c.status();
    assert!(
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["alive"] == true),
        "{s}"
    );
    assert_eq!(s["stored_bytes"], 4 * MIB);

    // down: nothing left; data kept; a second down says there is no cluster.
    let pids = c.pids();
    c.down();
    for pid in &pids {
        assert!(!running_in(*pid, &c.dir));
    }
    assert!(c.chunkd_dir(1).join("packs").is_dir(), "data dirs are kept");
    let e = fail(None, &["cluster", "down", "--dir", &d]);
    assert!(e.contains("no cluster"), "{e}");

    // up again in the same dir: the same pool address (an exported
    // BLOBVIRT_POOL stays right), the same CA, and the volume is still
    // there and exact.
    let (pool_before, ca_before) = (
        c.pool.clone(),
        std::fs::read(c.dir.join("tls/ca.pem")).unwrap(),
    );
    c.up_again(3, 2);
    if c.pool != pool_before {
        // Allowed only when another process took the old port meanwhile
        // (tests run in parallel): then it cannot be bound now.
        let old = pool_before.trim_start_matches("https://");
        assert!(
            std::net::TcpListener::bind(old).is_err(),
            "the pool address changed across down and up ({pool_before} -> {}) although {old} is free",
            c.pool
        );
    }
    assert_eq!(
        std::fs::read(c.dir.join("tls/ca.pem")).unwrap(),
        ca_before,
        "a new CA was made"
    );
    let list = c.vol_list();
    assert_eq!(list[0]["name"], "disk", "{list}");
    assert_eq!(list[0]["latest_version"], 1, "{list}");
    assert_eq!(c.export_sha("disk"), sha256_file(&img));

    // down --purge removes the data too.
    let pids = c.pids();
    ok(None, &["cluster", "down", "--dir", &d, "--purge"]);
    for pid in &pids {
        assert!(!running_in(*pid, &c.dir));
    }
    assert!(!c.chunkd_dir(1).exists());
    assert!(!c.dir.join("poold").exists());
}

#[test]
fn failed_up_stops_what_it_started_and_restart_reports_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    std::fs::create_dir_all(&dir).unwrap();
    // Something in the way of node 2's directory: up fails after starting
    // poold and chunkd-1, and must stop both.
    std::fs::write(dir.join("chunkd-2"), b"in the way").unwrap();
    let d = dir.to_string_lossy().to_string();
    let e = fail(None, &["cluster", "up", "--nodes", "3", "--dir", &d]);
    assert!(e.contains("chunkd-2"), "{e}");
    let left = procs_in(&dir);
    assert!(left.is_empty(), "up left processes behind: {left:?}");
    assert!(!dir.join("cluster.json").exists());
    std::fs::remove_file(dir.join("chunkd-2")).unwrap();

    let mut c = Cluster::up(2, 1);
    let d = c.dir.to_string_lossy().to_string();
    // A restart whose address is taken fails and names the log to read.
    let addr = c.cluster_json()["processes"][2]["addr"]
        .as_str()
        .unwrap()
        .to_string();
    c.kill9("chunkd-2");
    // SO_REUSEADDR (as tokio sets it), since the port may be in TIME_WAIT.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let blocker = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .expect("take the port");
    let e = fail(None, &["cluster", "restart", "--dir", &d, "chunkd-2"]);
    assert!(e.contains("chunkd-2.log"), "{e}");
    drop(blocker);
    drop(rt);
    // Naming a running process or an unknown one is refused.
    let e = fail(None, &["cluster", "restart", "--dir", &d, "poold"]);
    assert!(e.contains("poold") && e.contains("runs"), "{e}");
    let e = fail(None, &["cluster", "restart", "--dir", &d, "chunkd-9"]);
    assert!(e.contains("chunkd-9"), "{e}");
    ok(None, &["cluster", "restart", "--dir", &d, "chunkd-2"]);
    let s = c.status();
    assert!(
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["alive"] == true),
        "{s}"
    );

    // Every process SIGKILLed: a stale cluster.json does not block `up`.
    for (name, _) in c.procs() {
        c.kill9(&name);
    }
    c.up_again(2, 1);
    assert_eq!(c.status()["nodes"].as_array().unwrap().len(), 2);
    c.down();
}
