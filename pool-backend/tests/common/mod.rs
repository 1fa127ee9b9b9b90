//! Test helpers: run the real `poold` binary as a child process (killed in
//! Drop) and talk to it over gRPC, and run chunkd nodes in this process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobvirt_core::client::{channel, pool_client};
use blobvirt_core::proto::pool_client::PoolClient;
use clap::Parser;
use tonic::transport::Channel;

/// A running poold; SIGKILLed and reaped on drop.
pub struct Poold {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
}

impl Poold {
    /// Starts poold on `dir` with `engine` and extra flags, and waits until
    /// it answers.
    pub async fn start(dir: &Path, engine: &str, extra: &[&str]) -> Poold {
        let addr_file = dir.join("poold.addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = Command::new(env!("CARGO_BIN_EXE_poold"))
            .arg("--dir")
            .arg(dir)
            .args(["--engine", engine])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start poold");
        let mut p = Poold {
            child,
            addr: String::new(),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                p.addr = a.trim().to_string();
                break;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("poold exited early: {st}");
            }
            assert!(Instant::now() < deadline, "poold did not write poold.addr");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> PoolClient<Channel> {
        pool_client(channel(&self.addr).expect("channel"))
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Poold {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a chunkd node as a task of this runtime until the returned sender
/// is dropped (or the runtime ends).
pub async fn start_chunkd(dir: &Path, pool: &str, id: &str) -> tokio::sync::oneshot::Sender<()> {
    let opts = chunkd::Opts::parse_from([
        "chunkd",
        "--dir",
        dir.to_str().unwrap(),
        "--pool",
        pool,
        "--id",
        id,
    ]);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = chunkd::run_until(opts, async move {
            let _ = rx.await;
        })
        .await;
    });
    tx
}
