//! `blobvirt deploy IMAGE[@V] --count N --template DOMAIN.xml`: clones the
//! image N times (O(1) each on poold), makes one domain per clone from the
//! template (name, first disk, SMBIOS serial, console log), and defines and
//! starts all of them concurrently, round-robin over the given libvirt
//! connections, reporting each domain's time to running.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use blobvirt_core::parse_spec;
use futures::future::join_all;
use roxmltree::{Document, Node};
use serde::Serialize;

use super::conn::{self, blocking, esc, DEFAULT_URI};
use crate::cli::Deploy;
use crate::output::{print_json, Table};
use crate::vol::connect;

/// How the template's first disk names its volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// `<disk type='volume'><source pool=P volume=…/>`
    Pool(String),
    /// `<disk type='file'><source file=DIR/…/>`
    Dir(PathBuf),
}

fn child<'a, 'i>(n: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

/// End of the start tag of element `n` (just after its `>`).
fn after_start(xml: &str, n: Node) -> usize {
    let r = n.range();
    r.start + xml[r.clone()].find('>').map_or(0, |i| i + 1)
}

/// The template's first disk, as a [`DiskKind`] and the byte range of the
/// attribute value that names its volume (`volume=` or `file=`).
fn first_disk(doc: &Document, what: &str) -> Result<(DiskKind, Range<usize>)> {
    let disk = doc
        .descendants()
        .find(|n| n.has_tag_name("disk") && matches!(n.attribute("device"), None | Some("disk")))
        .ok_or_else(|| anyhow!("{what} has no <disk device='disk'>; add one whose source is a volume of the blobvirt pool or a file under the mirrord mount"))?;
    let src = child(disk, "source")
        .ok_or_else(|| anyhow!("the first disk of {what} has no <source>; give it <source pool='blobvirt' volume='…'/>"))?;
    let (vol, file) = (src.attribute_node("volume"), src.attribute_node("file"));
    Ok(match (disk.attribute("type"), src.attribute("pool"), vol, file) {
        (Some("volume"), Some(p), Some(v), _) => (DiskKind::Pool(p.to_string()), v.range_value()),
        (Some("file"), _, _, Some(f)) => (
            DiskKind::Dir(Path::new(f.value()).parent().unwrap_or(Path::new("/")).to_path_buf()),
            f.range_value(),
        ),
        (t, _, _, _) => bail!(
            "the first disk of {what} is type='{}' without a pool volume or file; use type='volume' with a pool on the mirrord mount, or type='file' under the mount",
            t.unwrap_or("?")
        ),
    })
}

/// Checks a template and returns its first disk's kind.
pub fn check_template(xml: &str, what: &str) -> Result<DiskKind> {
    let doc = Document::parse(xml)
        .map_err(|e| anyhow!("{what} is not well-formed XML ({e}); fix it and try again"))?;
    if !doc.root_element().has_tag_name("domain") {
        bail!("{what} is not a libvirt domain (its root element is not <domain>)");
    }
    Ok(first_disk(&doc, what)?.0)
}

/// The template made into domain `name` on volume `volume`: name, first
/// disk, SMBIOS system serial (the guest's marker name), serial console
/// log files; any `<uuid>` is dropped so libvirt makes a new one.
pub fn instantiate(xml: &str, name: &str, volume: &str) -> Result<String> {
    let doc = Document::parse(xml)
        .map_err(|e| anyhow!("the template is not well-formed XML ({e}); fix it and try again"))?;
    let root = doc.root_element();
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let (kind, src) = first_disk(&doc, "the template")?;
    edits.push((
        src,
        match kind {
            DiskKind::Pool(_) => esc(volume),
            DiskKind::Dir(d) => esc(&d.join(volume).display().to_string()),
        },
    ));
    let name_el = format!("<name>{}</name>", esc(name));
    let after_name = match child(root, "name") {
        Some(n) => {
            edits.push((n.range(), name_el));
            n.range().end
        }
        None => {
            let at = after_start(xml, root);
            edits.push((at..at, name_el));
            at
        }
    };
    if let Some(u) = child(root, "uuid") {
        edits.push((u.range(), String::new()));
    }
    let entry = format!("<entry name='serial'>{}</entry>", esc(name));
    let sysinfo = root
        .children()
        .find(|n| n.has_tag_name("sysinfo") && n.attribute("type") == Some("smbios"));
    match sysinfo {
        None => edits.push((
            after_name..after_name,
            format!("\n  <sysinfo type='smbios'><system>{entry}</system></sysinfo>"),
        )),
        Some(si) => match child(si, "system") {
            None => {
                let at = after_start(xml, si);
                edits.push((at..at, format!("<system>{entry}</system>")));
            }
            Some(sys) => match sys
                .children()
                .find(|e| e.has_tag_name("entry") && e.attribute("name") == Some("serial"))
            {
                Some(e) => edits.push((e.range(), entry)),
                None if xml[sys.range()].ends_with("/>") => {
                    edits.push((sys.range(), format!("<system>{entry}</system>")))
                }
                None => {
                    let at = after_start(xml, sys);
                    edits.push((at..at, entry));
                }
            },
        },
    }
    if let Some(os) = child(root, "os") {
        if child(os, "smbios").is_none() {
            let r = os.range();
            if let Some(i) = xml[r.clone()].rfind("</os>") {
                let at = r.start + i;
                edits.push((at..at, "  <smbios mode='sysinfo'/>\n  ".into()));
            }
        }
    }
    for dev in root.descendants().filter(|n| {
        (n.has_tag_name("serial") || n.has_tag_name("console"))
            && n.attribute("type") == Some("file")
    }) {
        if let Some(s) = child(dev, "source").filter(|s| s.attribute("path").is_some()) {
            let old = Path::new(s.attribute("path").unwrap_or_default());
            let dir = old
                .parent()
                .filter(|d| d.is_absolute() && d.is_dir())
                .unwrap_or(Path::new("/var/log/libvirt/qemu"));
            let log = dir.join(format!("{name}-{}.log", dev.tag_name().name()));
            edits.push((
                s.range(),
                format!("<source path='{}'/>", esc(&log.display().to_string())),
            ));
        }
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse((r.start, r.end)));
    let mut out = xml.to_string();
    for (r, s) in edits {
        out.replace_range(r, &s);
    }
    Ok(out)
}

/// One deployed domain.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Deployed {
    pub domain: String,
    pub volume: String,
    pub connect: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From this domain's define to running, in milliseconds.
    pub running_ms: f64,
    /// From the start of the command to running, in milliseconds.
    pub since_start_ms: f64,
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Makes the clones visible to libvirt: looks each file up on the mount
/// (mirrord learns the new names) and refreshes the pool.
fn make_visible(c: &virt::connect::Connect, kind: &DiskKind, vols: &[String]) -> Result<()> {
    let dir = match kind {
        DiskKind::Dir(d) => d.clone(),
        DiskKind::Pool(p) => conn::pool_path(c, p).ok_or_else(|| {
            anyhow!("libvirt has no running storage pool {p}; define it with blobvirt pool-define --name {p}")
        })?,
    };
    for v in vols {
        let f = dir.join(v);
        std::fs::metadata(&f).map_err(|e| {
            anyhow!(
                "the clone {} is not visible ({e}); check that mirrord is mounted there",
                f.display()
            )
        })?;
    }
    if let DiskKind::Pool(p) = kind {
        let pool = c
            .lookup_storage_pool_by_name(p)
            .map_err(|e| anyhow!("cannot find pool {p}: {}", conn::msg(&e)))?;
        pool.refresh(0)
            .map_err(|e| anyhow!("cannot refresh pool {p}: {}", conn::msg(&e)))?;
    }
    Ok(())
}

pub async fn deploy(pool: Option<&str>, a: Deploy) -> Result<()> {
    let start = Instant::now();
    let what = format!("template {}", a.template.display());
    let template = std::fs::read_to_string(&a.template)
        .map_err(|e| anyhow!("cannot read {what} ({e}); pass an existing domain XML file"))?;
    let kind = check_template(&template, &what)?;
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let (image, version) = parse_spec(&a.image).map_err(|e| anyhow!(e))?;
    let prefix = a.name_prefix.clone().unwrap_or_else(|| image.clone());
    let names: Vec<String> = (1..=a.count).map(|i| format!("{prefix}-{i}")).collect();
    let xmls = names
        .iter()
        .map(|n| instantiate(&template, n, n))
        .collect::<Result<Vec<_>>>()?;
    let uris = if a.connect.is_empty() {
        vec![DEFAULT_URI.to_string()]
    } else {
        a.connect.clone()
    };
    let u2 = uris.clone();
    let conns =
        blocking(move || u2.iter().map(|u| conn::open(u)).collect::<Result<Vec<_>>>()).await?;
    let conns = Arc::new(conns);
    let repo = connect(pool).await?;
    repo.get_blob(&image).await?;
    let existing: Vec<String> = repo
        .list_blobs()
        .await?
        .into_iter()
        .map(|b| b.name)
        .collect();
    if let Some(n) = names.iter().find(|n| existing.contains(n)) {
        bail!("volume {n} already exists; pick another --name-prefix or delete it with blobvirt vol-delete {n}");
    }
    let (c2, n2) = (conns.clone(), names.clone());
    blocking(move || -> Result<()> {
        for c in c2.iter() {
            if let Some(n) = n2.iter().find(|n| c.lookup_domain_by_name(n).is_ok()) {
                bail!("domain {n} already exists; pick another --name-prefix or undefine it with virsh undefine {n}");
            }
        }
        Ok(())
    })
    .await?;
    let t_clone = Instant::now();
    for r in join_all(names.iter().map(|n| repo.clone_blob(&image, version, n))).await {
        r?;
    }
    let clone_ms = ms(t_clone.elapsed());
    let (c2, n2, k2) = (conns.clone(), names.clone(), kind.clone());
    blocking(move || c2.iter().try_for_each(|c| make_visible(c, &k2, &n2))).await?;
    let results = join_all(names.iter().zip(xmls).enumerate().map(|(i, (n, xml))| {
        let (conns, n, uri) = (conns.clone(), n.clone(), uris[i % uris.len()].clone());
        blocking(move || {
            let c = &conns[i % conns.len()];
            let t = Instant::now();
            let mut d = Deployed {
                domain: n.clone(),
                volume: n.clone(),
                connect: uri,
                ..Default::default()
            };
            let r = c
                .define_domain_xml(&xml)
                .and_then(|dom| dom.create().map(|_| dom))
                .map_err(|e| format!("cannot start domain {n}: {}", conn::msg(&e)));
            match r {
                Ok(_) => {
                    d.ok = true;
                    d.running_ms = ms(t.elapsed());
                    d.since_start_ms = ms(start.elapsed());
                }
                Err(e) => d.error = Some(e),
            }
            d
        })
    }))
    .await;
    if a.json {
        print_json(&results)?;
    } else {
        let mut t = Table::new(&[
            "DOMAIN",
            "VOLUME",
            "CONNECT",
            "RUNNING AFTER",
            "SINCE START",
        ]);
        for d in &results {
            let cell = |ok: bool, v: f64| {
                if ok {
                    format!("{v:.0} ms")
                } else {
                    "FAILED".into()
                }
            };
            t.row(vec![
                d.domain.clone(),
                d.volume.clone(),
                d.connect.clone(),
                cell(d.ok, d.running_ms),
                cell(d.ok, d.since_start_ms),
            ]);
        }
        t.print();
        let ok = results.iter().filter(|d| d.ok).count();
        println!(
            "deployed {ok} of {} domains from {image} in {:.0} ms (clones {clone_ms:.0} ms)",
            results.len(),
            ms(start.elapsed())
        );
    }
    let failed: Vec<&Deployed> = results.iter().filter(|d| !d.ok).collect();
    for d in &failed {
        eprintln!("error: {}", d.error.as_deref().unwrap_or("failed"));
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|d| d.domain.as_str()).collect();
        bail!("{} of {} domains did not start: {}; their volumes stay (delete them with blobvirt vol-delete)", failed.len(), results.len(), names.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = include_str!("../../../guest/domain-template.xml");

    #[test]
    fn template_becomes_a_domain() {
        let x = instantiate(T, "web-3", "web-3").unwrap();
        let doc = Document::parse(&x).unwrap();
        let r = doc.root_element();
        assert_eq!(child(r, "name").unwrap().text(), Some("web-3"));
        let src = doc
            .descendants()
            .find(|n| n.has_tag_name("source") && n.attribute("pool").is_some())
            .unwrap();
        assert_eq!(
            (src.attribute("pool"), src.attribute("volume")),
            (Some("blobvirt"), Some("web-3"))
        );
        let serial = doc
            .descendants()
            .find(|n| n.attribute("name") == Some("serial"))
            .unwrap();
        assert_eq!(serial.text(), Some("web-3"));
        let log = doc
            .descendants()
            .find(|n| n.attribute("path").is_some())
            .unwrap();
        assert_eq!(
            log.attribute("path"),
            Some("/var/log/libvirt/qemu/web-3-serial.log")
        );
        assert!(
            !x.contains("NAME") || x.contains("<!--"),
            "placeholders outside comments are replaced"
        );
    }

    #[test]
    fn adds_sysinfo_and_keeps_file_dirs() {
        let t = "<domain type='qemu'><name>x</name><uuid>1</uuid><os><type>hvm</type></os><devices><disk type='file' device='disk'><source file=\"/mnt/bv/img\"><seclabel model='dac' relabel='no'/></source><target dev='vda'/></disk></devices></domain>";
        let x = instantiate(t, "a-1", "a-1").unwrap();
        assert!(
            x.contains(
                "<source file=\"/mnt/bv/a-1\"><seclabel model='dac' relabel='no'/></source>"
            ),
            "{x}"
        );
        assert!(x.contains("<sysinfo type='smbios'><system><entry name='serial'>a-1</entry></system></sysinfo>"), "{x}");
        assert!(x.contains("<smbios mode='sysinfo'/>"), "{x}");
        assert!(!x.contains("<uuid>"), "{x}");
        assert_eq!(
            check_template(t, "t").unwrap(),
            DiskKind::Dir("/mnt/bv".into())
        );
    }

    #[test]
    fn bad_templates_are_clear_errors() {
        let e = check_template("<domain><name>x</name>", "template t.xml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("template t.xml is not well-formed XML"),
            "{e}"
        );
        let e = check_template(
            "<domain><name>x</name><devices/></domain>",
            "template t.xml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("has no <disk device='disk'>"), "{e}");
        let e = check_template("<domain><devices><disk type='block'><source dev='/dev/sda'/></disk></devices></domain>", "t").unwrap_err().to_string();
        assert!(e.contains("type='block'"), "{e}");
    }
}
