//! Finding a domain's blobvirt disks in the domain XML that libvirt hands
//! the hook on stdin: `<disk type='volume'><source pool='P' volume='V'/>`
//! with P a configured blobvirt pool, or `<disk type='file'><source
//! file='MOUNT/V'/>` with MOUNT a configured mirrord mount. Every other
//! disk (other pools, other paths, block devices, network disks, empty
//! CD-ROMs) is ignored.

use std::path::{Component, Path};

use crate::config::{HookConfig, PoolConfig};

/// One disk of the domain that lives in a blobvirt pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobvirtDisk {
    /// The volume (the file name under the mount).
    pub volume: String,
    /// The blobvirt pool it belongs to.
    pub pool: PoolConfig,
    /// `<target dev=…>`, for messages.
    pub target: Option<String>,
    /// `<readonly/>` or `<shareable/>`: no claim (several users may read it).
    pub shared: bool,
}

/// The parts of a domain the hook needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainDisks {
    pub name: Option<String>,
    pub disks: Vec<BlobvirtDisk>,
}

#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("the domain XML on stdin is malformed ({0}); libvirt passes the domain definition to the hook on stdin")]
    Malformed(String),
    #[error("the XML on stdin has no <domain> element; libvirt passes the domain definition to the hook on stdin")]
    NoDomain,
    #[error("disk {target} names volume {volume:?}, which is not a plain file name in blobvirt pool {pool}; use the volume's name as blobvirt vol-list shows it")]
    BadVolume {
        target: String,
        volume: String,
        pool: String,
    },
}

/// The volume name of `path` when it is a file directly under `mount`.
fn volume_under(path: &Path, mount: &Path) -> Option<String> {
    let rest = path.strip_prefix(mount).ok()?;
    let mut comps = rest.components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(n)), None) => n.to_str().map(str::to_string),
        _ => None,
    }
}

/// Where a symlink outside the mount points (OpenNebula's
/// `REMOTE_SYSTEM_DIR/disk.N -> MOUNT/VOLUME`), followed a few levels
/// without touching the mount itself.
fn linked(path: &Path) -> Option<std::path::PathBuf> {
    let mut p = path.to_path_buf();
    let mut hops = 0;
    while let Ok(t) = std::fs::read_link(&p) {
        p = match p.parent() {
            Some(dir) if t.is_relative() => dir.join(t),
            _ => t,
        };
        hops += 1;
        if hops == 8 {
            return None;
        }
    }
    (hops > 0).then_some(p)
}

fn valid_volume(v: &str) -> bool {
    !v.is_empty() && v != "." && v != ".." && !v.contains('/') && !v.contains('\0')
}

/// Parses `xml` (a `<domain>` or anything containing one, e.g. a
/// `<domstatus>`) and returns the disks that live in `cfg`'s pools.
pub fn parse(xml: &str, cfg: &HookConfig) -> Result<DomainDisks, XmlError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| XmlError::Malformed(e.to_string()))?;
    let domain = doc
        .root()
        .descendants()
        .find(|n| n.has_tag_name("domain"))
        .ok_or(XmlError::NoDomain)?;
    let name = domain
        .children()
        .find(|n| n.has_tag_name("name"))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string());
    let mut disks = Vec::new();
    let devices = domain.children().filter(|n| n.has_tag_name("devices"));
    for disk in devices.flat_map(|d| d.children().filter(|n| n.has_tag_name("disk"))) {
        let Some(src) = disk.children().find(|n| n.has_tag_name("source")) else {
            continue;
        };
        let target = disk
            .children()
            .find(|n| n.has_tag_name("target"))
            .and_then(|t| t.attribute("dev"))
            .map(str::to_string);
        let found = match disk.attribute("type").unwrap_or("file") {
            "volume" => {
                let Some(pool) = src.attribute("pool").and_then(|p| cfg.pool(p)) else {
                    continue;
                };
                let volume = src.attribute("volume").unwrap_or("").to_string();
                if !valid_volume(&volume) {
                    return Err(XmlError::BadVolume {
                        target: target.unwrap_or_else(|| "?".into()),
                        volume,
                        pool: pool.name.clone(),
                    });
                }
                Some((volume, pool.clone()))
            }
            "file" => src.attribute("file").and_then(|f| {
                let under = |path: &Path| {
                    cfg.pools
                        .iter()
                        .find_map(|p| volume_under(path, &p.mount).map(|v| (v, p.clone())))
                };
                under(Path::new(f)).or_else(|| linked(Path::new(f)).as_deref().and_then(under))
            }),
            _ => None,
        };
        let Some((volume, pool)) = found else {
            continue;
        };
        let flag = |t: &str| disk.children().any(|n| n.has_tag_name(t));
        disks.push(BlobvirtDisk {
            volume,
            pool,
            target,
            shared: flag("readonly") || flag("shareable"),
        });
    }
    Ok(DomainDisks { name, disks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HookConfig {
        HookConfig {
            pools: vec![PoolConfig {
                name: "bv".into(),
                mount: "/mnt/bv".into(),
                control: "/run/bv.sock".into(),
                pool_url: String::new(),
                connect: String::new(),
            }],
        }
    }

    #[test]
    fn volume_under_mount() {
        let m = Path::new("/mnt/bv");
        assert_eq!(volume_under(Path::new("/mnt/bv/g1"), m), Some("g1".into()));
        assert_eq!(volume_under(Path::new("/mnt/bv/a/b"), m), None);
        assert_eq!(volume_under(Path::new("/mnt/bvx/g1"), m), None);
        assert_eq!(volume_under(Path::new("/mnt/bv"), m), None);
        assert_eq!(volume_under(Path::new("/mnt/bv/../etc"), m), None);
    }

    #[test]
    fn empty_cdrom_and_network_disks_are_ignored() {
        let xml = "<domain><name>d</name><devices>\
            <disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>\
            <disk type='network'><source protocol='nbd' name='/mnt/bv/g1'/></disk>\
            </devices></domain>";
        assert!(parse(xml, &cfg()).unwrap().disks.is_empty());
    }

    #[test]
    fn a_symlink_into_the_mount_is_that_volume() {
        // OpenNebula's disk.0 -> MOUNT/one-42-0.
        let dir = std::env::temp_dir().join(format!("bv-hook-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("disk.0");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/mnt/bv/one-42-0", &link).unwrap();
        let xml = format!(
            "<domain><name>one-42</name><devices><disk type='file' device='disk'>\
             <source file='{}'/><target dev='vda'/></disk></devices></domain>",
            link.display()
        );
        let d = parse(&xml, &cfg()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(d.disks.len(), 1);
        assert_eq!(d.disks[0].volume, "one-42-0");
    }
}
