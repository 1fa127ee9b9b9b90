//! The one harness of blobvirt's integration tests (every test crate has
//! `testbed` as a dev-dependency): the real daemons and the CLI run as
//! processes, and Drop guards stop what a test started (by PID), unmount
//! and remove its temporary directory, even when the test failed.
//!
//! * [`bins`] — the workspace's binaries, found beside the test binary.
//! * [`daemons`] — poold, chunkd, a repository of them, and mirrord with
//!   its FUSE mount, each started directly as a process.
//! * [`cli`] — the `blobvirt` CLI runner and a local cluster started with
//!   `blobvirt cluster up` (the configuration file registry that gives
//!   each command its cluster's TLS identity).
//! * [`mounted`] — such a cluster with a mirrord mount (`--mount`).
//! * [`libvirt`] — a [`libvirt::Lab`]: a cluster, its mount, a libvirt
//!   pool on it and the domains of the test; `virsh` helpers.
//! * [`etcd`] — an etcd cluster of N members on loopback ports, for
//!   poold's etcd engine.
//! * [`install`] — emulated hosts installed as README.md says: a CA and
//!   certificates, the units' command lines, etcd members, the CLI per host.
//! * [`opennebula`] — OpenNebula's calling conventions for the blobvirt
//!   DS and TM driver scripts: base64 action data, `host:path`, an SSH
//!   stand-in, the KVM driver's domain XML.
//! * [`data`] — seeded test data, hashing, and chunk files on disk.
//! * [`thrash`] — the fault thrasher: daemons SIGKILLed under load.
//!
//! Processes are checked and stopped with [`crate::proc`], which has the
//! one poll loop ([`crate::proc::wait_until`]) of everything here.
//! [`cli::Cluster`] and [`daemons::Cluster`] have the same name on
//! purpose: a test uses one way of starting a repository, and imports
//! that module.

pub mod bins;
pub mod cli;
pub mod daemons;
pub mod data;
pub mod etcd;
pub mod install;
pub mod libvirt;
pub mod mounted;
pub mod opennebula;
pub mod thrash;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

pub use crate::proc::{
    alive, is_mounted, lazy_umount, procs_in, running_in, sigkill, sigterm, terminate,
    terminate_pid, wait_gone, wait_until,
};
pub use bins::{bin, blobvirt, root};

/// A command's status, stdout and stderr under the line `what`, for an
/// assertion message.
pub fn show(what: &str, o: &Output) -> String {
    format!(
        "{what}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The temporary directory of one test object, `/tmp/blobvirt-<tag>-XXXX`,
/// removed when dropped.
pub fn tempdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("blobvirt-{tag}-"))
        .tempdir()
        .expect("temporary directory")
}

/// Waits (at most `secs`) until `p` exists; panics with `what` if not.
pub fn wait_path(p: &Path, secs: u64, what: &str) -> PathBuf {
    assert!(
        wait_until(Duration::from_secs(secs), || p.exists()),
        "{what}: {} did not appear within {secs} s",
        p.display()
    );
    p.to_path_buf()
}
