//! Small file-system helpers shared by the daemons: crash-safe writes of
//! small files such as address and node-id files, and the lock that keeps
//! two daemons off one data directory, and whether a process still runs.

use std::io::Write;
use std::path::Path;

/// Writes `data` to `path` atomically: a temporary file next to it
/// (`path` with extension `tmp`), fsync, rename into place, then fsync of
/// the parent directory. On failure the temporary file is removed.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Decodes the octal escapes (`\040` for a space) of a `mountinfo` path.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Absolute form of `p` without resolving symlinks (a stale FUSE mount
/// cannot be stat'ed).
pub fn absolute(p: &Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// True when something is mounted at `p` (an absolute path, not resolved:
/// a stale FUSE mount cannot be stat'ed), per `/proc/self/mountinfo` of
/// this mount namespace.
pub fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&unescape_mountinfo(m)) == p)
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default`), in colour only
/// on a terminal. Every daemon and the CLI start with it.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Tells systemd (units with `Type=notify`) that the daemon serves; a
/// no-op when not started by systemd.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot tell systemd that the daemon is ready: {e}");
    }
}

/// The default log filter of a daemon: `info`, plus refused TLS
/// handshakes (tonic logs them at debug).
pub const DAEMON_LOG: &str = "info,tonic::transport::server::io_stream=debug";

/// An exclusive lock on a daemon's data directory, held while it lives.
pub type DirLock = nix::fcntl::Flock<std::fs::File>;

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("another {daemon} already uses {dir}; stop it first or pick another {flag}")]
    Busy {
        daemon: String,
        dir: String,
        flag: String,
    },
}

/// Takes an exclusive lock on `DIR/DAEMON.lock` without waiting, so two
/// `daemon`s never share `dir`; `flag` is the option that names the
/// directory, for the error sentence.
pub fn lock_dir(dir: &Path, daemon: &str, flag: &str) -> Result<DirLock, LockError> {
    let path = dir.join(format!("{daemon}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockError::Open {
            path: path.display().to_string(),
            source,
        })?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        LockError::Busy {
            daemon: daemon.into(),
            dir: dir.display().to_string(),
            flag: flag.into(),
        }
    })
}

/// Keeps glibc from handing chunk-sized buffers back to the kernel: a fixed
/// mmap threshold of 32 MiB (chunks of up to 4 MiB come from the heap, not
/// from a fresh `mmap` each) and a trim threshold of 128 MiB (freed heap
/// memory is kept for the next chunk instead of `madvise`d away). On these
/// VMs freed pages go back to the host (virtio-balloon free page
/// reporting), so every chunk buffer re-faulted fresh memory from the host;
/// perf showed the faults and `madvise` under the data path (issue 14).
/// Call it first thing in `main`.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, under glibc's arena
    // lock (safe with other threads running).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// True when process `pid` runs: not a zombie, or a zombie thread-group
/// leader whose other threads are still exiting (and may still hold its
/// sockets).
pub fn process_running(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
    };
    let zombie = matches!(field("State:").chars().next(), Some('Z' | 'X') | None);
    !zombie || field("Threads:").parse::<u32>().unwrap_or(0) > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_with_spaces() {
        assert_eq!(unescape_mountinfo("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/proc/self")));
    }

    #[test]
    fn one_lock_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let l = lock_dir(dir.path(), "chunkd", "--dir").unwrap();
        let e = lock_dir(dir.path(), "chunkd", "--dir").unwrap_err();
        assert!(
            e.to_string().starts_with("another chunkd already uses"),
            "{e}"
        );
        assert!(
            lock_dir(dir.path(), "poold", "--dir").is_ok(),
            "one lock file per daemon"
        );
        drop(l);
        assert!(lock_dir(dir.path(), "chunkd", "--dir").is_ok());
    }

    #[test]
    fn replaces_contents_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.addr");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!p.with_extension("tmp").exists());
        assert!(write_atomic(&dir.path().join("missing/x"), b"z").is_err());
    }
}
