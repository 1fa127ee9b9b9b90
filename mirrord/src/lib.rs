//! mirrord, the blobvirt mirroring module: one FUSE mount per node where
//! every repository volume is a raw file. Reads fetch only the chunks they
//! need (each once); writes stay in a local mirror until COMMIT or CLONE
//! publishes them as a new version. Users' view: `docs/mount.md`; design
//! decisions: `docs/design-notes.md`.
//!
//! * [`mirror`] — one volume's local mirror: data path, COMMIT, CLONE.
//! * [`chunk_cache`] — the host's chunk cache, shared by every mirror.
//! * [`statemap`] — the persistent chunk-state map format.
//! * [`volumes`] — the volume table, close-to-open commits, claims, owners,
//!   keeping mirrors in step with poold.
//! * [`lease`] — writer leases from poold, renewed in the background.
//! * [`metrics`] — the `blobvirt_mirrord_*` metric families.
//! * [`fs`] — the FUSE file system.
//! * [`control`] — the Unix-socket control API and its typed [`control::Client`].
//! * [`ioctl`] — COMMIT and CLONE as ioctls on the mounted file.
//! * [`daemon`] — startup, stale-mount cleanup, signals.
//! * [`failpoint`] — fault injection for crash tests.
//! * [`trace`] — the `--trace-reads` log of FUSE reads.
//!
//! Behaviour of the mounted files, for callers (the user-facing version is
//! in `docs/mount.md`):
//! * `DIR/NAME` is volume NAME at its latest version (or the version the
//!   local mirror is based on while it holds uncommitted changes or files
//!   are open); the listing follows poold within about 2 s, and at once
//!   for changes a CLI command on this host made (`refresh`).
//! * A write past the end grows the file, as on any file system (up to
//!   [`mirror::MAX_SIZE`], then `EFBIG`); the size is published with the
//!   next commit. `truncate` publishes a size change at once.
//! * A writable open takes the writer lease (`EBUSY` when another node
//!   holds it). The close of the last writable file by the process that
//!   opened it commits (policy `commit`, default) and returns the commit's
//!   errno if it fails within 5 s (a longer one goes on in the background);
//!   the release keeps or discards the changes per policy and gives the
//!   lease back (kept while a commit is owed).
//! * `fsync`/`close` make written data and the chunk-state map durable;
//!   `ENOSPC` from the cache disk is returned to the writer. A failure of
//!   the mirror (a failed commit, the volume deleted with `--force`) is
//!   reported once per open file at its next fsync or close (`ESTALE`,
//!   `EIO`, ...), and writes to a deleted volume fail with `ESTALE`.
//! * `fallocate`: the default mode and `ZERO_RANGE` grow the file past its
//!   end (not with `KEEP_SIZE`); `PUNCH_HOLE|KEEP_SIZE` / `ZERO_RANGE`:
//!   whole chunks become holes in the next version, partial ones are
//!   zeroed. `lseek(SEEK_DATA/SEEK_HOLE)` works at chunk granularity.
//! * `create` makes an empty volume (size 0, 256 KiB chunks); `unlink`
//!   deletes the volume from the repository (refused while open here or
//!   written elsewhere); `rename` renames it (never onto an existing one:
//!   `EEXIST`; `EBUSY` while open).
//! * `chmod`/`chown` are kept per host in `CACHE/owners.json`; the kernel
//!   checks the modes (`default_permissions`): files `root:root 0600`, the
//!   root `root:blobvirt 0771`, the control socket `root:blobvirt 0660`
//!   (see `fs/access.rs`).
//! * Kernel read-ahead of the mount (buffered readers only) is set to
//!   `[mirrord] read_ahead_kib` (128 KiB by default) in sysfs after
//!   mounting; a buffered read may pull in that much beyond what it covers. mirrord's own
//!   read-ahead starts only after 16 MiB read in sequence, then fetches up
//!   to 64 chunks (32 MiB) ahead; status counts those fetches as
//!   `readahead` (see `mirror/readahead.rs`).

pub mod chunk_cache;
pub mod control;
pub mod daemon;
pub mod failpoint;
pub mod fs;
pub mod ioctl;
pub mod lease;
pub mod metrics;
pub mod mirror;
pub mod statemap;
pub mod trace;
pub mod volumes;

pub use mirror::{Mirror, MirrorError, OnClose, VolumeStatus};
pub use mirrord_client::Client;
