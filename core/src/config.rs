//! The one configuration file, `/etc/blobvirt/blobvirt.toml`, read by every
//! daemon and by the CLI: its schema (one section per role), where it is
//! found, and the one-sentence errors for a malformed file.
//!
//! Precedence is flag, then environment, then file, then default. clap
//! already gives the first two and the defaults; [`pick`] puts the file
//! between them by asking clap where a value came from.
//!
//! The file is found at `--config FILE`, else `$BLOBVIRT_CONFIG`, else
//! (for the CLI) `$BLOBVIRT_CLUSTER_DIR/blobvirt.toml`, else
//! `/etc/blobvirt/blobvirt.toml` when it exists. A file that was named
//! explicitly must exist; the default one may be absent (then every value
//! comes from flags and defaults, as on a loopback test cluster).
//! The example with every key is `packaging/blobvirt.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

/// Where the file is looked for when nothing names it.
pub const DEFAULT_PATH: &str = "/etc/blobvirt/blobvirt.toml";
/// Environment variable naming the file.
pub const ENV: &str = "BLOBVIRT_CONFIG";

/// A configuration file that cannot be used; the message is one sentence
/// naming the file, the key and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} cannot be read ({source}); create it (example: packaging/blobvirt.toml) or point --config/BLOBVIRT_CONFIG elsewhere")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}, line {line}: {key}: {problem}; fix it (every key is in packaging/blobvirt.toml)")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        problem: String,
    },
    #[error("configuration file {path}: {key}: {problem}; fix the value (example: packaging/blobvirt.toml)")]
    Value {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("configuration file {path}: {key} names {file}, which {problem}; {hint}")]
    MissingFile {
        path: PathBuf,
        key: String,
        file: PathBuf,
        problem: String,
        hint: String,
    },
}

/// The whole file. Every value is optional: what is absent comes from
/// flags, the environment or the defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Mutual TLS for every gRPC connection; absent = plain HTTP/2.
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub poold: PooldSection,
    #[serde(default)]
    pub chunkd: ChunkdSection,
    #[serde(default)]
    pub mirrord: MirrordSection,
    /// The file this was read from (None: no file).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// `[cluster]`: what every host of the cluster shares.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// poold endpoints (`https://HOST:PORT`); one today.
    pub pool: Option<Vec<String>>,
    /// Copies of every chunk.
    pub replicas: Option<u32>,
    /// Default chunk size of new volumes, e.g. "256K".
    pub chunk_size: Option<String>,
}

/// `[tls]`: this host's certificate and the cluster's CA (PEM files).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[poold]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PooldSection {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub engine: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub gc_grace_secs: Option<u64>,
    pub gc_interval_secs: Option<u64>,
    pub heartbeat_timeout_ms: Option<u64>,
    pub lease_ttl_ms: Option<u64>,
    /// A chunkd down this long is *out*: its chunks get new replicas.
    pub out_after_secs: Option<f64>,
    /// Interval of the background self-healing pass.
    pub repair_interval_secs: Option<f64>,
    /// Bandwidth of recovery, rebalance and drain copies in MB/s (0: unlimited).
    pub recovery_mbps: Option<u64>,
    /// Chunk copies of recovery running at once.
    pub recovery_concurrency: Option<usize>,
    /// Client URLs of the etcd members (`engine = "etcd"`).
    pub etcd_endpoints: Option<Vec<String>>,
    /// Prefix of poold's keys in etcd.
    pub etcd_prefix: Option<String>,
    /// The etcd members' `--max-txn-ops`.
    pub etcd_max_txn_ops: Option<usize>,
    /// The etcd members' `--max-request-bytes`.
    pub etcd_max_request_bytes: Option<usize>,
    /// Life of the active poold's election lease in etcd (seconds).
    pub election_ttl_secs: Option<u64>,
}

/// `[chunkd]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkdSection {
    pub listen: Option<SocketAddr>,
    /// `HOST:PORT` registered with poold (default: the listen address).
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub node_id: Option<String>,
    pub metrics: Option<SocketAddr>,
    /// Background scrub read rate in MB/s (0: no background scrub).
    pub scrub_mbps: Option<u64>,
    /// Pause between two background scrub passes.
    pub scrub_interval_secs: Option<u64>,
}

/// `[mirrord]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrordSection {
    pub mount: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub control: Option<PathBuf>,
    pub threads: Option<usize>,
    pub metrics: Option<SocketAddr>,
    /// Size of the host's in-memory chunk cache in MiB (0: off).
    pub chunk_cache_mib: Option<u64>,
    /// Kernel read-ahead of the mount in KiB (buffered sequential reads).
    pub read_ahead_kib: Option<u64>,
}

impl Config {
    /// Finds and reads the file: `flag`, else `$BLOBVIRT_CONFIG`, else each
    /// of `fallbacks` that exists, else [`DEFAULT_PATH`] if it exists, else
    /// an empty configuration.
    pub fn locate(flag: Option<&Path>, fallbacks: &[PathBuf]) -> Result<Config, ConfigError> {
        if let Some(p) = flag {
            return Config::load(p);
        }
        if let Some(p) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
            return Config::load(Path::new(&p));
        }
        for p in fallbacks
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new(DEFAULT_PATH)])
        {
            if p.exists() {
                return Config::load(p);
            }
        }
        Ok(Config::default())
    }

    /// Reads and checks the file at `path`, which must exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses `text` as the file at `path` and checks the files it names.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| invalid(path, text, &e))?;
        cfg.path = Some(path.to_path_buf());
        let base = path.parent().unwrap_or(Path::new("/"));
        if let Some(t) = &mut cfg.tls {
            for (key, file) in [
                ("ca", &mut t.ca),
                ("cert", &mut t.cert),
                ("key", &mut t.key),
            ] {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
                check_file(path, &format!("[tls] {key}"), file)?;
            }
        }
        if let Some(pools) = &cfg.cluster.pool {
            let bad = if pools.is_empty() {
                Some("no endpoint is given; list at least one poold".to_string())
            } else {
                pools
                    .iter()
                    .find(|p| p.trim().is_empty() || p.contains(','))
                    .map(|p| {
                        format!("{p:?} is not one endpoint; give each poold as its own list entry")
                    })
            };
            if let Some(problem) = bad {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line: line_of_key(text, "cluster", "pool"),
                    key: "[cluster] pool".into(),
                    problem,
                });
            }
        }
        Ok(cfg)
    }

    /// The first poold endpoint of `[cluster] pool`.
    /// Every poold endpoint of `[cluster] pool`, joined by commas (the form
    /// `--pool` takes; clients fail over between them, see
    /// [`crate::failover`]).
    pub fn pool(&self) -> Option<String> {
        let p = self.cluster.pool.as_ref()?;
        (!p.is_empty()).then(|| p.join(","))
    }

    /// Where this configuration came from, for messages.
    pub fn origin(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("no configuration file ({DEFAULT_PATH} does not exist)"),
        }
    }
}

fn check_file(cfg: &Path, key: &str, file: &Path) -> Result<(), ConfigError> {
    let problem = match std::fs::metadata(file) {
        Ok(m) if m.is_file() => return Ok(()),
        Ok(_) => "is not a regular file".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be read ({e})"),
    };
    Err(ConfigError::MissingFile {
        path: cfg.to_path_buf(),
        key: key.into(),
        file: file.to_path_buf(),
        problem,
        hint: "create it with blobvirt ca init / blobvirt ca issue, or fix the path".into(),
    })
}

/// Turns a TOML or schema error into one sentence with the line and key.
fn invalid(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let start = e.span().map_or(0, |s| s.start).min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    let (section, key) = key_at(text, start);
    let key = match (section.as_deref(), key) {
        (Some(s), Some(k)) => format!("[{s}] {k}"),
        (Some(s), None) => format!("[{s}]"),
        (None, Some(k)) => k,
        (None, None) => "the file".into(),
    };
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key,
        problem: e.message().trim().replace('\n', " "),
    }
}

/// The section header above byte `pos` and the key on its line.
fn key_at(text: &str, pos: usize) -> (Option<String>, Option<String>) {
    let before = &text[..pos];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let section = before[..line_start]
        .lines()
        .rev()
        .chain(line.trim().starts_with('[').then_some(line))
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .map(|s| s.trim().to_string())
        });
    (section, key)
}

fn line_of_key(text: &str, section: &str, key: &str) -> usize {
    let mut in_section = false;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            in_section = t.trim_matches(|c| c == '[' || c == ']').trim() == section;
        } else if in_section && t.split('=').next().map(str::trim) == Some(key) {
            return i + 1;
        }
    }
    1
}

/// True when argument `id` was given as a flag or through its environment
/// variable (so it beats the file).
pub fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Sets `slot` from the file's `value` unless argument `id` was given.
pub fn pick<T>(m: &ArgMatches, id: &str, slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        if !given(m, id) {
            *slot = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/blobvirt/blobvirt.toml"), text)
    }

    #[test]
    fn the_packaged_example_parses_with_every_key() {
        // Without [tls]: its files exist only on an installed host.
        let text: Vec<&str> = include_str!("../../packaging/blobvirt.toml")
            .split("\n[")
            .filter(|s| !s.starts_with("tls]"))
            .collect();
        let c = parse(&text.join("\n[")).unwrap();
        assert_eq!(c.poold.out_after_secs, Some(600.0));
        assert_eq!(c.poold.recovery_concurrency, Some(4));
        assert_eq!(c.chunkd.scrub_mbps, Some(8));
    }

    #[test]
    fn unknown_key_names_file_section_and_key() {
        let e = parse("[poold]\nlisten = \"0.0.0.0:7000\"\nlistn = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/blobvirt/blobvirt.toml, line 3: [poold] listn"),
            "{e}"
        );
        assert!(e.contains("unknown field"), "{e}");
        assert!(e.contains("`listen`"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_expected_type() {
        let e = parse("[cluster]\nreplicas = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: [cluster] replicas"), "{e}");
        assert!(e.contains("u32"), "{e}");
        let e = parse("[poold]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[poold] listen"), "{e}");
    }

    #[test]
    fn missing_tls_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.pem"), "x").unwrap();
        let cfg = d.path().join("b.toml");
        let text = "[tls]\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n";
        let e = Config::parse(&cfg, text).unwrap_err().to_string();
        assert!(e.contains("[tls] cert names"), "{e}");
        assert!(e.contains("node.pem, which does not exist"), "{e}");
    }

    #[test]
    fn sections_and_values_are_read() {
        let c =
            parse("[cluster]\npool = [\"https://h:7000\"]\nreplicas = 3\n[mirrord]\nthreads = 8\n")
                .unwrap();
        assert_eq!(c.pool().as_deref(), Some("https://h:7000"));
        let two = parse("[cluster]\npool = [\"https://a:7000\", \"https://b:7000\"]\n").unwrap();
        assert_eq!(two.pool().as_deref(), Some("https://a:7000,https://b:7000"));
        assert_eq!(c.cluster.replicas, Some(3));
        assert_eq!(c.mirrord.threads, Some(8));
        assert!(c.tls.is_none());
        assert!(parse("[cluster]\npool = []\n").is_err());
        let e = parse("[cluster]\npool = [\"a:1,b:2\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not one endpoint"), "{e}");
    }
}
