//! blobvirt's multi-host test bed, shared by the integration tests and the
//! benchmarks: emulated hosts on one machine, and the processes in them.
//!
//! * [`net`] — one network namespace per node (plus a server namespace),
//!   veth links to a bridge in a switch namespace, `tc tbf` shaping, the
//!   link counters, and removing all of it (and the processes in it).
//! * [`proc`] — processes inside a namespace: start, wait, stop by PID.
//! * [`hosts`] — H hosts for tests that need the same paths on every host:
//!   each also gets a mount namespace of its own, where `/etc/blobvirt`,
//!   `/var/lib/blobvirt` and `/run/blobvirt` are that host's directories.
//!
//! Everything needs root (`ip netns`, `nsenter`, `unshare`, `tc`). All
//! addresses are assigned inside the namespaces this crate creates.

pub mod hosts;
pub mod net;
pub mod proc;

pub use hosts::{Host, Hosts};
pub use net::{Link, Net};
