//! libvirt integration of the `blobvirt` CLI.
//!
//! * [`conn`] — shared plumbing: connections, domain states, blobvirt disks.
//! * [`deploy`], [`snapshot`], [`snapshot_admin`] — deploy and snapshots.

pub mod conn;
pub mod deploy;
pub mod snapshot;
pub mod snapshot_admin;
