//! poold: the blobvirt version manager and metadata service.
//!
//! * [`kv`] — the ordered KV trait and its redb/sled engines;
//! * [`codec`] — key layout and binary record formats;
//! * [`meta`] — blobs, versions, segment trees, refcounts (usable in-process);
//! * [`gc`], [`membership`], [`leases`], [`heal`] (self-healing) — the
//!   service's moving parts;
//! * [`metrics`] — the `blobvirt_poold_*` metric families;
//! * [`service`] — the `Pool` gRPC service; [`server`] — the process;
//! * [`peer`] — which certificate made a request (logged with each change).

pub mod codec;
pub mod gc;
pub mod heal;
pub mod kv;
pub mod leases;
pub mod membership;
pub mod meta;
pub mod metrics;
pub mod peer;
pub mod server;
pub mod service;

pub use meta::{Meta, MetaError, PublishOutcome};
pub use server::{run, Opts};
