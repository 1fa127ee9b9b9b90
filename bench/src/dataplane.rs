//! The data-path suite (issue 14): CPU cost and throughput of `vol-import`,
//! `vol-export` and a cold sequential read through the mirrord mount.
//!
//! CPU-seconds are user + system time summed over the client process and
//! every daemon of the local cluster (poold, each chunkd, mirrord): the
//! daemons' from `/proc/PID/stat` (utime + stime) before and after, the
//! client's (the `blobvirt` CLI, or `dd` for the mount read) from this
//! process's waited-for children (`cutime` + `cstime`, i.e. what
//! `getrusage(RUSAGE_CHILDREN)` reports). Each run imports a fresh random
//! image under a new name, so nothing dedups against an earlier run and the
//! mirror cache holds nothing of the volume before the cold read. `cp` and
//! `cp` + `sync` of the same file to the same disk are taken in the same run.
//!
//! Before every step (the `cp` baselines included) the suite touches and
//! frees `--warm-mib` of anonymous memory. These machines are VMs that
//! report free pages to their host (virtio-balloon free page reporting):
//! the first write into a page the host took back costs a host fault, and
//! on this kind of machine a `dd` of 1 GiB into a new file took 3.1 s of
//! system time on cold memory and 0.4 s on warm (bench/RESULTS.md). Which
//! step met cold memory depended on timing, not on the code; warming before
//! each step gives every step, and its baseline, the same start.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use blobvirt_core::client::Repo;
use blobvirt_core::proto as pb;

use crate::cluster::{Cluster, SuiteOpts};
use crate::mirror::daemon::Mirrord;
use crate::procstat;
use crate::repo::{sh, write_random};
use crate::stats::summarize;

#[derive(clap::Args)]
pub struct Opts {
    #[command(flatten)]
    suite: SuiteOpts,
    /// Work directory (on the disk being measured).
    #[arg(long, default_value = "/var/tmp/blobvirt-bench-dataplane")]
    dir: PathBuf,
    /// Block size of the `dd` that reads the volume through the mount.
    #[arg(long, default_value = "4M")]
    dd_bs: String,
    /// MiB of memory touched and freed before every step (0: none), so no
    /// step pays the VM host's faults on pages it took back (module docs).
    #[arg(long, default_value_t = 4096)]
    warm_mib: usize,
}

/// Touches `mib` MiB of fresh anonymous memory, one write per page, and
/// frees it: the pages a following step allocates are then backed by the
/// host (module docs).
fn warm(mib: usize) {
    if mib == 0 {
        return;
    }
    let mut v = vec![0u8; mib << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
}

/// CPU-seconds of every daemon and of this process's waited-for children.
#[derive(Clone)]
struct CpuSnap {
    procs: Vec<(String, u64)>,
    children: u64,
}

struct Meter {
    pids: Vec<(String, u32)>,
}

impl Meter {
    fn snap(&self) -> CpuSnap {
        CpuSnap {
            procs: self
                .pids
                .iter()
                .map(|(n, p)| {
                    let ticks = procstat::read(&p.to_string()).map_or(0, |s| s.ticks);
                    (n.clone(), ticks)
                })
                .collect(),
            children: procstat::read("self").map_or(0, |s| s.child_ticks),
        }
    }
}

/// One timed step: wall seconds, client CPU-s, per-daemon CPU-s.
#[derive(Clone, Default)]
struct Step {
    wall: f64,
    client: f64,
    daemons: Vec<(String, f64)>,
}

impl Step {
    fn total(&self) -> f64 {
        self.client + self.daemons.iter().map(|d| d.1).sum::<f64>()
    }
    fn of(&self, prefix: &str) -> f64 {
        self.daemons
            .iter()
            .filter(|d| d.0.starts_with(prefix))
            .map(|d| d.1)
            .sum()
    }
}

fn measure(m: &Meter, warm_mib: usize, f: impl FnOnce() -> Result<()>) -> Result<Step> {
    warm(warm_mib);
    let a = m.snap();
    let t = Instant::now();
    f()?;
    let wall = t.elapsed().as_secs_f64();
    let b = m.snap();
    let k = procstat::TICK_S;
    Ok(Step {
        wall,
        client: (b.children - a.children) as f64 * k,
        daemons: a
            .procs
            .iter()
            .zip(&b.procs)
            .map(|((n, x), (_, y))| (n.clone(), y.saturating_sub(*x) as f64 * k))
            .collect(),
    })
}

#[derive(Default)]
struct Run {
    cp: Step,
    cp_sync: Step,
    import: Step,
    export: Step,
    cold: Step,
}

pub async fn run(o: Opts) -> Result<()> {
    let (bin, cluster) = o.suite.start(&o.dir)?;
    let repo = Repo::connect(&cluster.pool).await?;
    let (mnt, cache) = (o.dir.join("mnt"), o.dir.join("cache"));
    let md = Mirrord::start(
        &bin,
        &cluster.dir.join("blobvirt.toml"),
        &cluster.pool,
        &mnt,
        &cache,
        &o.dir.join("mirrord.log"),
        true,
    )
    .await?;
    let mut pids = cluster.pids()?;
    pids.push(("mirrord".into(), md.pid().context("mirrord pid")?));
    let meter = Meter { pids };
    let mut runs = Vec::new();
    for r in 0..o.suite.runs {
        let run = one_run(&o, &cluster, &repo, &md, &meter, r)
            .await
            .with_context(|| format!("run {r}"))?;
        eprintln!(
            "run {r}: cp {:.2}s, cp+sync {:.2}s, import {:.2}s / {:.2} CPU-s, export {:.2}s / {:.2} CPU-s, cold mount read {:.2}s / {:.2} CPU-s",
            run.cp.wall, run.cp_sync.wall, run.import.wall, run.import.total(), run.export.wall, run.export.total(), run.cold.wall, run.cold.total()
        );
        runs.push(run);
    }
    drop(md);
    report(&o, &runs);
    Ok(())
}

async fn one_run(
    o: &Opts,
    cluster: &Cluster,
    repo: &Repo,
    md: &Mirrord,
    meter: &Meter,
    r: usize,
) -> Result<Run> {
    let size = o.suite.size_mib << 20;
    let img = o.dir.join("image.raw");
    let copy = o.dir.join("copy.raw");
    let out = o.dir.join("export.raw");
    write_random(&img, o.suite.size_mib, 14_000 + r as u64)?;
    let name = format!("dp-{r}");
    let mut run = Run {
        cp: measure(meter, o.warm_mib, || {
            sh(Command::new("cp").arg(&img).arg(&copy))
        })?,
        ..Default::default()
    };
    let _ = std::fs::remove_file(&copy);
    run.cp_sync = measure(meter, o.warm_mib, || {
        sh(Command::new("cp").arg(&img).arg(&copy))?;
        sh(Command::new("sync").arg(&copy))
    })?;
    let _ = std::fs::remove_file(&copy);
    run.import = measure(meter, o.warm_mib, || {
        cluster
            .cli(&["vol-import", img.to_str().unwrap(), &name])
            .map(drop)
    })?;
    run.export = measure(meter, o.warm_mib, || {
        cluster
            .cli(&["vol-export", &name, out.to_str().unwrap()])
            .map(drop)
    })?;
    anyhow::ensure!(
        std::fs::metadata(&out)?.len() == size,
        "export has the wrong size"
    );
    anyhow::ensure!(same(&img, &out)?, "the export differs from the image");
    let _ = std::fs::remove_file(&out);
    let path = md.path(&name);
    let vol_cache = o.dir.join("cache").join("vols").join(&name);
    anyhow::ensure!(!vol_cache.exists(), "the mirror cache already holds {name}");
    run.cold = measure(meter, o.warm_mib, || {
        sh(Command::new("dd")
            .arg(format!("if={}", path.display()))
            .arg("of=/dev/null")
            .arg(format!("bs={}", o.dd_bs))
            .arg("status=none"))
    })?;
    crate::mirror::wait_all_local(md, &name).await?;
    let _ = std::fs::remove_file(&img);
    md.client.detach(&name, true).await.ok();
    cluster.cli(&["vol-delete", &name])?;
    let _ = std::fs::remove_dir_all(&vol_cache);
    repo.pool().gc(pb::GcRequest { now: true }).await?;
    Ok(run)
}

/// True when both files have the same bytes (`cmp -s`).
fn same(a: &Path, b: &Path) -> Result<bool> {
    Ok(Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .context("running cmp")?
        .success())
}

fn report(o: &Opts, runs: &[Run]) {
    let gib = o.suite.size_mib as f64 / 1024.0;
    let mib = o.suite.size_mib as f64;
    let col = |f: &dyn Fn(&Run) -> f64| summarize(&runs.iter().map(f).collect::<Vec<_>>());
    println!(
        "### Data path: CPU and throughput ({} MiB random image, {} nodes, replicas {}, {} runs{})\n",
        o.suite.size_mib,
        o.suite.nodes,
        o.suite.replicas,
        runs.len(),
        if o.suite.no_tls { ", no TLS" } else { ", TLS" }
    );
    println!("| step | MiB/s | CPU-s/GiB total | client | poold | chunkd (all) | mirrord | ÷ cp | ÷ (cp + sync) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    type Get = fn(&Run) -> &Step;
    let steps: [(&str, Get); 5] = [
        ("cp", |r| &r.cp),
        ("cp + sync", |r| &r.cp_sync),
        ("vol-import", |r| &r.import),
        ("vol-export", |r| &r.export),
        ("cold read via mount", |r| &r.cold),
    ];
    for (label, get) in steps {
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
            col(&|r| mib / get(r).wall),
            col(&|r| get(r).total() / gib),
            col(&|r| get(r).client / gib),
            col(&|r| get(r).of("poold") / gib),
            col(&|r| get(r).of("chunkd") / gib),
            col(&|r| get(r).of("mirrord") / gib),
            col(&|r| r.cp.wall / get(r).wall),
            col(&|r| r.cp_sync.wall / get(r).wall),
        );
    }
    println!(
        "\n| goal (issue 14) | median |\n|---|---|\n| import ≤ 3 CPU-s/GiB | {:.2} |\n| import ≥ 0.4× (cp + sync) | {:.3} |\n| export ≤ 1.5 CPU-s/GiB | {:.2} |\n| export ≥ 0.35× cp | {:.3} |\n| cold mount read ≥ 1× export throughput | {:.3} |",
        col(&|r| r.import.total() / gib).median,
        col(&|r| r.cp_sync.wall / r.import.wall).median,
        col(&|r| r.export.total() / gib).median,
        col(&|r| r.cp.wall / r.export.wall).median,
        col(&|r| r.export.wall / r.cold.wall).median,
    );
    println!("\nCPU-s/GiB is user + system time of the client (the `blobvirt` CLI, `dd` for the mount read, `cp`/`sync`) plus poold, every chunkd and mirrord; ÷ cp is `cp` time / step time (throughput ratio).");
}
