//! Processes: those inside the emulated nodes, started with `nsenter
//! --net` (so they share the root mount namespace and their FUSE mounts
//! are visible to the harness; [`crate::hosts`] also enters a host's own
//! mount namespace) and logged to files; and, for every test, the one set
//! of process checks: [`alive`], [`running_in`], [`procs_in`], signals by
//! PID, [`wait_gone`], [`terminate`], and the one poll loop [`wait_until`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(20));
        }
    }

    /// SIGKILLs it (the fault a test injects) and reaps it.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for a file a daemon writes once it listens (e.g. poold.addr).
pub fn wait_file(path: &Path, d: &mut Daemon, limit: Duration) -> Result<String> {
    let mut exited = None;
    let mut text = None;
    wait_until(limit, || {
        text = read_nonempty(path);
        if text.is_none() {
            exited = d.check().err();
        }
        text.is_some() || exited.is_some()
    });
    match (text, exited) {
        (Some(s), _) => Ok(s),
        (None, Some(e)) => Err(e),
        (None, None) => bail!("{} did not write {} in time", d.name, path.display()),
    }
}

/// The trimmed content of `path` once it is not empty.
pub fn read_nonempty(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Polls `f` until it returns true (then true) or `limit` passes (then
/// false): first every 10 ms, then less often, at most every 100 ms.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    let mut pause = Duration::from_millis(10);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// True while `pid` exists and is not a fully exited zombie (the rule the
/// CLI uses too).
pub fn alive(pid: u32) -> bool {
    blobvirt_core::fsutil::process_running(pid)
}

/// True when `pid` is a running (non-zombie) process whose command line
/// mentions `dir` (so a reused pid is never taken for ours).
pub fn running_in(pid: u32, dir: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    String::from_utf8_lossy(&cmd).contains(&*dir.to_string_lossy())
}

/// Running processes (other than this one) whose command line mentions
/// `dir`.
pub fn procs_in(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .filter(|&pid| pid != me && running_in(pid, dir))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `sig` to `pid`, ignoring errors (the process may be gone).
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

pub fn sigkill(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGKILL);
}

pub fn sigterm(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
}

/// Waits until `pid` (checked to be ours before) is gone (at most `secs`).
pub fn wait_gone(pid: u32, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || !alive(pid))
}

/// Stops a process that is not our child: SIGTERM, `grace` to exit, then
/// SIGKILL and 10 s more. True when it is gone.
pub fn terminate_pid(pid: u32, grace: Duration) -> bool {
    sigterm(pid);
    if wait_until(grace, || !alive(pid)) {
        return true;
    }
    sigkill(pid);
    wait_gone(pid, 10)
}

/// Stops and reaps a child: SIGTERM, `grace` to exit, then SIGKILL.
/// Returns how it ended.
pub fn terminate(c: &mut Child, grace: Duration) -> Option<ExitStatus> {
    sigterm(c.id());
    let mut status = None;
    if wait_until(grace, || {
        status = c.try_wait().ok().flatten();
        status.is_some()
    }) {
        return status;
    }
    let _ = c.kill();
    c.wait().ok()
}

/// SIGKILLs and reaps a child.
pub fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Waits (at most `limit`) until a child exits by itself; its status then.
pub fn wait_exit(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(limit, || {
        status = c.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// Whether `p` is a mount point (in this mount namespace).
pub fn is_mounted(p: &Path) -> bool {
    blobvirt_core::fsutil::is_mounted(p)
}

/// Lazily unmounts `p` until nothing is mounted there (stacked mounts
/// included, at most 8).
pub fn lazy_umount(p: &Path) {
    for _ in 0..8 {
        if !is_mounted(p) {
            return;
        }
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
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
