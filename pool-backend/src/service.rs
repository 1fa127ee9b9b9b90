//! The `Pool` gRPC service: maps each RPC onto the metadata layer (run on
//! the blocking pool, since it fsyncs), membership, leases and GC, and turns
//! metadata errors into status codes whose messages are user sentences.

use std::sync::Arc;

use blobvirt_core::proto::{self as pb, pool_server::Pool};
use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::gc::Gc;
use crate::heal::{Healer, PassOpts};
use crate::leases::Leases;
use crate::membership::Membership;
use crate::meta::{no_volume, Meta, MetaError, PublishOutcome};

/// Maps a metadata error to a gRPC status.
pub fn status(e: MetaError) -> Status {
    let msg = e.to_string();
    match e {
        MetaError::NotFound(_) => Status::not_found(msg),
        MetaError::AlreadyExists(_) => Status::already_exists(msg),
        MetaError::InvalidArgument(_) => Status::invalid_argument(msg),
        MetaError::FailedPrecondition(_) => Status::failed_precondition(msg),
        MetaError::Kv(_)
        | MetaError::Decode(_)
        | MetaError::Corrupt(_)
        | MetaError::Internal(_) => {
            tracing::error!("{msg}");
            Status::internal(msg)
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MetaError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            Status::internal(format!(
                "a poold metadata task failed ({e}); see the poold log"
            ))
        })?
        .map_err(status)
}

fn ok<T>(t: T) -> Result<Response<T>, Status> {
    Ok(Response::new(t))
}

/// The poold service state.
#[derive(Clone)]
pub struct PoolService {
    pub meta: Meta,
    pub members: Arc<Membership>,
    pub leases: Arc<Leases>,
    pub gc: Arc<Gc>,
    pub healer: Arc<Healer>,
    pub replicas: u32,
}

impl PoolService {
    /// NotFound unless the volume exists.
    async fn must_exist(&self, name: &str) -> Result<(), Status> {
        let meta = self.meta.clone();
        let n = name.to_string();
        if blocking(move || meta.exists(&n)).await? {
            Ok(())
        } else {
            Err(status(no_volume(name)))
        }
    }

    async fn lease(
        &self,
        r: pb::LeaseRequest,
        release: bool,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        if r.holder.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the lease request for volume {} names no holder; pass a holder such as mirrord@host",
                r.name
            )));
        }
        self.must_exist(&r.name).await?;
        let leases = self.leases.clone();
        ok(blocking(move || {
            if release {
                leases.release(&r.name, &r.holder)
            } else {
                leases.acquire(&r.name, &r.holder, r.ttl_ms)
            }
        })
        .await?)
    }

    /// NotFound unless `id` is a member.
    fn must_be_member(&self, id: &str) -> Result<pb::NodeInfo, Status> {
        self.members
            .nodes()
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {id} is not a member of this cluster; see blobvirt node list"
                ))
            })
    }
}

#[tonic::async_trait]
impl Pool for PoolService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let by = crate::peer::who(&req);
        let r = req.into_inner();
        if r.id.is_empty() || r.addr.is_empty() {
            return Err(Status::invalid_argument(format!(
                "chunkd registration needs a node id and an address (got id {:?}, addr {:?}); check the chunkd --id and --listen options",
                r.id, r.addr
            )));
        }
        if self.members.addr_of(&r.id).as_deref() != Some(r.addr.as_str()) {
            let meta = self.meta.clone();
            let (id, addr) = (r.id.clone(), r.addr.clone());
            blocking(move || meta.put_member(&id, &addr)).await?;
            tracing::info!(node = %r.id, addr = %r.addr, %by, "chunkd registered");
        }
        self.members.registered(&r.id, &r.addr);
        ok(pb::RegisterReply {
            heartbeat_ms: self.members.heartbeat_ms(),
        })
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        ok(pb::HeartbeatReply {
            known: self.members.heartbeat(&req.into_inner().id),
        })
    }

    async fn nodes(
        &self,
        _: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::NodesReply>, Status> {
        let meta = self.meta.clone();
        let gc_epoch = blocking(move || meta.gc_epoch()).await?;
        ok(pb::NodesReply {
            nodes: self.members.nodes(),
            replicas: self.replicas,
            gc_epoch,
        })
    }

    async fn drain_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        let by = crate::peer::who(&req);
        let r = req.into_inner();
        self.must_be_member(&r.id)?;
        let meta = self.meta.clone();
        let (id, on) = (r.id.clone(), !r.undo);
        blocking(move || meta.set_draining(&id, on)).await?;
        self.members.set_draining(&r.id, on);
        self.healer.kick();
        tracing::info!(node = %r.id, draining = on, %by, "node drain changed");
        ok(pb::NodeReply {
            message: if on {
                format!("node {} is draining: its chunks move to the other nodes in the background; `blobvirt node list` shows it empty when it is done", r.id)
            } else {
                format!("node {} takes part in placement again", r.id)
            },
        })
    }

    async fn remove_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeReply>, Status> {
        let by = crate::peer::who(&req);
        let r = req.into_inner();
        let n = self.must_be_member(&r.id)?;
        if !r.force {
            let only = self.healer.only_on(&r.id).await.map_err(status)?;
            if only > 0 {
                let what = if n.alive {
                    format!("it holds the only copy of {only} referenced chunks")
                } else {
                    format!("{only} referenced chunks have no copy on any live node, and it may hold them")
                };
                return Err(Status::failed_precondition(format!(
                    "node {} cannot be removed: {what}; drain it first (blobvirt node drain {}) and wait until it is empty, or pass --force to lose those chunks",
                    r.id, r.id
                )));
            }
        }
        if n.alive {
            return Err(Status::failed_precondition(format!(
                "node {} cannot be removed while its chunkd runs (it would register again); stop that chunkd first",
                r.id
            )));
        }
        let meta = self.meta.clone();
        let id = r.id.clone();
        let dropped = blocking(move || meta.remove_member(&id)).await?;
        self.members.remove(&r.id);
        self.healer.kick();
        tracing::info!(node = %r.id, force = r.force, deferred_dropped = dropped, %by, "node removed");
        ok(pb::NodeReply {
            message: format!(
                "node {} is removed; its chunks get new replicas on the other nodes",
                r.id
            ),
        })
    }

    async fn repair(
        &self,
        req: Request<pb::RepairRequest>,
    ) -> Result<Response<pb::RepairReply>, Status> {
        let r = req.into_inner();
        let o = PassOpts {
            scrub: r.scrub,
            fsck: r.fsck,
            repair: r.repair,
        };
        ok(self.healer.pass(o).await.map_err(status)?)
    }

    async fn get_blob(
        &self,
        req: Request<pb::GetBlobRequest>,
    ) -> Result<Response<pb::BlobInfo>, Status> {
        let meta = self.meta.clone();
        let name = req.into_inner().name;
        ok(blocking(move || meta.get_blob(&name)).await?)
    }

    async fn list_blobs(
        &self,
        _: Request<pb::ListBlobsRequest>,
    ) -> Result<Response<pb::ListBlobsReply>, Status> {
        let meta = self.meta.clone();
        ok(pb::ListBlobsReply {
            blobs: blocking(move || meta.list_blobs()).await?,
        })
    }

    async fn resolve(
        &self,
        req: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveReply>, Status> {
        let meta = self.meta.clone();
        let r = req.into_inner();
        ok(blocking(move || meta.resolve(&r.name, r.version, r.first_chunk, r.count)).await?)
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let meta = self.meta.clone();
        let by = crate::peer::who(&req);
        let r = req.into_inner();
        let (name, n_changes) = (r.name.clone(), r.changes.len());
        let (out, epoch) = blocking(move || {
            let out = meta.publish(&r)?;
            Ok((out, meta.gc_epoch()?))
        })
        .await?;
        match &out {
            PublishOutcome::Published(v) => {
                tracing::info!(volume = %name, version = v, changes = n_changes, %by, "published")
            }
            PublishOutcome::Reupload { chunks, .. } => {
                tracing::info!(volume = %name, chunks = chunks.len(), "publish refused: chunks must be uploaded again")
            }
        }
        ok(match out {
            PublishOutcome::Published(version) => pb::PublishReply {
                version,
                reupload: Vec::new(),
                gc_epoch: epoch,
            },
            PublishOutcome::Reupload { chunks, gc_epoch } => pb::PublishReply {
                version: 0,
                reupload: chunks
                    .iter()
                    .map(|c| Bytes::copy_from_slice(&c.0))
                    .collect(),
                gc_epoch,
            },
        })
    }

    async fn clone_volume(
        &self,
        req: Request<pb::CloneRequest>,
    ) -> Result<Response<pb::BlobInfo>, Status> {
        let meta = self.meta.clone();
        let by = crate::peer::who(&req);
        let r = req.into_inner();
        let info =
            blocking(move || meta.clone_volume_once(&r.src, r.version, &r.dst, &r.request_id))
                .await?;
        tracing::info!(volume = %info.name, origin = %info.origin, %by, "cloned");
        ok(info)
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeReply>, Status> {
        let by = crate::peer::who(&req);
        let r = req.into_inner();
        let name = r.name.clone();
        if let Some(holder) = self.leases.holder(&name).filter(|_| !r.force) {
            let meta = self.meta.clone();
            let n = name.clone();
            let latest = blocking(move || meta.get_blob(&n)).await?.latest_version;
            if r.version == 0 || r.version == latest {
                let what = if r.version == 0 {
                    format!("volume {name}")
                } else {
                    format!("version {name}@{}, the latest,", r.version)
                };
                return Err(Status::failed_precondition(format!(
                    "{what} cannot be deleted: it is open for writing by {holder}; stop the writer (close the file or stop the domain) first, or pass --force to delete it and lose the writer's uncommitted changes"
                )));
            }
        }
        let meta = self.meta.clone();
        let version = r.version;
        blocking(move || meta.delete_volume(&r.name, r.version)).await?;
        tracing::info!(volume = %name, version, force = r.force, %by, "deleted (version 0 = whole volume)");
        if version == 0 {
            let leases = self.leases.clone();
            blocking(move || leases.forget(&name)).await?;
        }
        ok(pb::DeleteVolumeReply {})
    }

    async fn rename_volume(
        &self,
        req: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::BlobInfo>, Status> {
        let by = crate::peer::who(&req);
        let r = req.into_inner();
        if let Some(holder) = self.leases.holder(&r.name) {
            return Err(Status::failed_precondition(format!(
                "volume {} cannot be renamed: it is open for writing by {holder}; stop the writer first",
                r.name
            )));
        }
        let meta = self.meta.clone();
        let (old, new) = (r.name.clone(), r.new_name.clone());
        let info = blocking(move || meta.rename_volume(&r.name, &r.new_name)).await?;
        tracing::info!(volume = %old, new_name = %new, %by, "renamed");
        ok(info)
    }

    async fn revert_volume(
        &self,
        req: Request<pb::RevertRequest>,
    ) -> Result<Response<pb::RevertReply>, Status> {
        let meta = self.meta.clone();
        let by = crate::peer::who(&req);
        let r = req.into_inner();
        let (name, from) = (r.name.clone(), r.version);
        let version =
            blocking(move || meta.revert_volume_once(&r.name, r.version, &r.label, &r.request_id))
                .await?;
        tracing::info!(volume = %name, version, from, %by, "reverted");
        ok(pb::RevertReply { version })
    }

    async fn label_version(
        &self,
        req: Request<pb::LabelRequest>,
    ) -> Result<Response<pb::VersionInfo>, Status> {
        let meta = self.meta.clone();
        let r = req.into_inner();
        ok(blocking(move || meta.label_version(&r.name, r.version, &r.label)).await?)
    }

    async fn acquire_lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        self.lease(req.into_inner(), false).await
    }

    async fn renew_lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        self.lease(req.into_inner(), false).await
    }

    async fn release_lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        self.lease(req.into_inner(), true).await
    }

    async fn put_profile(
        &self,
        req: Request<pb::Profile>,
    ) -> Result<Response<pb::ProfileReply>, Status> {
        let meta = self.meta.clone();
        let p = req.into_inner();
        blocking(move || meta.put_profile(&p.name, &p.chunks)).await?;
        ok(pb::ProfileReply {})
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let meta = self.meta.clone();
        let name = req.into_inner().name;
        let n = name.clone();
        let chunks = blocking(move || meta.get_profile(&n)).await?;
        ok(pb::Profile { name, chunks })
    }

    async fn stats(
        &self,
        _: Request<pb::PoolStatsRequest>,
    ) -> Result<Response<pb::PoolStatsReply>, Status> {
        let meta = self.meta.clone();
        let (mut s, deferred) = blocking(move || Ok((meta.stats()?, meta.gc_deferred()?))).await?;
        s.gc_deferred = deferred.iter().map(|(_, n)| n).sum();
        self.healer.fill_stats(&mut s);
        ok(s)
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcReply>, Status> {
        let chunks_deleted = self.gc.pass(req.into_inner().now).await.map_err(status)?;
        ok(pb::GcReply { chunks_deleted })
    }
}
