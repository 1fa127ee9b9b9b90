//! Put throughput of chunkd, directly on the store or over gRPC.
//!
//! `cargo run --release -p chunkd --example put_bench -- MODE DURABILITY MIB CHUNK_KIB CONCURRENCY [DIR]`
//! MODE is `store` (threads calling `Store::put`) or `grpc` (an in-process
//! chunkd, clients over loopback); DURABILITY is per-put or syncfs.
//! Chunks are random and generated before the clock starts.

use std::sync::Arc;
use std::time::Instant;

use blobvirt_core::ChunkId;
use bytes::Bytes;
use futures::stream::{self, StreamExt};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let mode = a.first().map(String::as_str).unwrap_or("store").to_string();
    let durability: chunkd::Durability = a
        .get(1)
        .map(String::as_str)
        .unwrap_or("per-put")
        .parse()
        .map_err(anyhow::Error::msg)?;
    let mib: usize = a.get(2).map_or(Ok(256), |s| s.parse())?;
    let kib: usize = a.get(3).map_or(Ok(256), |s| s.parse())?;
    let conc: usize = a.get(4).map_or(Ok(16), |s| s.parse())?;
    let base = a.get(5).map(std::path::PathBuf::from);
    let t = match &base {
        Some(b) => tempfile::tempdir_in(b)?,
        None => tempfile::tempdir_in("/var/tmp")?,
    };
    let n = mib * 1024 / kib;
    let chunks: Vec<(ChunkId, Bytes)> = (0..n)
        .map(|_| {
            let mut v = vec![0u8; kib * 1024];
            rand::Rng::fill(&mut rand::thread_rng(), &mut v[..]);
            (ChunkId::of(&v), Bytes::from(v))
        })
        .collect();
    let start = Instant::now();
    match mode.as_str() {
        "store" => {
            let s = Arc::new(chunkd::Store::open_with(t.path(), "bench", durability)?);
            let chunks = Arc::new(chunks);
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let hs: Vec<_> = (0..conc)
                .map(|_| {
                    let (s, chunks, next) = (s.clone(), chunks.clone(), next.clone());
                    std::thread::spawn(move || loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((id, d)) = chunks.get(i) else { break };
                        assert!(s.put(id, d).unwrap());
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        }
        "grpc" => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(grpc(t.path(), durability, chunks, conc))?;
        }
        m => anyhow::bail!("mode {m} is unknown; use store or grpc"),
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{mode} {durability:?} {mib} MiB in {kib} KiB chunks, {conc} at a time: {secs:.2} s, {:.0} MiB/s",
        mib as f64 / secs
    );
    Ok(())
}

async fn grpc(
    dir: &std::path::Path,
    durability: chunkd::Durability,
    chunks: Vec<(ChunkId, Bytes)>,
    conc: usize,
) -> anyhow::Result<()> {
    let opts = chunkd::Opts {
        config: None,
        advertise: None,
        metrics: None,
        dir: dir.to_path_buf(),
        pool: "http://127.0.0.1:1".into(),
        listen: "127.0.0.1:0".parse()?,
        id: Some("bench".into()),
        durability,
        scrub_mbps: 0,
        scrub_interval_secs: 86400,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chunkd::run_until(opts, async move {
        let _ = rx.await;
    }));
    let addr_file = dir.join("chunkd.addr");
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            break a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let client = blobvirt_core::client::chunk_client(
        blobvirt_core::client::channel(&addr).map_err(anyhow::Error::msg)?,
    );
    let mut s = stream::iter(chunks)
        .map(|(id, data)| {
            let mut c = client.clone();
            async move {
                let req = blobvirt_core::proto::PutRequest {
                    id: Bytes::copy_from_slice(&id.0),
                    data,
                    staged: false,
                };
                c.put(req).await
            }
        })
        .buffer_unordered(conc);
    while let Some(r) = s.next().await {
        assert!(r?.into_inner().stored);
    }
    let _ = tx.send(());
    server.await??;
    Ok(())
}
