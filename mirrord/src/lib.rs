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
//! * [`failpoint`] — fault injection for crash tests.
//! * [`trace`] — the `--trace-reads` log of FUSE reads.
//!
//! Behaviour of the mounted files, for callers:
//! * `DIR/NAME` is volume NAME at its latest version (or the version the
//!   local mirror is based on while it holds uncommitted changes); the
//!   listing follows poold within about 2 s.
//! * A write that starts at or past the end fails with `EFBIG` and changes
//!   nothing (an O_DIRECT write that straddles the end too; a buffered one
//!   may be cut by the kernel at a page boundary, like a block device).
//!   Grow a volume with `truncate`/`fallocate`: size changes are published
//!   at once as a new version.
//! * A writable open takes the writer lease (`EBUSY` when another node
//!   holds it); the last writer's close commits (policy `commit`, default),
//!   keeps or discards the changes, then releases the lease.
//! * `fsync`/`close` make written data and the chunk-state map durable;
//!   `ENOSPC` from the cache disk is returned to the writer.
//! * `fallocate(PUNCH_HOLE|KEEP_SIZE)` / `ZERO_RANGE`: whole chunks become
//!   holes in the next version, partial ones are zeroed.
//!   `lseek(SEEK_DATA/SEEK_HOLE)` works at chunk granularity.
//! * `create` makes an empty volume (size 0, 256 KiB chunks); `unlink`
//!   deletes the volume from the repository.
//! * Kernel readahead is capped at 64 KiB (the smallest chunk size) so a
//!   read pulls in at most one chunk beyond what it covers. mirrord's own
//!   read-ahead starts only after 16 MiB read in sequence, then fetches up
//!   to 64 chunks (32 MiB) ahead; status counts those fetches as
//!   `readahead` (see `mirror/readahead.rs`).

pub mod control;
pub mod daemon;
pub mod failpoint;
pub mod fs;
pub mod ioctl;
pub mod lease;
pub mod mirror;
pub mod statemap;
pub mod trace;
pub mod volumes;

pub use control::Client;
pub use mirror::{Mirror, MirrorError, OnClose, VolumeStatus};
