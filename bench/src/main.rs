//! blobvirt benchmarks. Each suite starts its own local cluster with the
//! release binaries, takes several runs, and prints a Markdown section with
//! medians, min–max spreads and ratios against a baseline measured in the
//! same run (`cp` of the same file to the same disk).

mod cluster;
mod dataplane;
mod emu;
mod meta;
mod mirror;
mod procstat;
mod repo;
mod stats;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "blobvirt-bench")]
struct Args {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// Import/export throughput vs cp, publish latency vs volume size, daemon memory.
    Repo(repo::Opts),
    /// poold on etcd (3 members) against redb: import's publish, Resolve,
    /// publish of 16 chunks and delete of a 2 GiB volume.
    Meta(meta::Opts),
    /// CPU-seconds per GiB (client + every daemon) and throughput vs cp of
    /// vol-import, vol-export and a cold read through the mirrord mount.
    Dataplane(dataplane::Opts),
    /// mirrord: mount reads vs the cache file and vol-export, a slowed chunkd, COMMIT times.
    Mirror(mirror::Opts),
    /// Generate a sparse raw image with seeded incompressible data extents.
    GenImage(workload::image::Opts),
    /// Generate a synthetic boot read trace inside an image's data regions.
    GenTrace(workload::gentrace::Opts),
    /// One emulated VM instance: prepare, replay a trace, write (stdin/stdout protocol).
    Instance(workload::instance::Opts),
    /// Multideployment and multisnapshotting on emulated nodes (namespaces,
    /// shaped links) for blobvirt and the baselines; root only.
    Emu(emu::Opts),
    /// Rebuild the tables and plots of `emu` from OUT/results.jsonl.
    EmuReport {
        #[arg(long, default_value = "bench/results/emu")]
        out: std::path::PathBuf,
    },
    /// Remove namespaces, processes and mounts an interrupted `emu` left.
    EmuClean {
        #[arg(long, default_value = "/var/tmp/blobvirt-emu")]
        dir: std::path::PathBuf,
        /// Only the run of the `emu` process with this PID (default: all).
        #[arg(long)]
        pid: Option<u32>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().suite {
        Suite::Repo(o) => repo::run(o).await,
        Suite::Meta(o) => meta::run(o).await,
        Suite::Mirror(o) => mirror::run(o).await,
        Suite::Dataplane(o) => dataplane::run(o).await,
        Suite::GenImage(o) => workload::image::run(o),
        Suite::GenTrace(o) => workload::gentrace::run(o),
        Suite::Instance(o) => workload::instance::run(o),
        Suite::Emu(o) => emu::run(o).await,
        Suite::EmuReport { out } => emu::report::write(&out.join("results.jsonl"), &out),
        Suite::EmuClean { dir, pid } => emu::clean_all(&dir, pid),
    }
}
