//! Per-node accounting with cgroup v1: one `cpuacct` and one `blkio`
//! cgroup per emulated node (the server is a node too), under a parent the
//! harness owns, `blobvirt-emu-<PID>/{srv,n1,…}`. A process started in a
//! node's namespace through [`Acct::cmd`] joins that node's cgroups between
//! fork and exec, so everything it starts (children, daemons that fork
//! away, short-lived helpers) is counted there, also after it exited.
//!
//! Counters per node: `cpuacct.usage{,_user,_sys}` (ns) and the `Read` and
//! `Write` bytes of `blkio.throttle.io_service_bytes`. Two limits of v1:
//!
//! * Recent kernels (seen on 6.18 here) set blk-throttle up on a disk only
//!   when a first limit is configured on it, and only then count bytes: the
//!   counters read `Total 0` before. The parent therefore gets a limit of
//!   1 PiB/s on the work directory's disk, which never throttles but makes
//!   the counters count.
//! * Buffered writes that the kernel's flusher writes back are charged to
//!   the root cgroup, not to the process that dirtied the pages (v1 has no
//!   cgroup writeback). Writes driven by `fsync`/`fdatasync` (in the
//!   caller's context), `O_DIRECT` writes and all reads are charged.
//!
//! With a slow disk ([`Acct::create`]'s `slow_bps`) every node cgroup gets
//! `blkio.throttle.{read,write}_bps_device` on that disk; the same limit
//! catches the same I/O as the counters (not flusher write-back).
//!
//! The tree is removed when the [`Acct`] is dropped, by [`clean`] on
//! Ctrl-C and by `blobvirt-bench emu-clean`: processes still in a node
//! cgroup (all of them started by the harness) are killed first, since a
//! cgroup that holds a process cannot be removed.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";
const BLKIO: &str = "/sys/fs/cgroup/blkio";
/// Name prefix of the harness's parent cgroups (`blobvirt-emu-<PID>`).
pub const PREFIX: &str = "blobvirt-emu-";
/// A limit that never throttles (1 PiB/s) but turns on blk-throttle's
/// counters for the disk.
const COUNTING_BPS: u64 = 1 << 50;

/// What one node's cgroups counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub cpu_ns: u64,
    pub user_ns: u64,
    pub sys_ns: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

impl Counters {
    /// What was counted since `a`.
    pub fn since(&self, a: &Counters) -> Counters {
        Counters {
            cpu_ns: self.cpu_ns.saturating_sub(a.cpu_ns),
            user_ns: self.user_ns.saturating_sub(a.user_ns),
            sys_ns: self.sys_ns.saturating_sub(a.sys_ns),
            read_bytes: self.read_bytes.saturating_sub(a.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(a.write_bytes),
        }
    }
}

/// The per-node cgroups of one run (empty when this machine has no cgroup
/// v1 `cpuacct` and `blkio`: then nothing is accounted per node).
pub struct Acct {
    parent: String,
    /// (namespace, cgroup name) of every node, server first.
    nodes: Vec<(String, String)>,
    /// `cgroup.procs` of each node in both hierarchies, for the child.
    procs: Vec<Vec<CString>>,
    alive: bool,
}

/// Whether this machine has the cgroup v1 controllers the harness uses.
pub fn available() -> bool {
    Path::new(CPUACCT).join("cpuacct.usage").exists()
        && Path::new(BLKIO)
            .join("blkio.throttle.io_service_bytes")
            .exists()
}

/// The parent cgroup name of harness process `pid`.
pub fn parent_name(pid: u32) -> String {
    format!("{PREFIX}{pid}")
}

/// major:minor of the whole disk that holds `dir` (a partition is mapped
/// to its disk, which is what blk-throttle accepts); None when `dir` is on
/// no block device (tmpfs, overlay).
pub fn block_device(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (maj, min) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()?;
    let disk = if sys.join("partition").exists() {
        sys.parent()?.to_path_buf()
    } else {
        sys
    };
    let s = std::fs::read_to_string(disk.join("dev")).ok()?;
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn write(path: &Path, what: &str) -> Result<()> {
    std::fs::write(path, what).with_context(|| format!("writing {what:?} to {}", path.display()))
}

impl Acct {
    /// No accounting: commands run in their namespace only.
    pub fn disabled() -> Acct {
        Acct {
            parent: String::new(),
            nodes: Vec::new(),
            procs: Vec::new(),
            alive: false,
        }
    }

    /// Creates `blobvirt-emu-<pid>/<name>` for every (namespace, name) in
    /// both hierarchies. `dev` is the disk to count (and throttle);
    /// `slow_bps` throttles every node's reads and writes on it.
    pub fn create(
        pid: u32,
        nodes: Vec<(String, String)>,
        dev: Option<(u64, u64)>,
        slow_bps: Option<u64>,
    ) -> Result<Acct> {
        if !available() {
            if slow_bps.is_some() {
                bail!("--slow-disk-mbps needs cgroup v1 blkio at {BLKIO}");
            }
            eprintln!("emu: no cgroup v1 cpuacct/blkio here; no per-node accounting");
            return Ok(Acct::disabled());
        }
        let mut me = Acct {
            parent: parent_name(pid),
            nodes,
            procs: Vec::new(),
            alive: true,
        };
        let r = me.build(dev, slow_bps);
        if r.is_err() {
            me.destroy();
        }
        r.map(|_| me)
    }

    fn build(&mut self, dev: Option<(u64, u64)>, slow_bps: Option<u64>) -> Result<()> {
        for h in [CPUACCT, BLKIO] {
            let p = Path::new(h).join(&self.parent);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let blk = Path::new(BLKIO).join(&self.parent);
        match dev {
            Some((a, b)) => {
                for f in ["read_bps_device", "write_bps_device"] {
                    write(
                        &blk.join(format!("blkio.throttle.{f}")),
                        &format!("{a}:{b} {COUNTING_BPS}"),
                    )?;
                }
            }
            None if slow_bps.is_some() => {
                bail!(
                    "the work directory is on no block device; --slow-disk-mbps cannot throttle it"
                )
            }
            None => eprintln!(
                "emu: the work directory is on no block device; per-node disk bytes may read 0"
            ),
        }
        for (_, name) in &self.nodes {
            let mut procs = Vec::new();
            for h in [CPUACCT, BLKIO] {
                let d = Path::new(h).join(&self.parent).join(name);
                std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                let p = d.join("cgroup.procs");
                procs.push(CString::new(p.to_string_lossy().into_owned())?);
            }
            if let (Some((a, b)), Some(bps)) = (dev, slow_bps) {
                for f in ["read_bps_device", "write_bps_device"] {
                    write(
                        &blk.join(name).join(format!("blkio.throttle.{f}")),
                        &format!("{a}:{b} {bps}"),
                    )?;
                }
            }
            self.procs.push(procs);
        }
        Ok(())
    }

    /// The parent cgroup's name, when nodes are accounted.
    pub fn parent(&self) -> Option<&str> {
        (self.alive && !self.parent.is_empty()).then_some(self.parent.as_str())
    }

    /// The names of the nodes (server first).
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.1.clone()).collect()
    }

    /// A command that runs in namespace `ns` and, when `ns` is a node's,
    /// in that node's cgroups (joined between fork and exec).
    pub fn cmd(&self, ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = testbed::proc::in_ns(ns, prog);
        if let Some(i) = self.nodes.iter().position(|n| n.0 == ns) {
            if self.alive {
                join_at_exec(&mut c, self.procs[i].clone());
            }
        }
        c
    }

    /// Every node's counters now (server first); None without accounting.
    pub fn sample(&self) -> Option<Vec<Counters>> {
        if !self.alive {
            return None;
        }
        Some(
            self.nodes
                .iter()
                .map(|(_, name)| {
                    let cpu = Path::new(CPUACCT).join(&self.parent).join(name);
                    let blk = Path::new(BLKIO).join(&self.parent).join(name);
                    let (read_bytes, write_bytes) = io_bytes(
                        &std::fs::read_to_string(blk.join("blkio.throttle.io_service_bytes"))
                            .unwrap_or_default(),
                    );
                    Counters {
                        cpu_ns: read_u64(&cpu.join("cpuacct.usage")),
                        user_ns: read_u64(&cpu.join("cpuacct.usage_user")),
                        sys_ns: read_u64(&cpu.join("cpuacct.usage_sys")),
                        read_bytes,
                        write_bytes,
                    }
                })
                .collect(),
        )
    }

    /// Kills what is left in the node cgroups and removes the tree. Safe to
    /// call twice.
    pub fn destroy(&mut self) {
        if self.parent.is_empty() {
            return;
        }
        self.alive = false;
        remove_tree(&std::mem::take(&mut self.parent));
    }
}

impl Drop for Acct {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Makes the child join the cgroups whose `cgroup.procs` are `procs`
/// before it execs (writing "0" moves the writing process).
#[allow(unsafe_code)]
fn join_at_exec(c: &mut Command, procs: Vec<CString>) {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only opens, writes and
    // closes files whose paths were made before the fork: no allocation,
    // no lock another thread of the parent might have held.
    unsafe {
        c.pre_exec(move || {
            for p in &procs {
                let fd = nix::fcntl::open(
                    p.as_c_str(),
                    nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )?;
                let f = std::fs::File::from(OwnedFd::from_raw_fd(fd));
                (&f).write_all(b"0")?;
            }
            Ok(())
        });
    }
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// (Read, Write) bytes of a `blkio.throttle.io_service_bytes` text, summed
/// over its devices (discards and the totals are left out).
pub fn io_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let n = f[2].parse::<u64>().unwrap_or(0);
        match f[1] {
            "Read" => r += n,
            "Write" => w += n,
            _ => {}
        }
    }
    (r, w)
}

fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes `parent` (a direct child of both hierarchies) and its node
/// cgroups: SIGKILLs any process still in one (only the harness put
/// processes there), waits until they are empty (10 s at most), removes
/// them bottom-up.
fn remove_tree(parent: &str) {
    if parent.is_empty() {
        return;
    }
    for h in [CPUACCT, BLKIO] {
        let top = Path::new(h).join(parent);
        if !top.exists() {
            continue;
        }
        let mut dirs = subdirs(&top);
        dirs.push(top.clone());
        for d in &dirs {
            for p in pids(d) {
                testbed::proc::sigkill(p as u32);
            }
        }
        testbed::proc::wait_until(Duration::from_secs(10), || {
            dirs.iter().all(|d| pids(d).is_empty())
        });
        for d in &dirs {
            if let Err(e) = std::fs::remove_dir(d) {
                eprintln!("emu: could not remove cgroup {}: {e}", d.display());
            }
        }
    }
}

/// Removes the cgroups of harness `pid`, or of every harness.
pub fn clean(pid: Option<u32>) {
    let mut parents: Vec<String> = Vec::new();
    for h in [CPUACCT, BLKIO] {
        for d in subdirs(Path::new(h)) {
            let name = d
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let ours = match pid {
                Some(p) => name == parent_name(p),
                None => name.starts_with(PREFIX),
            };
            if ours && !parents.contains(&name) {
                parents.push(name);
            }
        }
    }
    for p in parents {
        remove_tree(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_bytes_sums_reads_and_writes_of_every_device() {
        let t = "254:0 Read 35643392\n254:0 Write 58724352\n254:0 Sync 1\n\
                 254:0 Async 2\n254:0 Discard 50331648\n254:0 Total 144699392\n\
                 8:0 Read 10\n8:0 Write 20\nTotal 144699422\n";
        assert_eq!(io_bytes(t), (35643402, 58724372));
        assert_eq!(io_bytes("Total 0\n"), (0, 0));
    }

    #[test]
    fn counters_since_never_go_negative() {
        let a = Counters {
            cpu_ns: 10,
            read_bytes: 5,
            ..Default::default()
        };
        let b = Counters {
            cpu_ns: 25,
            read_bytes: 4,
            ..Default::default()
        };
        let d = b.since(&a);
        assert_eq!((d.cpu_ns, d.read_bytes), (15, 0));
    }
}
