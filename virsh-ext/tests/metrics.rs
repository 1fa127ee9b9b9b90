//! Every daemon of `cluster up --mount` serves Prometheus `/metrics`: a
//! read through the mount grows chunkd's served and mirrord's fetched byte
//! counters by at least the bytes read, poold counts its calls by method
//! and code (a refused one too), the text parses as the exposition format,
//! `cluster status` reports the addresses, and a metrics address in use is
//! a one-sentence startup error.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use testbed::harness::cli::*;
use testbed::harness::data::*;
use testbed::harness::mounted::*;
use testbed::harness::*;

/// `GET /metrics` over plain HTTP/1.1 (what `curl http://ADDR/metrics` does).
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    check_format(body);
    body.to_string()
}

/// Checks the Prometheus text format 0.0.4: every sample's metric has a
/// `# TYPE` line before it (histograms: `_bucket`, `_sum`, `_count`), no
/// family is typed twice, label sets are well formed, values are numbers.
fn check_format(text: &str) {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "stray comment: {line}");
            continue;
        }
        samples += 1;
        let (series, value) = line.rsplit_once(' ').expect("NAME VALUE");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
        let name = match series.split_once('{') {
            Some((n, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels end with }");
                for l in labels.split("\",").filter(|l| !l.is_empty()) {
                    let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(v.starts_with('"'), "{line}");
                }
                n
            }
            None => series,
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let typed = types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .and_then(|f| types.get(f))
                    .is_some_and(|k| k == "histogram" || k == "summary")
            });
        assert!(typed, "{name} has no # TYPE line before it");
    }
    assert!(samples > 0, "no samples in:\n{text}");
}

/// Sum of the samples of `name` whose labels contain every one of `labels`
/// (`key="value"`).
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, ls) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|l| ls.contains(l))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

/// The `metrics` address of every process in cluster.json, by name.
fn addrs(c: &Cluster) -> BTreeMap<String, String> {
    let v = c.cluster_json();
    v["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap().to_string();
            let a = p["metrics"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no metrics address: {p}"));
            assert!(a.starts_with("127.0.0.1:"), "{name}: {a}");
            (name, a.to_string())
        })
        .collect()
}

fn chunkd_served(a: &BTreeMap<String, String>) -> f64 {
    a.iter()
        .filter(|(n, _)| n.starts_with("chunkd"))
        .map(|(_, a)| value(&scrape(a), "blobvirt_chunkd_served_bytes_total", &[]))
        .sum()
}

#[test]
fn a_read_through_the_mount_shows_in_every_daemons_metrics() {
    // chunkd must serve the read: no local reads of its files (they bypass
    // its metrics). The daemons inherit this environment.
    std::env::set_var("BLOBVIRT_LOCAL_READS", "0");
    let m = Mounted::up(2, 1, &[]);
    let a = addrs(&m.c);
    assert_eq!(
        a.keys().cloned().collect::<Vec<_>>(),
        ["chunkd-1", "chunkd-2", "mirrord", "poold"]
    );
    let len = 3 * MIB as usize + 12345;
    let src = m.c.tmp.path().join("m.raw");
    let data = random_bytes(7, len);
    std::fs::write(&src, &data).unwrap();
    m.c.ok(&["vol-import", &src.display().to_string(), "m"]);

    let served0 = chunkd_served(&a);
    let mirrord0 = scrape(&a["mirrord"]);
    let fetched0 = value(&mirrord0, "blobvirt_mirrord_fetched_bytes_total", &[]);
    let read0 = value(&mirrord0, "blobvirt_mirrord_read_bytes_total", &[]);
    let chunks0 = value(&mirrord0, "blobvirt_mirrord_fetched_chunks_total", &[]);

    let got = read_all(&m.wait_file("m"));
    assert!(
        got == data,
        "the mounted volume differs from what was imported"
    );

    let served = chunkd_served(&a) - served0;
    let mirrord = scrape(&a["mirrord"]);
    let fetched = value(&mirrord, "blobvirt_mirrord_fetched_bytes_total", &[]) - fetched0;
    let read = value(&mirrord, "blobvirt_mirrord_read_bytes_total", &[]) - read0;
    let len = len as f64;
    assert!(
        served >= len,
        "chunkd served {served} bytes for a read of {len}"
    );
    assert!(
        fetched >= len,
        "mirrord fetched {fetched} bytes for a read of {len}"
    );
    assert!(read >= len, "mirrord counted {read} bytes read of {len}");
    // 256 KiB chunks: 13 of them, each fetched once.
    let chunks = value(&mirrord, "blobvirt_mirrord_fetched_chunks_total", &[]) - chunks0;
    assert!(chunks >= 13.0, "{chunks} chunks fetched");
    let vol = ["volume=\"m\""];
    assert_eq!(
        value(&mirrord, "blobvirt_mirrord_mirror_local_chunks", &vol),
        13.0,
        "{mirrord}"
    );
    assert_eq!(
        value(&mirrord, "blobvirt_mirrord_mirror_dirty_chunks", &vol),
        0.0
    );
    assert_eq!(value(&mirrord, "blobvirt_mirrord_mirror_error", &vol), 0.0);
    // The chunkd gauges hold what was imported (one replica each).
    let stored: f64 = a
        .iter()
        .filter(|(n, _)| n.starts_with("chunkd"))
        .map(|(_, a)| value(&scrape(a), "blobvirt_chunkd_stored_bytes", &[]))
        .sum();
    assert_eq!(stored, len);

    // poold: calls by method and code, a refused one with its code.
    let pool = ["service=\"blobvirt.v1.Pool\""];
    let p0 = scrape(&a["poold"]);
    let not_found = |t: &str| {
        value(
            t,
            "blobvirt_rpc_requests_total",
            &[pool[0], "method=\"GetBlob\"", "code=\"NotFound\""],
        )
    };
    let missing = m.c.fail(&["vol-info", "no-such-volume"]);
    assert!(missing.contains("no-such-volume"), "{missing}");
    m.c.ok(&["vol-list"]);
    let p1 = scrape(&a["poold"]);
    assert!(not_found(&p1) >= not_found(&p0) + 1.0, "{p1}");
    let list_ok = |t: &str| {
        value(
            t,
            "blobvirt_rpc_requests_total",
            &[pool[0], "method=\"ListBlobs\"", "code=\"OK\""],
        )
    };
    assert!(list_ok(&p1) >= list_ok(&p0) + 1.0, "{p1}");
    assert!(
        value(
            &p1,
            "blobvirt_rpc_duration_seconds_count",
            &[pool[0], "method=\"ListBlobs\""]
        ) >= 1.0
    );
    assert_eq!(
        value(&p1, "blobvirt_poold_node_up", &["node=\"node-1\""]),
        1.0
    );
    assert_eq!(value(&p1, "blobvirt_poold_nodes_up", &[]), 2.0);
    assert_eq!(value(&p1, "blobvirt_poold_volumes", &[]), 1.0);
    assert!(p1.contains("# TYPE blobvirt_poold_gc_pending_chunks gauge"));
    // chunkd counts its Gets by code too.
    let c1 = scrape(&a["chunkd-1"]) + &scrape(&a["chunkd-2"]);
    assert!(
        value(
            &c1,
            "blobvirt_rpc_requests_total",
            &[
                "service=\"blobvirt.v1.ChunkStore\"",
                "method=\"Get\"",
                "code=\"OK\""
            ]
        ) >= 13.0,
        "{c1}"
    );

    // A write through the mount commits at close: both phases are timed.
    let f = m.mnt.join("m");
    let mut w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    w.write_all(&random_bytes(9, 4096)).unwrap();
    drop(w);
    let after = scrape(&a["mirrord"]);
    for phase in ["phase=\"1\"", "phase=\"2\""] {
        assert!(
            value(
                &after,
                "blobvirt_mirrord_commit_phase_seconds_count",
                &[phase]
            ) >= 1.0,
            "{after}"
        );
    }
    assert!(value(&after, "blobvirt_mirrord_committed_chunks_total", &[]) >= 1.0);
    assert!(value(&after, "blobvirt_mirrord_written_bytes_total", &[]) >= 4096.0);

    // cluster status shows the addresses.
    let st: serde_json::Value =
        serde_json::from_str(&m.ok(&["cluster", "status", "--json"])).unwrap();
    assert_eq!(st["poold_metrics"].as_str(), Some(a["poold"].as_str()));
    assert_eq!(st["mirrord_metrics"].as_str(), Some(a["mirrord"].as_str()));
    assert_eq!(
        st["nodes"][0]["metrics"].as_str(),
        Some(a["chunkd-1"].as_str())
    );
    let text = m.ok(&["cluster", "status"]);
    assert!(text.contains("METRICS"), "{text}");
    assert!(
        text.contains(&format!("poold http://{}/metrics", a["poold"])),
        "{text}"
    );
}

#[test]
fn a_metrics_address_in_use_is_a_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let cfg = tmp.path().join("blobvirt.toml");
    std::fs::write(&cfg, "").unwrap();
    let poold = blobvirt().parent().unwrap().join("poold");
    let o = std::process::Command::new(poold)
        .args(["--config", &cfg.display().to_string()])
        .args(["--dir", &tmp.path().join("p").display().to_string()])
        .args(["--metrics", &addr])
        .env_remove("BLOBVIRT_CONFIG")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.contains(&format!("cannot serve metrics on {addr}"))
            && last.contains("[poold] metrics"),
        "{err}"
    );
    assert!(!tmp.path().join("p/poold.addr").exists());
}
