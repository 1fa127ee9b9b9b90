//! The `blobvirt` CLI as the tests run it, and a local cluster started
//! with `blobvirt cluster up` in a temporary directory of its own, always
//! stopped by its Drop guard (`cluster down --force`, then SIGKILL of any
//! process it ever recorded that still runs in its directory).
//!
//! Every command runs without the blobvirt variables of the test's own
//! environment; given a pool URL it gets `BLOBVIRT_POOL` and, when a
//! cluster of this test binary serves that pool, that cluster's
//! configuration file (its TLS identity) in `BLOBVIRT_CONFIG`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

use super::bins::blobvirt;
use super::data::{chunk_files, sha256_file};
use super::{show, tempdir};
use crate::proc::{procs_in, running_in, sigkill, wait_gone};

/// The variables a command must not inherit from the test's environment.
const VARS: [&str; 5] = [
    "BLOBVIRT_POOL",
    "BLOBVIRT_CONTROL",
    "BLOBVIRT_CLUSTER_DIR",
    "BLOBVIRT_CONFIG",
    "RUST_LOG",
];

/// The configuration file (TLS identity) of each cluster a test started,
/// by pool URL, so a command given that URL also gets the certificate.
static CONFIGS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// Registers `config` as the configuration file of the cluster at `pool`.
pub fn register_config(pool: &str, config: &Path) {
    CONFIGS
        .lock()
        .unwrap()
        .push((pool.to_string(), config.to_path_buf()));
}

/// The configuration file of the cluster whose pool is `pool`.
pub fn config_of(pool: &str) -> Option<PathBuf> {
    let c = CONFIGS.lock().unwrap();
    c.iter().find(|(p, _)| p == pool).map(|(_, f)| f.clone())
}

/// `blobvirt` without any blobvirt variable of the test's environment.
pub fn command() -> Command {
    let mut c = Command::new(blobvirt());
    for v in VARS {
        c.env_remove(v);
    }
    c
}

/// Runs `blobvirt args` with `pool` (if any) in BLOBVIRT_POOL and that
/// cluster's configuration file in BLOBVIRT_CONFIG, plus `env`.
pub fn cli(pool: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = command();
    c.args(args);
    if let Some(p) = pool {
        c.env("BLOBVIRT_POOL", p);
        if let Some(f) = config_of(p) {
            c.env("BLOBVIRT_CONFIG", f);
        }
    }
    c.envs(env.iter().copied());
    c.output().expect("run blobvirt")
}

/// [`cli`] without extra variables.
pub fn run(pool: Option<&str>, args: &[&str]) -> Output {
    cli(pool, &[], args)
}

fn what(args: &[&str]) -> String {
    format!("blobvirt {}", args.join(" "))
}

/// Asserts that `blobvirt args` succeeded; returns its stdout.
pub fn stdout_ok(args: &[&str], o: Output) -> String {
    assert!(
        o.status.success(),
        "expected success: {}",
        show(&what(args), &o)
    );
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

/// Asserts that `blobvirt args` exited 1 with a last stderr line `error:
/// <sentence>` that says what to do (contains "; "); returns that line.
pub fn stderr_fail(args: &[&str], o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1: {}",
        show(&what(args), o)
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    assert!(
        last.starts_with("error: "),
        "last stderr line is not an error: {}",
        show(&what(args), o)
    );
    assert!(last.contains("; "), "error does not say what to do: {last}");
    last
}

/// Runs `blobvirt args`, asserts success and returns stdout.
pub fn ok(pool: Option<&str>, args: &[&str]) -> String {
    stdout_ok(args, run(pool, args))
}

/// Runs `blobvirt args` and asserts a one-sentence failure ([`stderr_fail`]).
pub fn fail(pool: Option<&str>, args: &[&str]) -> String {
    stderr_fail(args, &run(pool, args))
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

    /// `cluster up` with `extra` flags.
    pub fn up_with(nodes: usize, replicas: u32, extra: &[&str]) -> Cluster {
        let tmp = tempdir("it");
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
        let out = stdout_ok(&args, o);
        self.pool = out
            .trim_end()
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("BLOBVIRT_POOL="))
            .unwrap_or_else(|| panic!("last line is not BLOBVIRT_POOL=...: {out}"))
            .to_string();
        register_config(&self.pool, &self.dir.join("blobvirt.toml"));
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

    /// The latest version of volume `name` (`vol-info --json`).
    pub fn latest_version(&self, name: &str) -> u64 {
        self.json(&["vol-info", name, "--json"])["latest_version"]
            .as_u64()
            .expect("latest_version")
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
            .map(|c| c.len)
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
