//! Domain snapshots as poold records them, and the commands on existing
//! snapshots: `snapshot-list` (from the version labels), `snapshot-revert`
//! (O(1) RevertVolume per disk, then mirrord drops its mirror),
//! `snapshot-delete` and `snapshot-export`.
//!
//! A snapshot is one labelled version per blobvirt disk, the label being
//! `snapshot:<domain>/<name>/<target>`; a revert publishes a version
//! labelled `revert:<domain>/<name>/<target>`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use blobvirt_core::{proto as pb, transfer, Repo};
use mirrord_client::{Client, ControlError};
use serde::Serialize;

use super::conn::{self, blocking};
use crate::cli::{SnapshotDomain, SnapshotExport, SnapshotList, SnapshotRevert};
use crate::mirror::{control_error, control_path};
use crate::output::{human_size, print_json, Table};
use crate::vol::connect;

const PREFIX: &str = "snapshot:";

/// The version label of disk `target` of snapshot `name` of `domain`.
pub fn label(domain: &str, name: &str, target: &str) -> String {
    format!("{PREFIX}{domain}/{name}/{target}")
}

/// (domain, name, target) of a snapshot label.
pub fn parse_label(l: &str) -> Option<(&str, &str, &str)> {
    let (rest, target) = l.strip_prefix(PREFIX)?.rsplit_once('/')?;
    let (domain, name) = rest.rsplit_once('/')?;
    Some((domain, name, target))
}

/// One disk of a snapshot: the version that holds it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapDisk {
    pub target: String,
    pub volume: String,
    pub version: u64,
    pub size: u64,
}

/// A snapshot as poold records it.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub domain: String,
    pub name: String,
    /// Unix seconds.
    pub created: i64,
    pub disks: Vec<SnapDisk>,
}

/// The snapshots of `domain` found in the version labels, oldest first.
pub fn snapshots_of(blobs: &[pb::BlobInfo], domain: &str) -> Vec<Snapshot> {
    let mut by: BTreeMap<String, Snapshot> = BTreeMap::new();
    for b in blobs {
        for v in &b.versions {
            let Some((d, n, t)) = parse_label(&v.label) else {
                continue;
            };
            if d != domain {
                continue;
            }
            let s = by.entry(n.to_string()).or_insert_with(|| Snapshot {
                domain: d.into(),
                name: n.into(),
                created: v.created,
                disks: Vec::new(),
            });
            s.created = s.created.min(v.created);
            s.disks.push(SnapDisk {
                target: t.into(),
                volume: b.name.clone(),
                version: v.version,
                size: v.size,
            });
        }
    }
    let mut out: Vec<Snapshot> = by.into_values().collect();
    for s in &mut out {
        s.disks.sort_by(|a, b| a.target.cmp(&b.target));
    }
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    out
}

pub async fn find(repo: &Repo, domain: &str, name: &str) -> Result<Snapshot> {
    snapshots_of(&repo.list_blobs().await?, domain)
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("domain {domain} has no snapshot {name}; list them with blobvirt snapshot-list {domain}"))
}

pub async fn list(pool: Option<&str>, a: SnapshotList) -> Result<()> {
    let repo = connect(pool).await?;
    let snaps = snapshots_of(&repo.list_blobs().await?, &a.domain);
    if a.json {
        return print_json(&snaps);
    }
    let mut t = Table::new(&["NAME", "CREATED", "DISKS"]);
    for s in &snaps {
        let disks: Vec<String> = s
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{}={}@{} ({})",
                    d.target,
                    d.volume,
                    d.version,
                    human_size(d.size)
                )
            })
            .collect();
        t.row(vec![
            s.name.clone(),
            crate::vol::rfc3339(s.created),
            disks.join(" "),
        ]);
    }
    t.print();
    Ok(())
}

/// Waits until mirrord has no open handle and no uncommitted chunk of
/// `vol` (the close-to-open commit of a stopped domain is done).
async fn settle(ctl: &Client, path: &Path, vol: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let st = ctl.status().await.map_err(|e| control_error(path, e))?;
        let Some(v) = st.volumes.iter().find(|v| v.name == vol) else {
            return Ok(());
        };
        if v.open_handles == 0 && v.chunks_dirty == 0 {
            return ctl
                .wait(vol)
                .await
                .map(|_| ())
                .map_err(|e| control_error(path, e));
        }
        if Instant::now() > end {
            bail!(
                "volume {vol} is still open ({} handles) or holds {} uncommitted chunks in mirrord; stop what uses it, or commit with blobvirt commit {vol}, then try again",
                v.open_handles,
                v.chunks_dirty
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn revert(pool: Option<&str>, a: SnapshotRevert) -> Result<()> {
    let repo = connect(pool).await?;
    let snap = find(&repo, &a.domain, &a.name).await?;
    let path = control_path(&a.ctl)?;
    let ctl = Client::new(&path);
    let (uri, dom_name, force) = (a.lv.connect.clone(), a.domain.clone(), a.force);
    blocking(move || -> Result<()> {
        let c = conn::open(&uri)?;
        let Ok(dom) = c.lookup_domain_by_name(&dom_name) else {
            return Ok(());
        };
        if conn::is_active(&dom) {
            if !force {
                bail!("domain {dom_name} is running; shut it down (virsh shutdown {dom_name}) or pass --force to stop it at once");
            }
            dom.destroy()
                .map_err(|e| anyhow!("cannot stop domain {dom_name}: {}", conn::msg(&e)))?;
            conn::wait_shutoff(&dom, &dom_name, Duration::from_secs(30))?;
        }
        Ok(())
    })
    .await?;
    let mut done = Vec::new();
    for d in &snap.disks {
        settle(&ctl, &path, &d.volume).await?;
        let l = format!("revert:{}/{}/{}", snap.domain, snap.name, d.target);
        let v = repo.revert(&d.volume, d.version, &l).await?;
        match ctl.detach(&d.volume, false).await {
            Ok(()) | Err(ControlError::Refused(_)) => {}
            Err(e) => return Err(control_error(&path, e)),
        }
        done.push(format!(
            "{}={}@{} (from @{})",
            d.target, d.volume, v, d.version
        ));
    }
    println!(
        "reverted domain {} to snapshot {}: {}",
        snap.domain,
        snap.name,
        done.join(" ")
    );
    Ok(())
}

/// Forgets a snapshot's versions: deletes each one, except the latest of
/// its volume (the disk's current content), which only loses its label.
async fn drop_versions(repo: &Repo, snap: &Snapshot) -> Result<()> {
    for d in &snap.disks {
        let b = repo.get_blob(&d.volume).await?;
        if b.latest_version == d.version || b.versions.len() <= 1 {
            repo.label_version(&d.volume, d.version, "").await?;
        } else {
            repo.delete(&d.volume, d.version).await?;
        }
    }
    Ok(())
}

pub async fn delete(pool: Option<&str>, a: SnapshotDomain) -> Result<()> {
    let repo = connect(pool).await?;
    let snap = find(&repo, &a.domain, &a.name).await;
    let (uri, dom_name, name) = (a.lv.connect.clone(), a.domain.clone(), a.name.clone());
    let had_meta = blocking(move || -> Result<bool> {
        let c = conn::open(&uri)?;
        let Ok(dom) = c.lookup_domain_by_name(&dom_name) else {
            return Ok(false);
        };
        let Ok(s) = virt::domain::Domain::lookup_snapshot_by_name(&dom, &name, 0) else {
            return Ok(false);
        };
        s.delete(virt::sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
            .map_err(|e| {
                anyhow!(
                    "cannot remove libvirt's metadata of snapshot {name} of domain {dom_name}: {}",
                    conn::msg(&e)
                )
            })?;
        Ok(true)
    })
    .await?;
    match snap {
        Ok(s) => drop_versions(&repo, &s).await?,
        Err(e) if !had_meta => return Err(e),
        Err(_) => {}
    }
    println!("deleted snapshot {} of domain {}", a.name, a.domain);
    Ok(())
}

pub async fn export(pool: Option<&str>, a: SnapshotExport) -> Result<()> {
    let repo = connect(pool).await?;
    let snap = find(&repo, &a.domain, &a.name).await?;
    std::fs::create_dir_all(&a.out).map_err(|e| {
        anyhow!(
            "cannot create directory {} ({e}); pick a writable directory",
            a.out.display()
        )
    })?;
    for d in &snap.disks {
        let file = a.out.join(format!("{}.raw", d.target));
        transfer::export_file(&repo, &d.volume, d.version, &file, None)
            .await
            .map_err(|e| anyhow!("cannot export {}@{}: {e}", d.volume, d.version))?;
        println!(
            "exported {}={}@{} to {} ({})",
            d.target,
            d.volume,
            d.version,
            file.display(),
            human_size(d.size)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(name: &str, versions: &[(u64, i64, &str)]) -> pb::BlobInfo {
        pb::BlobInfo {
            name: name.into(),
            versions: versions
                .iter()
                .map(|&(version, created, label)| pb::VersionInfo {
                    version,
                    size: 10,
                    created,
                    label: label.into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn labels_round_trip_and_group_by_snapshot() {
        let l = label("web-1", "s1", "vda");
        assert_eq!(l, "snapshot:web-1/s1/vda");
        assert_eq!(parse_label(&l), Some(("web-1", "s1", "vda")));
        assert_eq!(parse_label("revert:web-1/s1/vda"), None);
        assert_eq!(parse_label("snapshot:nodisk"), None);
        let blobs = [
            blob(
                "a",
                &[
                    (1, 5, ""),
                    (2, 20, "snapshot:web-1/s2/vda"),
                    (3, 9, "snapshot:web-1/s1/vda"),
                ],
            ),
            blob(
                "b",
                &[
                    (4, 8, "snapshot:web-1/s1/vdb"),
                    (5, 9, "snapshot:web-10/s1/vda"),
                ],
            ),
        ];
        let s = snapshots_of(&blobs, "web-1");
        let names: Vec<&str> = s.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["s1", "s2"], "oldest first");
        assert_eq!(s[0].created, 8);
        let disks: Vec<(&str, &str, u64)> = s[0]
            .disks
            .iter()
            .map(|d| (d.target.as_str(), d.volume.as_str(), d.version))
            .collect();
        assert_eq!(disks, [("vda", "a", 3), ("vdb", "b", 4)]);
        assert_eq!(snapshots_of(&blobs, "web-10").len(), 1);
        assert!(snapshots_of(&blobs, "web").is_empty());
    }
}
