//! blobvirt's test bed, a dev-only crate shared by the integration tests
//! and the benchmarks: the one test harness, and emulated hosts on one
//! machine with the processes in them.
//!
//! * [`harness`] — what every integration test starts and checks: the
//!   workspace's binaries, the daemons as processes, local clusters
//!   through the CLI, mirrord mounts, libvirt labs, test data; all of it
//!   cleaned up by Drop guards.
//! * [`net`] — one network namespace per node (plus a server namespace),
//!   veth links to a bridge in a switch namespace, `tc tbf` shaping, the
//!   link counters, and removing all of it (and the processes in it).
//! * [`proc`] — processes: inside a namespace (start, wait, stop), and the
//!   checks by PID, signals and the poll loop of every test.
//! * [`hosts`] — H hosts for tests that need the same paths on every host:
//!   each also gets a mount namespace of its own, where `/etc/blobvirt`,
//!   `/var/lib/blobvirt` and `/run/blobvirt` are that host's directories.
//! * [`libvirt_hosts`] — a libvirtd of its own in such a host, reachable by
//!   the others over the emulated network (the migration tests).
//!
//! The emulation needs root (`ip netns`, `nsenter`, `unshare`, `tc`); all
//! addresses are assigned inside the namespaces this crate creates. It
//! depends on the workspace's libraries (`blobvirt-core`, `mirrord-client`)
//! but on no daemon crate: the tests run the daemons' binaries.

pub mod harness;
pub mod hosts;
pub mod libvirt_hosts;
pub mod net;
pub mod proc;

pub use hosts::{Host, Hosts};
pub use net::{Link, Net};
