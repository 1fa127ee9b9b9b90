//! H emulated hosts that share paths: each host is a network namespace of
//! [`Net`] (node `i`, address `10.201.1.<i+1>`) and a persistent mount
//! namespace of its own, in which `/etc/blobvirt`, `/var/lib/blobvirt`
//! and `/run/blobvirt` are bind mounts of that host's directories under
//! the work directory (`DIR/host-<i+1>/etc/blobvirt`, ...). So every host
//! has its own configuration, certificate, data and FUSE mount at the
//! paths a real host uses, and the harness reads and writes a host's
//! files through [`Host::path`].
//!
//! Processes run with [`Host::cmd`] (`nsenter --net --mount`). A FUSE mount
//! made in a host is visible only inside it: read it with `Host::cmd`.
//! [`Hosts::destroy`] (also on drop) kills every process in the hosts'
//! namespaces, releases the mount namespaces (and so the mounts in them),
//! deletes the network namespaces, and removes the empty mount points it
//! had to create in the root namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::net::{run, Link, Net};

/// The paths every host has for itself.
pub const HOST_PATHS: [&str; 3] = ["/etc/blobvirt", "/var/lib/blobvirt", "/run/blobvirt"];

/// One emulated host.
#[derive(Clone, Debug)]
pub struct Host {
    /// 0-based index.
    pub index: usize,
    /// `host-<index+1>`.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the emulated network.
    pub addr: String,
    /// Where its own directories live in the root namespace.
    pub root: PathBuf,
    pub(crate) mnt_ns: PathBuf,
}

impl Host {
    /// A command that runs `prog` inside this host (its network and mount
    /// namespaces).
    pub fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(format!("--mount={}", self.mnt_ns.display()))
            .arg("--")
            .arg(prog);
        c
    }

    /// Where the host's `p` (under one of [`HOST_PATHS`]) is in the root
    /// namespace, for the harness to read or write.
    pub fn path(&self, p: &str) -> PathBuf {
        assert!(
            HOST_PATHS
                .iter()
                .any(|h| p == *h || p.starts_with(&format!("{h}/"))),
            "{p} is not one of a host's own paths"
        );
        self.root.join(p.trim_start_matches('/'))
    }

    /// Runs `prog args` in the host and returns its stdout; fails with its
    /// stderr.
    pub fn run(&self, prog: &str, args: &[&str]) -> Result<String> {
        let mut c = self.cmd(prog);
        c.args(args);
        crate::proc::run_ok(c, &format!("{prog} {} on {}", args.join(" "), self.name))
    }
}

/// The hosts of one test.
pub struct Hosts {
    pub net: Net,
    pub hosts: Vec<Host>,
    ns_dir: PathBuf,
    ns_dir_mounted: bool,
    made: Vec<PathBuf>,
    alive: bool,
}

impl Hosts {
    /// Creates `n` hosts named with `prefix` (unique per run, e.g. with the
    /// pid), their directories under `dir`, links shaped by `link`.
    pub fn create(prefix: &str, n: usize, link: Link, dir: &Path) -> Result<Hosts> {
        let net = Net::create(prefix, n, link)?;
        let mut h = Hosts {
            net,
            hosts: Vec::new(),
            ns_dir: dir.join("mntns"),
            ns_dir_mounted: false,
            made: Vec::new(),
            alive: true,
        };
        let r = h.build(n, dir);
        if r.is_err() {
            h.destroy();
        }
        r.map(|_| h)
    }

    fn build(&mut self, n: usize, dir: &Path) -> Result<()> {
        // unshare --mount=FILE needs FILE on a mount with private propagation.
        std::fs::create_dir_all(&self.ns_dir)
            .with_context(|| format!("creating {}", self.ns_dir.display()))?;
        let nsd = self.ns_dir.display().to_string();
        run("mount", &["--bind", &nsd, &nsd])?;
        self.ns_dir_mounted = true;
        run("mount", &["--make-private", &nsd])?;
        for p in HOST_PATHS {
            let p = Path::new(p);
            if !p.exists() {
                // Remember the topmost directory made, to remove it again.
                let mut top = p.to_path_buf();
                while let Some(parent) = top.parent() {
                    if parent.exists() {
                        break;
                    }
                    top = parent.to_path_buf();
                }
                std::fs::create_dir_all(p)
                    .with_context(|| format!("creating the mount point {}", p.display()))?;
                self.made.push(top);
            }
        }
        for i in 0..n {
            let name = format!("host-{}", i + 1);
            let root = dir.join(&name);
            let mnt_ns = self.ns_dir.join(&name);
            std::fs::write(&mnt_ns, b"")
                .with_context(|| format!("creating {}", mnt_ns.display()))?;
            let ns_arg = format!("--mount={}", mnt_ns.display());
            run("unshare", &[&ns_arg, "--propagation", "private", "true"])?;
            let host = Host {
                index: i,
                name,
                netns: self.net.node(i),
                addr: self.net.node_addr(i),
                root,
                mnt_ns,
            };
            for p in HOST_PATHS {
                let own = host.path(p);
                std::fs::create_dir_all(&own)
                    .with_context(|| format!("creating {}", own.display()))?;
                let own = own.display().to_string();
                run("nsenter", &[&ns_arg, "--", "mount", "--bind", &own, p])?;
            }
            self.hosts.push(host);
        }
        Ok(())
    }

    /// Host `i` (0-based).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Removes everything; safe to call twice.
    pub fn destroy(&mut self) {
        if !self.alive {
            return;
        }
        self.alive = false;
        // Kills every process in the hosts' network namespaces first.
        self.net.destroy();
        for h in &self.hosts {
            let f = h.mnt_ns.display().to_string();
            let _ = run("umount", &["-l", &f]);
        }
        if self.ns_dir_mounted {
            let d = self.ns_dir.display().to_string();
            let _ = run("umount", &["-l", &d]);
        }
        for top in self.made.drain(..) {
            // Only what is still empty: a host's files live elsewhere.
            let mut dirs = vec![top.clone()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                    for e in rd.flatten() {
                        if e.path().is_dir() {
                            dirs.push(e.path());
                        }
                    }
                }
                i += 1;
            }
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.destroy();
    }
}
