//! Starts and stops a local cluster through the real `blobvirt` CLI, and
//! reads the daemons' memory from /proc.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Cluster {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub pool: String,
}

impl Cluster {
    /// `blobvirt cluster up` in `dir` (`--no-tls` unless `tls`); this process
    /// takes the cluster's TLS identity for its own connections.
    pub fn up(bin: &Path, dir: &Path, nodes: usize, replicas: usize, tls: bool) -> Result<Cluster> {
        let mut cmd = Command::new(bin.join("blobvirt"));
        cmd.args([
            "cluster",
            "up",
            "--nodes",
            &nodes.to_string(),
            "--replicas",
            &replicas.to_string(),
            "--dir",
        ])
        .arg(dir);
        if !tls {
            cmd.arg("--no-tls");
        }
        let out = cmd.output().context("running blobvirt cluster up")?;
        if !out.status.success() {
            bail!(
                "cluster up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pool = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("BLOBVIRT_POOL="))
            .context("cluster up did not print BLOBVIRT_POOL=")?
            .to_string();
        let config = dir.join("blobvirt.toml");
        let cfg = blobvirt_core::config::Config::load(&config)?;
        blobvirt_core::tls::install_from(&cfg)?;
        Ok(Cluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            pool,
        })
    }

    /// Runs `blobvirt ARGS` against this cluster; fails on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.bin.join("blobvirt"))
            .args(args)
            .env("BLOBVIRT_POOL", &self.pool)
            .env("BLOBVIRT_CONFIG", self.dir.join("blobvirt.toml"))
            .output()
            .with_context(|| format!("running blobvirt {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "blobvirt {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (name, pid) of every daemon listed in cluster.json.
    pub fn pids(&self) -> Result<Vec<(String, u32)>> {
        let text = std::fs::read_to_string(self.dir.join("cluster.json"))
            .context("reading cluster.json")?;
        let v: serde_json::Value = serde_json::from_str(&text).context("parsing cluster.json")?;
        let mut out = Vec::new();
        collect_pids(&v, &mut out);
        Ok(out)
    }
}

fn collect_pids(v: &serde_json::Value, out: &mut Vec<(String, u32)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(pid), Some(name)) = (
                m.get("pid").and_then(|p| p.as_u64()),
                m.get("name").and_then(|n| n.as_str()),
            ) {
                out.push((name.to_string(), pid as u32));
            }
            m.values().for_each(|x| collect_pids(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_pids(x, out)),
        _ => {}
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("blobvirt"))
            .args(["cluster", "down", "--force", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

/// (VmRSS, VmHWM) of a process in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

impl SuiteOpts {
    /// Empties the work directory `dir` and starts the suite's cluster in
    /// it; returns the binaries' directory and the cluster.
    pub fn start(&self, dir: &Path) -> Result<(PathBuf, Cluster)> {
        let bin = match self.bin.clone() {
            Some(b) => b,
            None => std::env::current_exe()?
                .parent()
                .context("finding the directory of this binary")?
                .to_path_buf(),
        };
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the work directory {}", dir.display()))?;
        let cluster = Cluster::up(
            &bin,
            &dir.join("cluster"),
            self.nodes,
            self.replicas,
            !self.no_tls,
        )?;
        Ok((bin, cluster))
    }
}

/// The options the `repo` and `mirror` suites share (each adds its own
/// work directory).
#[derive(clap::Args)]
pub struct SuiteOpts {
    /// Runs per measurement.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Size of the image or volume measured, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// chunkd nodes of the local cluster.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Copies of every chunk.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Directory holding the blobvirt, poold, chunkd and mirrord binaries
    /// (default: next to this binary).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Run the cluster without TLS (plain HTTP/2), to measure what TLS costs.
    #[arg(long)]
    pub no_tls: bool,
}
