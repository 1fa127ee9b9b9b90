//! The emulated-cluster harness end to end, small (2 nodes, 64 MiB image):
//! every system runs through real namespaces, shaped links and the real
//! daemons, the numbers it reports are checked against what the link
//! counters must show, every node's CPU, disk and link use adds up, and
//! nothing (namespace, process, mount, cgroup) is left behind, also after
//! Ctrl-C.
//! Needs root (network namespaces, FUSE); skipped otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_blobvirt-bench");
const MIB: f64 = 1048576.0;

fn root() -> bool {
    // Effective uid from /proc (nix's user feature is not enabled here).
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

/// The directory of the workspace binaries this test was built with.
fn bin_dir() -> PathBuf {
    Path::new(BIN).parent().unwrap().to_path_buf()
}

fn leftovers(pid: u32, dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("bvb{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    for h in ["cpuacct", "blkio"] {
        let cg = format!("/sys/fs/cgroup/{h}/blobvirt-emu-{pid}");
        if Path::new(&cg).exists() {
            out.push(format!("cgroup {cg}"));
        }
    }
    let d = dir.to_string_lossy().into_owned();
    out.extend(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&d))
            .map(|m| format!("mount {m}")),
    );
    // Processes that still name the run's directory on their command line.
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == me || !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&d) {
            out.push(format!("process {name}: {cmd}"));
        }
    }
    out
}

/// Kills the harness (and its namespaces, not another test's) if the
/// test panics.
struct Harness(Child, PathBuf);

impl Drop for Harness {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new(BIN)
            .args(["emu-clean", "--pid", &pid, "--dir"])
            .arg(&self.1)
            .status();
    }
}

fn emu(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("emu")
        .args(["--nodes", "2", "--runs", "1", "--image-mib", "64"])
        .arg("--dir")
        .arg(dir.join("work"))
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--bin")
        .arg(bin_dir())
        .args(extra);
    c
}

#[test]
fn every_system_runs_and_counts_its_bytes() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let child = emu(
        t.path(),
        &["--systems", "blobvirt,prepro-http,prepro-chain,qcow2-nbd"],
    )
    .spawn()
    .unwrap();
    let pid = child.id();
    let mut h = Harness(child, t.path().join("work"));
    let st = h.0.wait().unwrap();
    assert!(st.success(), "emu failed: {st}");
    assert!(
        leftovers(pid, t.path()).is_empty(),
        "{:?}",
        leftovers(pid, t.path())
    );

    let text = std::fs::read_to_string(t.path().join("out/results.jsonl")).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |s: &str| rows.iter().find(|r| r["system"] == s).unwrap().clone();
    assert_eq!(rows.len(), 4);
    let image = rows[0]["meta"]["image_bytes"].as_f64().unwrap();
    let unique = rows[0]["meta"]["trace_unique_bytes"].as_f64().unwrap();
    assert_eq!(image, 64.0 * MIB);
    for r in &rows {
        let d = &r["deploy"];
        let (c, m) = (
            d["completion_s"].as_f64().unwrap(),
            d["max_s"].as_f64().unwrap(),
        );
        assert!(c > 0.0 && m <= c + 1e-6, "{r}");
    }
    let traffic = |s: &str| by(s)["deploy"]["traffic_bytes"].as_f64().unwrap();
    // Both prepropagations move the whole raw image to each of the 2 nodes.
    for s in ["prepro-http", "prepro-chain"] {
        assert!(traffic(s) >= 2.0 * image, "{s}: {}", traffic(s));
        assert!(by(s)["deploy"]["local_bytes"].as_f64().unwrap() >= 2.0 * 0.4 * image * 0.99);
    }
    // HTTP sends both copies from the server; the chain only one.
    let server = |s: &str| by(s)["deploy"]["traffic_server_bytes"].as_f64().unwrap();
    assert!(server("prepro-http") >= 2.0 * image);
    assert!(server("prepro-chain") < 1.5 * image);
    // Lazy systems move about what the trace reads.
    assert!(
        traffic("blobvirt") < 4.0 * unique,
        "{}",
        traffic("blobvirt")
    );
    assert!(traffic("qcow2-nbd") >= 2.0 * unique * 0.95);
    assert!(traffic("qcow2-nbd") < 4.0 * unique);
    // Snapshots: blobvirt stores each written chunk once per replica; the
    // qcow2 copy-back stores each overlay once.
    for (s, copies) in [("blobvirt", 2.0), ("qcow2-nbd", 1.0)] {
        let snap = &by(s)["snapshot"];
        let written = snap["written_bytes"].as_f64().unwrap();
        let added = snap["stored_added_bytes"].as_f64().unwrap();
        assert_eq!(written, 2.0 * 15.0 * MIB, "{s}");
        assert!(added >= copies * written, "{s}: {added}");
        assert!(added <= copies * written * 1.2, "{s}: {added}");
        assert!(snap["mean_s"].as_f64().unwrap() > 0.0);
    }
    // Per node: the server and both nodes, adding up to the machine.
    for r in &rows {
        for phase in ["deploy", "snapshot"] {
            if r[phase].is_null() {
                continue;
            }
            check_nodes(r, phase);
        }
    }
    // The server sends qcow2's boot sets and reads them from its disk.
    let q = &by("qcow2-nbd")["deploy"];
    let node = |i: usize, k: &str| q["per_node"][i][k].as_f64().unwrap();
    assert!(node(0, "sent_bytes") >= 2.0 * unique * 0.95, "{q}");
    // (Disk bytes are counted only when the work directory is on a disk.)
    // The page cache is dropped before the deployment, so the server reads
    // the boot set from its disk at least once. A node's own reads are no
    // yardstick: after the drop it reads its programs from disk too.
    if q["model"]["machine_disk_bytes"].as_f64() > Some(0.0) {
        assert!(node(0, "read_bytes") >= unique * 0.9, "{q}");
    }
    assert!(t.path().join("out/tables-b.md").exists());
    let md = std::fs::read_to_string(t.path().join("out/tables-b.md")).unwrap();
    assert!(md.contains("per-node model s"), "{md}");
}

/// A phase's per-node records: one per node and the server, each with its
/// model the largest of its terms, and the nodes' CPU with the harness's,
/// the other processes' and the switch making the machine's time.
fn check_nodes(r: &Value, phase: &str) {
    let p = &r[phase];
    let nodes = p["per_node"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(nodes.len(), 3, "{p}");
    assert_eq!(nodes[0]["node"], "srv");
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    let m = &p["model"];
    let mut worst: f64 = 0.0;
    let mut cpu = 0.0;
    for n in nodes {
        let terms = [f(n, "link_s"), f(n, "cpu_bound_s"), f(n, "disk_s")];
        let model = terms.iter().cloned().fold(0.0, f64::max);
        assert!((f(n, "model_s") - model).abs() < 1e-9, "{n}");
        assert!((f(n, "cpu_with_share_s") - f(n, "cpu_s") - f(m, "switch_share_s")).abs() < 1e-9);
        worst = worst.max(model);
        cpu += f(n, "cpu_s");
    }
    assert!((f(m, "s") - worst).abs() < 1e-9, "{m}");
    assert!((f(m, "procs_cpu_s") - cpu).abs() < 1e-9, "{m}");
    assert!(
        (f(m, "switch_share_s") * 3.0 - f(m, "switch_cpu_s")).abs() < 1e-9,
        "{m}"
    );
    // Ticks of 10 ms on 2 CPUs against the cgroups' ns: a little slack.
    let parts = cpu + f(m, "harness_cpu_s") + f(m, "other_procs_cpu_s") + f(m, "switch_cpu_s");
    let machine = f(m, "machine_cpu_s");
    assert!(
        (parts - machine).abs() <= 0.1 + 0.05 * machine,
        "{phase} of {}: {parts} vs {machine}: {m}",
        r["system"]
    );
    assert!(cpu > 0.0, "{m}");
}

#[test]
fn ctrl_c_removes_namespaces_processes_and_mounts() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let child = emu(t.path(), &["--systems", "blobvirt"]).spawn().unwrap();
    let pid = child.id();
    let mut h = Harness(child, t.path().join("work"));
    // Wait until the run is in full swing: a mirrord mount exists.
    let start = Instant::now();
    while !leftovers(pid, t.path())
        .iter()
        .any(|l| l.starts_with("mount"))
    {
        assert!(
            h.0.try_wait().unwrap().is_none(),
            "emu ended before it mounted"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no mount within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = h.0.wait().unwrap();
    assert_eq!(st.code(), Some(130), "{st}");
    assert!(
        leftovers(pid, t.path()).is_empty(),
        "{:?}",
        leftovers(pid, t.path())
    );
}
