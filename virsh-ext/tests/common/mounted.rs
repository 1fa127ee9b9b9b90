//! A cluster with a mirrord mount (`cluster up --mount`) and the CLI run
//! against it: the guard stops mirrord and unmounts first, even on panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::Value;

use super::*;

/// The mirrord pid in DIR/cluster.json, without panicking (used by Drop).
pub fn recorded_mirrord(dir: &Path) -> Option<u32> {
    let s = fs::read_to_string(dir.join("cluster.json")).ok()?;
    let v: Value = serde_json::from_str(&s).ok()?;
    v["processes"]
        .as_array()?
        .iter()
        .find(|p| p["binary"] == "mirrord")?["pid"]
        .as_u64()
        .map(|p| p as u32)
}

/// True when /proc/self/mountinfo lists a mount at `p`.
pub fn mounted(p: &Path) -> bool {
    blobvirt_core::fsutil::is_mounted(p)
}

pub fn lazy_umount(p: &Path) {
    for _ in 0..8 {
        if !mounted(p) {
            return;
        }
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Runs `blobvirt args` with only the given blobvirt variables set.
pub fn cli(pool: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(blobvirt());
    c.args(args);
    for v in [
        "BLOBVIRT_POOL",
        "BLOBVIRT_CONTROL",
        "BLOBVIRT_CLUSTER_DIR",
        "BLOBVIRT_CONFIG",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    if let Some(p) = pool {
        c.env("BLOBVIRT_POOL", p);
        if let Some(f) = super::config_of(p) {
            c.env("BLOBVIRT_CONFIG", f);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run blobvirt")
}

pub fn stdout_ok(args: &[&str], o: Output) -> String {
    assert!(
        o.status.success(),
        "blobvirt {} failed ({}):\n{}\n{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A cluster with a mirrord mounted on a directory of its own temp dir.
/// Drop stops mirrord first and lazily unmounts whatever is left, then the
/// cluster's own guard stops the rest; the mount's temp dir is removed only
/// once nothing is mounted on it.
pub struct Mounted {
    pub c: Cluster,
    pub mnt: PathBuf,
    mirrords: Vec<u32>,
    mtmp: Option<tempfile::TempDir>,
}

impl Mounted {
    pub fn up(nodes: usize, replicas: u32, extra: &[&str]) -> Mounted {
        let dir = PathBuf::from(env!("CARGO_BIN_EXE_blobvirt"))
            .parent()
            .unwrap()
            .join("mirrord");
        assert!(
            dir.is_file(),
            "{} is missing: run cargo build --workspace --bins first",
            dir.display()
        );
        let mtmp = tempfile::Builder::new()
            .prefix("blobvirt-mnt-")
            .tempdir()
            .unwrap();
        let mnt = mtmp.path().canonicalize().unwrap().join("pool");
        let m = mnt.to_string_lossy().to_string();
        let mut args = vec!["--mount", &m];
        args.extend_from_slice(extra);
        // A failed `cluster up` stops and unmounts what it started itself.
        let mut g = Mounted {
            c: Cluster::up_with(nodes, replicas, &args),
            mnt,
            mirrords: Vec::new(),
            mtmp: Some(mtmp),
        };
        g.mirrord_pid();
        g
    }

    pub fn d(&self) -> String {
        self.c.dir.to_string_lossy().to_string()
    }

    /// The recorded mirrord pid (remembered for the guard).
    pub fn mirrord_pid(&mut self) -> u32 {
        let pid = self.c.pid_of("mirrord");
        if !self.mirrords.contains(&pid) {
            self.mirrords.push(pid);
        }
        pid
    }

    /// `blobvirt args --dir CLUSTER` (the control socket from cluster.json).
    pub fn run(&self, args: &[&str]) -> Output {
        let d = self.d();
        let mut a = args.to_vec();
        a.extend(["--dir", &d]);
        cli(self.c.p(), &[], &a)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        stdout_ok(args, self.run(args))
    }

    pub fn fail(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(1), "expected exit 1 from {args:?}");
        let err = String::from_utf8_lossy(&o.stderr).trim_end().to_string();
        let last = err.lines().last().unwrap_or("").to_string();
        assert!(last.starts_with("error: ") && last.contains("; "), "{err}");
        last
    }

    pub fn mirror_status(&self) -> Vec<Value> {
        let s = self.ok(&["mirror-status", "--json"]);
        serde_json::from_str::<Value>(&s)
            .expect("JSON")
            .as_array()
            .expect("an array")
            .clone()
    }

    pub fn vol_status(&self, name: &str) -> Value {
        self.mirror_status()
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not attached: {:?}", self.mirror_status()))
    }

    /// Waits (10 s) until `MOUNT/name` exists.
    pub fn wait_file(&self, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        let t = Instant::now();
        while !p.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name} never appeared in the mount"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(pid) = recorded_mirrord(&self.c.dir) {
            self.mirrords.push(pid);
        }
        // mirrord's command line always holds the mount point.
        for &pid in &self.mirrords {
            if running_in(pid, &self.mnt) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                if !wait_gone(pid, 30) {
                    sigkill(pid);
                    wait_gone(pid, 10);
                }
            }
        }
        lazy_umount(&self.mnt);
        if mounted(&self.mnt) {
            // Never delete through a live mount (unlink = delete the volume).
            std::mem::forget(self.mtmp.take());
        }
    }
}

pub fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut b);
    b
}

pub fn latest_version(c: &Cluster, name: &str) -> u64 {
    c.json(&["vol-info", name, "--json"])["latest_version"]
        .as_u64()
        .unwrap()
}
