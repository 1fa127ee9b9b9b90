//! Daemon processes of a local cluster: finding the binaries, starting them
//! detached (own process group, output to a log file), and recognising a
//! pid as ours before signalling it, so a reused pid is never killed.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Finds `name` next to the running executable, then on `PATH`.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("cannot find the {name} binary next to blobvirt or on PATH; build it with cargo build --workspace --bins or install blobvirt")
}

/// Starts `exe args` in its own process group with stdin closed and
/// stdout/stderr appended to `log`.
pub fn spawn(exe: &Path, args: &[String], log: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log file {}", log.display()))?;
    let err = out.try_clone().context("duplicate the log file handle")?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            anyhow!(
                "cannot start {}: {e}; check that the binary is executable",
                exe.display()
            )
        })
}

fn read_cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

pub use blobvirt_core::fsutil::process_running as is_running;

/// True when `pid` runs the binary `binary` with `dir` among its arguments:
/// only then it is a process of our cluster and may be signalled.
pub fn is_ours(pid: u32, binary: &str, dir: &Path) -> bool {
    if pid == 0 || !is_running(pid) {
        return false;
    }
    let exe_name = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| {
            p.file_name().map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
        });
    let Some(args) = read_cmdline(pid) else {
        return false;
    };
    let argv0 = args.first().and_then(|a| {
        Path::new(a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    let named = exe_name.as_deref() == Some(binary) || argv0.as_deref() == Some(binary);
    let dir = dir.to_string_lossy();
    named && args.iter().any(|a| *a == dir)
}

pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Waits until `path` exists and holds an address, while `child` runs.
pub fn wait_addr(
    path: &Path,
    child: &mut Child,
    what: &str,
    log: &Path,
    deadline: Instant,
) -> Result<String> {
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            let s = s.trim();
            if !s.is_empty() {
                return Ok(s.to_string());
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "{what} exited during startup ({st}); read {} to see why",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not write {} within 30 s; read {} to see why",
                path.display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops freshly started children: SIGTERM, then SIGKILL after 5 s.
pub fn stop_children(children: &mut [Child]) {
    for c in children.iter() {
        signal(c.id(), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for c in children.iter_mut() {
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Creates (or truncates) `path` with `data` atomically: tmp file + rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("rename {} into place", tmp.display()))
}
