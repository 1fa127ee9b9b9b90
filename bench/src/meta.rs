//! The metadata suite (issue 11): poold on etcd (3 members on loopback,
//! Debian's etcd-server) against poold on redb, in the same run and
//! alternately: the metadata of an import (one publish of every chunk of a
//! 2 GiB volume), a Resolve of the whole volume, a publish of 16 changed
//! chunks into it, a publish rewriting every chunk, and the delete of the
//! volume (its three versions). Only poold runs: a
//! publish names chunks, it does not move their bytes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rand::{Rng, SeedableRng};

use blobvirt_core::client::{channel, pool_client};
use blobvirt_core::proto as pb;
use blobvirt_core::proto::pool_client::PoolClient;
use blobvirt_core::ChunkId;
use testbed::harness::etcd::EtcdCluster;
use testbed::proc::{wait_file, Daemon};

use crate::stats::summarize;

#[derive(clap::Args)]
pub struct Opts {
    /// Runs per measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Size of the volume, in MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Directory holding the poold binary (default: next to this binary).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Work directory.
    #[arg(long, default_value = "/var/tmp/blobvirt-bench-meta")]
    dir: PathBuf,
}

const CS: u32 = 256 * 1024;

fn id(seed: u64) -> Bytes {
    Bytes::copy_from_slice(&ChunkId::of(&seed.to_le_bytes()).0)
}

/// Times of one run on one engine, in ms.
#[derive(Default, Clone)]
struct Run {
    import: f64,
    resolve: f64,
    publish16: f64,
    rewrite: f64,
    delete: f64,
}

async fn one_run(
    p: &mut PoolClient<blobvirt_core::client::PoolChannel>,
    size: u64,
    seed: u64,
) -> Result<Run> {
    let n = size / CS as u64;
    let name = format!("meta-{seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let all: Vec<pb::ChunkChange> = (0..n)
        .map(|i| pb::ChunkChange {
            index: i,
            id: id(seed << 32 | i),
        })
        .collect();
    let mut req = pb::PublishRequest {
        name: name.clone(),
        create: true,
        chunk_size: CS,
        size,
        changes: all,
        ..Default::default()
    };
    let mut r = Run::default();
    let t = Instant::now();
    let v = p.publish(req.clone()).await?.into_inner().version;
    r.import = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(v == 1, "the import made version {v}");
    // Resolve answers at most 65536 chunks at a time: page through.
    let t = Instant::now();
    let mut got: Vec<Bytes> = Vec::new();
    while (got.len() as u64) < n {
        let page = p
            .resolve(pb::ResolveRequest {
                name: name.clone(),
                version: 1,
                first_chunk: got.len() as u64,
                count: 0,
            })
            .await?
            .into_inner()
            .chunks;
        anyhow::ensure!(!page.is_empty(), "Resolve stopped at chunk {}", got.len());
        got.extend(page);
    }
    r.resolve = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        got.len() as u64 == n,
        "Resolve returned {} chunks",
        got.len()
    );
    anyhow::ensure!(
        got[7] == id(seed << 32 | 7) && got[n as usize - 1] == id(seed << 32 | (n - 1)),
        "Resolve returned a wrong chunk"
    );
    let mut changes: Vec<pb::ChunkChange> = (0..16)
        .map(|k| pb::ChunkChange {
            index: rng.gen_range(0..n),
            id: id(1 << 63 | seed << 32 | k),
        })
        .collect();
    changes.sort_by_key(|c| c.index);
    changes.dedup_by_key(|c| c.index);
    req.create = false;
    req.base_version = 1;
    req.changes = changes;
    let t = Instant::now();
    let v = p.publish(req.clone()).await?.into_inner().version;
    r.publish16 = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(v == 2, "the publish made version {v}");
    // Every chunk rewritten (a second tree, the first one's nodes shadowed).
    req.base_version = 2;
    req.changes = (0..n)
        .map(|i| pb::ChunkChange {
            index: i,
            id: id(1 << 62 | seed << 32 | i),
        })
        .collect();
    let t = Instant::now();
    let v = p.publish(req).await?.into_inner().version;
    r.rewrite = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(v == 3, "the rewrite made version {v}");
    let t = Instant::now();
    p.delete_volume(pb::DeleteVolumeRequest {
        name,
        version: 0,
        force: false,
    })
    .await?;
    r.delete = t.elapsed().as_secs_f64() * 1e3;
    let left = p.stats(pb::PoolStatsRequest::default()).await?.into_inner();
    anyhow::ensure!(
        left.meta_nodes == 0 && left.versions == 0,
        "the delete left {} metadata nodes and {} versions",
        left.meta_nodes,
        left.versions
    );
    Ok(r)
}

pub async fn run(o: Opts) -> Result<()> {
    let bin = match o.bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary's directory")?
            .to_path_buf(),
    };
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await?;
    let eps = etcd.endpoints_arg();
    let mut daemons = Vec::new();
    let mut clients = Vec::new();
    for engine in ["redb", "etcd"] {
        let dir = o.dir.join(engine);
        let mut c = Command::new(bin.join("poold"));
        c.arg("--dir")
            .arg(&dir)
            .args(["--engine", engine, "--gc-interval-secs", "3600"]);
        if engine == "etcd" {
            c.args(["--etcd-endpoints", &eps, "--etcd-prefix", "/bench/"]);
        }
        std::fs::create_dir_all(&dir)?;
        let mut d = Daemon::spawn("poold", c, &o.dir.join(format!("poold-{engine}.log")))?;
        let addr = wait_file(&dir.join("poold.addr"), &mut d, Duration::from_secs(30))?;
        clients.push(pool_client(channel(&addr).map_err(anyhow::Error::msg)?));
        daemons.push(d);
    }
    let size = o.size_mib << 20;
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for r in 0..o.runs {
        for (k, c) in clients.iter_mut().enumerate() {
            let run = one_run(c, size, (r * 2 + k) as u64 + 1).await?;
            eprintln!(
                "run {r} {}: import {:.0} ms, resolve {:.0} ms, publish 16 {:.1} ms, rewrite {:.0} ms, delete {:.0} ms",
                ["redb", "etcd"][k],
                run.import,
                run.resolve,
                run.publish16,
                run.rewrite,
                run.delete
            );
            runs[k].push(run);
        }
    }
    println!(
        "### Metadata: poold on etcd (3 members) against redb ({} MiB volume, {} chunks of 256 KiB, {} runs)\n",
        o.size_mib,
        size / CS as u64,
        o.runs
    );
    println!("| measurement, ms | redb | etcd | etcd ÷ redb |\n|---|---|---|---|");
    type Row = (&'static str, fn(&Run) -> f64);
    let rows: [Row; 5] = [
        ("import's publish (every chunk)", |r| r.import),
        ("Resolve of the whole volume", |r| r.resolve),
        ("publish of 16 changed chunks", |r| r.publish16),
        ("publish rewriting every chunk", |r| r.rewrite),
        ("delete of the volume", |r| r.delete),
    ];
    for (label, f) in rows {
        let a: Vec<f64> = runs[0].iter().map(f).collect();
        let b: Vec<f64> = runs[1].iter().map(f).collect();
        let ratio: Vec<f64> = a.iter().zip(&b).map(|(x, y)| y / x).collect();
        println!(
            "| {label} | {} | {} | {} |",
            summarize(&a),
            summarize(&b),
            summarize(&ratio)
        );
    }
    drop(daemons);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&o.dir);
    Ok(())
}
