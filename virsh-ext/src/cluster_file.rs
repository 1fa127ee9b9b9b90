//! `DIR/cluster.json`: the record of a local cluster's processes, and
//! starting one recorded process (`Proc::start`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Instant;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

use crate::procs::{self, is_ours, spawn, wait_addr};

/// Contents of `DIR/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Pool URL, `http://127.0.0.1:PORT`.
    pub pool: String,
    pub dir: PathBuf,
    pub replicas: u32,
    pub processes: Vec<Proc>,
    /// The mirrord of `cluster up --mount`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorRec>,
}

/// Where the cluster's mirrord mounts and listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MirrorRec {
    /// Mount point: every volume is `MOUNT/NAME`.
    pub mount: PathBuf,
    /// Cache directory of the local mirrors.
    pub cache: PathBuf,
    /// Control socket.
    pub control: PathBuf,
}

/// One daemon of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    /// `poold`, `chunkd-<i>` or `mirrord`.
    pub name: String,
    /// Binary name, `poold`, `chunkd` or `mirrord`.
    pub binary: String,
    pub pid: u32,
    /// `127.0.0.1:PORT` it listens on (mirrord: its control socket).
    pub addr: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub exe: PathBuf,
    /// Arguments, without `--listen`.
    pub args: Vec<String>,
    /// Node id of a chunkd.
    #[serde(default)]
    pub node_id: Option<String>,
    /// `127.0.0.1:PORT` of its Prometheus `/metrics` (from
    /// `DIR/<binary>.metrics`); absent in files of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// The arguments that make a daemon serve `/metrics` on a free loopback
/// port; it writes the bound address to `DIR/<binary>.metrics`.
pub const METRICS_ARGS: [&str; 2] = ["--metrics", "127.0.0.1:0"];

impl Proc {
    pub fn running(&self) -> bool {
        is_ours(self.pid, &self.binary, &self.dir)
    }

    fn addr_file(&self) -> PathBuf {
        self.dir.join(format!("{}.addr", self.binary))
    }

    /// Reads the metrics address the daemon wrote at startup (before its
    /// address file or ready line), when it was started with `--metrics`.
    pub fn read_metrics(&mut self) {
        self.metrics = None;
        if self.args.iter().any(|a| a == METRICS_ARGS[0]) {
            let f = self.dir.join(format!("{}.metrics", self.binary));
            self.metrics = fs::read_to_string(f)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
        }
    }

    /// Starts it on `listen` and waits for its address file (a daemon that
    /// listens on TCP; mirrord starts with `mirror::start`).
    pub fn start(&mut self, listen: &str, deadline: Instant) -> Result<Child> {
        fs::create_dir_all(&self.dir).map_err(|e| {
            anyhow!(
                "cannot create the directory {} of {}: {e}; remove what is in the way or pick another --dir",
                self.dir.display(),
                self.name
            )
        })?;
        let _ = fs::remove_file(self.addr_file());
        let mut args = self.args.clone();
        args.extend(["--listen".to_string(), listen.to_string()]);
        let mut child = spawn(&self.exe, &args, &self.log)?;
        self.pid = child.id();
        match wait_addr(
            &self.addr_file(),
            &mut child,
            &self.name,
            &self.log,
            deadline,
        ) {
            Ok(a) => {
                self.addr = a;
                self.read_metrics();
                Ok(child)
            }
            Err(e) => {
                procs::stop_children(std::slice::from_mut(&mut child));
                Err(e)
            }
        }
    }
}

pub fn cluster_file(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

pub fn load(dir: &Path) -> Result<ClusterFile> {
    let p = cluster_file(dir);
    let s = fs::read_to_string(&p).map_err(|_| {
        anyhow!(
            "no cluster is recorded in {} ({} is missing); start one with blobvirt cluster up --dir {}",
            dir.display(),
            p.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&s).map_err(|e| {
        anyhow!(
            "{} is not a valid cluster file ({e}); remove it and start the cluster again",
            p.display()
        )
    })
}

pub fn save(c: &ClusterFile) -> Result<()> {
    procs::write_atomic(
        &cluster_file(&c.dir),
        serde_json::to_string_pretty(c)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_file_without_metrics_addresses_still_loads() {
        let old = r#"{"pool":"http://127.0.0.1:1","dir":"/d","replicas":1,"processes":[
            {"name":"poold","binary":"poold","pid":7,"addr":"127.0.0.1:1","dir":"/d/poold",
             "log":"/d/logs/poold.log","exe":"/bin/poold","args":[]}]}"#;
        let c: ClusterFile = serde_json::from_str(old).unwrap();
        assert_eq!(c.processes[0].metrics, None);
        let mut p = c.processes[0].clone();
        p.metrics = Some("127.0.0.1:2".into());
        let back = serde_json::to_string(&p).unwrap();
        assert!(back.contains(r#""metrics":"127.0.0.1:2""#), "{back}");
    }
}
