//! `blobvirt-bench emu`: the paper's multideployment and multisnapshotting
//! experiments on M emulated compute nodes (network namespaces, veth links
//! to a bridge, `tc tbf` shaping), for blobvirt and the baselines
//! (prepropagation over HTTP and over a pipelined chain, qcow2 overlays on
//! an NBD-served image). Every system runs the same instances, the same
//! trace and the same links; results go to a JSON-lines file as they come
//! and are then turned into tables and plots (see `report`).
//!
//! * [`opts`] — the command line.
//! * [`net`], [`proc`] — namespaces, links, counters, cleanup, and the
//!   processes in them: the shared test bed (crate `testbed`).
//! * [`instances`] — the N instance processes of a run.
//! * [`sys_blobvirt`], [`sys_prepro`], [`sys_qcow2`] — the systems.
//! * [`acct`] — one cgroup (v1 `cpuacct`, `blkio`) per node: its CPU
//!   time and disk bytes, and the slow-disk throttle.
//! * [`phase`] — the counters of one timed phase, begin to end.
//! * [`model`] — per node: the time it would need on its own 2 cores and
//!   its own disk; the phase's model time is the slowest node's.
//! * [`report`] — tables and lower bounds; [`plot`] — the plots.
//! * [`sample`] — the whole machine's CPU and disk in a phase, and the
//!   disk bandwidth the model uses.

pub mod acct;
pub mod instances;
pub mod model;
pub mod opts;
pub mod phase;
pub mod plot;
pub mod report;
pub mod sample;
pub mod sys_blobvirt;
pub mod sys_prepro;
pub mod sys_qcow2;
/// The emulated network and processes in it live in the shared test bed.
pub use testbed::{net, proc};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use acct::Acct;
use instances::{Instances, Spec};
use net::{Link, Net};
pub use opts::Opts;
use phase::Phase;

/// What a system sees of the run it is part of.
pub struct Env<'a> {
    pub net: &'a Net,
    /// The nodes' cgroups: start every process of a node with [`Env::in_ns`].
    pub acct: &'a Acct,
    /// The resources of a node in the per-node model.
    pub model: model::Params,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub image: PathBuf,
    pub image_size: u64,
    pub replicas: u32,
    pub write_mib: u64,
}

impl Env<'_> {
    /// A command that runs in namespace `ns`, and in its node's cgroups
    /// when `ns` is the server's or a node's.
    pub fn in_ns(&self, ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        self.acct.cmd(ns, prog)
    }

    /// Directory of node `i` (0-based) in this run.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}", i + 1))
    }

    /// The server's directory in this run.
    pub fn srv_dir(&self) -> PathBuf {
        self.dir.join("srv")
    }

    /// Puts the image on the server (a hard link when the file system
    /// allows, so it is not stored twice); returns its path there.
    pub fn serve_image(&self) -> Result<PathBuf> {
        let srv = self.srv_dir();
        std::fs::create_dir_all(&srv)?;
        let img = srv.join("image.raw");
        if std::fs::hard_link(&self.image, &img).is_err() {
            std::fs::copy(&self.image, &img).context("copying the image to the server")?;
        }
        Ok(img)
    }
}

/// One system under test; the harness drives it through one run.
pub trait System {
    fn name(&self) -> &'static str;
    /// Starts the servers and puts the image in place (not timed).
    fn setup(&mut self, env: &Env) -> Result<()>;
    /// What instance `i` runs; its prepare command is part of its time.
    fn spec(&self, env: &Env, i: usize) -> Result<Spec>;
    /// Called right after the instances were released.
    fn on_go(&mut self, _env: &Env) -> Result<()> {
        Ok(())
    }
    /// Snapshots every instance at once; seconds per instance, or None
    /// when the system has no snapshot.
    fn snapshot(&mut self, env: &Env) -> Result<Option<Vec<f64>>>;
    /// Bytes in the repository / on the server.
    fn stored(&self, env: &Env) -> u64;
    /// Bytes on the nodes' local disks.
    fn local(&self, env: &Env) -> u64;
    fn teardown(&mut self, env: &Env);
}

pub fn system(name: &str) -> Result<Box<dyn System>> {
    Ok(match name {
        "blobvirt" => Box::<sys_blobvirt::Blobvirt>::default(),
        "prepro-http" => Box::new(sys_prepro::Prepro::new(sys_prepro::Mode::Http)),
        "prepro-chain" => Box::new(sys_prepro::Prepro::new(sys_prepro::Mode::Chain)),
        "qcow2-nbd" => Box::<sys_qcow2::Qcow2>::default(),
        _ => {
            bail!("system {name} is unknown; use blobvirt, prepro-http, prepro-chain or qcow2-nbd")
        }
    })
}

fn abs(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("finding {}", p.display()))
}

fn bench_cmd(bin: &Path, args: &[&str]) -> Result<String> {
    let mut c = std::process::Command::new(bin.join("blobvirt-bench"));
    c.args(args);
    proc::run_ok(c, &format!("blobvirt-bench {}", args.join(" ")))
}

/// The image and trace of this experiment (made once, then reused).
fn inputs(o: &Opts, bin: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(&o.dir)?;
    let image = match &o.image {
        Some(p) => abs(p)?,
        None => {
            let p = o
                .dir
                .join(format!("image-{}m-{}.raw", o.image_mib, o.data_fraction));
            if !p.exists() {
                bench_cmd(
                    bin,
                    &[
                        "gen-image",
                        "--out",
                        &p.to_string_lossy(),
                        "--size-mib",
                        &o.image_mib.to_string(),
                        "--data-fraction",
                        &o.data_fraction.to_string(),
                    ],
                )?;
            }
            abs(&p)?
        }
    };
    let trace = match &o.trace {
        Some(p) => abs(p)?,
        None => {
            let p = o.dir.join(format!(
                "trace-{}-{}.trace",
                image.file_stem().unwrap_or_default().to_string_lossy(),
                o.fraction
            ));
            if !p.exists() {
                bench_cmd(
                    bin,
                    &[
                        "gen-trace",
                        "--image",
                        &image.to_string_lossy(),
                        "--fraction",
                        &o.fraction.to_string(),
                        "--out",
                        &p.to_string_lossy(),
                    ],
                )?;
            }
            abs(&p)?
        }
    };
    Ok((image, trace))
}

fn drop_caches() {
    nix::unistd::sync();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// One run of one system at one node count; returns its JSON record.
fn one_run(
    o: &Opts,
    sys: &mut dyn System,
    n: usize,
    run: usize,
    inp: &Inputs,
) -> Result<serde_json::Value> {
    let prefix = format!("bvb{}", std::process::id());
    let link = Link {
        rate_bps: o.rate_mbit * 1_000_000,
        latency_ms: o.latency_ms,
    };
    let mut net = Net::create(&prefix, n, link)?;
    let mut cg_nodes = vec![(net.srv(), "srv".to_string())];
    cg_nodes.extend((0..n).map(|i| (net.node(i), format!("n{}", i + 1))));
    let mut acct = Acct::create(
        std::process::id(),
        cg_nodes,
        acct::block_device(&o.dir),
        inp.disk.slow_bps,
    )?;
    let dir = o.dir.join(format!("run-{}-{n}-{run}", sys.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let env = Env {
        net: &net,
        acct: &acct,
        model: model::Params {
            link_bps: link.bytes_per_sec(),
            disk_bps: inp.disk.model_bps,
            cores: model::MODEL_CORES,
        },
        dir: abs(&dir)?,
        bin: inp.bin.clone(),
        image: inp.image.clone(),
        image_size: inp.image_size,
        replicas: o.replicas,
        write_mib: o.write_mib,
    };
    let r = drive(o, sys, &env, inp);
    sys.teardown(&env);
    net::unmount_under(&env.dir);
    net.destroy();
    acct.destroy();
    if r.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mut v = r?;
    v["system"] = json!(sys.name());
    v["nodes"] = json!(n);
    v["run"] = json!(run);
    v["label"] = json!(o.label);
    v["disk"] = json!(inp.disk.id());
    Ok(v)
}

fn drive(o: &Opts, sys: &mut dyn System, env: &Env, inp: &Inputs) -> Result<serde_json::Value> {
    let n = env.net.nodes;
    sys.setup(env)
        .with_context(|| format!("setting up {}", sys.name()))?;
    let specs = (0..n)
        .map(|i| sys.spec(env, i))
        .collect::<Result<Vec<_>>>()?;
    let snapshots = specs.iter().any(|s| s.write_mib > 0);
    let mut inst = Instances::start(
        env,
        &inp.bin.join("blobvirt-bench"),
        &inp.trace,
        specs,
        o.write_block_kib,
    )?;
    let stored0 = sys.stored(env);
    drop_caches();
    let p0 = Phase::begin(env)?;
    // Release the instances first, then the chain's sender: it must not
    // win a head start over the instances it feeds.
    inst.release()?;
    sys.on_go(env)?;
    let deployed = inst.wait_deployed(Duration::from_secs(7200))?;
    let used = p0.end(env)?;
    let start = deployed.iter().map(|d| d.start_ns).min().unwrap_or(0);
    let per: Vec<f64> = deployed
        .iter()
        .map(|d| (d.done_ns - d.start_ns) as f64 / 1e9)
        .collect();
    let prep: Vec<f64> = deployed
        .iter()
        .map(|d| (d.prepared_ns - d.start_ns) as f64 / 1e9)
        .collect();
    let last = deployed.iter().map(|d| d.done_ns).max().unwrap_or(0);
    let mut v = json!({
        "deploy": {
            "completion_s": (last - start) as f64 / 1e9,
            "mean_s": mean(&per),
            "max_s": per.iter().cloned().fold(0.0, f64::max),
            "mean_prepare_s": mean(&prep),
            "per_instance_s": per,
            "stored_bytes": sys.stored(env),
            "stored_before_bytes": stored0,
            "local_bytes": sys.local(env),
        }
    });
    used.fill(&mut v["deploy"]);
    if snapshots {
        let written = inst.write(Duration::from_secs(600))?;
        let s0 = sys.stored(env);
        let p2 = Phase::begin(env)?;
        if let Some(times) = sys.snapshot(env)? {
            let used = p2.end(env)?;
            v["snapshot"] = json!({
                "mean_s": mean(&times),
                "per_instance_s": times,
                "max_s": times.iter().cloned().fold(0.0, f64::max),
                "written_bytes": written,
                "stored_added_bytes": sys.stored(env).saturating_sub(s0),
            });
            used.fill(&mut v["snapshot"]);
        }
    }
    inst.finish()?;
    Ok(v)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The fixed inputs of an experiment.
pub struct Inputs {
    pub bin: PathBuf,
    pub image: PathBuf,
    pub image_size: u64,
    pub trace: PathBuf,
    pub disk: opts::Disk,
}

/// Runs the whole matrix (blocking; call from a blocking thread).
pub fn run_blocking(o: Opts) -> Result<()> {
    let bin = abs(&o.bin)?;
    for b in ["blobvirt", "poold", "chunkd", "mirrord", "blobvirt-bench"] {
        if !bin.join(b).exists() {
            bail!(
                "{} is missing; build the release binaries with cargo build --release --workspace --bins",
                bin.join(b).display()
            );
        }
    }
    for s in &o.systems {
        system(s)?;
    }
    let (image, trace) = inputs(&o, &bin)?;
    let image_size = std::fs::metadata(&image)?.len();
    let disk = opts::Disk::resolve(&o, &o.dir)?;
    if disk.slow_bps.is_some() && acct::block_device(&o.dir).is_none() {
        bail!(
            "{} is on no block device; --slow-disk-mbps cannot throttle it",
            o.dir.display()
        );
    }
    let inp = Inputs {
        bin,
        image,
        image_size,
        trace,
        disk,
    };
    std::fs::create_dir_all(&o.out)?;
    let results = o.out.join("results.jsonl");
    let meta = report::Meta::new(&o, &inp)?;
    for name in &o.systems {
        for &n in &o.nodes {
            let runs = match (name.as_str(), o.http_large_runs) {
                ("prepro-http", Some(r)) if n >= 16 => r,
                _ => o.runs,
            };
            for run in 1..=runs {
                let mut sys = system(name)?;
                eprintln!("emu: {name} N={n} run {run}/{runs}");
                let mut v = one_run(&o, sys.as_mut(), n, run, &inp)
                    .with_context(|| format!("{name} with {n} nodes, run {run}"))?;
                v["meta"] = meta.to_json();
                eprintln!("emu:   {}", v["deploy"]);
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&results)
                    .with_context(|| format!("opening {}", results.display()))?;
                writeln!(f, "{v}")?;
            }
        }
    }
    report::write(&results, &o.out)
}

/// Entry point: runs the matrix; Ctrl-C or SIGTERM removes every namespace,
/// process, mount and cgroup of this run before exiting.
pub async fn run(o: Opts) -> Result<()> {
    let prefix = format!("bvb{}", std::process::id());
    let dir = o.dir.clone();
    let job = tokio::task::spawn_blocking(move || run_blocking(o));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = job => r.context("the experiment thread panicked")?,
        _ = tokio::signal::ctrl_c() => interrupted(&prefix, &dir),
        _ = term.recv() => interrupted(&prefix, &dir),
    }
}

fn interrupted(prefix: &str, dir: &Path) -> Result<()> {
    eprintln!("emu: interrupted; removing namespaces, processes, mounts and cgroups");
    net::clean_prefix(prefix);
    net::unmount_under(dir);
    acct::clean(Some(std::process::id()));
    std::process::exit(130);
}

/// `blobvirt-bench emu-clean`: removes what an earlier run (the one of
/// `pid`, or every run) left behind: namespaces and their processes,
/// mounts under `dir`, and the per-node cgroups (and what is in them).
pub fn clean_all(dir: &Path, pid: Option<u32>) -> Result<()> {
    net::clean_prefix(&pid.map_or("bvb".to_string(), |p| format!("bvb{p}-")));
    net::unmount_under(dir);
    acct::clean(pid);
    Ok(())
}
