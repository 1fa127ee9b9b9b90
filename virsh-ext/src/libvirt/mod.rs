//! libvirt integration of the `blobvirt` CLI.
//!
//! * [`pool`] — `pool-define`/`pool-undefine`/`hook-install`: the `dir` pool
//!   on the mirrord mount, the hook configuration and the installed hook.
//! * [`conn`] — shared plumbing: connections, domain states, blobvirt disks.
//! * [`deploy`], [`snapshot`], [`snapshot_admin`] — deploy and snapshots.

pub mod conn;
pub mod deploy;
pub mod pool;
pub mod snapshot;
pub mod snapshot_admin;
