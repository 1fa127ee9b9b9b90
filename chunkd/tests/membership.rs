//! Membership against the real poold (run in-process from `pool_backend`,
//! each instance on its own runtime so stopping it closes every connection):
//! chunkd started before poold registers once poold comes up, and registers
//! again with a poold that was replaced by one that never heard of it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobvirt_core::client::{channel, pool_client};
use blobvirt_core::proto::NodesRequest;
use clap::Parser;

/// A poold on its own runtime and thread; dropping it stops it hard.
struct Poold {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poold {
    fn start(dir: &Path, port: u16) -> Poold {
        let opts = pool_backend::Opts::parse_from([
            "poold".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--listen".as_ref(),
            format!("127.0.0.1:{port}").as_ref(),
            "--heartbeat-timeout-ms".as_ref(),
            "3000".as_ref(),
        ] as [&std::ffi::OsStr; 7]);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.spawn(async move {
                if let Err(e) = pool_backend::run(opts).await {
                    eprintln!("poold: {e:#}");
                }
            });
            let _ = rx.recv();
            rt.shutdown_background();
        });
        Poold {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Poold {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Chunkd(Child);

impl Drop for Chunkd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until poold lists node `id` at `addr` as alive.
async fn wait_registered(port: u16, id: &str, addr: &str) -> Duration {
    let start = Instant::now();
    loop {
        let mut c = pool_client(channel(&format!("127.0.0.1:{port}")).unwrap());
        if let Ok(r) = c.nodes(NodesRequest {}).await {
            let nodes = r.into_inner().nodes;
            if nodes
                .iter()
                .any(|n| n.id == id && n.addr == addr && n.alive)
            {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chunkd {id} did not register with poold on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_when_poold_comes_up_and_again_after_poold_is_replaced() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let cdir = t.path().join("chunkd");
    let mut child = Chunkd(
        Command::new(env!("CARGO_BIN_EXE_chunkd"))
            .arg("--dir")
            .arg(&cdir)
            .args(["--pool", &format!("http://127.0.0.1:{port}"), "--id", "m1"])
            .env_remove("BLOBVIRT_POOL")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(cdir.join("chunkd.addr")) {
            break a;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "chunkd exited early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // poold is down for a while; chunkd keeps retrying and keeps running.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "chunkd exited while poold was down"
    );

    let first = Poold::start(&t.path().join("pool1"), port);
    let took = wait_registered(port, "m1", &addr).await;
    assert!(took < Duration::from_secs(5), "registration took {took:?}");
    drop(first);

    // A new poold with empty metadata on the same port: chunkd's heartbeat
    // fails or is answered known=false, and it registers again.
    let _second = Poold::start(&t.path().join("pool2"), port);
    wait_registered(port, "m1", &addr).await;

    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "chunkd ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}
