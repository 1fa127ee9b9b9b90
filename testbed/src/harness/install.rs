//! Emulated hosts ([`crate::Hosts`]) set up the way README.md "Install on
//! a cluster" says: a CA on host 1 and a certificate per host copied to
//! it, the daemons started with the exact command line of their systemd
//! unit's `ExecStart` (there is no systemd here; only the binaries'
//! directory differs), etcd members from `packaging/etcd/etcd.env`, and
//! the `blobvirt` CLI run on a host with that host's configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{bins, blobvirt, wait_until};
use crate::proc::Daemon;
use crate::{Host, Hosts};

fn packaging(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(rel)
}

/// The unit's `ExecStart` command line, with the binary taken from the
/// build instead of /usr/bin.
pub fn exec_start(unit: &str) -> (PathBuf, Vec<String>) {
    let path = packaging("systemd").join(unit);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
    let mut words = line.split_whitespace().map(str::to_string);
    let exe = PathBuf::from(words.next().unwrap());
    let built = bins::bin_dir().join(exe.file_name().unwrap());
    assert!(built.is_file(), "{} is not built", built.display());
    (built, words.collect())
}

/// Starts `unit`'s daemon on `h`, logging to `log_dir/<host>-<unit>.log`.
pub fn start(h: &Host, unit: &str, log_dir: &Path) -> Daemon {
    let (exe, args) = exec_start(unit);
    let mut c = h.cmd(&exe);
    c.args(&args)
        .env_remove("BLOBVIRT_POOL")
        .env_remove("BLOBVIRT_CONFIG");
    let name = format!("{unit} on {}", h.name);
    Daemon::spawn(&name, c, &log_dir.join(format!("{}-{unit}.log", h.name))).unwrap()
}

/// `blobvirt ARGS` on host `h` (which reads the host's own config file):
/// its stdout, or its stderr as the error.
pub fn try_cli(h: &Host, args: &[&str]) -> anyhow::Result<String> {
    let mut c = h.cmd(blobvirt());
    for v in [
        "BLOBVIRT_POOL",
        "BLOBVIRT_CONFIG",
        "BLOBVIRT_CLUSTER_DIR",
        "BLOBVIRT_CONTROL",
    ] {
        c.env_remove(v);
    }
    c.args(args);
    crate::proc::run_ok(c, &format!("blobvirt {} on {}", args.join(" "), h.name))
}

/// [`try_cli`] that must succeed.
pub fn cli(h: &Host, args: &[&str]) -> String {
    try_cli(h, args).unwrap()
}

/// Waits up to 30 s for `f`; panics naming `what`.
pub fn wait(what: &str, f: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(30), f),
        "{what} did not happen within 30 s"
    );
}

/// The CA on host 1 (`blobvirt ca init`), a certificate per host for its
/// address, copied to that host as scp would: `/etc/blobvirt/tls/ca.pem`,
/// `<host>.pem` and `<host>.key`. The CA key stays on host 1.
pub fn issue_certs(hosts: &Hosts) {
    let h1 = hosts.host(0);
    cli(h1, &["ca", "init"]);
    cli(h1, &["ca", "issue", &h1.name, "--ip", &h1.addr]);
    for h in &hosts.hosts[1..] {
        let out = format!("/var/lib/blobvirt/certs/{}", h.name);
        cli(
            h1,
            &["ca", "issue", &h.name, "--ip", &h.addr, "--out", &out],
        );
        let tls = h.path("/etc/blobvirt/tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::copy(h1.path("/etc/blobvirt/tls/ca.pem"), tls.join("ca.pem")).unwrap();
        for ext in ["pem", "key"] {
            let f = format!("{}.{ext}", h.name);
            std::fs::copy(h1.path(&out).join(&f), tls.join(&f)).unwrap();
        }
    }
    assert!(
        !hosts.host(1).path("/etc/blobvirt/tls/ca.key").exists(),
        "the CA key stays on host 1"
    );
}

/// `n` emulated hosts with certificates (see [`issue_certs`]), 1 Gbit/s
/// links of 0.2 ms, and a log directory; on drop the hosts go first (their
/// processes and mounts), then the logs are shown if the test failed, then
/// the directory.
pub struct Bed {
    pub hosts: Hosts,
    pub logs: PathBuf,
    _show: LogsOnPanic,
    _tmp: tempfile::TempDir,
}

impl Bed {
    /// `tag` names the temporary directory, `ns` (short) the namespaces.
    pub fn new(tag: &str, ns: &str, n: usize) -> Bed {
        let tmp = super::tempdir(tag);
        let link = crate::Link {
            rate_bps: 1_000_000_000,
            latency_ms: 0.2,
        };
        let hosts = Hosts::create(&format!("{ns}{}", std::process::id()), n, link, tmp.path())
            .expect("creating the emulated hosts");
        issue_certs(&hosts);
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).expect("log directory");
        Bed {
            hosts,
            _show: LogsOnPanic(logs.clone()),
            logs,
            _tmp: tmp,
        }
    }
}

/// Host `h`'s `/etc/blobvirt/blobvirt.toml` as README.md's template has
/// it: every host in `poolds` as a pool endpoint, and poold on etcd with
/// `etcd` as the members when that is not empty.
pub fn config(h: &Host, poolds: &[&Host], etcd: &[&Host]) -> String {
    let list = |port: u16, hs: &[&Host]| {
        hs.iter()
            .map(|x| format!("\"https://{}:{port}\"", x.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let engine = if etcd.is_empty() {
        String::new()
    } else {
        format!(
            "engine = \"etcd\"\netcd_endpoints = [{}]\nelection_ttl_secs = 5\n",
            list(2379, etcd)
        )
    };
    format!(
        r#"[cluster]
pool = [{pool}]
replicas = 2

[tls]
ca = "/etc/blobvirt/tls/ca.pem"
cert = "/etc/blobvirt/tls/{name}.pem"
key = "/etc/blobvirt/tls/{name}.key"

[poold]
listen = "0.0.0.0:7000"
{engine}
[chunkd]
listen = "0.0.0.0:7001"
advertise = "{addr}:7001"
node_id = "{name}"

[mirrord]
control = "/run/blobvirt/mirrord.sock"
"#,
        pool = list(7000, poolds),
        addr = h.addr,
        name = h.name
    )
}

/// A blobvirt cluster on every host of `bed`, for the libvirt tests across
/// hosts: poold on host 1; chunkd, mirrord (its mount at
/// `/var/lib/blobvirt/pool`) and a libvirtd of its own on every host; the
/// libvirt pool on the mount and the hook on each (`blobvirt
/// pool-define`). The daemons stop when the guards drop (the libvirtds
/// and their QEMUs with the hosts).
pub fn cluster_with_libvirt(bed: &Bed) -> Vec<Daemon> {
    let (hosts, logs) = (&bed.hosts, &bed.logs);
    let h1 = hosts.host(0);
    for h in &hosts.hosts {
        std::fs::write(h.path("/etc/blobvirt/blobvirt.toml"), config(h, &[h1], &[])).unwrap();
    }
    let mut daemons = vec![start(h1, "blobvirt-poold.service", logs)];
    for h in &hosts.hosts {
        daemons.push(start(h, "blobvirt-chunkd.service", logs));
    }
    let n = hosts.hosts.len();
    wait("every chunkd registered", || {
        try_cli(h1, &["cluster", "status", "--json"])
            .ok()
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
            .is_some_and(|v| v["nodes_alive"] == n)
    });
    for h in &hosts.hosts {
        daemons.push(start(h, "blobvirt-mirrord.service", logs));
        wait("mirrord's control socket", || {
            h.path("/run/blobvirt/mirrord.sock").exists()
        });
        h.start_libvirt().expect("libvirtd in the host");
        // libvirtd rereads its hooks when pool-define installs the hook.
        cli(
            h,
            &[
                "pool-define",
                "--mount",
                "/var/lib/blobvirt/pool",
                "--control",
                "/run/blobvirt/mirrord.sock",
            ],
        );
    }
    daemons
}

/// `packaging/etcd/etcd.env` for host `h` of a cluster of `members`:
/// the `ETCD_*` variables with `@NAME@`, `@ADDR@` and `@CLUSTER@` filled.
pub fn etcd_env(h: &Host, members: &[&Host]) -> Vec<(String, String)> {
    let path = packaging("etcd/etcd.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let cluster = members
        .iter()
        .map(|m| format!("{}=https://{}:2380", m.name, m.addr))
        .collect::<Vec<_>>()
        .join(",");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: {l:?} is not KEY=VALUE", path.display()));
            let v = v
                .replace("@NAME@", &h.name)
                .replace("@ADDR@", &h.addr)
                .replace("@CLUSTER@", &cluster);
            (k.to_string(), v)
        })
        .collect()
}

/// Starts the etcd member of host `h` (`/usr/bin/etcd` with the
/// environment of [`etcd_env`], as Debian's unit runs it from
/// `/etc/default/etcd`).
pub fn start_etcd(h: &Host, members: &[&Host], log_dir: &Path) -> Daemon {
    let mut c = h.cmd(super::etcd::ETCD);
    c.envs(etcd_env(h, members));
    let name = format!("etcd on {}", h.name);
    Daemon::spawn(&name, c, &log_dir.join(format!("{}-etcd.log", h.name))).unwrap()
}

/// Prints the last lines of every log in its directory when the test
/// fails, or always with `BLOBVIRT_SHOW_LOGS=1` (drop it after the
/// daemons and before the directory goes).
pub struct LogsOnPanic(pub PathBuf);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        let asked = std::env::var("BLOBVIRT_SHOW_LOGS").is_ok_and(|v| v == "1");
        if !std::thread::panicking() && !asked {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&self.0) else {
            return;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let keep = if asked { 400 } else { 25 };
            let tail = &lines[lines.len().saturating_sub(keep)..];
            eprintln!(
                "==== {} (last {} lines)\n{}",
                f.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}
