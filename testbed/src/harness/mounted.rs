//! A local cluster with a mirrord mount (`cluster up --mount`) and the CLI
//! run against it: the guard stops mirrord and unmounts first, even on
//! panic, then the cluster's own guard stops the rest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use super::bins::require;
use super::cli::{cli, stderr_fail, stdout_ok, Cluster};
use super::{tempdir, wait_path};
use crate::proc::{is_mounted, lazy_umount, running_in, terminate_pid};

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
    /// `cluster up --mount MNT EXTRA` with `nodes` nodes.
    pub fn up(nodes: usize, replicas: u32, extra: &[&str]) -> Mounted {
        require(&["mirrord"]);
        let mtmp = tempdir("mnt");
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

    /// Asserts a one-sentence failure ([`stderr_fail`]); returns its line.
    pub fn fail(&self, args: &[&str]) -> String {
        stderr_fail(args, &self.run(args))
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
        wait_path(&self.mnt.join(name), 10, "the mount")
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
                terminate_pid(pid, Duration::from_secs(30));
            }
        }
        lazy_umount(&self.mnt);
        if is_mounted(&self.mnt) {
            // Never delete through a live mount (unlink = delete the volume).
            std::mem::forget(self.mtmp.take());
        }
    }
}
