//! The datastore (DS_MAD `blobvirt`) actions. They run where
//! one_datastore runs them, on the front-end, which needs the `blobvirt`
//! package and a configuration file naming the pool (and its TLS
//! certificate). Each prints what OpenNebula parses on stdout: cp and
//! clone `SOURCE raw`, mkfs `SOURCE`, stat the size in MB, monitor the
//! `USED_MB`/`TOTAL_MB`/`FREE_MB` lines; the rest nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use blobvirt_core::transfer::{self, ImportOpts};
use blobvirt_core::Repo;

use super::action_data::{self, ActionData};
use super::ctl;
use super::{check_source, image_volume, snap_label, snapshot_version, DsAction, DsArgs};

const MIB: u64 = 1 << 20;

pub async fn run(pool: Option<&str>, a: DsArgs) -> Result<()> {
    let mut stdin = String::new();
    if a.action != DsAction::Monitor || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin)
            .context("reading DS_DRIVER_ACTION_DATA from stdin")?;
    }
    let d = match a.action {
        // monitor needs nothing from its input.
        DsAction::Monitor => action_data::decode(&stdin).unwrap_or_default(),
        _ => action_data::decode(&stdin)?,
    };
    match a.action {
        DsAction::Cp => cp(pool, &a.id, &d).await,
        DsAction::Mkfs => mkfs(pool, &a.id, &d).await,
        DsAction::Stat => stat(&d),
        DsAction::Clone => clone(pool, &a.id, &d).await,
        DsAction::Rm => rm(pool, &d).await,
        DsAction::Monitor => monitor(pool, &d).await,
        DsAction::SnapDelete => snap_delete(pool, &d).await,
        DsAction::SnapRevert => snap_revert(pool, &d).await,
        DsAction::SnapFlatten => snap_flatten(pool, &d).await,
    }
}

/// The datastore's space in MB, as `blobvirt cluster status` counts it:
/// the nodes' disks divided by the replica count, and what the stored
/// chunks take of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub total_mb: u64,
    pub free_mb: u64,
    pub used_mb: u64,
}

pub async fn capacity(pool: Option<&str>, d: &ActionData) -> Result<Capacity> {
    let s = crate::status::collect(&crate::vol::pool_url(pool)?).await?;
    let r = u64::from(s.replicas.max(1));
    let alive = s.nodes.iter().filter(|n| n.alive);
    let total: u64 = alive.clone().map(|n| n.total_bytes).sum();
    let free: u64 = alive.map(|n| n.free_bytes).sum();
    let mut c = Capacity {
        total_mb: total / r / MIB,
        free_mb: free / r / MIB,
        used_mb: s.stored_bytes / r / MIB,
    };
    // LIMIT_MB caps the datastore as OpenNebula's core does.
    if let Some(l) = d.limit_mb {
        c.total_mb = c.total_mb.min(l);
        c.free_mb = c.free_mb.min(l.saturating_sub(c.used_mb));
    }
    Ok(c)
}

fn ds_name(d: &ActionData) -> String {
    match (d.ds_name.as_str(), d.ds_id.as_str()) {
        ("", "") => "the blobvirt datastore".into(),
        (n, "") => format!("datastore {n}"),
        ("", i) => format!("datastore {i}"),
        (n, i) => format!("datastore {n} ({i})"),
    }
}

fn image_name(id: &str, d: &ActionData) -> String {
    if d.image_name.is_empty() {
        format!("image {id}")
    } else {
        format!("image {} ({id})", d.image_name)
    }
}

async fn check_space(pool: Option<&str>, id: &str, d: &ActionData, need_mb: u64) -> Result<()> {
    let c = capacity(pool, d).await?;
    if need_mb > c.free_mb {
        bail!(
            "{} is full: {} needs {need_mb} MB and {} MB are free; delete images or add nodes to the blobvirt cluster, or raise the datastore's LIMIT_MB",
            ds_name(d),
            image_name(id, d),
            c.free_mb
        );
    }
    Ok(())
}

async fn refuse_existing(repo: &Repo, vol: &str, id: &str) -> Result<()> {
    if repo.get_blob(vol).await.is_ok() {
        bail!("volume {vol} of image {id} already exists in the blobvirt pool; delete it with blobvirt vol-delete {vol} or register the image again under a new id");
    }
    Ok(())
}

/// What `qemu-img info` says of a file: its format and virtual size.
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
}

fn qemu_img() -> String {
    std::env::var("QEMU_IMG").unwrap_or_else(|_| "qemu-img".into())
}

pub fn image_info(path: &str) -> Result<ImageInfo> {
    if path.starts_with("http://") || path.starts_with("https://") {
        bail!("image PATH {path} is a URL, which the blobvirt datastore does not download; download it to the front-end and register the file");
    }
    let p = Path::new(path);
    if path.is_empty() || !p.is_file() {
        bail!("image file {path:?} does not exist on the front-end; check the image's PATH");
    }
    let o = Command::new(qemu_img())
        .args(["info", "--output=json", path])
        .output()
        .with_context(|| format!("running {} info on {path}; install qemu-utils", qemu_img()))?;
    if !o.status.success() {
        let why = String::from_utf8_lossy(&o.stderr);
        bail!(
            "qemu-img cannot read image file {path} ({}); check that it is a disk image",
            why.trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .map_err(|e| anyhow!("qemu-img info on {path} printed no JSON ({e})"))?;
    Ok(ImageInfo {
        format: v["format"].as_str().unwrap_or("raw").to_string(),
        virtual_size: v["virtual-size"].as_u64().unwrap_or(0),
    })
}

/// A temporary raw file removed when dropped.
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn staging(d: &ActionData, id: &str) -> Result<Staged> {
    let dir = match d.staging_dir.as_str() {
        "" => PathBuf::from("/var/tmp"),
        s => PathBuf::from(s),
    };
    if !dir.is_dir() {
        bail!(
            "staging directory {} of {} does not exist; create it or change the datastore's STAGING_DIR",
            dir.display(),
            ds_name(d)
        );
    }
    Ok(Staged(dir.join(format!(
        "blobvirt-one-{id}-{}.raw",
        std::process::id()
    ))))
}

async fn import(repo: &Repo, file: &Path, vol: &str) -> Result<()> {
    let opts = ImportOpts {
        chunk_size: None,
        new_version: false,
        label: String::new(),
    };
    transfer::import_file(repo, file, vol, &opts, None)
        .await
        .map_err(crate::vol::transfer_error)?;
    crate::mirror::announce(&ctl(), &[vol.to_string()]).await;
    Ok(())
}

async fn cp(pool: Option<&str>, id: &str, d: &ActionData) -> Result<()> {
    let vol = image_volume(id)?;
    let info = image_info(&d.path)?;
    let repo = crate::vol::connect(pool).await?;
    refuse_existing(&repo, &vol, id).await?;
    check_space(pool, id, d, info.virtual_size.div_ceil(MIB)).await?;
    if info.format == "raw" {
        import(&repo, Path::new(&d.path), &vol).await?;
    } else {
        let tmp = staging(d, id)?;
        let o = Command::new(qemu_img())
            .args(["convert", "-O", "raw", "-f", &info.format, &d.path])
            .arg(&tmp.0)
            .output()
            .context("running qemu-img convert")?;
        if !o.status.success() {
            bail!(
                "qemu-img could not convert {} image {} to raw ({}); check the file and the free space in {}",
                info.format,
                d.path,
                String::from_utf8_lossy(&o.stderr).trim(),
                tmp.0.parent().map(|p| p.display().to_string()).unwrap_or_default()
            );
        }
        import(&repo, &tmp.0, &vol).await?;
    }
    println!("{vol} raw");
    Ok(())
}

fn stat(d: &ActionData) -> Result<()> {
    let info = image_info(&d.path)?;
    println!("{}", info.virtual_size.div_ceil(MIB));
    Ok(())
}

async fn mkfs(pool: Option<&str>, id: &str, d: &ActionData) -> Result<()> {
    let vol = image_volume(id)?;
    let repo = crate::vol::connect(pool).await?;
    refuse_existing(&repo, &vol, id).await?;
    // disk-saveas: the name only; TM cpds makes the volume.
    if d.format == "save_as" {
        println!("{vol}");
        return Ok(());
    }
    let size = d.size_mb.filter(|s| *s > 0).ok_or_else(|| {
        anyhow!(
            "{} has no SIZE; give the datablock a size in MB",
            image_name(id, d)
        )
    })?;
    check_space(pool, id, d, size).await?;
    let tmp = staging(d, id)?;
    let f =
        std::fs::File::create(&tmp.0).with_context(|| format!("creating {}", tmp.0.display()))?;
    f.set_len(size * MIB)
        .with_context(|| format!("sizing {}", tmp.0.display()))?;
    drop(f);
    let fs = d.fs.as_str();
    if !fs.is_empty() && fs != "raw" && fs != "none" {
        let o = Command::new("mkfs")
            .args(["-t", fs, "-q"])
            .arg(&tmp.0)
            .output()
            .context("running mkfs")?;
        if !o.status.success() {
            bail!(
                "mkfs -t {fs} failed for {} ({}); pick a file system this front-end has mkfs.{fs} for",
                image_name(id, d),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    import(&repo, &tmp.0, &vol).await?;
    println!("{vol}");
    Ok(())
}

async fn clone(pool: Option<&str>, id: &str, d: &ActionData) -> Result<()> {
    let vol = image_volume(id)?;
    check_source("image source", &d.path)?;
    let repo = crate::vol::connect(pool).await?;
    refuse_existing(&repo, &vol, id).await?;
    repo.clone_blob(&d.path, 0, &vol).await?;
    crate::mirror::announce(&ctl(), std::slice::from_ref(&vol)).await;
    println!("{vol} raw");
    Ok(())
}

async fn rm(pool: Option<&str>, d: &ActionData) -> Result<()> {
    check_source("image source", &d.source)?;
    let repo = crate::vol::connect(pool).await?;
    crate::mirror::check_not_open(&ctl(), &d.source, 0).await?;
    repo.delete_with(&d.source, 0, false).await?;
    crate::mirror::announce(&ctl(), std::slice::from_ref(&d.source)).await;
    Ok(())
}

async fn monitor(pool: Option<&str>, d: &ActionData) -> Result<()> {
    let c = capacity(pool, d).await?;
    println!("USED_MB={}", c.used_mb);
    println!("TOTAL_MB={}", c.total_mb);
    println!("FREE_MB={}", c.free_mb);
    Ok(())
}

fn target_snapshot(d: &ActionData) -> Result<String> {
    check_source("image source", &d.source)?;
    d.target_snapshot
        .filter(|s| *s >= 0)
        .map(|s| s.to_string())
        .ok_or_else(|| {
            anyhow!(
                "the action has no IMAGE/TARGET_SNAPSHOT; OpenNebula names the snapshot to act on"
            )
        })
}

/// Forgets snapshot `snap` of `vol`: its version is deleted, or, when it is
/// the volume's current content, only its label is.
pub async fn delete_snapshot(repo: &Repo, vol: &str, snap: &str) -> Result<()> {
    let b = repo.get_blob(vol).await?;
    let v = snapshot_version(&b, snap)?;
    if v == b.latest_version {
        repo.label_version(vol, v, "").await?;
    } else {
        repo.delete(vol, v).await?;
    }
    Ok(())
}

/// Makes snapshot `snap` the content of `vol` again (O(1)); returns the
/// new version.
pub async fn revert_snapshot(repo: &Repo, vol: &str, snap: &str) -> Result<u64> {
    let b = repo.get_blob(vol).await?;
    let v = snapshot_version(&b, snap)?;
    let nv = repo.revert(vol, v, &format!("one-revert-{snap}")).await?;
    crate::mirror::announce(&ctl(), &[vol.to_string()]).await;
    Ok(nv)
}

async fn snap_delete(pool: Option<&str>, d: &ActionData) -> Result<()> {
    let snap = target_snapshot(d)?;
    let repo = crate::vol::connect(pool).await?;
    delete_snapshot(&repo, &d.source, &snap).await
}

async fn snap_revert(pool: Option<&str>, d: &ActionData) -> Result<()> {
    let snap = target_snapshot(d)?;
    let repo = crate::vol::connect(pool).await?;
    crate::mirror::check_not_open(&ctl(), &d.source, 0).await?;
    revert_snapshot(&repo, &d.source, &snap).await.map(|_| ())
}

/// Keeps snapshot S's content as the image and drops every snapshot.
async fn snap_flatten(pool: Option<&str>, d: &ActionData) -> Result<()> {
    let snap = target_snapshot(d)?;
    let repo = crate::vol::connect(pool).await?;
    crate::mirror::check_not_open(&ctl(), &d.source, 0).await?;
    let latest = revert_snapshot(&repo, &d.source, &snap).await?;
    repo.label_version(&d.source, latest, "").await?;
    let b = repo.get_blob(&d.source).await?;
    for v in &b.versions {
        if v.version != latest && v.label.starts_with(&snap_label("")) {
            repo.delete(&d.source, v.version).await?;
        }
    }
    Ok(())
}
