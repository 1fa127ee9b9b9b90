//! Processes inside the emulated nodes: started with `nsenter --net` (so
//! they share the root mount namespace and their FUSE mounts are visible
//! to the harness; [`crate::hosts`] also enters a host's own mount
//! namespace), logged to files, and stopped by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A command that will run in network namespace `ns`.
pub fn in_ns(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(prog);
    c
}

/// Runs a command to completion; fails with its stderr.
pub fn run_ok(mut c: Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A background daemon, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, mut c: Command, log: &Path) -> Result<Daemon> {
        let f = std::fs::File::create(log)
            .with_context(|| format!("creating log {}", log.display()))?;
        let child = c
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Daemon {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Fails if the process has exited.
    pub fn check(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("{} exited with {st}; see {}", self.name, self.log.display());
            }
        }
        Ok(())
    }

    /// Waits until it exits by itself; returns when it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Instant> {
        let t = Instant::now();
        let c = self.child.as_mut().context("daemon already stopped")?;
        loop {
            if let Some(st) = c.try_wait()? {
                if !st.success() {
                    bail!("{} exited with {st}; see {}", self.name, self.log.display());
                }
                self.child = None;
                return Ok(Instant::now());
            }
            if t.elapsed() > limit {
                bail!("{} did not finish within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// When it has exited: `Some(when)` (an error if it failed), `None`
    /// while it runs.
    pub fn poll_exit(&mut self) -> Result<Option<Instant>> {
        let c = self.child.as_mut().context("daemon already stopped")?;
        match c.try_wait()? {
            None => Ok(None),
            Some(st) if st.success() => {
                self.child = None;
                Ok(Some(Instant::now()))
            }
            Some(st) => bail!("{} exited with {st}; see {}", self.name, self.log.display()),
        }
    }

    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for a file a daemon writes once it listens (e.g. poold.addr).
pub fn wait_file(path: &Path, d: &mut Daemon, limit: Duration) -> Result<String> {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return Ok(s.trim().to_string());
            }
        }
        d.check()?;
        if t.elapsed() > limit {
            bail!("{} did not write {} in time", d.name, path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `p` is a mount point (in this mount namespace).
pub fn is_mounted(p: &Path) -> bool {
    blobvirt_core::fsutil::is_mounted(p)
}

/// Bytes allocated on disk below `dir` (st_blocks, symlinks not followed).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    if !md.is_dir() {
        return md.blocks() * 512;
    }
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| disk_usage(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}
