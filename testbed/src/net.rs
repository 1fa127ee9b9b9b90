//! The emulated network: one namespace per node plus a server namespace,
//! each linked by a veth pair to a bridge in a switch namespace, both ends
//! shaped with `tc tbf`. Owns creating, reading the link counters, and
//! removing every namespace (and the processes and mounts in them) again.
//!
//! Names are `<PREFIX>-sw`, `<PREFIX>-srv`, `<PREFIX>-n<I>` (the bench uses
//! `bvb<RUN>`); addresses are
//! 10.201.0.1 (server) and 10.201.<I/250>.<I%250+1> (nodes) inside those
//! namespaces only; nothing is configured in the root namespace.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Link model for every node link (and the server's).
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Bits per second, each direction.
    pub rate_bps: u64,
    /// tbf queue latency in milliseconds.
    pub latency_ms: f64,
}

impl Link {
    pub fn bytes_per_sec(&self) -> f64 {
        self.rate_bps as f64 / 8.0
    }
}

pub struct Net {
    pub prefix: String,
    pub nodes: usize,
    alive: bool,
    /// ARP table limits to put back when the network is removed.
    neigh_saved: Option<[u64; 3]>,
}

const NEIGH: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

/// The kernel's ARP table is shared by all namespaces and holds at most
/// gc_thresh3 (default 1024) entries. A full mesh of N nodes needs about
/// (N+2)² of them; at N = 32 the default overflowed ("neighbor table
/// overflow"), new peers could not be resolved and their connections timed
/// out. Raises the limits for the run; returns the old ones.
fn raise_neigh_limits(nodes: usize) -> Option<[u64; 3]> {
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    let old = [read(NEIGH[0])?, read(NEIGH[1])?, read(NEIGH[2])?];
    let need = ((nodes + 2) * (nodes + 2)) as u64;
    let want = [need, 2 * need, 4 * need];
    if (0..3).all(|i| old[i] >= want[i]) {
        return None;
    }
    for i in (0..3).rev() {
        let _ = std::fs::write(NEIGH[i], old[i].max(want[i]).to_string());
    }
    Some(old)
}

/// Runs `ip ARGS`; fails with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Runs `prog ARGS`; fails with its stderr.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    pub fn sw(&self) -> String {
        format!("{}-sw", self.prefix)
    }
    pub fn srv(&self) -> String {
        format!("{}-srv", self.prefix)
    }
    /// Namespace of node `i` (0-based).
    pub fn node(&self, i: usize) -> String {
        format!("{}-n{}", self.prefix, i + 1)
    }
    pub fn srv_addr(&self) -> &'static str {
        "10.201.0.1"
    }
    pub fn node_addr(&self, i: usize) -> String {
        format!("10.201.{}.{}", 1 + i / 250, i % 250 + 1)
    }
    /// Creates the switch, the server and `nodes` node namespaces.
    pub fn create(prefix: &str, nodes: usize, link: Link) -> Result<Net> {
        if nodes == 0 || nodes > 1000 {
            bail!("node count {nodes} is out of range; use 1 to 1000");
        }
        let mut net = Net {
            prefix: prefix.to_string(),
            nodes,
            alive: true,
            neigh_saved: raise_neigh_limits(nodes),
        };
        let r = net.build(link);
        if r.is_err() {
            net.destroy();
        }
        r.map(|_| net)
    }

    fn build(&mut self, link: Link) -> Result<()> {
        let sw = self.sw();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let mut ends = vec![(self.srv(), "s0".to_string(), self.srv_addr().to_string())];
        for i in 0..self.nodes {
            ends.push((self.node(i), format!("s{}", i + 1), self.node_addr(i)));
        }
        for (ns, port, addr) in &ends {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["-n", &sw, "link", "set", port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            shape(&sw, port, link)?;
            shape(ns, "eth0", link)?;
        }
        Ok(())
    }

    /// Bytes each node sent into the switch (rx of the switch-side ends),
    /// server first: interface counters, not ours.
    pub fn sent_bytes(&self) -> Result<Vec<u64>> {
        self.port_bytes("rx")
    }

    /// Bytes the switch sent to each node (tx of the switch-side ends),
    /// server first.
    pub fn received_bytes(&self) -> Result<Vec<u64>> {
        self.port_bytes("tx")
    }

    fn port_bytes(&self, dir: &str) -> Result<Vec<u64>> {
        let out = Command::new("ip")
            .args(["-n", &self.sw(), "-s", "-j", "link", "show"])
            .output()
            .context("reading the switch's interface counters")?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing ip -j -s link output")?;
        let mut by_port = vec![0u64; self.nodes + 1];
        for l in v.as_array().into_iter().flatten() {
            let name = l["ifname"].as_str().unwrap_or("");
            let Some(i) = name.strip_prefix('s').and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            if i <= self.nodes {
                by_port[i] = l["stats64"][dir]["bytes"].as_u64().unwrap_or(0);
            }
        }
        Ok(by_port)
    }

    /// Kills every process in our namespaces, unmounts everything under
    /// `dir`, and deletes the namespaces. Safe to call twice.
    pub fn destroy(&mut self) {
        if !self.alive {
            return;
        }
        self.alive = false;
        clean_prefix(&self.prefix);
        if let Some(old) = self.neigh_saved.take() {
            for (p, v) in NEIGH.iter().zip(old) {
                let _ = std::fs::write(p, v.to_string());
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn shape(ns: &str, dev: &str, link: Link) -> Result<()> {
    // tbf needs a bucket of at least one GSO packet (64 KiB); ~2 ms of
    // traffic at the link rate, never less than 128 KiB.
    let burst = ((link.bytes_per_sec() * 0.002) as u64).max(128 << 10);
    run(
        "tc",
        &[
            "-n",
            ns,
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{}bit", link.rate_bps),
            "burst",
            &burst.to_string(),
            "latency",
            &format!("{}us", (link.latency_ms * 1000.0).round() as u64),
        ],
    )
}

/// Namespaces whose name starts with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn pids_in(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes everything a run with this name prefix left: processes in its
/// namespaces (SIGTERM, then SIGKILL after 5 s), then the namespaces.
pub fn clean_prefix(prefix: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let nss = namespaces(prefix);
    let signal_all = |sig: Signal| {
        let mut any = false;
        for ns in &nss {
            for p in pids_in(ns) {
                any = true;
                let _ = kill(Pid::from_raw(p), sig);
            }
        }
        any
    };
    if signal_all(Signal::SIGTERM) {
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(5)
            && nss.iter().any(|ns| !pids_in(ns).is_empty())
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        signal_all(Signal::SIGKILL);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for ns in &nss {
        let _ = ip(&["netns", "del", ns]);
    }
}

/// Lazily unmounts every mount at or below `dir` (deepest first).
pub fn unmount_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
}
