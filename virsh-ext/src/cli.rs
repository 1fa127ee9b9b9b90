//! The command line: clap types for every `blobvirt` subcommand.
//!
//! To add a command, add a variant to [`Command`] (clap turns `VolImport`
//! into `vol-import`) and a match arm in `lib.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// blobvirt: versioned, striped VM disk images for libvirt.
#[derive(Debug, Parser)]
#[command(
    name = "blobvirt",
    version,
    about,
    after_help = "Volumes are named NAME; a version of one is NAME@VERSION (NAME@2), and NAME alone means its latest version. --pool (or BLOBVIRT_POOL, else the configuration file) is the poold URL of the commands that talk to poold; the mirror commands find mirrord with --control, BLOBVIRT_CONTROL or --dir. Every read command takes --json."
)]
pub struct Cli {
    /// Configuration file: the pool and this host's TLS certificate
    /// (default: BLOBVIRT_CONFIG, else BLOBVIRT_CLUSTER_DIR/blobvirt.toml,
    /// else /etc/blobvirt/blobvirt.toml).
    #[arg(long, env = blobvirt_core::config::ENV, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole repository (poold and chunkd nodes) on this machine.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The cluster's certificate authority: one CA, a certificate per node.
    #[command(subcommand)]
    Ca(CaCmd),
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
    /// Show the volumes attached to mirrord: version, local and dirty chunks.
    MirrorStatus(MirrorStatus),
    /// Publish a mirrored volume's local changes as its next version.
    Commit(MirrorCommit),
    /// Make a mirrored volume's current content a new volume; the mirror goes on with it.
    Clone(MirrorClone),
    /// Attach a volume to mirrord (at its latest or a given version).
    Attach(MirrorAttach),
    /// Detach a volume from mirrord (it must not be open).
    Detach(MirrorDetach),
    /// Clone an image N times and define and start one domain per clone.
    Deploy(Deploy),
    /// Snapshot a domain's blobvirt disks (COMMIT) and register it with libvirt.
    SnapshotCreate(SnapshotCreate),
    /// Snapshot many domains at once: all pause, all COMMIT phase 1s, all resume.
    SnapshotCreateAll(SnapshotCreateAll),
    /// List a domain's snapshots (from the repository's version labels).
    SnapshotList(SnapshotList),
    /// Point a stopped domain's volumes at a snapshot's versions (O(1)).
    SnapshotRevert(SnapshotRevert),
    /// Delete a snapshot's versions and libvirt's metadata of it.
    SnapshotDelete(SnapshotDomain),
    /// Write a snapshot's disks as plain raw files DIR/<target>.raw.
    SnapshotExport(SnapshotExport),
    /// Define, start and autostart a libvirt dir pool on the mirrord mount; install the hook.
    PoolDefine(PoolDefine),
    /// Stop and remove a libvirt pool made by pool-define (the volumes stay).
    PoolUndefine(PoolUndefine),
    /// Install blobvirt-hook as /etc/libvirt/hooks/qemu.d/50-blobvirt and activate it.
    HookInstall(HookInstall),
    /// The chunkd nodes: list them, drain one, remove one.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Re-verify every stored chunk on every node and repair corrupt replicas.
    Scrub(Scrub),
    /// Recount references from the version roots and count every chunk's replicas.
    Fsck(Fsck),
    /// OpenNebula's DS_MAD and TM_MAD `blobvirt` actions (run by the
    /// driver scripts of packaging/opennebula).
    #[command(subcommand)]
    One(crate::opennebula::OneCmd),
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Every chunkd node: state (up, down, out), draining, chunks and bytes.
    List(JsonFlag),
    /// Move every chunk off a node (it serves reads until then).
    Drain(NodeDrain),
    /// Forget a stopped node; refused while it holds the only copy of a chunk.
    Remove(NodeRemove),
}

#[derive(Debug, Args)]
pub struct NodeDrain {
    #[command(flatten)]
    pub pool: PoolArg,
    /// Node id (see `blobvirt node list`).
    pub node: String,
    /// Take the node back into placement instead.
    #[arg(long)]
    pub undo: bool,
}

#[derive(Debug, Args)]
pub struct NodeRemove {
    #[command(flatten)]
    pub pool: PoolArg,
    /// Node id (see `blobvirt node list`).
    pub node: String,
    /// Remove it even if chunks then have no copy left (they are lost).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct Scrub {
    #[command(flatten)]
    pub pool: PoolArg,
    /// Run a full pass now and wait for it (the background scrub runs at
    /// the `[chunkd] scrub_mbps` rate by itself).
    #[arg(long)]
    pub now: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Fsck {
    #[command(flatten)]
    pub pool: PoolArg,
    /// Fix what is found: copy missing replicas, queue orphan chunks for GC.
    #[arg(long)]
    pub repair: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Create the cluster's CA (ca.pem, ca.key) in --dir.
    Init(CaInit),
    /// Issue NODE.pem and NODE.key from the CA in --dir.
    Issue(CaIssue),
}

#[derive(Debug, Args)]
pub struct CaInit {
    /// Directory of the CA.
    #[arg(long, default_value = "/etc/blobvirt/tls")]
    pub dir: PathBuf,
    /// Name of the cluster, in the CA's subject.
    #[arg(long, default_value = "cluster")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CaIssue {
    /// Node name: the certificate's common name (and a DNS name in it).
    pub node: String,
    /// An IP address clients use to reach the node (repeat for more).
    #[arg(long)]
    pub ip: Vec<std::net::IpAddr>,
    /// A DNS name clients use to reach the node (repeat for more).
    #[arg(long)]
    pub dns: Vec<String>,
    /// Directory of the CA.
    #[arg(long, default_value = "/etc/blobvirt/tls")]
    pub dir: PathBuf,
    /// Where to write NODE.pem and NODE.key (default: --dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
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
    /// In an etcd cluster (--etcd-endpoints).
    Etcd,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Sled => "sled",
            Engine::Etcd => "etcd",
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
    /// Copies of every chunk, from 1 to the number of nodes (default 2, or
    /// 1 on a one-node cluster).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Metadata engine of poold.
    #[arg(long, value_enum, default_value_t = Engine::Redb)]
    pub engine: Engine,
    /// Client URLs of the etcd members, with --engine etcd.
    #[arg(long, value_name = "URL[,URL…]")]
    pub etcd_endpoints: Option<String>,
    /// Prefix of this cluster's keys in etcd (one cluster per prefix; cluster
    /// down --purge does not delete them).
    #[arg(long, default_value = "/blobvirt/")]
    pub etcd_prefix: String,
    /// Seconds an unreferenced chunk survives before GC deletes it.
    #[arg(long)]
    pub gc_grace_secs: Option<u64>,
    /// Also start mirrord, showing every volume as a raw file under DIR.
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,
    /// Cache directory of mirrord (default: <--dir>/mirror-cache).
    #[arg(long, value_name = "DIR", requires = "mount")]
    pub cache: Option<PathBuf>,
    /// Also define the libvirt pool on the mount and install the hook
    /// (as pool-define; cluster down removes the pool).
    #[arg(long, requires = "mount")]
    pub libvirt: bool,
    /// Name of the libvirt pool of --libvirt.
    #[arg(long, value_name = "NAME", default_value = "blobvirt")]
    pub libvirt_pool: String,
    /// Plain HTTP/2 between the daemons instead of mutual TLS under a CA
    /// made in DIR/tls.
    #[arg(long)]
    pub no_tls: bool,
}

#[derive(Debug, Args)]
pub struct ClusterDown {
    #[arg(long)]
    pub dir: PathBuf,
    /// Also delete the data directories and logs.
    #[arg(long)]
    pub purge: bool,
    /// Stop even while volumes are open for writing or claimed by domains
    /// on the mount (their changes are committed per policy; the domains
    /// lose their disks).
    #[arg(long)]
    pub force: bool,
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
    #[command(flatten)]
    pub pool: PoolArg,
    /// Read the pool URL from DIR/cluster.json when --pool is not given.
    #[arg(long, env = "BLOBVIRT_CLUSTER_DIR")]
    pub dir: Option<PathBuf>,
    /// Print JSON instead of text (field names: virsh-ext/README.md).
    #[arg(long)]
    pub json: bool,
}

/// The poold URL, on the commands that talk to poold.
#[derive(Debug, Args, Clone, Default)]
pub struct PoolArg {
    /// URL of the pool daemon, e.g. https://10.0.0.1:7000 (`blobvirt
    /// cluster up` prints it; default: the configuration file's pool).
    #[arg(long, env = "BLOBVIRT_POOL")]
    pub pool: Option<String>,
}

impl Command {
    /// The `--pool` of the commands that talk to poold.
    pub fn pool(&self) -> Option<&str> {
        let p = match self {
            Command::Cluster(ClusterCmd::Status(a)) => &a.pool,
            Command::VolImport(a) => &a.pool,
            Command::VolExport(a) => &a.pool,
            Command::VolList(a) => &a.pool,
            Command::VolInfo(a) => &a.pool,
            Command::VolClone(a) => &a.pool,
            Command::VolDelete(a) => &a.pool,
            Command::Deploy(a) => &a.pool,
            Command::SnapshotCreate(a) => &a.pool,
            Command::SnapshotCreateAll(a) => &a.pool,
            Command::SnapshotList(a) => &a.pool,
            Command::SnapshotRevert(a) => &a.pool,
            Command::SnapshotDelete(a) => &a.pool,
            Command::SnapshotExport(a) => &a.pool,
            Command::PoolDefine(a) => &a.pool,
            Command::Node(NodeCmd::List(a)) => &a.pool,
            Command::Node(NodeCmd::Drain(a)) => &a.pool,
            Command::Node(NodeCmd::Remove(a)) => &a.pool,
            Command::Scrub(a) => &a.pool,
            Command::Fsck(a) => &a.pool,
            _ => return None,
        };
        p.pool.as_deref()
    }
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    #[command(flatten)]
    pub pool: PoolArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VolImport {
    #[command(flatten)]
    pub pool: PoolArg,
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
    #[command(flatten)]
    pub ctl: ControlArgs,
}

#[derive(Debug, Args)]
pub struct VolExport {
    #[command(flatten)]
    pub pool: PoolArg,
    /// NAME or NAME@VERSION (default: latest).
    pub spec: String,
    /// Raw file to write (sparse where the volume has holes).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct VolInfo {
    #[command(flatten)]
    pub pool: PoolArg,
    /// NAME, or NAME@VERSION to show that version only.
    pub name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VolClone {
    #[command(flatten)]
    pub pool: PoolArg,
    /// SRC or SRC@VERSION (default: latest).
    pub src: String,
    /// Name of the new volume.
    pub dst: String,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

#[derive(Debug, Args)]
pub struct VolDelete {
    #[command(flatten)]
    pub pool: PoolArg,
    /// NAME (the whole volume) or NAME@VERSION.
    pub spec: String,
    /// Delete even while the volume is open or being written (here or on
    /// another host); the writer's uncommitted changes are lost.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

/// Where mirrord's control socket is: `--control`, `BLOBVIRT_CONTROL`, the
/// cluster.json of `--dir`/`BLOBVIRT_CLUSTER_DIR`, else the default.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// mirrord's control socket.
    #[arg(long, env = "BLOBVIRT_CONTROL", value_name = "SOCKET")]
    pub control: Option<PathBuf>,
    /// Take the control socket from DIR/cluster.json (cluster up --mount).
    #[arg(long, env = "BLOBVIRT_CLUSTER_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MirrorStatus {
    #[command(flatten)]
    pub ctl: ControlArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MirrorCommit {
    /// The mirrored volume whose local changes become its next version.
    pub name: String,
    /// Return after phase 1 (the snapshot point); phase 2 runs in the background.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

#[derive(Debug, Args)]
pub struct MirrorClone {
    /// The mirrored volume.
    pub name: String,
    /// Name of the new volume.
    pub new: String,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

#[derive(Debug, Args)]
pub struct MirrorAttach {
    /// NAME or NAME@VERSION (default: latest).
    pub spec: String,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

#[derive(Debug, Args)]
pub struct MirrorDetach {
    /// The volume to stop mirroring on this host.
    pub name: String,
    /// Detach even when the mirror holds uncommitted changes, throwing
    /// them away.
    #[arg(long)]
    pub discard: bool,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

/// Which libvirt to talk to.
#[derive(Debug, Args)]
pub struct LibvirtArgs {
    /// libvirt connection URI.
    #[arg(
        long = "connect",
        short = 'c',
        env = "LIBVIRT_DEFAULT_URI",
        default_value = "qemu:///system"
    )]
    pub connect: String,
}

#[derive(Debug, Args)]
pub struct Deploy {
    #[command(flatten)]
    pub pool: PoolArg,
    /// IMAGE or IMAGE@VERSION (default: latest).
    pub image: String,
    /// Number of domains.
    #[arg(long)]
    pub count: usize,
    /// Domain XML whose first disk is a volume of the blobvirt pool (or a
    /// file under the mirrord mount).
    #[arg(long)]
    pub template: PathBuf,
    /// Domains and clones are named <prefix>-1 .. <prefix>-N (default: IMAGE).
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// libvirt URIs; domains are spread round-robin (default qemu:///system).
    #[arg(long = "connect", short = 'c')]
    pub connect: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotCreate {
    #[command(flatten)]
    pub pool: PoolArg,
    /// The libvirt domain.
    pub domain: String,
    /// Snapshot name (default: snap-<unix time>).
    pub name: Option<String>,
    /// Freeze the guest file systems with the guest agent (pause if unavailable).
    #[arg(long)]
    pub quiesce: bool,
    /// Print JSON instead of text (field names: virsh-ext/README.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub lv: LibvirtArgs,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotCreateAll {
    #[command(flatten)]
    pub pool: PoolArg,
    /// Domains to snapshot (or --prefix).
    pub domains: Vec<String>,
    /// Also every running domain whose name starts with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Snapshot name (default: snap-<unix time>).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub quiesce: bool,
    /// Print JSON instead of text (field names: virsh-ext/README.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub lv: LibvirtArgs,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotList {
    #[command(flatten)]
    pub pool: PoolArg,
    /// The libvirt domain.
    pub domain: String,
    /// Print JSON instead of text (field names: virsh-ext/README.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotRevert {
    #[command(flatten)]
    pub pool: PoolArg,
    /// The libvirt domain.
    pub domain: String,
    /// The snapshot's name (see snapshot-list).
    pub name: String,
    /// Stop (destroy) the domain first when it runs.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub lv: LibvirtArgs,
    #[command(flatten)]
    pub ctl: ControlArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotDomain {
    #[command(flatten)]
    pub pool: PoolArg,
    /// The libvirt domain.
    pub domain: String,
    /// The snapshot's name (see snapshot-list).
    pub name: String,
    #[command(flatten)]
    pub lv: LibvirtArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotExport {
    #[command(flatten)]
    pub pool: PoolArg,
    /// The libvirt domain.
    pub domain: String,
    /// The snapshot's name (see snapshot-list).
    pub name: String,
    /// Directory for the raw files.
    #[arg(value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct PoolDefine {
    #[command(flatten)]
    pub pool: PoolArg,
    /// libvirt pool name.
    #[arg(long, default_value = "blobvirt")]
    pub name: String,
    /// The mirrord mount, the pool's target (default: the mount of --dir's cluster).
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,
    #[command(flatten)]
    pub ctl: ControlArgs,
    #[command(flatten)]
    pub lv: LibvirtArgs,
    /// Do not install the hook.
    #[arg(long)]
    pub no_hook: bool,
}

#[derive(Debug, Args)]
pub struct PoolUndefine {
    /// libvirt pool name.
    #[arg(long, default_value = "blobvirt")]
    pub name: String,
    #[command(flatten)]
    pub lv: LibvirtArgs,
}

#[derive(Debug, Args)]
pub struct HookInstall {
    #[command(flatten)]
    pub lv: LibvirtArgs,
}
