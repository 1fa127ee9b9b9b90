//! etcd members for the tests of poold's etcd engine: one cluster of N
//! members of Debian's `etcd-server` (`/usr/bin/etcd`), on loopback ports
//! picked free at start, with the limits blobvirt asks for
//! (`--max-txn-ops 8192 --max-request-bytes 8388608`). Each member's data
//! and log are in the cluster's temporary directory; Drop SIGKILLs the
//! members this started (by their handles) and removes it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::proc::{kill, wait_until};

/// The etcd binary the tests run.
pub const ETCD: &str = "/usr/bin/etcd";

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

fn free_ports(n: usize) -> Vec<u16> {
    // Keep every listener until all are picked, so no port comes twice.
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// True when `GET /health` on the client port says healthy.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> EtcdCluster {
        assert!(
            Path::new(ETCD).is_file(),
            "{ETCD} is missing: run bash scripts/install-deps.sh (package etcd-server)"
        );
        let dir = tempfile::Builder::new()
            .prefix("blobvirt-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let mut c = EtcdCluster { dir, members };
        for i in 0..n {
            c.spawn(i, "new");
        }
        for i in 0..n {
            c.wait_healthy(i);
        }
        c
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// The log file of member `i`.
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .expect("etcd log");
        let (name, client, peer) = {
            let m = &self.members[i];
            (m.name.clone(), m.client, m.peer)
        };
        let child = Command::new(ETCD)
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &self.initial_cluster(),
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                &format!("blobvirt-test-{}", std::process::id()),
                "--max-txn-ops",
                "8192",
                "--max-request-bytes",
                "8388608",
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention",
                "10m",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {ETCD}: {e}"));
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let port = self.members[i].client;
        assert!(
            wait_until(Duration::from_secs(30), || healthy(port)),
            "etcd member {} did not get healthy: {}",
            self.members[i].name,
            std::fs::read_to_string(self.log(i)).unwrap_or_default()
        );
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The endpoints joined by commas (poold's `--etcd-endpoints`).
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            kill(&mut c);
        }
    }

    /// Restarts member `i` (killed before) on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "existing");
        self.wait_healthy(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
