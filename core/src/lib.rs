//! blobvirt core: the data model (chunks, segment trees), placement, the wire
//! protocol and the repository client shared by every daemon and the CLI.

pub mod chunk;
pub mod client;
pub mod codec;
pub mod config;
pub mod failover;
pub mod fsutil;
pub mod local;
pub mod metrics;
pub mod pack;
pub mod placement;
pub mod publish;
pub mod repository;
pub mod stats;
pub mod tls;
pub mod transfer;
pub mod tree;

/// Generated gRPC types and services (`proto/blobvirt.proto`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("blobvirt.v1");
}

pub use chunk::ChunkId;
pub use client::{Repo, RepoError};
pub use repository::Repository;

/// Largest gRPC message either side accepts: a 4 MiB chunk plus framing, or
/// a page of a large resolve or publish.
pub const MAX_MESSAGE: usize = 64 << 20;

/// HTTP/2 DATA frame size both sides advertise (the protocol default, 16 KiB,
/// costs one read syscall per ~8 KiB of a chunk).
pub const MAX_FRAME: u32 = 1 << 20;

/// Parses `NAME[@VERSION]`; version 0 means the latest.
pub fn parse_spec(spec: &str) -> Result<(String, u64), String> {
    match spec.rsplit_once('@') {
        None => Ok((spec.to_string(), 0)),
        Some((name, v)) => match v.parse::<u64>() {
            Ok(n) if n > 0 && !name.is_empty() => Ok((name.to_string(), n)),
            _ => Err(format!(
                "{spec} is not NAME or NAME@VERSION with a version number from 1; write it like disk@2"
            )),
        },
    }
}
