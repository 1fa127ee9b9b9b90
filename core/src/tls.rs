//! Mutual TLS between all daemons and the CLI: this process's identity
//! (the cluster CA, its own certificate and key, from `[tls]` of the
//! configuration file), installed once per process, the server and client
//! configurations built from it, and sentences for refused handshakes.
//!
//! A process either has an identity, and then every gRPC connection it
//! makes or accepts is TLS with a certificate from the cluster CA on both
//! sides, or it has none and speaks plain HTTP/2 (a loopback test cluster
//! started without `[tls]`). URLs say which: `https://` or `http://`, and
//! a URL that does not match the process is refused with a sentence rather
//! than tried.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsSection;

/// An identity that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS file {path} ({source}); check [tls] in the configuration file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS key {path} can be read by other users (mode {mode:o}); run chmod 600 {path}")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("TLS file {path} holds no PEM {what}; give the file made by blobvirt ca init or blobvirt ca issue")]
    NotPem { path: PathBuf, what: &'static str },
    /// The certificate would be refused by every member of the cluster.
    #[error("this host's certificate {cert} is not accepted by the cluster CA {ca} ([tls] ca): {why}; issue one from that CA with blobvirt ca issue")]
    NotIssued {
        cert: PathBuf,
        ca: PathBuf,
        why: String,
    },
}

/// This process's TLS identity.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

static INSTALLED: OnceLock<Arc<Tls>> = OnceLock::new();

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem(path: &Path, data: Vec<u8>, what: &'static str, tag: &str) -> Result<Vec<u8>, TlsError> {
    let text = String::from_utf8_lossy(&data);
    if text.contains("-----BEGIN ") && text.contains(tag) {
        Ok(data)
    } else {
        Err(TlsError::NotPem {
            path: path.to_path_buf(),
            what,
        })
    }
}

impl Tls {
    /// Reads the three PEM files; the key must not be readable by others.
    pub fn load(s: &TlsSection) -> Result<Tls, TlsError> {
        let mode = std::fs::metadata(&s.key)
            .map_err(|source| TlsError::Read {
                path: s.key.clone(),
                source,
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o007 != 0 {
            return Err(TlsError::KeyMode {
                path: s.key.clone(),
                mode,
            });
        }
        let t = Tls {
            ca: pem(&s.ca, read(&s.ca)?, "certificate", "CERTIFICATE")?,
            cert: pem(&s.cert, read(&s.cert)?, "certificate", "CERTIFICATE")?,
            key: pem(&s.key, read(&s.key)?, "private key", "PRIVATE KEY")?,
            ca_path: s.ca.clone(),
            cert_path: s.cert.clone(),
        };
        t.check_issued()?;
        Ok(t)
    }

    /// Verifies this certificate against the CA the way every server of
    /// the cluster will, so a stranger's certificate is refused here with
    /// the reason (over TLS 1.3 a server's refusal reaches the client only
    /// as a closed connection).
    fn check_issued(&self) -> Result<(), TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, UnixTime};
        let fail = |why: String| TlsError::NotIssued {
            cert: self.cert_path.clone(),
            ca: self.ca_path.clone(),
            why,
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca) {
            let c = c.map_err(|e| fail(format!("the CA file cannot be parsed ({e})")))?;
            roots
                .add(c)
                .map_err(|e| fail(format!("the CA certificate cannot be used ({e})")))?;
        }
        let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| fail(format!("the certificate cannot be parsed ({e})")))?;
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(fail("the file holds no certificate".into()));
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail(format!("the CA cannot verify certificates ({e})")))?;
        verifier
            .verify_client_cert(leaf, rest, UnixTime::now())
            .map(|_| ())
            .map_err(|e| {
                fail(match e {
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature,
                    ) => {
                        "it is not signed by that CA (self-signed, or from another cluster)".into()
                    }
                    other => other.to_string(),
                })
            })
    }

    /// Makes this the process's identity (the first call wins).
    /// The PEM bytes of the CA, the certificate and the key (for clients
    /// other than tonic's, such as etcd's).
    pub fn pems(&self) -> (&[u8], &[u8], &[u8]) {
        (&self.ca, &self.cert, &self.key)
    }

    pub fn install(self) -> Arc<Tls> {
        INSTALLED.get_or_init(|| Arc::new(self)).clone()
    }

    /// Server side: this certificate, and client certificates required
    /// and checked against the cluster CA before any RPC runs.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(false)
    }

    /// Client side: trust only the cluster CA, present this certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// The identity installed in this process, if any.
pub fn installed() -> Option<Arc<Tls>> {
    INSTALLED.get().cloned()
}

/// Loads `[tls]` (if the configuration has it) and installs it; returns
/// whether TLS is on.
pub fn install_from(cfg: &crate::config::Config) -> Result<bool, TlsError> {
    match &cfg.tls {
        Some(s) => {
            Tls::load(s)?.install();
            Ok(true)
        }
        None => Ok(false),
    }
}

/// A sentence for a connection to `url` that failed in the TLS handshake,
/// found by walking `err`'s sources; None when TLS was not the cause.
pub fn explain(url: &str, err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let tls = installed();
    let cert = tls.as_ref().map_or_else(
        || "(none)".to_string(),
        |t| t.cert_path.display().to_string(),
    );
    let ca = tls
        .as_ref()
        .map_or_else(|| "(none)".to_string(), |t| t.ca_path.display().to_string());
    let e = find_rustls(err)?;
    Some(match e {
        E::AlertReceived(A::CertificateRequired) => format!(
            "{url} refused the connection because this host showed no certificate; set [tls] in the configuration file"
        ),
        E::AlertReceived(a @ (A::UnknownCA | A::BadCertificate | A::DecryptError | A::AccessDenied | A::CertificateUnknown)) => format!(
            "{url} refused this host's certificate {cert} ({a:?}): it is not signed by that cluster's CA; issue one with blobvirt ca issue on the host that holds the cluster's CA"
        ),
        E::AlertReceived(A::CertificateExpired) => format!(
            "{url} refused this host's certificate {cert}: it has expired; issue a new one with blobvirt ca issue"
        ),
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the certificate of {url} is not signed by this host's CA {ca}; it belongs to another cluster, or [tls] ca names the wrong file"
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the certificate of {url} is not valid for that address; issue it with blobvirt ca issue NODE --ip/--dns naming the address clients use"
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => format!(
            "the certificate of {url} has expired; issue a new one with blobvirt ca issue"
        ),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => format!(
            "{url} does not speak TLS; give its http:// URL, or set [tls] on that daemon's host too"
        ),
        other => format!("the TLS handshake with {url} failed ({other}); check [tls] on both hosts"),
    })
}

/// A hint for a connection the server closed: over TLS 1.3 a refused
/// client certificate looks like that from the client, and so does a
/// server that died; the phrase names this host's certificate and CA.
pub fn closed_hint() -> Option<String> {
    let t = installed()?;
    Some(format!(
        " and that it trusts this host's certificate {} (it closes the connection after the TLS handshake when it does not; the CA here is {})",
        t.cert_path.display(),
        t.ca_path.display()
    ))
}

fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // io::Error's source() skips the error it wraps.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = find_rustls(inner) {
                return Some(r);
            }
        }
        cur = e.source();
    }
    None
}

/// The URL for a daemon at `addr` (`HOST:PORT` or a URL), with the scheme
/// this process uses; a URL whose scheme does not match is refused.
pub fn url_for(addr: &str) -> Result<String, String> {
    let tls = installed().is_some();
    match addr.split_once("://") {
        None if tls => Ok(format!("https://{addr}")),
        None => Ok(format!("http://{addr}")),
        Some(("https", _)) if tls => Ok(addr.to_string()),
        Some(("http", _)) if !tls => Ok(addr.to_string()),
        Some(("https", rest)) => Err(format!(
            "{addr} is a TLS address, and this host has no certificate; set [tls] in the configuration file (BLOBVIRT_CONFIG, or /etc/blobvirt/blobvirt.toml), or use http://{rest} for a cluster without TLS"
        )),
        Some(("http", rest)) => Err(format!(
            "{addr} is plain HTTP, and this host uses TLS; write https://{rest}"
        )),
        Some((scheme, _)) => Err(format!(
            "{scheme}:// is not a poold or chunkd address; give it as https://HOST:PORT (or http:// without TLS)"
        )),
    }
}

/// A gRPC server builder that serves TLS when this process has an identity.
pub fn server_builder() -> Result<tonic::transport::Server, String> {
    let b = tonic::transport::Server::builder();
    match installed() {
        Some(t) => b.tls_config(t.server_config()).map_err(|e| {
            format!("the TLS configuration of this host cannot be served ({e}); check [tls]")
        }),
        None => Ok(b),
    }
}
