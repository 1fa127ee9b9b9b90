//! Starts the real `chunkd` binary against a pool URL nobody listens on and
//! drives it over gRPC: it must serve chunks while poold is down, and exit 0
//! on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobvirt_core::client::{channel, chunk_client};
use blobvirt_core::proto::chunk_store_client::ChunkStoreClient;
use blobvirt_core::proto::{DeleteRequest, GetRequest, HasRequest, PutRequest, StatsRequest};
use blobvirt_core::ChunkId;
use bytes::Bytes;
use tonic::transport::Channel;
use tonic::Code;

/// A running chunkd, killed when dropped.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, id: Option<&str>) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chunkd"));
        cmd.arg("--dir")
            .arg(dir)
            .args(["--pool", &dead_pool_url(), "--listen", "127.0.0.1:0"])
            .env_remove("BLOBVIRT_POOL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(id) = id {
            cmd.args(["--id", id]);
        }
        let child = cmd.spawn().expect("start chunkd");
        Daemon {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    /// Waits for `DIR/chunkd.addr` and connects to it.
    async fn client(&mut self) -> ChunkStoreClient<Channel> {
        let path = self.dir.join("chunkd.addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&path) {
                break a;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("chunkd exited early with {st}");
            }
            assert!(Instant::now() < deadline, "chunkd wrote no address file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(addr.starts_with("127.0.0.1:"), "address {addr}");
        assert!(!addr.ends_with(":0"), "the real port, not 0: {addr}");
        chunk_client(channel(&addr).unwrap())
    }

    /// Sends SIGTERM and returns the exit status. Async so that the test's
    /// runtime keeps driving client connections (which must see GOAWAY).
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chunkd did not exit within 20 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A URL on a port that was free a moment ago: nobody answers there.
fn dead_pool_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn chunk(seed: u8, len: usize) -> (ChunkId, Bytes) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect();
    (ChunkId::of(&data), Bytes::from(data))
}

fn put(id: &ChunkId, data: &Bytes) -> PutRequest {
    PutRequest {
        id: Bytes::copy_from_slice(&id.0),
        data: data.clone(),
        staged: false,
    }
}

fn ids(v: &[ChunkId]) -> Vec<Bytes> {
    v.iter().map(|i| Bytes::copy_from_slice(&i.0)).collect()
}

#[tokio::test]
async fn serves_chunks_while_poold_is_down_and_exits_0_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(t.path(), Some("it-node"));
    let mut c = d.client().await;

    let (a, da) = chunk(1, 256 * 1024);
    let (b, db) = chunk(2, 4 * 1024 * 1024); // above tonic's default 4 MiB limit
    let (absent, _) = chunk(3, 10);
    assert!(c.put(put(&a, &da)).await.unwrap().into_inner().stored);
    assert!(!c.put(put(&a, &da)).await.unwrap().into_inner().stored);
    assert!(c.put(put(&b, &db)).await.unwrap().into_inner().stored);

    let wrong = c.put(put(&absent, &da)).await.unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    let short = PutRequest {
        id: Bytes::from_static(&[1, 2, 3]),
        data: da.clone(),
        staged: false,
    };
    assert_eq!(
        c.put(short).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let got = c
        .get(GetRequest {
            id: ids(&[a])[0].clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().data, da);
    let got = c
        .get(GetRequest {
            id: ids(&[b])[0].clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().data, db);
    let miss = c
        .get(GetRequest {
            id: ids(&[absent])[0].clone(),
        })
        .await;
    assert_eq!(miss.unwrap_err().code(), Code::NotFound);

    let has = c
        .has(HasRequest {
            ids: ids(&[b, absent, a]),
        })
        .await
        .unwrap();
    assert_eq!(has.into_inner().present, vec![true, false, true]);

    let st = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(st.node_id, "it-node");
    assert_eq!((st.chunks, st.bytes), (2, (da.len() + db.len()) as u64));
    assert!(st.total_bytes > 0 && st.free_bytes > 0 && st.free_bytes <= st.total_bytes);

    // Corrupt chunk a on disk: chunkd must refuse to serve it.
    let hex = a.to_hex();
    let at = blobvirt_core::pack::find(&t.path().join("packs"), &a)
        .unwrap()
        .expect("chunk a is in a segment");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options().write(true).open(&at.file).unwrap();
        f.write_all_at(&[0x5a], at.data_at + 1234).unwrap();
    }
    let err = c
        .get(GetRequest {
            id: ids(&[a])[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(
        err.message(),
        format!("chunk {hex} on chunkd node it-node is corrupt; it has been quarantined")
    );
    assert_eq!(
        std::fs::read_dir(t.path().join("corrupt")).unwrap().count(),
        1
    );
    let st = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!((st.chunks, st.bytes), (1, db.len() as u64));

    let del = c
        .delete(DeleteRequest {
            ids: ids(&[b, absent, a]),
        })
        .await
        .unwrap();
    assert_eq!(del.into_inner().deleted, 1);
    let has = c.has(HasRequest { ids: ids(&[a, b]) }).await.unwrap();
    assert_eq!(has.into_inner().present, vec![false, false]);
    assert_eq!(
        c.stats(StatsRequest {}).await.unwrap().into_inner().chunks,
        0
    );

    let started = Instant::now();
    let status = d.terminate().await;
    assert_eq!(status.code(), Some(0), "graceful exit: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for an idle client: {:?}",
        started.elapsed()
    );
    assert!(
        !t.path().join("chunkd.addr").exists(),
        "address file removed"
    );
    drop(c);
    assert!(std::fs::read_dir(t.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn node_id_and_chunks_survive_a_restart() {
    let t = tempfile::tempdir().unwrap();
    let (a, da) = chunk(7, 100_000);
    let first_id = {
        let mut d = Daemon::start(t.path(), None);
        let mut c = d.client().await;
        assert!(c.put(put(&a, &da)).await.unwrap().into_inner().stored);
        let id = c.stats(StatsRequest {}).await.unwrap().into_inner().node_id;
        drop(c);
        assert_eq!(d.terminate().await.code(), Some(0));
        id
    };
    let persisted = std::fs::read_to_string(t.path().join("node-id")).unwrap();
    assert_eq!(persisted.trim(), first_id);
    assert!(
        first_id.starts_with("node-") && first_id.len() == 13,
        "{first_id}"
    );

    let mut d = Daemon::start(t.path(), None);
    let mut c = d.client().await;
    let st = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(st.node_id, first_id);
    assert_eq!((st.chunks, st.bytes), (1, da.len() as u64));
    let got = c
        .get(GetRequest {
            id: ids(&[a])[0].clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().data, da);
}

#[test]
fn a_second_chunkd_on_the_same_dir_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut d = Daemon::start(t.path(), Some("one"));
    rt.block_on(d.client());
    let out = Command::new(env!("CARGO_BIN_EXE_chunkd"))
        .arg("--dir")
        .arg(t.path())
        .args(["--pool", &dead_pool_url(), "--id", "two"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another chunkd already uses"), "{err}");
    assert_eq!(rt.block_on(d.terminate()).code(), Some(0));
}
