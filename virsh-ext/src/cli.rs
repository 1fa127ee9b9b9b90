//! The command line: clap types for every `blobvirt` subcommand.
//!
//! To add a command, add a variant to [`Command`] (clap turns `VolImport`
//! into `vol-import`) and a match arm in `lib.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// blobvirt: versioned, striped VM disk images for libvirt.
#[derive(Debug, Parser)]
#[command(name = "blobvirt", version, about)]
pub struct Cli {
    /// URL of the pool daemon, e.g. http://127.0.0.1:7400 (`blobvirt
    /// cluster up` prints it).
    #[arg(long, env = "BLOBVIRT_POOL", global = true)]
    pub pool: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole repository (poold and chunkd nodes) on this machine.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Import a raw image file as a volume, or as a new version of one.
    VolImport(VolImport),
    /// Export a volume version to a sparse raw file.
    VolExport(VolExport),
    /// List the volumes of the pool.
    VolList(JsonFlag),
    /// Show a volume and its versions.
    VolInfo(VolInfo),
    /// Clone a volume version as a new volume (no data is copied).
    VolClone(VolClone),
    /// Delete a volume, or one version of it.
    VolDelete(VolDelete),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Start poold and N chunkd nodes in the background.
    Up(ClusterUp),
    /// Stop the processes of a cluster started with `cluster up`.
    Down(ClusterDown),
    /// Restart stopped processes of a cluster, on the addresses they had.
    Restart(ClusterRestart),
    /// Show nodes, stored bytes and metadata totals.
    Status(ClusterStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    Redb,
    Sled,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Sled => "sled",
        }
    }
}

#[derive(Debug, Args)]
pub struct ClusterUp {
    /// Number of chunkd nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Directory for data, logs and cluster.json.
    #[arg(long)]
    pub dir: PathBuf,
    /// Copies of every chunk.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Metadata engine of poold.
    #[arg(long, value_enum, default_value_t = Engine::Redb)]
    pub engine: Engine,
    /// Seconds an unreferenced chunk survives before GC deletes it.
    #[arg(long)]
    pub gc_grace_secs: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ClusterDown {
    #[arg(long)]
    pub dir: PathBuf,
    /// Also delete the data directories and logs.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Args)]
pub struct ClusterRestart {
    #[arg(long)]
    pub dir: PathBuf,
    /// Processes to restart (poold, chunkd-1, ...); default: every stopped one.
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ClusterStatus {
    /// Read the pool URL from DIR/cluster.json when --pool is not given.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VolImport {
    /// Raw image file to read.
    pub file: PathBuf,
    /// Volume name.
    pub name: String,
    /// Chunk size of a new volume: a power of two from 64K to 4M (K/M suffixes).
    #[arg(long)]
    pub chunk_size: Option<String>,
    /// Publish as the next version of an existing volume.
    #[arg(long)]
    pub new_version: bool,
    /// Label stored with the version.
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Args)]
pub struct VolExport {
    /// NAME or NAME@VERSION (default: latest).
    pub spec: String,
    /// Raw file to write (sparse where the volume has holes).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct VolInfo {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VolClone {
    /// SRC or SRC@VERSION (default: latest).
    pub src: String,
    /// Name of the new volume.
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct VolDelete {
    /// NAME (the whole volume) or NAME@VERSION.
    pub spec: String,
}
