//! A libvirtd of its own in an emulated host ([`crate::hosts`]), for the
//! migration tests: `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
//! `/var/log/libvirt` and `/var/cache/libvirt` become bind mounts of the
//! host's directories (`DIR/host-N/libvirt/...`) in its mount namespace,
//! so its sockets, pid files, domain state and logs are its own, and it
//! listens on `qemu+tcp://ADDR/system` (no authentication: only the
//! emulated network reaches it) for the other hosts' `virsh migrate`.
//!
//! Its configuration is the machine's `libvirtd.conf`, `qemu.conf` and
//! `virtlogd.conf` with TCP listening added and cgroups turned off (two
//! libvirtds would otherwise make the same `machine/qemu-1-NAME` cgroup
//! for a domain that migrates); no hooks and no persistent domains are
//! copied. virtlogd and libvirtd run with their pid files under the
//! host's `/run/libvirt` (the defaults in `/run` are the machine's own).
//! Everything in the host dies with [`crate::Hosts::destroy`], which kills
//! the processes in its network namespace, QEMU included.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::hosts::Host;
use crate::net::run;

/// The paths a host's libvirtd has for itself.
pub const LIBVIRT_PATHS: [&str; 5] = [
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
];

const CONFIGS: [&str; 4] = [
    "libvirtd.conf",
    "qemu.conf",
    "virtlogd.conf",
    "libvirt.conf",
];

impl Host {
    /// Where the host's libvirt path `p` (one of [`LIBVIRT_PATHS`], or a
    /// file under one) is in the root namespace.
    pub fn libvirt_path(&self, p: &str) -> PathBuf {
        assert!(
            LIBVIRT_PATHS
                .iter()
                .any(|h| p == *h || p.starts_with(&format!("{h}/"))),
            "{p} is not one of a host's libvirt paths"
        );
        self.root.join("libvirt").join(p.trim_start_matches('/'))
    }

    /// `qemu+tcp://ADDR/system`: how other hosts reach this libvirtd.
    pub fn libvirt_uri(&self) -> String {
        format!("qemu+tcp://{}/system", self.addr)
    }

    /// Starts virtlogd and libvirtd in this host and waits until libvirtd
    /// answers.
    pub fn start_libvirt(&self) -> Result<()> {
        for p in LIBVIRT_PATHS {
            let own = self.libvirt_path(p);
            std::fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
        }
        let etc = self.libvirt_path("/etc/libvirt");
        for d in ["qemu", "hooks", "storage", "secrets"] {
            std::fs::create_dir_all(etc.join(d))?;
        }
        for f in CONFIGS {
            let from = std::path::Path::new("/etc/libvirt").join(f);
            let mut text = std::fs::read_to_string(&from).unwrap_or_default();
            match f {
                "libvirtd.conf" => {
                    text.push_str("\nlisten_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\n")
                }
                "qemu.conf" => text.push_str("\ncgroup_controllers = [ ]\n"),
                _ => {}
            }
            std::fs::write(etc.join(f), text)
                .with_context(|| format!("writing {}'s {f}", self.name))?;
        }
        for p in LIBVIRT_PATHS {
            let own = self.libvirt_path(p).display().to_string();
            let ns = format!("--mount={}", self.mnt_ns.display());
            run("nsenter", &[&ns, "--", "mount", "--bind", &own, p])?;
        }
        self.run("virtlogd", &["-d", "-p", "/run/libvirt/virtlogd.pid"])?;
        self.run(
            "libvirtd",
            &["-d", "--listen", "-p", "/run/libvirt/libvirtd.pid"],
        )?;
        let t = std::time::Instant::now();
        loop {
            match self.run("virsh", &["-c", "qemu:///system", "version"]) {
                Ok(_) => return Ok(()),
                Err(e) if t.elapsed() > Duration::from_secs(60) => {
                    bail!(
                        "libvirtd in {} did not answer within 60 s: {e:#}",
                        self.name
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `virsh -c qemu:///system ARGS` in this host; its stdout, or its
    /// stderr as the error.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-c", "qemu:///system"];
        a.extend_from_slice(args);
        self.run("virsh", &a)
    }
}
