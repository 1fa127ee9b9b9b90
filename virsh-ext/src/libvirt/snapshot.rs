//! Creating domain snapshots on COMMIT: `snapshot-create` and
//! `snapshot-create-all` (multisnapshotting).
//!
//! A snapshot is one labelled version per blobvirt disk (see
//! [`super::snapshot_admin`] for the labels and the other commands), plus a
//! redefined libvirt snapshot (disks `snapshot='manual'`) so that `virsh
//! snapshot-list` shows it. Creating pauses (or fs-freezes) every domain,
//! runs COMMIT phase 1 on all their disks, resumes them all, then waits for
//! all phase 2s.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use blobvirt_core::stats::median;
use blobvirt_core::Repo;
use futures::future::join_all;
use mirrord_client::Client;
use serde::Serialize;
use virt::connect::Connect;
use virt::domain::Domain;

use super::conn::{self, blocking, BlobDisk};
use super::snapshot_admin::{label, snapshots_of, SnapDisk};
use crate::cli::{SnapshotCreate, SnapshotCreateAll};
use crate::mirror::{control_error, control_path};
use crate::output::{print_json, Table};
use crate::vol::connect;

/// What happened to one domain in a (multi)snapshot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub domain: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `fsfreeze`, `pause` or `none` (domain not running).
    pub quiesce: String,
    /// From the freeze/pause to the resume, in milliseconds.
    pub paused_ms: f64,
    /// From the freeze/pause until every disk's version is published.
    pub durable_ms: f64,
    /// Longest COMMIT phase 1 inside mirrord among the disks, in µs.
    pub freeze_us: u64,
    pub disks: Vec<SnapDisk>,
}

struct Job {
    out: Outcome,
    dom: Option<Domain>,
    xml: String,
    disks: Vec<BlobDisk>,
    all_targets: Vec<String>,
    active: bool,
    t0: Option<Instant>,
}

impl Job {
    /// A domain that failed before it was paused.
    fn failed(domain: String, e: &anyhow::Error) -> Job {
        Job {
            out: Outcome {
                domain,
                error: Some(crate::sentence(e)),
                quiesce: "none".into(),
                ..Default::default()
            },
            dom: None,
            xml: String::new(),
            disks: Vec::new(),
            all_targets: Vec::new(),
            active: false,
            t0: None,
        }
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        if self.out.error.is_none() {
            self.out.error = Some(e.to_string());
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.contains(['/', '<', '>', '&', '\'', '"'])
        || name.chars().any(char::is_whitespace)
    {
        bail!("{name:?} is not a valid snapshot name; use letters, digits, '-', '_', '.' or ':'");
    }
    Ok(())
}

fn prepare(conn: &Connect, domain: &str, name: &str, taken: bool) -> Result<Job> {
    let dom = conn::domain(conn, domain)?;
    if taken || Domain::lookup_snapshot_by_name(&dom, name, 0).is_ok() {
        bail!("domain {domain} already has a snapshot {name}; pick another name or delete it with blobvirt snapshot-delete {domain} {name}");
    }
    let xml = dom
        .xml_desc(0)
        .map_err(|e| anyhow!("cannot read the XML of domain {domain}: {}", conn::msg(&e)))?;
    let mounts = conn::blobvirt_mounts();
    let disks = conn::blob_disks(&xml, &mounts, |p| conn::pool_path(conn, p))?;
    if disks.is_empty() {
        bail!("domain {domain} has no blobvirt disks (volumes of a pool on the mirrord mount, or files under it); nothing to snapshot");
    }
    let doc = roxmltree::Document::parse(&xml)?;
    let all_targets = doc
        .descendants()
        .filter(|n| n.has_tag_name("disk") && matches!(n.attribute("device"), None | Some("disk")))
        .filter_map(|d| {
            d.children()
                .find(|c| c.has_tag_name("target"))?
                .attribute("dev")
        })
        .map(String::from)
        .collect();
    Ok(Job {
        out: Outcome {
            domain: domain.into(),
            quiesce: "none".into(),
            ..Default::default()
        },
        active: conn::is_active(&dom),
        dom: Some(dom),
        xml,
        disks,
        all_targets,
        t0: None,
    })
}

fn quiesce(j: &mut Job, fsfreeze: bool) {
    let Some(dom) = &j.dom else { return };
    j.t0 = Some(Instant::now());
    if !j.active || conn::state(dom).is_ok_and(|s| s != virt::domain::DomainState::Running) {
        return;
    }
    if fsfreeze && conn::fs_freeze(dom).is_ok() {
        j.out.quiesce = "fsfreeze".into();
    } else if let Err(e) = dom.suspend() {
        j.fail(format!(
            "cannot pause domain {}: {}",
            j.out.domain,
            conn::msg(&e)
        ));
    } else {
        j.out.quiesce = "pause".into();
    }
}

fn resume(j: &mut Job) {
    let Some(dom) = &j.dom else { return };
    let r = match j.out.quiesce.as_str() {
        "fsfreeze" => conn::fs_thaw(dom).map_err(|e| {
            format!(
                "cannot thaw the file systems of domain {}: {e}; thaw them with virsh domfsthaw",
                j.out.domain
            )
        }),
        "pause" => dom.resume().map_err(|e| {
            format!(
                "cannot resume domain {}: {}; resume it with virsh resume",
                j.out.domain,
                conn::msg(&e)
            )
        }),
        _ => Ok(()),
    };
    if let Some(t0) = j.t0 {
        j.out.paused_ms = ms(t0.elapsed());
    }
    if let Err(e) = r {
        j.fail(e);
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// libvirt's record: a disk-only snapshot whose disks blobvirt handled
/// (libvirt accepts `manual` disks for the `disk-snapshot` state only).
fn snapshot_xml(j: &Job, name: &str) -> String {
    let disks: String = j
        .all_targets
        .iter()
        .map(|t| {
            let mode = if j.disks.iter().any(|d| &d.target == t) {
                "manual"
            } else {
                "no"
            };
            format!("    <disk name='{}' snapshot='{mode}'/>\n", conn::esc(t))
        })
        .collect();
    let desc: Vec<String> = j
        .out
        .disks
        .iter()
        .map(|d| format!("{}={}@{}", d.target, d.volume, d.version))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "<domainsnapshot>\n  <name>{}</name>\n  <description>blobvirt versions: {}</description>\n  <state>disk-snapshot</state>\n  <creationTime>{now}</creationTime>\n  <memory snapshot='no'/>\n  <disks>\n{disks}  </disks>\n{}\n</domainsnapshot>\n",
        conn::esc(name),
        conn::esc(&desc.join(" ")),
        j.xml.trim()
    )
}

/// Snapshots `domains` at once (see the module doc); never fails as a
/// whole: each domain's outcome says what went wrong for it.
pub async fn snapshot_all(
    conn: Connect,
    repo: &Repo,
    ctl: &Client,
    ctl_path: &Path,
    domains: &[String],
    name: &str,
    fsfreeze: bool,
) -> Vec<Outcome> {
    let blobs = repo.list_blobs().await.unwrap_or_default();
    let conn = Arc::new(conn);
    let jobs = join_all(domains.iter().map(|d| {
        let (c, d, n) = (conn.clone(), d.clone(), name.to_string());
        let taken = snapshots_of(&blobs, &d).iter().any(|s| s.name == n);
        blocking(move || prepare(&c, &d, &n, taken).unwrap_or_else(|e| Job::failed(d, &e)))
    }))
    .await;
    // Pause (or freeze) every domain.
    let mut jobs = join_all(jobs.into_iter().map(|mut j| {
        blocking(move || {
            quiesce(&mut j, fsfreeze);
            j
        })
    }))
    .await;
    // COMMIT phase 1 on every disk of every domain, in parallel.
    let phase1 = join_all(jobs.iter().map(|j| async move {
        let ok = j.out.error.is_none();
        join_all(j.disks.iter().filter(|_| ok).map(|d| {
            let l = label(&j.out.domain, name, &d.target);
            async move { ctl.commit_labeled(&d.volume, false, &l).await }
        }))
        .await
    }))
    .await;
    for (j, rs) in jobs.iter_mut().zip(phase1) {
        for (d, r) in j.disks.clone().iter().zip(rs) {
            match r {
                Ok(out) => j.out.freeze_us = j.out.freeze_us.max(out.freeze_us),
                Err(e) => j.fail(format!(
                    "COMMIT of volume {} (disk {}) failed: {}",
                    d.volume,
                    d.target,
                    control_error(ctl_path, e)
                )),
            }
        }
    }
    // Resume every domain, then wait for all phase 2s.
    let jobs2 = join_all(jobs.into_iter().map(|mut j| {
        blocking(move || {
            resume(&mut j);
            j
        })
    }))
    .await;
    let mut jobs = jobs2;
    let phase2 = join_all(jobs.iter().map(|j| async move {
        if j.out.error.is_some() {
            return Vec::new();
        }
        join_all(j.disks.iter().map(|d| async move {
            ctl.wait(&d.volume)
                .await
                .map_err(|e| control_error(ctl_path, e))?;
            let l = label(&j.out.domain, name, &d.target);
            let b = repo.get_blob(&d.volume).await?;
            let v = b.versions.iter().find(|v| v.label == l).ok_or_else(|| {
                anyhow!(
                    "the commit of volume {} published no version labelled {l}; see mirrord's log",
                    d.volume
                )
            })?;
            Ok::<_, anyhow::Error>(SnapDisk {
                target: d.target.clone(),
                volume: d.volume.clone(),
                version: v.version,
                size: v.size,
            })
        }))
        .await
    }))
    .await;
    for (j, rs) in jobs.iter_mut().zip(phase2) {
        if j.out.error.is_some() {
            continue;
        }
        for r in rs {
            match r {
                Ok(d) => j.out.disks.push(d),
                Err(e) => j.fail(crate::sentence(&e)),
            }
        }
        if let Some(t0) = j.t0 {
            j.out.durable_ms = ms(t0.elapsed());
        }
    }
    // Register the snapshots with libvirt.
    join_all(jobs.into_iter().map(|mut j| {
        let n = name.to_string();
        blocking(move || {
            if let (None, Some(dom)) = (&j.out.error, &j.dom) {
                let xml = snapshot_xml(&j, &n);
                let flags = virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;
                if let Err(e) = dom.create_snapshot_xml(&xml, flags) {
                    j.fail(format!("the disks of domain {} are snapshotted, but libvirt refused the snapshot metadata: {}", j.out.domain, conn::msg(&e)));
                }
            }
            j.out.ok = j.out.error.is_none();
            j.out
        })
    }))
    .await
}

fn print_outcomes(outs: &[Outcome], name: &str) {
    let mut t = Table::new(&[
        "DOMAIN", "RESULT", "QUIESCE", "PAUSED", "PHASE 1", "DURABLE", "DISKS",
    ]);
    for o in outs {
        let disks: Vec<String> = o
            .disks
            .iter()
            .map(|d| format!("{}={}@{}", d.target, d.volume, d.version))
            .collect();
        t.row(vec![
            o.domain.clone(),
            if o.ok { "ok".into() } else { "FAILED".into() },
            o.quiesce.clone(),
            format!("{:.1} ms", o.paused_ms),
            format!("{:.2} ms", o.freeze_us as f64 / 1000.0),
            format!("{:.1} ms", o.durable_ms),
            disks.join(" "),
        ]);
    }
    t.print();
    let p: Vec<f64> = outs.iter().filter(|o| o.ok).map(|o| o.paused_ms).collect();
    let d: Vec<f64> = outs.iter().filter(|o| o.ok).map(|o| o.durable_ms).collect();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    if p.len() > 1 {
        println!(
            "snapshot {name}: {} domains, paused median {:.1} ms max {:.1} ms, durable median {:.1} ms max {:.1} ms",
            p.len(),
            median(&p).unwrap_or(0.0),
            max(&p),
            median(&d).unwrap_or(0.0),
            max(&d)
        );
    }
    for o in outs.iter().filter(|o| !o.ok) {
        eprintln!(
            "error: {}: {}",
            o.domain,
            o.error.as_deref().unwrap_or("failed")
        );
    }
}

fn default_name() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("snap-{s}")
}

async fn run_all(
    pool: Option<&str>,
    uri: &str,
    ctl: &crate::cli::ControlArgs,
    domains: Vec<String>,
    name: Option<String>,
    fsfreeze: bool,
    json: bool,
) -> Result<()> {
    let name = name.unwrap_or_else(default_name);
    check_name(&name)?;
    let repo = connect(pool).await?;
    let path = control_path(ctl)?;
    let client = Client::new(&path);
    let u = uri.to_string();
    let c = blocking(move || conn::open(&u)).await?;
    let outs = snapshot_all(c, &repo, &client, &path, &domains, &name, fsfreeze).await;
    if json {
        print_json(&outs)?;
    } else {
        print_outcomes(&outs, &name);
    }
    let failed: Vec<&str> = outs
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.domain.as_str())
        .collect();
    match failed.len() {
        0 => Ok(()),
        1 if outs.len() == 1 => Err(anyhow!("{}", outs[0].error.clone().unwrap_or_default())),
        _ => bail!(
            "snapshot {name} failed for {} of {} domains: {}; the others are snapshotted",
            failed.len(),
            outs.len(),
            failed.join(", ")
        ),
    }
}

pub async fn create(pool: Option<&str>, a: SnapshotCreate) -> Result<()> {
    run_all(
        pool,
        &a.lv.connect,
        &a.ctl,
        vec![a.domain],
        a.name,
        a.quiesce,
        a.json,
    )
    .await
}

pub async fn create_all(pool: Option<&str>, a: SnapshotCreateAll) -> Result<()> {
    let mut domains = a.domains;
    if let Some(p) = &a.prefix {
        let u = a.lv.connect.clone();
        let p = p.clone();
        let mut found = blocking(move || -> Result<Vec<String>> {
            let c = conn::open(&u)?;
            let all = c
                .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                .map_err(|e| anyhow!("cannot list domains: {}", conn::msg(&e)))?;
            Ok(all
                .iter()
                .filter_map(|d| d.name().ok())
                .filter(|n| n.starts_with(&p))
                .collect())
        })
        .await?;
        found.sort();
        if found.is_empty() {
            bail!(
                "no running domain's name starts with {p}; list domains with virsh list",
                p = a.prefix.unwrap_or_default()
            );
        }
        domains.extend(found);
    }
    if domains.is_empty() {
        bail!("name the domains to snapshot, or pass --prefix P");
    }
    let mut seen = std::collections::HashSet::new();
    domains.retain(|d| seen.insert(d.clone()));
    run_all(
        pool,
        &a.lv.connect,
        &a.ctl,
        domains,
        a.name,
        a.quiesce,
        a.json,
    )
    .await
}
