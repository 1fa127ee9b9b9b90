//! The configuration of a local cluster: `DIR/tls/` (its own CA and one
//! certificate, `local`, for 127.0.0.1 and localhost, shared by its
//! daemons and the CLI) and `DIR/blobvirt.toml`, the same kind of file a
//! real host has in `/etc/blobvirt`, which every daemon of the cluster is
//! started with (`--config`). The CLI finds it through
//! `BLOBVIRT_CLUSTER_DIR` or `BLOBVIRT_CONFIG`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use blobvirt_core::config::Config;

/// The configuration file of a local cluster, in its directory.
pub const CONFIG_FILE: &str = "blobvirt.toml";
/// Name of the one certificate of a local cluster.
const NODE: &str = "local";

/// `DIR/blobvirt.toml`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(CONFIG_FILE)
}

/// Makes the cluster's CA and certificate unless they exist (a cluster
/// brought up again keeps its CA), or removes `[tls]` with `tls` false;
/// writes `DIR/blobvirt.toml` and installs its identity in this process.
pub fn prepare(dir: &Path, tls: bool) -> Result<PathBuf> {
    let tdir = dir.join("tls");
    if tls {
        if !tdir.join("ca.pem").exists() {
            crate::ca::init(&tdir, &format!("local {}", dir.display()))?;
        }
        if !tdir.join(format!("{NODE}.pem")).exists() {
            crate::ca::issue(
                &tdir,
                NODE,
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                &["localhost".into()],
                &tdir,
            )?;
        }
    }
    write(dir, tls, None)?;
    use_it(dir)?;
    Ok(path(dir))
}

/// Writes `DIR/blobvirt.toml`: `[tls]` when `tls`, `[cluster] pool` once
/// poold's address is known.
pub fn write(dir: &Path, tls: bool, pool: Option<&str>) -> Result<()> {
    let mut s = String::from(
        "# Written by blobvirt cluster up for the daemons of this local cluster\n# and for the CLI (BLOBVIRT_CLUSTER_DIR or BLOBVIRT_CONFIG).\n",
    );
    if let Some(p) = pool {
        s.push_str(&format!("[cluster]\npool = [{p:?}]\n"));
    }
    if tls {
        let t = dir.join("tls");
        s.push_str(&format!(
            "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            t.join("ca.pem").display().to_string(),
            t.join(format!("{NODE}.pem")).display().to_string(),
            t.join(format!("{NODE}.key")).display().to_string(),
        ));
    }
    let p = path(dir);
    blobvirt_core::fsutil::write_atomic(&p, s.as_bytes())
        .with_context(|| format!("writing {}", p.display()))
}

/// `HOST:PORT` of the pool recorded in `DIR/blobvirt.toml` by an earlier
/// `cluster up`, if any.
pub fn old_pool_addr(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path(dir)).ok()?;
    let cfg = Config::parse(&path(dir), &text).ok()?;
    let url = cfg.pool()?;
    let first = url.split(',').next()?;
    Some(
        first
            .split_once("://")
            .map_or(first, |(_, a)| a)
            .to_string(),
    )
}

/// Installs the TLS identity of the cluster in `dir` in this process (for
/// `cluster up/down/restart`, which talk to their own daemons).
pub fn use_it(dir: &Path) -> Result<()> {
    let p = path(dir);
    if p.exists() {
        blobvirt_core::tls::install_from(&Config::load(&p)?)?;
    }
    Ok(())
}
