//! What the hook does per libvirt operation (`DOMAIN OP SUBOP EXTRA`, the
//! domain XML on stdin). It talks only to mirrord's control socket, never
//! to libvirt (libvirtd waits for the hook: calling back deadlocks).
//!
//! * `prepare begin`: for each writable blobvirt disk, `claim` it for the
//!   domain (mirrord checks that the volume exists and takes the writer
//!   lease), then start its boot-profile `prefetch`; read-only/shareable
//!   disks are only checked and prefetched. On any failure the claims made
//!   so far are given back and the start fails with one line on stderr.
//! * `release end`: `unclaim` each writable disk: mirrord waits for the
//!   close-to-open commit, then drops the claim and the lease.
//! * `reconnect begin` / `attach begin` (libvirtd restarted, or an outside
//!   QEMU attached): claim again, idempotently; failures are warnings.
//! * `migrate begin`: refused for writable blobvirt disks (a live migration
//!   would need a lease handover mirrord does not do).
//! * everything else (`start`, `started`, `stopped`, `restore`, unknown
//!   operations): nothing. `restore` is followed by `prepare`.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use mirrord_client::{Client, ControlError};

use crate::config::{ConfigError, HookConfig};
use crate::disks::{self, BlobvirtDisk, XmlError};

/// Longest wait for one claim/prefetch request (attach reads the chunk map).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for one unclaim (it waits for the commit of the writes).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);

/// What an operation asks the hook to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Prepare,
    Release,
    Reclaim,
    Migrate,
    Nothing,
}

impl Action {
    pub fn of(op: &str, subop: &str) -> Action {
        match (op, subop) {
            ("prepare", "begin") => Action::Prepare,
            ("release", "end") => Action::Release,
            ("reconnect" | "attach", "begin") => Action::Reclaim,
            ("migrate", "begin") => Action::Migrate,
            _ => Action::Nothing,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Xml(#[from] XmlError),
    #[error("cannot read the domain XML from stdin: {0}; libvirt passes it to the hook")]
    Stdin(std::io::Error),
    #[error("usage: blobvirt-hook DOMAIN OPERATION SUBOPERATION EXTRA (libvirt calls it with the domain XML on stdin)")]
    Usage,
    #[error("domain {domain} cannot start: {msg}")]
    Start { domain: String, msg: String },
    #[error("domain {domain} cannot migrate: its disk {target} is the writable blobvirt volume {volume}, and blobvirt does not hand a volume's writer lease over during migration; shut the domain down and start it on the other node")]
    Migrate {
        domain: String,
        target: String,
        volume: String,
    },
    #[error("domain {domain}: {msg}")]
    Release { domain: String, msg: String },
    #[error("cannot start the hook's async runtime: {0}; check the process limits")]
    Runtime(std::io::Error),
}

/// What a successful run did, for tests and for warnings on stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Volumes claimed, prefetched or released, in disk order.
    pub volumes: Vec<String>,
    /// Lines to print on stderr (reconnect failures).
    pub warnings: Vec<String>,
}

/// A control call with a time limit; failures become mirrord's sentence.
async fn call<T>(
    volume: &str,
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, ControlError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ControlError::Refused(m))) => Err(m),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "mirrord did not answer about volume {volume} within {} s; check mirrord's log",
            limit.as_secs()
        )),
    }
}

/// Runs the hook for `args` (without argv[0]) with the domain XML from
/// `stdin` and the configuration at `cfg_path`.
pub fn run(args: &[String], stdin: impl Read, cfg_path: &Path) -> Result<Outcome, HookError> {
    let [domain, op, subop, ..] = args else {
        return Err(HookError::Usage);
    };
    let action = Action::of(op, subop);
    if action == Action::Nothing {
        return Ok(Outcome::default());
    }
    let cfg = HookConfig::load(cfg_path)?;
    if cfg.pools.is_empty() {
        return Ok(Outcome::default());
    }
    let mut xml = String::new();
    let mut stdin = stdin;
    stdin.read_to_string(&mut xml).map_err(HookError::Stdin)?;
    let dom = disks::parse(&xml, &cfg)?;
    if dom.disks.is_empty() {
        return Ok(Outcome::default());
    }
    let domain = if domain.is_empty() || domain == "-" {
        dom.name.clone().unwrap_or_default()
    } else {
        domain.clone()
    };
    if action == Action::Migrate {
        if let Some(d) = dom.disks.iter().find(|d| !d.shared) {
            return Err(HookError::Migrate {
                domain,
                target: d.target.clone().unwrap_or_else(|| "?".into()),
                volume: d.volume.clone(),
            });
        }
        return Ok(Outcome::default());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HookError::Runtime)?;
    rt.block_on(async {
        match action {
            Action::Prepare => prepare(&domain, &dom.disks).await,
            Action::Release => release(&domain, &dom.disks).await,
            Action::Reclaim => Ok(reclaim(&domain, &dom.disks).await),
            Action::Migrate | Action::Nothing => Ok(Outcome::default()),
        }
    })
}

fn client(d: &BlobvirtDisk) -> Client {
    Client::new(&d.pool.control)
}

/// Claims `d` for `domain`; true when the claim is new.
async fn claim(domain: &str, d: &BlobvirtDisk) -> Result<bool, String> {
    let c = client(d);
    let o = call(&d.volume, PREPARE_TIMEOUT, c.claim(&d.volume, domain)).await?;
    Ok(o.new)
}

async fn prefetch(d: &BlobvirtDisk) -> Result<(), String> {
    let c = client(d);
    call(&d.volume, PREPARE_TIMEOUT, c.prefetch(&d.volume, false))
        .await
        .map(|_| ())
}

async fn unclaim(domain: &str, d: &BlobvirtDisk, limit: Duration) -> Result<(), String> {
    let c = client(d);
    call(&d.volume, limit, c.unclaim(&d.volume, domain))
        .await
        .map(|_| ())
}

async fn prepare(domain: &str, disks: &[BlobvirtDisk]) -> Result<Outcome, HookError> {
    let mut claimed: Vec<&BlobvirtDisk> = Vec::new();
    let mut out = Outcome::default();
    for d in disks {
        let step = async {
            if !d.shared && claim(domain, d).await? {
                claimed.push(d);
            }
            prefetch(d).await
        }
        .await;
        if let Err(msg) = step {
            for c in claimed.iter().rev() {
                let _ = unclaim(domain, c, PREPARE_TIMEOUT).await;
            }
            return Err(HookError::Start {
                domain: domain.into(),
                msg,
            });
        }
        out.volumes.push(d.volume.clone());
    }
    Ok(out)
}

async fn release(domain: &str, disks: &[BlobvirtDisk]) -> Result<Outcome, HookError> {
    let mut out = Outcome::default();
    let mut errors = Vec::new();
    for d in disks.iter().filter(|d| !d.shared) {
        match unclaim(domain, d, RELEASE_TIMEOUT).await {
            Ok(()) => out.volumes.push(d.volume.clone()),
            Err(m) => errors.push(m),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(HookError::Release {
            domain: domain.into(),
            msg: errors.join(" / "),
        })
    }
}

async fn reclaim(domain: &str, disks: &[BlobvirtDisk]) -> Outcome {
    let mut out = Outcome::default();
    for d in disks.iter().filter(|d| !d.shared) {
        match claim(domain, d).await {
            Ok(_) => out.volumes.push(d.volume.clone()),
            Err(m) => out.warnings.push(format!(
                "blobvirt-hook: warning: domain {domain} runs on volume {} without its claim: {m}",
                d.volume
            )),
        }
    }
    out
}
