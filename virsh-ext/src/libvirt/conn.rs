//! Shared libvirt plumbing of the deploy and snapshot commands: opening
//! connections, looking up domains, waiting for states, freezing guests,
//! and finding a domain's blobvirt disks in its XML (disks in a pool whose
//! target is a blobvirt FUSE mount, or files under such a mount).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};

/// The libvirt URI used when none is given.
pub const DEFAULT_URI: &str = "qemu:///system";

/// libvirt's message without its code/domain suffix.
pub fn msg(e: &virt::error::Error) -> String {
    e.message().trim_end_matches('.').to_string()
}

/// Opens a connection to `uri`.
pub fn open(uri: &str) -> Result<Connect> {
    open_hinted(uri, "start libvirtd")
}

/// Opens a connection to `uri` (without libvirt's own stderr printing);
/// on failure the error tells the user to `start` (e.g. "start libvirtd")
/// or pass another --connect URI.
pub fn open_hinted(uri: &str, start: &str) -> Result<Connect> {
    virt::error::clear_error_callback();
    Connect::open(Some(uri)).map_err(|e| {
        anyhow!(
            "cannot connect to libvirt at {uri} ({}); {start} or pass another --connect URI",
            msg(&e)
        )
    })
}

/// The domain `name`, or a sentence saying it does not exist.
pub fn domain(conn: &Connect, name: &str) -> Result<Domain> {
    conn.lookup_domain_by_name(name).map_err(|e| {
        anyhow!(
            "domain {name} does not exist ({}); list domains with virsh list --all",
            msg(&e)
        )
    })
}

/// The domain's state.
pub fn state(dom: &Domain) -> Result<DomainState> {
    let (s, _) = dom
        .state()
        .map_err(|e| anyhow!("cannot read the state of a domain: {}", msg(&e)))?;
    Ok(s.unwrap_or(DomainState::NoState))
}

/// True when the domain runs (or is paused): it has a QEMU process.
pub fn is_active(dom: &Domain) -> bool {
    dom.is_active().unwrap_or(false)
}

/// Waits until the domain is shut off.
pub fn wait_shutoff(dom: &Domain, name: &str, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    while is_active(dom) {
        if Instant::now() > end {
            bail!(
                "domain {name} did not stop within {} s; stop it with virsh destroy {name}",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Freezes the guest's file systems through the guest agent.
#[allow(unsafe_code)]
pub fn fs_freeze(dom: &Domain) -> Result<u32, String> {
    // SAFETY: `dom` is a live domain handle; no mount points are passed.
    let n = unsafe { virt::sys::virDomainFSFreeze(dom.as_ptr(), std::ptr::null_mut(), 0, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error().message().to_string());
    }
    Ok(n as u32)
}

/// Thaws the guest's file systems.
#[allow(unsafe_code)]
pub fn fs_thaw(dom: &Domain) -> Result<(), String> {
    // SAFETY: as in `fs_freeze`.
    let n = unsafe { virt::sys::virDomainFSThaw(dom.as_ptr(), std::ptr::null_mut(), 0, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error().message().to_string());
    }
    Ok(())
}

/// Mount points of blobvirt FUSE file systems (mirrord) on this host.
pub fn blobvirt_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut f = post.split(' ');
            let (fstype, source) = (f.next()?, f.next()?);
            let ours =
                fstype == "fuse.blobvirt" || (fstype.starts_with("fuse") && source == "blobvirt");
            ours.then(|| pre.split(' ').nth(4).map(|m| PathBuf::from(unescape(m))))
                .flatten()
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The volume name of `path` when it lies directly in a blobvirt mount.
pub fn volume_of_path(path: &Path, mounts: &[PathBuf]) -> Option<String> {
    let parent = path.parent()?;
    let parent = parent
        .canonicalize()
        .unwrap_or_else(|_| parent.to_path_buf());
    mounts
        .contains(&parent)
        .then(|| path.file_name()?.to_str().map(String::from))
        .flatten()
}

/// One disk of a domain that lives in blobvirt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobDisk {
    /// Target device, e.g. `vda`.
    pub target: String,
    /// blobvirt volume name.
    pub volume: String,
}

/// The target path of libvirt storage pool `pool`, if it exists.
pub fn pool_path(conn: &Connect, pool: &str) -> Option<PathBuf> {
    let p = conn.lookup_storage_pool_by_name(pool).ok()?;
    let xml = p.xml_desc(0).ok()?;
    let doc = roxmltree::Document::parse(&xml).ok()?;
    let path = doc
        .descendants()
        .find(|n| n.has_tag_name("target"))?
        .children()
        .find(|n| n.has_tag_name("path"))?
        .text()?;
    Some(PathBuf::from(path.trim()))
}

/// The blobvirt disks of a domain XML: `type='volume'` disks of a pool
/// whose target is a blobvirt mount, and `type='file'` disks in such a
/// mount. `pool_path` resolves a pool name to its target directory.
pub fn blob_disks(
    xml: &str,
    mounts: &[PathBuf],
    mut pool_path: impl FnMut(&str) -> Option<PathBuf>,
) -> Result<Vec<BlobDisk>> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| anyhow!("the domain XML is malformed ({e}); check it with virsh dumpxml"))?;
    let mut pools: HashMap<String, bool> = HashMap::new();
    let mut out = Vec::new();
    for d in doc.descendants().filter(|n| n.has_tag_name("disk")) {
        if !matches!(d.attribute("device"), None | Some("disk")) {
            continue;
        }
        let child = |tag: &str| d.children().find(|n| n.has_tag_name(tag));
        let (Some(src), Some(target)) = (child("source"), child("target")) else {
            continue;
        };
        let Some(dev) = target.attribute("dev") else {
            continue;
        };
        let volume = match d.attribute("type") {
            Some("volume") => {
                let (Some(pool), Some(vol)) = (src.attribute("pool"), src.attribute("volume"))
                else {
                    continue;
                };
                let ours = *pools.entry(pool.to_string()).or_insert_with(|| {
                    pool_path(pool).is_some_and(|p| {
                        let p = p.canonicalize().unwrap_or(p);
                        mounts.contains(&p)
                    })
                });
                ours.then(|| vol.to_string())
            }
            Some("file") => src
                .attribute("file")
                .and_then(|f| volume_of_path(Path::new(f), mounts)),
            _ => None,
        };
        if let Some(volume) = volume {
            out.push(BlobDisk {
                target: dev.to_string(),
                volume,
            });
        }
    }
    Ok(out)
}

/// XML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Runs a blocking libvirt call on the blocking pool (a panic there is a
/// bug and is propagated).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("libvirt task panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_blobvirt_disks_only() {
        let xml = r#"<domain><devices>
          <disk type='volume' device='disk'><source pool='bv' volume='a'/><target dev='vda'/></disk>
          <disk type='volume' device='disk'><source pool='other' volume='b'/><target dev='vdb'/></disk>
          <disk type='file' device='disk'><source file='/mnt/bv/c'/><target dev='vdc'/></disk>
          <disk type='file' device='disk'><source file='/var/lib/x.img'/><target dev='vdd'/></disk>
          <disk type='file' device='cdrom'><source file='/mnt/bv/iso'/><target dev='hdc'/></disk>
        </devices></domain>"#;
        let mounts = vec![PathBuf::from("/mnt/bv")];
        let disks = blob_disks(xml, &mounts, |p| {
            (p == "bv").then(|| PathBuf::from("/mnt/bv"))
        })
        .unwrap();
        let got: Vec<_> = disks
            .iter()
            .map(|d| (d.target.as_str(), d.volume.as_str()))
            .collect();
        assert_eq!(got, [("vda", "a"), ("vdc", "c")]);
        assert!(blob_disks("<domain>", &mounts, |_| None).is_err());
    }
}
