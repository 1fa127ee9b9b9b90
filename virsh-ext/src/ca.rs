//! `blobvirt ca init` and `blobvirt ca issue`: the cluster's certificate
//! authority and one certificate per node, made with rcgen (ECDSA P-256).
//!
//! Layout of a CA directory (`/etc/blobvirt/tls` on a real host,
//! `DIR/tls` for `cluster up`): `ca.pem` (shared with every host),
//! `ca.key` (stays on the host that issues), `NODE.pem` and `NODE.key`
//! (copied to that node). Keys are written mode 0600 and never replaced.
//! A node certificate is good for both ends of a connection (server and
//! client auth): every daemon serves and calls.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::cli::{CaInit, CaIssue};

/// The files of a CA directory.
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        }
    }
}

/// Writes `data` to a new file `path` with `mode`; refuses to replace one.
fn write_new(path: &Path, data: &str, mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow!(
                "{} already exists; remove it first if you mean to replace it (every certificate issued by an old CA stops working)",
                path.display()
            ),
            _ => anyhow!("cannot create {}: {e}; check the directory", path.display()),
        })?;
    f.write_all(data.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .with_context(|| format!("creating the directory {}", dir.display()))
}

/// Creates a new CA in `dir` named `name`.
pub fn init(dir: &Path, name: &str) -> Result<CaFiles> {
    create_dir(dir)?;
    let files = CaFiles::in_dir(dir);
    if files.cert.exists() || files.key.exists() {
        bail!(
            "a CA already exists in {} ({}); issue node certificates from it with blobvirt ca issue, or pick another --dir",
            dir.display(),
            files.cert.display()
        );
    }
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut p = CertificateParams::new(Vec::<String>::new()).context("preparing the CA")?;
    p.distinguished_name
        .push(DnType::CommonName, format!("blobvirt CA {name}"));
    p.distinguished_name
        .push(DnType::OrganizationName, "blobvirt");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).context("signing the CA")?;
    write_new(&files.key, &key.serialize_pem(), 0o600)?;
    write_new(&files.cert, &cert.pem(), 0o644)?;
    Ok(files)
}

/// Issues a certificate for node `name` from the CA in `dir`, valid for
/// `ips` and `dns` (and `name` when it is a DNS name); writes
/// `out/NAME.pem` and `out/NAME.key`.
pub fn issue(
    dir: &Path,
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    out: &Path,
) -> Result<(PathBuf, PathBuf)> {
    if name.is_empty() || name.contains(['/', ' ']) || name.starts_with('.') {
        bail!("node name {name:?} cannot be a file name; use a host name like node-1");
    }
    let files = CaFiles::in_dir(dir);
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            anyhow!(
                "cannot read {} ({e}); create the CA with blobvirt ca init --dir {}",
                p.display(),
                dir.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read(&files.key)?)
        .with_context(|| format!("reading the CA key {}", files.key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&files.cert)?, ca_key)
        .with_context(|| format!("reading the CA certificate {}", files.cert.display()))?;
    let mut sans: Vec<SanType> = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    let mut names: Vec<String> = dns.to_vec();
    if name.parse::<IpAddr>().is_err() && !names.iter().any(|d| d == name) {
        names.insert(0, name.to_string());
    }
    for d in &names {
        sans.push(SanType::DnsName(d.as_str().try_into().map_err(|_| {
            anyhow!("{d:?} is not a DNS name; pass --dns like node-1.example.org")
        })?));
    }
    if ips.is_empty() && dns.is_empty() {
        tracing::warn!("no --ip or --dns given; clients can reach {name} only by that name");
    }
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "blobvirt");
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().context("generating the node key")?;
    let cert = p
        .signed_by(&key, &issuer)
        .with_context(|| format!("signing the certificate of {name}"))?;
    create_dir(out)?;
    let (cert_path, key_path) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

/// `blobvirt ca init`.
pub fn cmd_init(a: CaInit) -> Result<()> {
    let f = init(&a.dir, &a.name)?;
    println!(
        "CA certificate {} (copy it to every host)",
        f.cert.display()
    );
    println!(
        "CA key {} (keep it on this host only, mode 0600)",
        f.key.display()
    );
    Ok(())
}

/// `blobvirt ca issue`.
pub fn cmd_issue(a: CaIssue) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.dir.clone());
    let (c, k) = issue(&a.dir, &a.node, &a.ip, &a.dns, &out)?;
    println!("certificate {}", c.display());
    println!("key {} (mode 0600)", k.display());
    Ok(())
}
