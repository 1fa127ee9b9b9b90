//! The host half of the transfer (TM_MAD `blobvirt`) actions. The TM script
//! on the front-end splits `host:path` and runs `blobvirt one tm ACTION` on
//! that host through `$SSH`; here, on the host, a VM disk
//! `RSD/disk.i` is a symlink to its volume's file on the mirrord mount (what
//! OpenNebula's KVM driver opens as `<disk type='file'>`), and every
//! change is a blobvirt primitive: an O(1) clone, a labelled commit, an
//! O(1) revert, a version delete.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use mirrord_client::Client;

use super::ctl;
use super::{check_source, disk_volume, mount_path, snap_label, snapshot_version};
use crate::mirror::{control_error, control_path};

#[derive(Debug, Subcommand)]
pub enum TmCmd {
    /// clone SOURCE RSD/disk.i VMID [DSID]: O(1) clone one-VMID-i, symlinked.
    Clone(Link),
    /// ln SOURCE RSD/disk.i VMID [DSID]: the persistent image in place.
    Ln(Link),
    /// delete PATH VMID [DSID]: a disk (its clone too) or the VM directory.
    Delete(Delete),
    /// mvds PATH SOURCE VMID [DSID]: a persistent disk goes back to its image.
    Mvds(Mvds),
    /// cpds PATH NEW_SOURCE SNAP_ID VMID [DSID]: the disk (or snapshot) as a new image.
    Cpds(Cpds),
    /// resize PATH SIZE_MB VMID [DSID]: grow the disk.
    Resize(Resize),
    /// snap_create PATH SNAP_ID VMID [DSID]: a labelled commit.
    SnapCreate(Snap),
    /// snap_create_live PATH SNAP_ID VMID [DSID]: the same, guest frozen or paused.
    SnapCreateLive(Snap),
    /// snap_revert PATH SNAP_ID VMID [DSID]: O(1) revert to the snapshot.
    SnapRevert(Snap),
    /// snap_delete PATH SNAP_ID VMID [DSID].
    SnapDelete(Snap),
}

#[derive(Debug, Args)]
pub struct Link {
    /// Give the volume's file on the mount to USER[:GROUP] (QEMU's user
    /// where libvirt does not chown disks).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub owner: Option<String>,
    pub source: String,
    pub dst: PathBuf,
    pub vmid: String,
    pub dsid: Option<String>,
}

#[derive(Debug, Args)]
pub struct Delete {
    pub path: PathBuf,
    pub vmid: String,
    pub dsid: Option<String>,
}

#[derive(Debug, Args)]
pub struct Mvds {
    pub path: PathBuf,
    pub source: String,
    pub vmid: String,
    pub dsid: Option<String>,
}

#[derive(Debug, Args)]
pub struct Cpds {
    pub path: PathBuf,
    pub new_source: String,
    #[arg(allow_negative_numbers = true)]
    pub snap_id: i64,
    pub vmid: String,
    pub dsid: Option<String>,
}

#[derive(Debug, Args)]
pub struct Resize {
    pub path: PathBuf,
    pub size_mb: u64,
    pub vmid: String,
    pub dsid: Option<String>,
}

#[derive(Debug, Args)]
pub struct Snap {
    pub path: PathBuf,
    pub snap_id: u64,
    pub vmid: String,
    pub dsid: Option<String>,
}

pub async fn run(pool: Option<&str>, c: TmCmd) -> Result<()> {
    match c {
        TmCmd::Clone(a) => clone(pool, a).await,
        TmCmd::Ln(a) => ln(pool, a).await,
        TmCmd::Delete(a) => delete(pool, a).await,
        TmCmd::Mvds(a) => mvds(a).await,
        TmCmd::Cpds(a) => cpds(pool, a).await,
        TmCmd::Resize(a) => resize(a),
        TmCmd::SnapCreate(a) => snap_create(pool, a, false).await,
        TmCmd::SnapCreateLive(a) => snap_create(pool, a, true).await,
        TmCmd::SnapRevert(a) => snap_revert(pool, a).await,
        TmCmd::SnapDelete(a) => {
            let vol = disk_of(&a.path)?;
            let repo = crate::vol::connect(pool).await?;
            super::ds::delete_snapshot(&repo, &vol, &a.snap_id.to_string()).await
        }
    }
}

/// `i` of a `…/disk.i` path.
fn disk_index(p: &Path) -> Result<String> {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("disk."))
        .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "{} is not a VM disk path (REMOTE_SYSTEM_DIR/disk.N); pass the path OpenNebula gives the action",
                p.display()
            )
        })
}

/// The volume a VM disk symlink points at on the mount.
fn disk_of(p: &Path) -> Result<String> {
    let mount = mount_path();
    let t = std::fs::read_link(p).map_err(|_| {
        anyhow!(
            "{} is not a blobvirt disk (a symlink into the mount {}); was it deployed from a blobvirt datastore?",
            p.display(),
            mount.display()
        )
    })?;
    match (t.parent(), t.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(v)) if dir == mount => Ok(v.to_string()),
        _ => bail!(
            "{} points at {}, which is not a volume on the blobvirt mount {}; set BLOBVIRT_MOUNT in the driver's configuration if the mount is elsewhere",
            p.display(),
            t.display(),
            mount.display()
        ),
    }
}

/// Points `dst` at volume `vol` on the mount, replacing what was there,
/// and gives the volume's file to `owner`.
fn link(vol: &str, dst: &Path, owner: Option<&str>) -> Result<()> {
    let target = mount_path().join(vol);
    if !target.exists() {
        bail!(
            "volume {vol} does not show on the mount {} of this host; check that blobvirt-mirrord runs here",
            mount_path().display()
        );
    }
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if dst.symlink_metadata().is_ok() {
        std::fs::remove_file(dst).with_context(|| format!("replacing {}", dst.display()))?;
    }
    std::os::unix::fs::symlink(&target, dst)
        .with_context(|| format!("linking {} to {}", dst.display(), target.display()))?;
    if let Some(o) = owner.filter(|o| !o.is_empty()) {
        let out = std::process::Command::new("chown")
            .arg(o)
            .arg(&target)
            .output()
            .context("running chown")?;
        if !out.status.success() {
            bail!(
                "cannot give volume {vol} to {o} ({}); check BLOBVIRT_DISK_OWNER in /etc/blobvirt/opennebula.conf",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

async fn clone(pool: Option<&str>, a: Link) -> Result<()> {
    check_source("image source", &a.source)?;
    let vol = disk_volume(&a.vmid, &disk_index(&a.dst)?);
    let repo = crate::vol::connect(pool).await?;
    // A retried deploy finds its clone made already: use it.
    let made = repo
        .get_blob(&vol)
        .await
        .is_ok_and(|b| b.origin.starts_with(&format!("{}@", a.source)));
    if !made {
        repo.clone_blob(&a.source, 0, &vol).await?;
        crate::mirror::announce(&ctl(), std::slice::from_ref(&vol)).await;
    }
    link(&vol, &a.dst, a.owner.as_deref())
}

async fn ln(pool: Option<&str>, a: Link) -> Result<()> {
    check_source("image source", &a.source)?;
    disk_index(&a.dst)?;
    let repo = crate::vol::connect(pool).await?;
    repo.get_blob(&a.source).await?;
    link(&a.source, &a.dst, a.owner.as_deref())
}

/// A disk: remove the symlink, and the volume when it is this VM's clone;
/// the VM directory: the same for each `disk.N` in it (a failed deploy's
/// clean-up deletes only the directory), then remove it (symlinks are not
/// followed).
async fn delete(pool: Option<&str>, a: Delete) -> Result<()> {
    let p = &a.path;
    let Ok(meta) = p.symlink_metadata() else {
        return Ok(()); // already gone, as OpenNebula's own delete accepts
    };
    if meta.is_dir() {
        let rd = std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))?;
        for e in rd.flatten() {
            if disk_index(&e.path()).is_ok() && e.path().symlink_metadata()?.is_symlink() {
                delete_disk(pool, &e.path(), &a.vmid).await?;
            }
        }
        return std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()));
    }
    if meta.file_type().is_symlink() {
        return delete_disk(pool, p, &a.vmid).await;
    }
    std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))
}

/// Removes disk symlink `p`, and its volume when it is VM `vmid`'s clone.
async fn delete_disk(pool: Option<&str>, p: &Path, vmid: &str) -> Result<()> {
    if let (Ok(vol), Ok(i)) = (disk_of(p), disk_index(p)) {
        if vol == disk_volume(vmid, &i) {
            let repo = crate::vol::connect(pool).await?;
            crate::mirror::check_not_open(&ctl(), &vol, 0).await?;
            // (A volume deleted already is fine.)
            if repo.get_blob(&vol).await.is_ok() {
                repo.delete_with(&vol, 0, false).await?;
            }
            crate::mirror::announce(&ctl(), std::slice::from_ref(&vol)).await;
        }
    }
    std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))
}

/// This host's mirror of `vol`, if mirrord has it attached.
async fn mirror_of(vol: &str) -> Result<Option<mirrord_client::VolumeStatus>> {
    let p = control_path(&ctl())?;
    if !p.exists() {
        return Ok(None);
    }
    let st = Client::new(&p)
        .status()
        .await
        .map_err(|e| control_error(&p, e))?;
    Ok(st.volumes.into_iter().find(|v| v.name == vol))
}

async fn mvds(a: Mvds) -> Result<()> {
    let vol = disk_of(&a.path)?;
    if vol != a.source {
        bail!(
            "{} points at volume {vol}, not at image source {}; this disk was not linked by the blobvirt driver",
            a.path.display(),
            a.source
        );
    }
    // The close-to-open commit published the writes; a mirror that still
    // holds some (a failed commit) publishes them now.
    if mirror_of(&vol).await?.is_some_and(|m| m.chunks_dirty > 0) {
        let p = control_path(&ctl())?;
        Client::new(&p)
            .commit(&vol, true)
            .await
            .map_err(|e| control_error(&p, e))?;
    }
    std::fs::remove_file(&a.path).with_context(|| format!("removing {}", a.path.display()))
}

async fn cpds(pool: Option<&str>, a: Cpds) -> Result<()> {
    let vol = disk_of(&a.path)?;
    check_source("new image source", &a.new_source)?;
    let repo = crate::vol::connect(pool).await?;
    if a.snap_id < 0 {
        if mirror_of(&vol).await?.is_some() {
            // The mirror's content, writes not yet committed included.
            let p = control_path(&ctl())?;
            Client::new(&p)
                .clone_volume(&vol, &a.new_source)
                .await
                .map_err(|e| control_error(&p, e))?;
        } else {
            repo.clone_blob(&vol, 0, &a.new_source).await?;
        }
    } else {
        let b = repo.get_blob(&vol).await?;
        let v = snapshot_version(&b, &a.snap_id.to_string())?;
        repo.clone_blob(&vol, v, &a.new_source).await?;
    }
    crate::mirror::announce(&ctl(), std::slice::from_ref(&a.new_source)).await;
    Ok(())
}

fn resize(a: Resize) -> Result<()> {
    let vol = disk_of(&a.path)?;
    let file = mount_path().join(&vol);
    let new = a.size_mb << 20;
    let old = std::fs::metadata(&file)
        .with_context(|| format!("reading the size of {}", file.display()))?
        .len();
    if new < old {
        bail!(
            "disk {} is {} MB and cannot shrink to {} MB; give a size of at least its current one",
            a.path.display(),
            old.div_ceil(1 << 20),
            a.size_mb
        );
    }
    // Through the mount: truncate publishes the new size at once.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .with_context(|| format!("opening {}", file.display()))?;
    f.set_len(new)
        .with_context(|| format!("growing {} to {} MB", file.display(), a.size_mb))
}

async fn snap_create(pool: Option<&str>, a: Snap, live: bool) -> Result<()> {
    let vol = disk_of(&a.path)?;
    let label = snap_label(&a.snap_id.to_string());
    let repo = crate::vol::connect(pool).await?;
    let b = repo.get_blob(&vol).await?;
    if super::version_labelled(&b, &label).is_some() {
        bail!(
            "disk {} already has snapshot {} ({vol}, label {label}); delete it first or take a new one",
            a.path.display(),
            a.snap_id
        );
    }
    if mirror_of(&vol).await?.is_none() {
        // Not mirrored here: its latest version is all there is.
        repo.revert(&vol, b.latest_version, &label).await?;
        return Ok(());
    }
    let p = control_path(&ctl())?;
    let c = Client::new(&p);
    let dom = format!("one-{}", a.vmid);
    let quiet = if live {
        Quiet::begin(&dom).await
    } else {
        Quiet::None
    };
    let r = c.commit_labeled(&vol, false, &label).await;
    quiet.end().await;
    r.map_err(|e| control_error(&p, e))?;
    c.wait(&vol).await.map_err(|e| control_error(&p, e))?;
    Ok(())
}

/// How a running guest was kept still for the snapshot point.
enum Quiet {
    None,
    Frozen(String),
    Paused(String),
}

impl Quiet {
    /// Freezes the guest's file systems (guest agent), else pauses it; a
    /// domain that does not run is left alone.
    async fn begin(dom: &str) -> Quiet {
        let d = dom.to_string();
        tokio::task::spawn_blocking(move || {
            let Ok(conn) = crate::libvirt::conn::open("qemu:///system") else {
                return Quiet::None;
            };
            let Ok(dm) = crate::libvirt::conn::domain(&conn, &d) else {
                return Quiet::None;
            };
            if !crate::libvirt::conn::is_active(&dm) {
                return Quiet::None;
            }
            if crate::libvirt::conn::fs_freeze(&dm).is_ok() {
                return Quiet::Frozen(d);
            }
            match dm.suspend() {
                Ok(_) => Quiet::Paused(d),
                Err(_) => Quiet::None,
            }
        })
        .await
        .unwrap_or(Quiet::None)
    }

    async fn end(self) {
        let _ = tokio::task::spawn_blocking(move || {
            let (d, frozen) = match &self {
                Quiet::None => return,
                Quiet::Frozen(d) => (d.clone(), true),
                Quiet::Paused(d) => (d.clone(), false),
            };
            let Ok(conn) = crate::libvirt::conn::open("qemu:///system") else {
                return;
            };
            if let Ok(dm) = crate::libvirt::conn::domain(&conn, &d) {
                let _ = if frozen {
                    crate::libvirt::conn::fs_thaw(&dm).map_err(|_| ())
                } else {
                    dm.resume().map(|_| ()).map_err(|_| ())
                };
            }
        })
        .await;
    }
}

async fn snap_revert(pool: Option<&str>, a: Snap) -> Result<()> {
    let vol = disk_of(&a.path)?;
    let repo = crate::vol::connect(pool).await?;
    if let Some(m) = mirror_of(&vol).await? {
        if m.open_handles > 0 || m.chunks_dirty > 0 {
            bail!(
                "disk {} ({vol}) is open or holds uncommitted writes on this host; power the VM off (its disk is committed on close) before reverting a snapshot",
                a.path.display()
            );
        }
    }
    super::ds::revert_snapshot(&repo, &vol, &a.snap_id.to_string()).await?;
    Ok(())
}
