//! `blobvirt one`: the OpenNebula driver actions, in Rust, behind the
//! small scripts of `packaging/opennebula/remotes/` (DS_MAD and TM_MAD
//! `blobvirt`, see `packaging/opennebula/README.md`).
//!
//! - `one ds ACTION ID` runs a datastore action where one_datastore runs it
//!   (the front-end), with `DS_DRIVER_ACTION_DATA` on stdin (`ds`).
//! - `one tm ACTION ARGS…` runs the host half of a transfer action; the TM
//!   script on the front-end splits `host:path` and runs it on the host
//!   through `$SSH` (`tm`).
//!
//! Naming (fixed, so that no action needs oned): image `ID` is volume
//! `one-ID`; disk `i` of VM `VMID` cloned from an image is volume
//! `one-VMID-i`; disk snapshot `S` of a volume is its version labelled
//! `one-snap-S`. A failure prints one sentence on stderr with no prefix,
//! which is what OpenNebula shows the user.

pub mod action_data;
pub mod ds;
pub mod tm;

use std::path::PathBuf;

use anyhow::{bail, Result};
use blobvirt_core::proto as pb;
use clap::{Args, Subcommand, ValueEnum};

/// `blobvirt one …`.
#[derive(Debug, Subcommand)]
pub enum OneCmd {
    /// A datastore (DS_MAD) action: stdin is the base64
    /// DS_DRIVER_ACTION_DATA, the argument the image or datastore id.
    Ds(DsArgs),
    /// The host half of a transfer (TM_MAD) action, run on the host the
    /// action names.
    #[command(subcommand)]
    Tm(tm::TmCmd),
}

#[derive(Debug, Args)]
pub struct DsArgs {
    pub action: DsAction,
    /// The image id (the datastore id for monitor, a request id for stat).
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[clap(rename_all = "snake_case")]
pub enum DsAction {
    Cp,
    Mkfs,
    Stat,
    Clone,
    Rm,
    Monitor,
    SnapDelete,
    SnapRevert,
    SnapFlatten,
}

/// Runs `blobvirt one …`.
pub async fn run(pool: Option<&str>, cmd: OneCmd) -> Result<()> {
    match cmd {
        OneCmd::Ds(a) => ds::run(pool, a).await,
        OneCmd::Tm(c) => tm::run(pool, c).await,
    }
}

/// The volume of image `id`.
pub fn image_volume(id: &str) -> Result<String> {
    check_id("image", id)?;
    Ok(format!("one-{id}"))
}

/// The volume of disk `disk` of VM `vmid` when it is a clone of an image.
pub fn disk_volume(vmid: &str, disk: &str) -> String {
    format!("one-{vmid}-{disk}")
}

/// The version label of disk snapshot `snap`.
pub fn snap_label(snap: &str) -> String {
    format!("one-snap-{snap}")
}

fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("{what} id {id:?} is not a number; OpenNebula passes the numeric id as the argument");
    }
    Ok(())
}

/// Refuses volume names OpenNebula cannot carry: `host:path` arguments are
/// split at the first colon, so a SOURCE with one would name another host.
pub fn check_source(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        bail!(
            "{what} is empty; register the image in a blobvirt datastore so that it has a SOURCE"
        );
    }
    if name.contains(':') {
        bail!("{what} {name} contains a colon, which OpenNebula reads as HOST:PATH; register the image again in a blobvirt datastore, whose volumes are named one-ID");
    }
    if name.contains('/') || name.contains('@') || name.starts_with('-') {
        bail!("{what} {name} is not a blobvirt volume name (no '/', '@' or leading '-'); give the SOURCE that the blobvirt datastore printed");
    }
    Ok(())
}

/// The version of `b` labelled `label`.
pub fn version_labelled(b: &pb::BlobInfo, label: &str) -> Option<u64> {
    b.versions
        .iter()
        .filter(|v| v.label == label)
        .map(|v| v.version)
        .max()
}

/// The version of snapshot `snap` of volume `b`, or a sentence saying it
/// has none.
pub fn snapshot_version(b: &pb::BlobInfo, snap: &str) -> Result<u64> {
    match version_labelled(b, &snap_label(snap)) {
        Some(v) => Ok(v),
        None => bail!(
            "volume {} has no snapshot {snap} (no version labelled {}); list its versions with blobvirt vol-info {}",
            b.name,
            snap_label(snap),
            b.name
        ),
    }
}

/// mirrord's control socket on this host, found as the other commands
/// find it (`BLOBVIRT_CONTROL`, `BLOBVIRT_CLUSTER_DIR`, the configuration
/// file, the default).
pub fn ctl() -> crate::cli::ControlArgs {
    crate::cli::ControlArgs {
        control: std::env::var_os("BLOBVIRT_CONTROL").map(PathBuf::from),
        dir: std::env::var_os("BLOBVIRT_CLUSTER_DIR").map(PathBuf::from),
    }
}

/// The mirrord mount on this host: `BLOBVIRT_MOUNT`, the configuration
/// file's `[mirrord] mount`, the local cluster of `BLOBVIRT_CLUSTER_DIR`,
/// else the packages' `/var/lib/blobvirt/pool`.
pub fn mount_path() -> PathBuf {
    if let Some(m) = std::env::var_os("BLOBVIRT_MOUNT") {
        return PathBuf::from(m);
    }
    if let Some(m) = crate::config().and_then(|c| c.mirrord.mount.clone()) {
        return m;
    }
    if let Some(d) = std::env::var_os("BLOBVIRT_CLUSTER_DIR") {
        if let Some(m) = crate::cluster_file::load(std::path::Path::new(&d))
            .ok()
            .and_then(|c| c.mirror)
        {
            return m.mount;
        }
    }
    PathBuf::from("/var/lib/blobvirt/pool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_with_a_colon_are_refused_in_one_sentence() {
        let e = check_source("image source", "one:7")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colon") && e.contains("one:7"), "{e}");
        check_source("image source", "one-7").unwrap();
        assert!(check_source("x", "a/b").is_err());
        assert!(image_volume("7x").is_err());
        assert_eq!(image_volume("7").unwrap(), "one-7");
        assert_eq!(snap_label("3"), "one-snap-3");
    }
}
