//! The `vol-*` commands: import, export, list, info, clone, delete.
//!
//! JSON output of `vol-list` and `vol-info`: objects with `name`, `size`
//! (bytes of the latest version), `chunk_size`, `latest_version`, `origin`
//! (`"NAME@V"` or null) and `versions`, each with `version`, `size`,
//! `created` (**unix seconds**, UTC) and `label`.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use blobvirt_core::client::RepoError;
use blobvirt_core::proto as pb;
use blobvirt_core::transfer::{self, ImportOpts, Progress, TransferError};
use blobvirt_core::{chunk, parse_spec, Repo};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::{JsonFlag, VolClone, VolDelete, VolExport, VolImport, VolInfo};
use crate::output::{human_size, parse_size, print_json, Table};

/// The pool URL given by `--pool` or `BLOBVIRT_POOL`, else the one
/// recorded by the cluster in `BLOBVIRT_CLUSTER_DIR`.
pub fn pool_url(pool: Option<&str>) -> Result<String> {
    Ok(match pool {
        Some(u) => u.to_string(),
        None => match std::env::var_os("BLOBVIRT_CLUSTER_DIR") {
            Some(d) => crate::cluster_file::load(std::path::Path::new(&d))?.pool,
            None => bail!("no pool is given; pass --pool URL, set BLOBVIRT_POOL (blobvirt cluster up prints it) or BLOBVIRT_CLUSTER_DIR"),
        },
    })
}

/// Connects to the pool of [`pool_url`].
pub async fn connect(pool: Option<&str>) -> Result<Repo> {
    Ok(Repo::connect(&pool_url(pool)?).await?)
}

/// A volume as `vol-list --json` and `vol-info --json` print it.
#[derive(Debug, Serialize)]
pub struct VolumeJson {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub latest_version: u64,
    pub origin: Option<String>,
    pub versions: Vec<VersionJson>,
}

#[derive(Debug, Serialize)]
pub struct VersionJson {
    pub version: u64,
    pub size: u64,
    /// Unix seconds.
    pub created: i64,
    pub label: String,
}

impl From<&pb::BlobInfo> for VolumeJson {
    fn from(b: &pb::BlobInfo) -> Self {
        let latest = b.versions.iter().find(|v| v.version == b.latest_version);
        VolumeJson {
            name: b.name.clone(),
            size: latest.map_or(0, |v| v.size),
            chunk_size: b.chunk_size,
            latest_version: b.latest_version,
            origin: (!b.origin.is_empty()).then(|| b.origin.clone()),
            versions: b
                .versions
                .iter()
                .map(|v| VersionJson {
                    version: v.version,
                    size: v.size,
                    created: v.created,
                    label: v.label.clone(),
                })
                .collect(),
        }
    }
}

/// Turns transfer errors into one user sentence; a chunk with no good copy
/// gets a message saying that corrupt data was refused.
pub(crate) fn transfer_error(e: TransferError) -> anyhow::Error {
    if let TransferError::Volume {
        volume,
        source:
            RepoError::ChunkUnavailable {
                chunk,
                tried,
                corrupt,
            },
    } = &e
    {
        if *corrupt > 0 {
            return anyhow!(
                "volume {volume}: no good copy of chunk {chunk} is left ({tried}); corrupt data is never exported, so bring back a node that holds the chunk or import the volume again"
            );
        }
    }
    e.into()
}

fn progress(total: u64) -> (Option<ProgressBar>, Option<Progress>) {
    if !std::io::stdout().is_terminal() {
        return (None, None);
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid progress template"),
    );
    let p = pb.clone();
    (Some(pb), Some(Arc::new(move |n| p.inc(n)) as Progress))
}

pub async fn import(pool: Option<&str>, a: VolImport) -> Result<()> {
    let chunk_size = match &a.chunk_size {
        None => None,
        Some(s) => {
            let n = parse_size(s).ok_or_else(|| {
                anyhow!("chunk size {s} is not a size like 256K or 1M; pick a power of two from 64K to 4M")
            })?;
            Some(chunk::check_chunk_size(n).map_err(|e| anyhow!(e))?)
        }
    };
    let file = &a.file;
    let meta = std::fs::metadata(file)
        .map_err(|_| anyhow!("file {} does not exist; check the path", file.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file; give the path of a raw image file",
            file.display()
        );
    }
    let repo = connect(pool).await?;
    let opts = ImportOpts {
        chunk_size,
        new_version: a.new_version,
        label: a.label.clone(),
    };
    let (bar, cb) = progress(meta.len());
    let r = transfer::import_file(&repo, file, &a.name, &opts, cb).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let r = r.map_err(transfer_error)?;
    crate::mirror::announce(&a.ctl, std::slice::from_ref(&a.name)).await;
    let holes = match repo.resolve(&a.name, r.version).await {
        Ok(res) => res
            .chunks
            .iter()
            .filter(|c| c.is_none())
            .count()
            .to_string(),
        Err(_) => "?".into(),
    };
    println!(
        "imported {} as {}@{} ({}, {} chunks changed, {} uploaded, {} holes)",
        file.display(),
        a.name,
        r.version,
        human_size(r.size),
        r.chunks_changed,
        human_size(r.bytes_uploaded),
        holes
    );
    Ok(())
}

pub async fn export(pool: Option<&str>, a: VolExport) -> Result<()> {
    let (name, version) = parse_spec(&a.spec).map_err(|e| anyhow!(e))?;
    if let Some(dir) = a.file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "directory {} does not exist; create it or export to another path",
                dir.display()
            );
        }
    }
    let repo = connect(pool).await?;
    let (bar, cb) = if std::io::stdout().is_terminal() {
        let info = repo.get_blob(&name).await?;
        let want = if version == 0 {
            info.latest_version
        } else {
            version
        };
        let size = info.versions.iter().find(|v| v.version == want);
        progress(size.map_or(0, |v| v.size))
    } else {
        (None, None)
    };
    let r = transfer::export_file(&repo, &name, version, &a.file, cb).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let v = r.map_err(transfer_error)?;
    let size = std::fs::metadata(&a.file).map(|m| m.len()).unwrap_or(0);
    println!(
        "exported {name}@{v} to {} ({})",
        a.file.display(),
        human_size(size)
    );
    Ok(())
}

pub async fn list(pool: Option<&str>, a: JsonFlag) -> Result<()> {
    let repo = connect(pool).await?;
    let mut blobs = repo.list_blobs().await?;
    blobs.sort_by(|x, y| x.name.cmp(&y.name));
    let vols: Vec<VolumeJson> = blobs.iter().map(VolumeJson::from).collect();
    if a.json {
        return print_json(&vols);
    }
    let mut t = Table::new(&["NAME", "SIZE", "CHUNK", "VERSIONS", "LATEST", "ORIGIN"]);
    for v in &vols {
        t.row(vec![
            v.name.clone(),
            human_size(v.size),
            human_size(v.chunk_size as u64),
            v.versions.len().to_string(),
            v.latest_version.to_string(),
            v.origin.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.print();
    Ok(())
}

pub async fn info(pool: Option<&str>, a: VolInfo) -> Result<()> {
    // NAME@V shows the volume with that one version.
    let (name, version) = parse_spec(&a.name).map_err(|e| anyhow!(e))?;
    let repo = connect(pool).await?;
    let b = repo.get_blob(&name).await?;
    let mut v = VolumeJson::from(&b);
    if version > 0 {
        v.versions.retain(|x| x.version == version);
        if v.versions.is_empty() {
            bail!("volume {name} has no version {version}; list its versions with blobvirt vol-info {name}");
        }
    }
    if a.json {
        return print_json(&v);
    }
    println!("name:        {}", v.name);
    println!("size:        {} ({} bytes)", human_size(v.size), v.size);
    println!("chunk size:  {}", human_size(v.chunk_size as u64));
    println!("latest:      {}", v.latest_version);
    println!("origin:      {}", v.origin.as_deref().unwrap_or("-"));
    let mut t = Table::new(&["VERSION", "SIZE", "CREATED", "LABEL"]);
    for x in &v.versions {
        t.row(vec![
            x.version.to_string(),
            human_size(x.size),
            rfc3339(x.created),
            x.label.clone(),
        ]);
    }
    println!();
    t.print();
    Ok(())
}

pub async fn clone(pool: Option<&str>, a: VolClone) -> Result<()> {
    let (src, version) = parse_spec(&a.src).map_err(|e| anyhow!(e))?;
    let repo = connect(pool).await?;
    let b = repo.clone_blob(&src, version, &a.dst).await?;
    crate::mirror::announce(&a.ctl, std::slice::from_ref(&a.dst)).await;
    let origin = if b.origin.is_empty() {
        a.src.clone()
    } else {
        b.origin.clone()
    };
    println!("cloned {origin} as {}", b.name);
    Ok(())
}

pub async fn delete(pool: Option<&str>, a: VolDelete) -> Result<()> {
    let (name, version) = parse_spec(&a.spec).map_err(|e| anyhow!(e))?;
    let repo = connect(pool).await?;
    if !a.force {
        crate::mirror::check_not_open(&a.ctl, &name, version).await?;
    }
    // Say what a whole-volume delete takes with it.
    let versions = match version {
        0 => repo.get_blob(&name).await.map(|b| b.versions.len()).ok(),
        _ => None,
    };
    repo.delete_with(&name, version, a.force).await?;
    crate::mirror::announce(&a.ctl, std::slice::from_ref(&name)).await;
    if version == 0 {
        match versions {
            Some(n) if n > 1 => println!("deleted volume {name} with all its {n} versions"),
            _ => println!("deleted volume {name}"),
        }
    } else {
        println!("deleted version {name}@{version}");
    }
    Ok(())
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
