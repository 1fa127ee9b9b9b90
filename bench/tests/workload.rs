//! End-to-end test of the workload subcommands through the built binary:
//! `gen-image` → `gen-trace` → `instance` (prepare with `cp`, replay, write)
//! driven over its stdin/stdout JSON-line protocol.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_blobvirt-bench");
const MIB: u64 = 1 << 20;

fn run_json(args: &[&str]) -> Value {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Kills the instance if the test fails before it exits.
struct Instance {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Instance {
    fn start(args: &[&str]) -> Instance {
        let mut child = Command::new(BIN)
            .arg("instance")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                if tx.send(l.unwrap()).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Instance {
            child,
            stdin,
            lines,
        }
    }

    fn event(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("instance printed no line within 60 s");
        serde_json::from_str(&line).unwrap()
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..600 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("instance did not exit within 60 s");
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_trace(path: &Path) -> (Vec<(u64, u64)>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut reads = Vec::new();
    let mut header = Vec::new();
    for l in text.lines() {
        if let Some(h) = l.strip_prefix("# ") {
            header.push(h.to_string());
        } else {
            let (o, n) = l.split_once(' ').unwrap();
            reads.push((o.parse().unwrap(), n.parse().unwrap()));
        }
    }
    (reads, header)
}

#[test]
fn gen_image_gen_trace_and_instance_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("base.img");
    let trace = dir.path().join("boot.trace");
    let disk = dir.path().join("vm1.img");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let gen_image = |out: &Path| {
        run_json(&[
            "gen-image",
            "--out",
            &s(out),
            "--size-mib",
            "64",
            "--data-fraction",
            "0.3",
            "--seed",
            "7",
        ])
    };
    let out = gen_image(&img);
    assert_eq!(out["size"], 64 * MIB);
    let data_bytes = out["data_bytes"].as_u64().unwrap();
    assert_eq!(data_bytes, 19 * MIB, "round(0.3 * 64) extents");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 64 * MIB);
    let allocated = meta.blocks() * 512;
    assert!(
        allocated >= data_bytes && allocated <= data_bytes + MIB,
        "image is not sparse: {allocated} bytes allocated for {data_bytes} of data"
    );
    let original = std::fs::read(&img).unwrap();
    // Deterministic: the same seed gives the same bytes.
    let again = dir.path().join("again.img");
    gen_image(&again);
    assert!(std::fs::read(&again).unwrap() == original);
    std::fs::remove_file(&again).unwrap();

    let out = run_json(&[
        "gen-trace",
        "--image",
        &s(&img),
        "--fraction",
        "0.08",
        "--seed",
        "1",
        "--out",
        &s(&trace),
    ]);
    let (reads, header) = read_trace(&trace);
    assert_eq!(out["reads"], reads.len() as u64);
    let unique = out["unique_bytes"].as_u64().unwrap();
    let target = (0.08 * (64 * MIB) as f64).ceil() as u64;
    assert!(unique >= target && unique < target + 128 * 1024, "{unique}");
    assert_eq!(header[0], format!("image_size={}", 64 * MIB));
    assert_eq!(header[1], format!("unique_bytes={unique}"));
    assert!(header[2].starts_with("source=synthetic fraction=0.08 seed=1"));
    let total: u64 = reads.iter().map(|r| r.1).sum();
    assert_eq!(total, unique, "synthetic reads never overlap");
    for &(o, l) in &reads {
        let slice = &original[o as usize..(o + l) as usize];
        assert!(
            slice.chunks(4096).all(|b| b.iter().any(|&x| x != 0)),
            "read {o} hits a hole"
        );
    }

    let prepare = format!("cp {} {}", s(&img), s(&disk));
    let mut vm = Instance::start(&[
        "--file",
        &s(&disk),
        "--trace",
        &s(&trace),
        "--prepare",
        &prepare,
        "--write-mib",
        "2",
        "--write-block-kib",
        "256",
        "--seed",
        "3",
    ]);
    assert_eq!(vm.event()["event"], "ready");
    assert!(!disk.exists(), "prepare must wait for go");
    vm.send("go");
    let ev = vm.event();
    assert_eq!(ev["event"], "deployed", "{ev}");
    assert_eq!(ev["bytes_read"], total);
    assert_eq!(ev["reads"], reads.len() as u64);
    let (a, b, c) = (&ev["start_ns"], &ev["prepared_ns"], &ev["done_ns"]);
    let (a, b, c) = (
        a.as_u64().unwrap(),
        b.as_u64().unwrap(),
        c.as_u64().unwrap(),
    );
    assert!(a > 1_600_000_000_000_000_000 && a <= b && b <= c, "{ev}");
    assert!(
        std::fs::read(&disk).unwrap() == original,
        "nothing written before `write`"
    );

    vm.send("write");
    let ev = vm.event();
    assert_eq!(ev["event"], "written", "{ev}");
    assert_eq!(ev["bytes"], 2 * MIB);
    assert!(ev["secs"].as_f64().unwrap() >= 0.0);
    let now = std::fs::read(&disk).unwrap();
    assert_eq!(now.len(), original.len());
    let changed = now
        .chunks(256 * 1024)
        .zip(original.chunks(256 * 1024))
        .filter(|(x, y)| x != y)
        .count();
    assert_eq!(changed, 8, "2 MiB in 256 KiB blocks");
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "instance waits for exit"
    );
    vm.send("exit");
    assert!(vm.wait().success());
}

#[test]
fn instance_reports_failed_prepare_and_short_reads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("small");
    std::fs::write(&file, vec![1u8; 8192]).unwrap();
    let trace = dir.path().join("t");
    std::fs::write(&trace, "# image_size=8192\n0 4096\n4096 8192\n").unwrap();
    let f = file.to_str().unwrap();
    let t = trace.to_str().unwrap();

    let mut vm = Instance::start(&["--file", f, "--trace", t, "--prepare", "exit 3"]);
    assert_eq!(vm.event()["event"], "ready");
    vm.send("go");
    let ev = vm.event();
    assert_eq!(ev["event"], "error");
    assert!(ev["msg"].as_str().unwrap().contains("exit 3"), "{ev}");
    assert_eq!(vm.wait().code(), Some(1));

    let mut vm = Instance::start(&["--file", f, "--trace", t, "--concurrency", "2"]);
    assert_eq!(vm.event()["event"], "ready");
    vm.send("go");
    let ev = vm.event();
    assert_eq!(ev["event"], "error");
    let msg = ev["msg"].as_str().unwrap();
    assert!(msg.contains("short read") && msg.contains(f), "{msg}");
    assert_eq!(vm.wait().code(), Some(1));

    // EOF on stdin before `go` is a clean exit.
    let mut vm = Instance::start(&["--file", f, "--trace", t]);
    assert_eq!(vm.event()["event"], "ready");
    vm.stdin.take();
    assert!(vm.wait().success());
}
