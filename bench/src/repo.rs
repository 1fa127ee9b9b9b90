//! The repository suite (issue: versioned chunk repository): import and
//! export throughput against `cp` of the same file to the same disk, publish
//! latency of 16 changed chunks against volume size, and daemon memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};

use blobvirt_core::client::{Publish, Repo};
use blobvirt_core::proto as pb;
use blobvirt_core::ChunkId;

use crate::cluster::{memory_kib, SuiteOpts};
use crate::stats::summarize;

#[derive(clap::Args)]
pub struct Opts {
    #[command(flatten)]
    suite: SuiteOpts,
    /// Work directory (on the disk being measured).
    #[arg(long, default_value = "/var/tmp/blobvirt-bench")]
    dir: PathBuf,
}

fn secs(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) fn write_random(path: &Path, mib: u64, seed: u64) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill_bytes(&mut buf);
        f.write_all(&buf)?;
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}

pub(crate) fn sh(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(st.success(), "{cmd:?} failed");
    Ok(())
}

pub async fn run(o: Opts) -> Result<()> {
    let (_bin, cluster) = o.suite.start(&o.dir)?;
    let repo = Repo::connect(&cluster.pool).await?;
    let size = o.suite.size_mib << 20;
    let img = o.dir.join("image.raw");
    let copy = o.dir.join("copy.raw");
    let out = o.dir.join("export.raw");

    let (mut cp, mut cp_sync, mut imp, mut exp) = (vec![], vec![], vec![], vec![]);
    for r in 0..o.suite.runs {
        // Fresh random content per run, so no run dedups against another.
        write_random(&img, o.suite.size_mib, r as u64)?;
        let name = format!("bench-{r}");
        cp.push(secs(|| sh(Command::new("cp").arg(&img).arg(&copy)))?);
        let _ = std::fs::remove_file(&copy);
        cp_sync.push(secs(|| {
            sh(Command::new("cp").arg(&img).arg(&copy))?;
            sh(Command::new("sync").arg(&copy))
        })?);
        let _ = std::fs::remove_file(&copy);
        imp.push(secs(|| {
            cluster
                .cli(&["vol-import", img.to_str().unwrap(), &name])
                .map(drop)
        })?);
        exp.push(secs(|| {
            cluster
                .cli(&["vol-export", &name, out.to_str().unwrap()])
                .map(drop)
        })?);
        anyhow::ensure!(
            std::fs::metadata(&out)?.len() == size,
            "export has the wrong size"
        );
        let _ = std::fs::remove_file(&out);
        cluster.cli(&["vol-delete", &name])?;
        repo.pool().gc(pb::GcRequest { now: true }).await?;
        eprintln!(
            "run {r}: cp {:.2}s, import {:.2}s, export {:.2}s",
            cp[r], imp[r], exp[r]
        );
    }
    let _ = std::fs::remove_file(&img);
    let mib = o.suite.size_mib as f64;
    let ratio = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>();

    println!("### Repository: import/export throughput ({} MiB random image, {} nodes, replicas {}, {} runs)\n", o.suite.size_mib, o.suite.nodes, o.suite.replicas, o.suite.runs);
    println!("| measurement | median (min–max) |\n|---|---|");
    println!(
        "| cp MiB/s | {} |",
        summarize(&cp.iter().map(|t| mib / t).collect::<Vec<_>>())
    );
    println!(
        "| cp + sync MiB/s | {} |",
        summarize(&cp_sync.iter().map(|t| mib / t).collect::<Vec<_>>())
    );
    println!(
        "| vol-import MiB/s | {} |",
        summarize(&imp.iter().map(|t| mib / t).collect::<Vec<_>>())
    );
    println!(
        "| vol-export MiB/s | {} |",
        summarize(&exp.iter().map(|t| mib / t).collect::<Vec<_>>())
    );
    println!(
        "| import / cp (goal ≥ 0.5) | {} |",
        summarize(&ratio(&cp, &imp))
    );
    println!(
        "| import / (cp + sync) | {} |",
        summarize(&ratio(&cp_sync, &imp))
    );
    println!(
        "| export / cp (goal ≥ 0.7) | {} |",
        summarize(&ratio(&cp, &exp))
    );
    println!(
        "| export / (cp + sync) | {} |",
        summarize(&ratio(&cp_sync, &exp))
    );

    println!(
        "\n### Repository: publish of 16 changed chunks vs volume size ({} runs each)\n",
        o.suite.runs
    );
    println!("| volume size | publish ms, median (min–max) | meta nodes added per publish |\n|---|---|---|");
    for gib in [1u64, 16, 64] {
        let (ms, nodes) = publish_latency(&repo, gib, o.suite.runs).await?;
        println!("| {gib} GiB | {} | {} |", summarize(&ms), summarize(&nodes));
    }

    println!("\n### Repository: daemon memory after the runs\n");
    println!("| process | RSS MiB | peak RSS (VmHWM) MiB |\n|---|---|---|");
    for (name, pid) in cluster.pids()? {
        if let Some((rss, hwm)) = memory_kib(pid) {
            println!(
                "| {name} | {:.1} | {:.1} |",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
        }
    }
    Ok(())
}

async fn meta_nodes(repo: &Repo) -> Result<u64> {
    Ok(repo
        .pool()
        .stats(pb::PoolStatsRequest {})
        .await?
        .into_inner()
        .meta_nodes)
}

/// Publishes 16 random chunks into a sparse volume of `gib` GiB, `runs`
/// times; returns the publish RPC times (ms) and meta nodes added.
async fn publish_latency(repo: &Repo, gib: u64, runs: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let cs: u32 = 256 * 1024;
    let size = gib << 30;
    let name = format!("sparse-{gib}g");
    let mut req = pb::PublishRequest {
        name: name.clone(),
        create: true,
        chunk_size: cs,
        size,
        ..Default::default()
    };
    let Publish::Done(mut version) = repo.publish(req.clone()).await? else {
        anyhow::bail!("create asked for a re-upload");
    };
    let mut rng = rand::thread_rng();
    let n_chunks = size / cs as u64;
    let (mut ms, mut added) = (vec![], vec![]);
    for _ in 0..runs {
        let mut chunks = Vec::new();
        let mut changes = Vec::new();
        for _ in 0..16 {
            let mut data = vec![0u8; cs as usize];
            rng.fill_bytes(&mut data);
            let id = ChunkId::of(&data);
            changes.push(pb::ChunkChange {
                index: rng.gen_range(0..n_chunks),
                id: Bytes::copy_from_slice(&id.0),
            });
            chunks.push((id, Bytes::from(data)));
        }
        changes.sort_by_key(|c| c.index);
        changes.dedup_by_key(|c| c.index);
        // Take the GC epoch before uploading, as every writer must.
        repo.refresh().await?;
        repo.put_chunks(chunks).await?;
        req.create = false;
        req.base_version = version;
        req.changes = changes;
        req.gc_epoch = repo.gc_epoch();
        let before = meta_nodes(repo).await?;
        let t = Instant::now();
        let Publish::Done(v) = repo.publish(req.clone()).await? else {
            anyhow::bail!("publish asked for a re-upload");
        };
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        added.push((meta_nodes(repo).await? - before) as f64);
        version = v;
    }
    repo.delete(&name, 0).await?;
    Ok((ms, added))
}
