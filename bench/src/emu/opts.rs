//! The command line of `blobvirt-bench emu`: node counts, runs, systems,
//! image, trace, snapshot writes, link model and directories.

use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Node counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32")]
    pub nodes: Vec<usize>,
    /// Runs per system and node count (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Runs of prepro-http at 16 nodes and more (each one moves N × the
    /// image through the server's link); default: --runs.
    #[arg(long)]
    pub http_large_runs: Option<usize>,
    /// Systems: blobvirt, prepro-http, prepro-chain, qcow2-nbd.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "blobvirt,prepro-chain,qcow2-nbd,prepro-http"
    )]
    pub systems: Vec<String>,
    /// Image to deploy; default: a synthetic sparse image made in --dir.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Size of the synthetic image.
    #[arg(long, default_value_t = 2048)]
    pub image_mib: u64,
    /// Fraction of the synthetic image that holds data.
    #[arg(long, default_value_t = 0.4)]
    pub data_fraction: f64,
    /// Read trace; default: a synthetic boot set of --fraction of the image.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Fraction of the image the synthetic boot set reads.
    #[arg(long, default_value_t = 0.08)]
    pub fraction: f64,
    /// MiB each instance writes before the snapshot (0: no snapshot).
    #[arg(long, default_value_t = 15)]
    pub write_mib: u64,
    /// Size of each scattered write.
    #[arg(long, default_value_t = 256)]
    pub write_block_kib: u64,
    /// Link rate of every node (and of the server), Mbit/s.
    #[arg(long, default_value_t = 1000)]
    pub rate_mbit: u64,
    /// tbf latency (queue bound) of every link, ms.
    #[arg(long, default_value_t = 0.2)]
    pub latency_ms: f64,
    /// blobvirt replication factor.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Work directory (images, node directories).
    #[arg(long, default_value = "/var/tmp/blobvirt-emu")]
    pub dir: PathBuf,
    /// Directory of the release binaries.
    #[arg(long, default_value = "target/release")]
    pub bin: PathBuf,
    /// Results: OUT/results.jsonl (appended), tables and plots.
    #[arg(long, default_value = "bench/results/emu")]
    pub out: PathBuf,
    /// Label of this experiment in the results (e.g. the trace's name).
    #[arg(long, default_value = "b")]
    pub label: String,
}
