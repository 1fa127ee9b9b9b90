//! The hook's configuration, `/etc/blobvirt/hook.json` (env
//! `BLOBVIRT_HOOK_CONFIG` overrides the path): one entry per libvirt pool
//! that blobvirt serves, written by `blobvirt pool-define` and removed by
//! `pool-undefine`. Several pools (several mirrord mounts) may share one
//! libvirtd, so updates take a lock and replace the file atomically.
//!
//! ```json
//! { "pools": [ { "name": "blobvirt", "mount": "/var/lib/blobvirt/mnt",
//!                "control": "/var/lib/blobvirt/cache/control.sock",
//!                "pool_url": "http://127.0.0.1:7400",
//!                "connect": "qemu:///system" } ] }
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the configuration lives unless `BLOBVIRT_HOOK_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/blobvirt/hook.json";

/// Environment variable that overrides [`DEFAULT_PATH`].
pub const ENV: &str = "BLOBVIRT_HOOK_CONFIG";

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookConfig {
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
}

/// One libvirt pool backed by a mirrord mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// libvirt pool name (`<source pool='NAME'/>`).
    pub name: String,
    /// mirrord mount point, the pool's target path.
    pub mount: PathBuf,
    /// mirrord control socket.
    pub control: PathBuf,
    /// poold URL (informational; the hook talks to mirrord).
    #[serde(default)]
    pub pool_url: String,
    /// libvirt URI the pool was defined on (for `cluster down`).
    #[serde(default)]
    pub connect: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the blobvirt hook configuration {path}: {source}; check its permissions or run blobvirt pool-define again")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the blobvirt hook configuration {path} is not valid JSON ({msg}); fix it or run blobvirt pool-define again")]
    Parse { path: String, msg: String },
    #[error("cannot write the blobvirt hook configuration {path}: {source}; run as root")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The configuration path: `$BLOBVIRT_HOOK_CONFIG` or [`DEFAULT_PATH`].
pub fn path() -> PathBuf {
    std::env::var_os(ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

impl HookConfig {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<HookConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            msg: e.to_string(),
        })
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Applies `f` to the file under an exclusive lock (`PATH.lock`) and
    /// replaces it atomically; returns what `f` returned.
    pub fn update<T>(path: &Path, f: impl FnOnce(&mut HookConfig) -> T) -> Result<T, ConfigError> {
        let werr = |source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(werr)?;
        }
        let lock_path = path.with_extension("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(werr)?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| werr(std::io::Error::from(e)))?;
        let mut cfg = Self::load(path)?;
        let out = f(&mut cfg);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut t = File::create(&tmp)?;
            let mut text = serde_json::to_string_pretty(&cfg).map_err(std::io::Error::other)?;
            text.push('\n');
            t.write_all(text.as_bytes())?;
            t.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            werr(e)
        })?;
        Ok(out)
    }

    /// Adds or replaces the entry of `pool.name`.
    pub fn upsert(path: &Path, pool: PoolConfig) -> Result<(), ConfigError> {
        Self::update(path, |c| {
            c.pools.retain(|p| p.name != pool.name);
            c.pools.push(pool);
        })
    }

    /// Removes the entry of pool `name`; true when there was one.
    pub fn remove(path: &Path, name: &str) -> Result<bool, ConfigError> {
        Self::update(path, |c| {
            let n = c.pools.len();
            c.pools.retain(|p| p.name != name);
            c.pools.len() != n
        })
    }
}
