//! mirrord, the blobvirt mirroring module: one FUSE mount per node where
//! every repository volume is a raw file. Reads fetch only the chunks they
//! need (each once); writes stay in a local mirror until COMMIT or CLONE
//! publishes them as a new version. See `DESIGN.md` ("mirrord").
//!
//! * [`mirror`] — one volume's local mirror: data path, COMMIT, CLONE.
//! * [`statemap`] — the persistent chunk-state map format.
//! * [`volumes`] — the volume table, leases, close-to-open commits.
//! * [`fs`] — the FUSE file system.
//! * [`control`] — the Unix-socket control API and its typed [`control::Client`].
//! * [`ioctl`] — COMMIT and CLONE as ioctls on the mounted file.
//! * [`daemon`] — startup, stale-mount cleanup, signals.

pub mod control;
pub mod daemon;
pub mod fs;
pub mod ioctl;
pub mod lease;
pub mod mirror;
pub mod statemap;
pub mod volumes;

pub use control::Client;
pub use mirror::{Mirror, MirrorError, OnClose, VolumeStatus};
