//! blobvirt: the virsh-style command line of blobvirt.
//!
//! [`run`] executes a parsed command; [`main`] parses the arguments, runs
//! the command and prints a failure as `error: <one sentence>` on stderr
//! with exit status 1. Modules: `cli` (clap types), `cluster`/`cluster_file`/
//! `cluster_config`/`procs`/`status` (local clusters), `ca` (the cluster's
//! certificates), `vol` (volumes), `heal` (nodes, scrub, fsck), `mirror` (mirrord:
//! mount, control commands, telling it about CLI changes), `libvirt/`
//! (pool, hook install, deploy, domain snapshots), `opennebula/` (the
//! OpenNebula driver actions), `output` (tables,
//! sizes).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

pub mod ca;
pub mod cli;
pub mod cluster;
pub mod cluster_config;
pub mod cluster_file;
pub mod heal;
pub mod libvirt;
pub mod mirror;
pub mod opennebula;
pub mod output;
pub mod procs;
pub mod status;
pub mod vol;

use cli::{CaCmd, Cli, ClusterCmd, Command, NodeCmd};

/// Reads the configuration file for commands that talk to a cluster they
/// did not start, installs its TLS identity, and returns the pool URL it
/// names when none was given. `ca` and `cluster up/down/restart` read no
/// file here: the latter use their cluster's own (`DIR/blobvirt.toml`).
fn configure(cli: &Cli) -> Result<Option<String>> {
    use blobvirt_core::config::Config;
    let mut fallbacks = Vec::new();
    match &cli.command {
        Command::Ca(_)
        | Command::Cluster(ClusterCmd::Up(_) | ClusterCmd::Down(_) | ClusterCmd::Restart(_)) => {
            return Ok(cli.command.pool().map(str::to_string))
        }
        Command::Cluster(ClusterCmd::Status(a)) => {
            fallbacks.extend(a.dir.iter().map(|d| d.join(cluster_config::CONFIG_FILE)))
        }
        _ => {}
    }
    if let Some(d) = std::env::var_os("BLOBVIRT_CLUSTER_DIR") {
        fallbacks.push(std::path::Path::new(&d).join(cluster_config::CONFIG_FILE));
    }
    let cfg = Config::locate(cli.config.as_deref(), &fallbacks)?;
    blobvirt_core::tls::install_from(&cfg)?;
    let pool = cli
        .command
        .pool()
        .map(str::to_string)
        .or_else(|| cfg.pool());
    let _ = CONFIG.set(cfg);
    Ok(pool)
}

static CONFIG: std::sync::OnceLock<blobvirt_core::config::Config> = std::sync::OnceLock::new();

/// The configuration file this command read, if it read one.
pub fn config() -> Option<&'static blobvirt_core::config::Config> {
    CONFIG.get()
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<()> {
    let pool = configure(&cli)?;
    let pool = pool.as_deref();
    match cli.command {
        Command::Ca(c) => match c {
            CaCmd::Init(a) => ca::cmd_init(a),
            CaCmd::Issue(a) => ca::cmd_issue(a),
        },
        Command::Cluster(c) => match c {
            ClusterCmd::Up(a) => cluster::up(a).await,
            ClusterCmd::Down(a) => cluster::down(a).await,
            ClusterCmd::Restart(a) => cluster::restart(a).await,
            ClusterCmd::Status(a) => status::status(pool, a).await,
        },
        Command::VolImport(a) => vol::import(pool, a).await,
        Command::VolExport(a) => vol::export(pool, a).await,
        Command::VolList(a) => vol::list(pool, a).await,
        Command::VolInfo(a) => vol::info(pool, a).await,
        Command::VolClone(a) => vol::clone(pool, a).await,
        Command::VolDelete(a) => vol::delete(pool, a).await,
        Command::MirrorStatus(a) => mirror::status(a).await,
        Command::Commit(a) => mirror::commit(a).await,
        Command::Clone(a) => mirror::clone(a).await,
        Command::Attach(a) => mirror::attach(a).await,
        Command::Detach(a) => mirror::detach(a).await,
        Command::Deploy(a) => libvirt::deploy::deploy(pool, a).await,
        Command::SnapshotCreate(a) => libvirt::snapshot::create(pool, a).await,
        Command::SnapshotCreateAll(a) => libvirt::snapshot::create_all(pool, a).await,
        Command::SnapshotList(a) => libvirt::snapshot_admin::list(pool, a).await,
        Command::SnapshotRevert(a) => libvirt::snapshot_admin::revert(pool, a).await,
        Command::SnapshotDelete(a) => libvirt::snapshot_admin::delete(pool, a).await,
        Command::SnapshotExport(a) => libvirt::snapshot_admin::export(pool, a).await,
        Command::PoolDefine(a) => libvirt::pool::pool_define(pool, a).await,
        Command::PoolUndefine(a) => libvirt::pool::pool_undefine(a).await,
        Command::HookInstall(a) => libvirt::pool::hook_install(a).await,
        Command::Node(c) => match c {
            NodeCmd::List(a) => heal::node_list(pool, a).await,
            NodeCmd::Drain(a) => heal::node_drain(pool, a).await,
            NodeCmd::Remove(a) => heal::node_remove(pool, a).await,
        },
        Command::Scrub(a) => heal::scrub(pool, a).await,
        Command::Fsck(a) => heal::fsck(pool, a).await,
        Command::One(c) => opennebula::run(pool, c).await,
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

/// The error as one line: its message, then any cause it does not already
/// contain (gRPC statuses are never appended: their message is the sentence).
pub fn sentence(e: &anyhow::Error) -> String {
    // poold's own refusals carry user sentences; transport failures do not.
    if let Some(st) = e.chain().find_map(|c| c.downcast_ref::<tonic::Status>()) {
        use tonic::Code;
        if matches!(
            st.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ) {
            let top = e.to_string();
            let why = if top == st.message() || top.is_empty() {
                st.message().to_string()
            } else {
                top
            };
            // Over TLS 1.3 a refused client certificate looks like a
            // closed connection; so does a poold that died.
            let tls_hint = match st.code() {
                Code::Cancelled => blobvirt_core::tls::closed_hint().unwrap_or_default(),
                _ => String::new(),
            };
            let hint = if blobvirt_core::tls::installed().is_none() {
                " (if the cluster uses TLS, give its https:// URL and set [tls] in the configuration file)"
            } else {
                tls_hint.as_str()
            };
            return format!(
                "poold did not answer ({why}); check that it runs with blobvirt cluster status{hint} and try again"
            );
        }
    }
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        if cause.is::<tonic::Status>() {
            break;
        }
        let s = cause.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
    }
    out
}

/// The whole program: parse, run, report.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing();
    // OpenNebula shows a driver's stderr lines as they are.
    let plain = matches!(cli.command, Command::One(_));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}; check the process limits");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(run(cli));
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if plain {
                eprintln!("{}", sentence(&e));
            } else {
                eprintln!("error: {}", sentence(&e));
            }
            ExitCode::FAILURE
        }
    }
}
