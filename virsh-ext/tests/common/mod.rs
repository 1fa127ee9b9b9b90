//! Shared helpers of the integration tests: a local cluster started through
//! `blobvirt cluster up` and always stopped by a Drop guard, the CLI runner
//! and process checks; `data.rs` has images, hashing and chunk accounting.
#![allow(dead_code)]

mod data;
mod mounted;
pub use data::*;
#[allow(unused_imports)]
pub use mounted::*;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// The `blobvirt` binary, after checking that poold and chunkd are beside it.
pub fn blobvirt() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_blobvirt"));
    let dir = exe.parent().expect("binary dir").to_path_buf();
    for b in ["poold", "chunkd"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: run cargo build --workspace --bins first",
            dir.join(b).display()
        );
    }
    exe
}

/// The configuration file (TLS identity) of each cluster a test started,
/// by pool URL, so a command given that URL also gets the certificate.
static CONFIGS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// The configuration file of the cluster whose pool is `pool`.
pub fn config_of(pool: &str) -> Option<PathBuf> {
    let c = CONFIGS.lock().unwrap();
    c.iter().find(|(p, _)| p == pool).map(|(_, f)| f.clone())
}

/// Runs `blobvirt args` with `pool` (if any) in BLOBVIRT_POOL, and that
/// cluster's configuration file in BLOBVIRT_CONFIG.
pub fn run(pool: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(blobvirt());
    c.args(args)
        .env_remove("BLOBVIRT_POOL")
        .env_remove("BLOBVIRT_CONFIG")
        .env_remove("RUST_LOG");
    if let Some(p) = pool {
        c.env("BLOBVIRT_POOL", p);
        if let Some(f) = config_of(p) {
            c.env("BLOBVIRT_CONFIG", f);
        }
    }
    c.output().expect("run blobvirt")
}

fn show(args: &[&str], o: &Output) -> String {
    format!(
        "blobvirt {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts success and returns stdout.
pub fn ok(pool: Option<&str>, args: &[&str]) -> String {
    let o = run(pool, args);
    assert!(o.status.success(), "expected success: {}", show(args, &o));
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

/// Asserts exit status 1 and a last stderr line `error: <sentence>` that
/// is a single sentence saying what to do (contains "; "); returns that line.
pub fn fail(pool: Option<&str>, args: &[&str]) -> String {
    let o = run(pool, args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1: {}",
        show(args, &o)
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    assert!(
        last.starts_with("error: "),
        "last stderr line is not an error: {}",
        show(args, &o)
    );
    assert!(last.contains("; "), "error does not say what to do: {last}");
    last
}

/// True when `pid` is a running (non-zombie) process whose command line
/// mentions `dir` (so a reused pid is never taken for ours).
pub fn running_in(pid: u32, dir: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    String::from_utf8_lossy(&cmd).contains(&*dir.to_string_lossy())
}

/// True while `pid` exists and is not a fully exited zombie (the same
/// rule the CLI uses, [`blobvirt_cli::procs::is_running`]).
pub fn alive(pid: u32) -> bool {
    blobvirt_cli::procs::is_running(pid)
}

pub fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits until `pid` (checked to be ours before) is gone (at most `secs`).
pub fn wait_gone(pid: u32, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Running processes whose command line mentions `dir`.
pub fn procs_in(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| pid != me && running_in(pid, dir))
        .collect()
}

/// A cluster of the test, in its own temporary directory.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    /// The cluster directory (`--dir`).
    pub dir: PathBuf,
    pub pool: String,
    seen: Mutex<BTreeSet<u32>>,
    stopped: bool,
}

impl Cluster {
    pub fn up(nodes: usize, replicas: u32) -> Cluster {
        Self::up_with(nodes, replicas, &[])
    }

    pub fn up_with(nodes: usize, replicas: u32, extra: &[&str]) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("blobvirt-it-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().join("cluster");
        let mut c = Cluster {
            tmp,
            dir,
            pool: String::new(),
            seen: Mutex::default(),
            stopped: false,
        };
        c.start(nodes, replicas, extra);
        c
    }

    /// Runs `cluster up` again in the same directory (after `down`).
    pub fn up_again(&mut self, nodes: usize, replicas: u32) {
        self.start(nodes, replicas, &[]);
    }

    fn start(&mut self, nodes: usize, replicas: u32, extra: &[&str]) {
        let d = self.dir.to_string_lossy().to_string();
        let (n, r) = (nodes.to_string(), replicas.to_string());
        let mut args = vec![
            "cluster",
            "up",
            "--nodes",
            &n,
            "--replicas",
            &r,
            "--dir",
            &d,
        ];
        args.extend_from_slice(extra);
        let o = run(None, &args);
        self.stopped = false;
        // Record the pids before asserting, so the guard stops them.
        if self.dir.join("cluster.json").exists() {
            self.pids();
        }
        assert!(o.status.success(), "cluster up failed: {}", show(&args, &o));
        let out = String::from_utf8(o.stdout).expect("utf-8");
        self.pool = out
            .trim_end()
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("BLOBVIRT_POOL="))
            .unwrap_or_else(|| panic!("last line is not BLOBVIRT_POOL=...: {out}"))
            .to_string();
        CONFIGS
            .lock()
            .unwrap()
            .push((self.pool.clone(), self.dir.join("blobvirt.toml")));
    }

    pub fn p(&self) -> Option<&str> {
        Some(&self.pool)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        ok(self.p(), args)
    }

    pub fn fail(&self, args: &[&str]) -> String {
        fail(self.p(), args)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("valid JSON")
    }

    pub fn cluster_json(&self) -> Value {
        let s = fs::read_to_string(self.dir.join("cluster.json")).expect("cluster.json");
        serde_json::from_str(&s).expect("valid cluster.json")
    }

    /// (name, pid) of every process in cluster.json; remembers the pids.
    pub fn procs(&self) -> Vec<(String, u32)> {
        let v = self.cluster_json();
        let ps: Vec<(String, u32)> = v["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().expect("name").to_string(),
                    p["pid"].as_u64().expect("pid") as u32,
                )
            })
            .collect();
        self.seen
            .lock()
            .unwrap()
            .extend(ps.iter().map(|(_, pid)| *pid));
        ps
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs().into_iter().map(|(_, p)| p).collect()
    }

    pub fn pid_of(&self, name: &str) -> u32 {
        self.procs()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .1
    }

    /// SIGKILLs the named process and waits until it is gone.
    pub fn kill9(&self, name: &str) {
        let pid = self.pid_of(name);
        assert!(
            running_in(pid, &self.dir),
            "{name} (pid {pid}) does not run"
        );
        sigkill(pid);
        assert!(wait_gone(pid, 10), "{name} survived SIGKILL");
    }

    pub fn status(&self) -> Value {
        self.json(&["cluster", "status", "--json"])
    }

    pub fn vol_list(&self) -> Value {
        self.json(&["vol-list", "--json"])
    }

    /// Exports `spec` and returns the sha256 of the exported file.
    pub fn export_sha(&self, spec: &str) -> [u8; 32] {
        let out = self
            .tmp
            .path()
            .join(format!("export-{}.raw", spec.replace('@', "_")));
        self.ok(&["vol-export", spec, out.to_str().unwrap()]);
        let h = sha256_file(&out);
        fs::remove_file(&out).unwrap();
        h
    }

    pub fn chunkd_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("chunkd-{i}"))
    }

    /// Every `chunkd-*` directory of the cluster.
    pub fn chunkd_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("chunkd-"))
            })
            .collect();
        v.sort();
        v
    }

    /// Bytes of all chunk files on all nodes, measured on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.chunkd_dirs()
            .iter()
            .flat_map(|d| chunk_files(d))
            .map(|(_, len)| len)
            .sum()
    }

    /// Stops the cluster with `cluster down` and checks that none of its
    /// processes is left.
    pub fn down(&mut self) {
        let pids = self.pids();
        let d = self.dir.to_string_lossy().to_string();
        ok(None, &["cluster", "down", "--dir", &d]);
        self.stopped = true;
        let seen: Vec<u32> = self.seen.lock().unwrap().iter().copied().collect();
        for pid in pids.iter().chain(&seen) {
            assert!(
                !running_in(*pid, &self.dir),
                "process {pid} of the cluster still runs after cluster down"
            );
        }
        assert!(!self.dir.join("cluster.json").exists());
        let left = procs_in(&self.dir);
        assert!(
            left.is_empty(),
            "processes of the cluster left after down: {left:?}"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped && self.dir.join("cluster.json").exists() {
            let _ = self.procs();
            let d = self.dir.to_string_lossy().to_string();
            let _ = run(None, &["cluster", "down", "--dir", &d, "--force"]);
        }
        let seen: Vec<u32> = self
            .seen
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for pid in seen {
            if running_in(pid, &self.dir) {
                sigkill(pid);
            }
        }
    }
}
