//! The mirror suite (issue 3, mirrord): reads through the FUSE mount
//! against the mirror's cache file and against `vol-export`, a local reader
//! next to one that waits on a slowed chunkd, and COMMIT times. Each run
//! uses fresh volumes; every ratio is taken within one run.

pub(crate) mod daemon;
mod proxy;
mod reads;
mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{RngCore, SeedableRng};

use blobvirt_core::client::Repo;
use blobvirt_core::proto as pb;
use blobvirt_core::ChunkId;

use crate::cluster::{Cluster, SuiteOpts};
use daemon::Mirrord;
use reads::{drop_caches, open_direct, rand_read, random_writes, seq_read};

const MIB: u64 = 1 << 20;
const CS: u64 = 256 * 1024;

#[derive(clap::Args)]
pub struct Opts {
    #[command(flatten)]
    suite: SuiteOpts,
    /// Work directory (on the disk being measured).
    #[arg(long, default_value = "/var/tmp/blobvirt-bench-mirror")]
    dir: PathBuf,
    /// 4 KiB random reads per random-read measurement.
    #[arg(long, default_value_t = 20000)]
    rand_reads: usize,
    /// Size of the volume read from the slowed chunkd, in MiB.
    #[arg(long, default_value_t = 128)]
    slow_mib: u64,
    /// Rate of the slowed chunkd, in MB/s (10^6 bytes).
    #[arg(long, default_value_t = 10)]
    slow_mbps: u64,
    /// MiB written at random places before the COMMIT.
    #[arg(long, default_value_t = 15)]
    commit_mib: u64,
}

/// One run's measurements (seconds unless named otherwise).
#[derive(Default)]
struct Run {
    export: f64,
    cold: f64,
    cold_fetches: f64,
    cold_readahead: f64,
    seq_mount: f64,
    seq_file: f64,
    seq_file_buffered: f64,
    rand_mount: f64,
    rand_file: f64,
    dirty_chunks: f64,
    freeze_us: f64,
    nowait_ms: f64,
    total_ms: f64,
    uploaded_mib: f64,
    unloaded_mibs: f64,
    loaded_mibs: f64,
    slow_mibs: f64,
    proxied_mib: f64,
}

fn write_image(path: &Path, mib: u64, seed: u64) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        rng.fill_bytes(&mut buf);
        f.write_all(&buf)?;
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}

/// An image of `mib` MiB whose every chunk is read first from node `slow`.
fn write_slow_image(path: &Path, mib: u64, seed: u64, repo: &Repo, slow: &str) -> Result<()> {
    let p = repo.placement();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut chunk = vec![0u8; CS as usize];
    let mut kept = 0;
    while kept < mib * MIB / CS {
        rng.fill_bytes(&mut chunk);
        if p.read_order(&ChunkId::of(&chunk))
            .first()
            .is_some_and(|m| m.id == slow)
        {
            f.write_all(&chunk)?;
            kept += 1;
        }
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn status(md: &Mirrord, name: &str) -> Result<mirrord_client::VolumeStatus> {
    md.client
        .status()
        .await?
        .volumes
        .into_iter()
        .find(|v| v.name == name)
        .with_context(|| format!("volume {name} is not attached"))
}

/// The volume's status once every chunk is local: fetched chunks reach the
/// data file in the background, a moment after the read that fetched them
/// was answered. Fails after 10 s.
pub async fn wait_all_local(md: &Mirrord, name: &str) -> Result<mirrord_client::VolumeStatus> {
    let t = Instant::now();
    loop {
        let st = status(md, name).await?;
        if st.chunks_present == st.chunks {
            return Ok(st);
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "volume {name} is not fully local 10 s after a full read ({} of {} chunks)",
            st.chunks_present,
            st.chunks
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn timed_seq(path: PathBuf) -> Result<(u64, f64)> {
    blocking(move || seq_read(&path, MIB as usize, false, None)).await
}

pub async fn run(o: Opts) -> Result<()> {
    anyhow::ensure!(drop_caches(), "dropping the page cache needs root (echo 3 > /proc/sys/vm/drop_caches); run the mirror suite as root");
    let (bin, cluster) = o.suite.start(&o.dir)?;
    let repo = Repo::connect(&cluster.pool).await?;
    let mut runs = Vec::new();
    for r in 0..o.suite.runs {
        let run = one_run(&o, &bin, &cluster, &repo, r)
            .await
            .with_context(|| format!("run {r}"))?;
        eprintln!(
            "run {r}: cold {:.2}s vs export {:.2}s; local seq {:.2}s vs {:.2}s; rand {:.2}s vs {:.2}s; commit {:.0} us / {:.0} ms; local reader {:.0} vs {:.0} MiB/s",
            run.cold, run.export, run.seq_mount, run.seq_file, run.rand_mount, run.rand_file, run.freeze_us, run.total_ms, run.loaded_mibs, run.unloaded_mibs
        );
        runs.push(run);
    }
    report::report(&o, &runs);
    Ok(())
}

async fn one_run(o: &Opts, bin: &Path, cluster: &Cluster, repo: &Repo, r: usize) -> Result<Run> {
    let mut run = Run::default();
    let size = o.suite.size_mib * MIB;
    let name = format!("seq-{r}");
    let img = o.dir.join("image.raw");
    write_image(&img, o.suite.size_mib, 1000 + r as u64)?;
    cluster.cli(&[
        "vol-import",
        img.to_str().unwrap(),
        &name,
        "--chunk-size",
        "256K",
    ])?;
    std::fs::remove_file(&img)?;
    let (mnt, cache, log) = (
        o.dir.join("mnt"),
        o.dir.join("cache"),
        o.dir.join("mirrord.log"),
    );
    let mut md = Mirrord::start(
        bin,
        &cluster.dir.join("blobvirt.toml"),
        &cluster.pool,
        &mnt,
        &cache,
        &log,
        true,
    )
    .await?;
    let path = md.path(&name);
    let data = cache.join("vols").join(&name).join("data");

    // Cold: vol-export against one sequential pass through the mount.
    let out = o.dir.join("export.raw");
    drop_caches();
    let t = Instant::now();
    cluster.cli(&["vol-export", &name, out.to_str().unwrap()])?;
    run.export = t.elapsed().as_secs_f64();
    std::fs::remove_file(&out)?;
    drop_caches();
    let (n, secs) = timed_seq(path.clone()).await?;
    anyhow::ensure!(
        n == size,
        "cold read through the mount returned {n} bytes, expected {size}"
    );
    run.cold = secs;
    let st = wait_all_local(&md, &name).await?;
    (run.cold_fetches, run.cold_readahead) = (st.fetches as f64, st.readahead as f64);

    // Fully local: the mount against the mirror's data file, both cold,
    // in the order mount, file, file, mount (times summed per side).
    for (k, p) in [&path, &data, &data, &path].into_iter().enumerate() {
        drop_caches();
        let secs = timed_seq(p.clone()).await?.1;
        *if k % 3 == 0 {
            &mut run.seq_mount
        } else {
            &mut run.seq_file
        } += secs;
    }
    drop_caches();
    let d = data.clone();
    run.seq_file_buffered = blocking(move || seq_read(&d, MIB as usize, true, None))
        .await?
        .1;
    for (k, p) in [&path, &data, &data, &path].into_iter().enumerate() {
        let (p, count, seed) = (p.clone(), o.rand_reads, (r * 2 + k / 2) as u64);
        drop_caches();
        let secs = blocking(move || rand_read(&p, size, count, seed)).await?;
        *if k % 3 == 0 {
            &mut run.rand_mount
        } else {
            &mut run.rand_file
        } += secs;
    }

    // COMMIT of random writes, with the file still open for writing.
    let f = Arc::new(open_direct(&path, true)?);
    let ff = f.clone();
    let total = o.commit_mib * MIB;
    blocking(move || random_writes(&ff, size, total, 77 + r as u64)).await?;
    run.dirty_chunks = status(&md, &name).await?.chunks_dirty as f64;
    let t = Instant::now();
    let out = md.client.commit(&name, false).await?;
    run.nowait_ms = t.elapsed().as_secs_f64() * 1e3;
    md.client.wait(&name).await?;
    run.total_ms = t.elapsed().as_secs_f64() * 1e3;
    run.freeze_us = out.freeze_us as f64;
    let st = status(&md, &name).await?;
    anyhow::ensure!(st.chunks_dirty == 0, "chunks still dirty after the commit");
    run.uploaded_mib = st.bytes_committed as f64 / MIB as f64;
    drop(f);
    md.stop();

    slow_phase(o, bin, cluster, repo, r, &name, &mut run).await?;

    for v in [name.as_str(), &format!("slow-{r}")] {
        cluster.cli(&["vol-delete", v])?;
    }
    let _ = std::fs::remove_dir_all(cache.join("vols"));
    repo.pool().gc(pb::GcRequest { now: true }).await?;
    Ok(run)
}

/// MiB/s of sequential passes over `path` for at least 3 s.
async fn local_reader(path: &Path) -> Result<f64> {
    let (mut bytes, mut secs) = (0, 0.0);
    while secs < 3.0 {
        let (n, s) = timed_seq(path.to_path_buf()).await?;
        bytes += n;
        secs += s;
    }
    Ok(bytes as f64 / MIB as f64 / secs)
}

/// Reads the fully local volume `local` alone, then while another reader
/// reads a volume whose chunks all come from a chunkd behind a proxy
/// limited to `slow_mbps`.
async fn slow_phase(
    o: &Opts,
    bin: &Path,
    cluster: &Cluster,
    repo: &Repo,
    r: usize,
    local: &str,
    run: &mut Run,
) -> Result<()> {
    repo.refresh().await?;
    let mut nodes = repo
        .pool()
        .nodes(pb::NodesRequest {})
        .await?
        .into_inner()
        .nodes;
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let node = nodes.first().context("no chunkd nodes")?.clone();
    let slow = format!("slow-{r}");
    let img = o.dir.join("slow.raw");
    write_slow_image(&img, o.slow_mib, 2000 + r as u64, repo, &node.id)?;
    cluster.cli(&[
        "vol-import",
        img.to_str().unwrap(),
        &slow,
        "--chunk-size",
        "256K",
    ])?;
    std::fs::remove_file(&img)?;

    let proxy = proxy::Proxy::start(&node.addr, o.slow_mbps * 1_000_000).await?;
    let register = |addr: String| {
        let mut pool = repo.pool();
        let id = node.id.clone();
        async move { pool.register(pb::RegisterRequest { id, addr }).await }
    };
    register(proxy.addr.clone()).await?;
    let res = async {
        let (mnt, cache, log) = (
            o.dir.join("mnt"),
            o.dir.join("cache"),
            o.dir.join("mirrord.log"),
        );
        let md = Mirrord::start(
            bin,
            &cluster.dir.join("blobvirt.toml"),
            &cluster.pool,
            &mnt,
            &cache,
            &log,
            false,
        )
        .await?;
        let (path, slow_path) = (md.path(local), md.path(&slow));
        timed_seq(path.clone()).await?; // warm the cache file's pages
        run.unloaded_mibs = local_reader(&path).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let reader = tokio::task::spawn_blocking(move || {
            seq_read(&slow_path, MIB as usize, false, Some(&s))
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.loaded_mibs = local_reader(&path).await?;
        stop.store(true, Ordering::Relaxed);
        let (sn, ssecs) = reader.await??;
        run.slow_mibs = sn as f64 / MIB as f64 / ssecs;
        run.proxied_mib = proxy.passed() as f64 / MIB as f64;
        anyhow::ensure!(
            run.proxied_mib > 1.0,
            "nothing passed the slow proxy; the slowed chunkd re-registered under its own address"
        );
        drop(md);
        Ok(())
    }
    .await;
    register(node.addr.clone()).await?;
    res
}
