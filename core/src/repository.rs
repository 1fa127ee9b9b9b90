//! The seam between a client's data path and the repository: the calls a
//! mirror and the publish path make, as a trait. [`Repo`] (gRPC to poold and
//! the chunkd nodes) is the implementation every daemon uses; tests wrap it
//! to make a repository slow, failing or corrupting, without touching the
//! code under test. The control plane (leases, rename, profiles) stays on
//! [`Repo`] itself.
//!
//! Contract: [`Repository::get_chunk`] returns only bytes that hash to the
//! id (the implementation verifies and tries other replicas), so a caller
//! hashes nothing again.

use async_trait::async_trait;
use bytes::Bytes;

use crate::client::{Publish, Resolved, Result};
use crate::proto as pb;
use crate::{ChunkId, Repo};

/// What a mirror and a publish need from the repository.
#[async_trait]
pub trait Repository: Send + Sync + 'static {
    /// One chunk's bytes, verified against its id.
    async fn get_chunk(&self, id: ChunkId) -> Result<Bytes>;
    /// Stores a chunk durably on all its replicas.
    async fn put_chunk(&self, id: ChunkId, data: Bytes) -> Result<()>;
    /// Stores a chunk staged (written, not yet synced); returns the nodes
    /// that must be flushed before a publish may name it.
    async fn put_chunk_staged(&self, id: ChunkId, data: Bytes) -> Result<Vec<String>>;
    /// Makes the staged chunks on these nodes durable.
    async fn flush(&self, nodes: &[String]) -> Result<()>;
    /// Publishes a version.
    async fn publish(&self, req: pb::PublishRequest) -> Result<Publish>;
    /// The chunk map of `name@version` (0 = latest).
    async fn resolve(&self, name: &str, version: u64) -> Result<Resolved>;
    /// Makes `dst` a new volume whose first version is `src@version`.
    async fn clone_blob(&self, src: &str, version: u64, dst: &str) -> Result<pb::BlobInfo>;
    /// A volume and its versions.
    async fn get_blob(&self, name: &str) -> Result<pb::BlobInfo>;
    /// Reloads membership and the GC epoch.
    async fn refresh(&self) -> Result<()>;
    /// The GC epoch last seen.
    fn gc_epoch(&self) -> u64;
    /// How many chunk transfers to run at once.
    fn concurrency(&self) -> usize;
}

#[async_trait]
impl Repository for Repo {
    async fn get_chunk(&self, id: ChunkId) -> Result<Bytes> {
        Repo::get_chunk(self, id).await
    }
    async fn put_chunk(&self, id: ChunkId, data: Bytes) -> Result<()> {
        Repo::put_chunk(self, id, data).await
    }
    async fn put_chunk_staged(&self, id: ChunkId, data: Bytes) -> Result<Vec<String>> {
        Repo::put_chunk_staged(self, id, data).await
    }
    async fn flush(&self, nodes: &[String]) -> Result<()> {
        Repo::flush(self, nodes).await
    }
    async fn publish(&self, req: pb::PublishRequest) -> Result<Publish> {
        Repo::publish(self, req).await
    }
    async fn resolve(&self, name: &str, version: u64) -> Result<Resolved> {
        Repo::resolve(self, name, version).await
    }
    async fn clone_blob(&self, src: &str, version: u64, dst: &str) -> Result<pb::BlobInfo> {
        Repo::clone_blob(self, src, version, dst).await
    }
    async fn get_blob(&self, name: &str) -> Result<pb::BlobInfo> {
        Repo::get_blob(self, name).await
    }
    async fn refresh(&self) -> Result<()> {
        Repo::refresh(self).await
    }
    fn gc_epoch(&self) -> u64 {
        Repo::gc_epoch(self)
    }
    fn concurrency(&self) -> usize {
        self.concurrency
    }
}
