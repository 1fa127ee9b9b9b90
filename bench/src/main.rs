//! blobvirt benchmarks. Each suite starts its own local cluster with the
//! release binaries, takes several runs, and prints a Markdown section with
//! medians, min–max spreads and ratios against a baseline measured in the
//! same run (`cp` of the same file to the same disk).

mod cluster;
mod mirror;
mod repo;
mod stats;

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
    /// mirrord: mount reads vs the cache file and vol-export, a slowed chunkd, COMMIT times.
    Mirror(mirror::Opts),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().suite {
        Suite::Repo(o) => repo::run(o).await,
        Suite::Mirror(o) => mirror::run(o).await,
    }
}
