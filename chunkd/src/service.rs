//! The gRPC `ChunkStore` service: decodes requests, runs the [`Store`] on
//! blocking threads and maps store errors to gRPC status codes. Pull (the
//! node-to-node copy of self-healing) is in [`crate::pull`].

use std::sync::Arc;

use blobvirt_core::proto::chunk_store_server::{ChunkStore, ChunkStoreServer};
use blobvirt_core::proto::{
    DeleteReply, DeleteRequest, FlushReply, FlushRequest, GetReply, GetRequest, HasReply,
    HasRequest, ListReply, ListRequest, LocateReply, LocateRequest, Located, PullReply,
    PullRequest, PutLocalReply, PutLocalRequest, PutReply, PutRequest, ScrubReply, ScrubRequest,
    StatsReply, StatsRequest,
};
use blobvirt_core::{ChunkId, MAX_MESSAGE};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::store::{parse_id, Store, StoreError};

/// Most neighbours one Locate returns (a 64 MiB segment of 128 KiB chunks
/// holds 512).
const LOCATE_MORE_MAX: usize = 1024;

/// The `ChunkStore` gRPC service over one store.
#[derive(Clone)]
pub struct ChunkService {
    store: Arc<Store>,
    metrics: Metrics,
}

impl ChunkService {
    /// A service whose counters are registered nowhere.
    pub fn new(store: Arc<Store>) -> Self {
        ChunkService::with_metrics(store, Metrics::default())
    }

    /// A service adding to `metrics` (see [`Metrics::register`]).
    pub fn with_metrics(store: Arc<Store>, metrics: Metrics) -> Self {
        ChunkService { store, metrics }
    }

    /// The service wrapped in a tonic server with the project's message limits.
    pub fn into_server(self) -> ChunkStoreServer<ChunkService> {
        ChunkStoreServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Runs `f` on the store in a blocking thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("chunkd worker failed: {e}")))?
            .map_err(to_status)
    }
}

/// Maps a store error to the gRPC status callers match on.
pub fn to_status(e: StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::BadId(_) | StoreError::HashMismatch { .. } | StoreError::BadFile(_) => {
            Status::invalid_argument(msg)
        }
        StoreError::NotFound { .. } => Status::not_found(msg),
        StoreError::Corrupt { .. } => Status::data_loss(msg),
        StoreError::NoSpace { .. } => Status::resource_exhausted(msg),
        StoreError::Io { .. } => {
            tracing::error!("{msg}");
            Status::internal(msg)
        }
    }
}

fn parse_ids(ids: &[bytes::Bytes]) -> Result<Vec<ChunkId>, Status> {
    ids.iter().map(|b| parse_id(b).map_err(to_status)).collect()
}

#[tonic::async_trait]
impl ChunkStore for ChunkService {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutReply>, Status> {
        let PutRequest { id, data, staged } = req.into_inner();
        let id = parse_id(&id).map_err(to_status)?;
        let len = data.len() as u64;
        let stored = if staged {
            self.blocking(move |s| s.put_staged(&id, &data)).await?
        } else {
            self.blocking(move |s| s.put(&id, &data)).await?
        };
        self.metrics.put_chunks.inc();
        self.metrics.put_bytes.inc_by(len);
        if stored {
            self.metrics.put_new_chunks.inc();
        }
        Ok(Response::new(PutReply { stored }))
    }

    async fn put_local(
        &self,
        req: Request<PutLocalRequest>,
    ) -> Result<Response<PutLocalReply>, Status> {
        let file = req.into_inner().file;
        let (chunks, bytes) = self.blocking(move |s| s.put_local_batch(&file)).await?;
        self.metrics.put_chunks.inc_by(chunks);
        self.metrics.put_new_chunks.inc_by(chunks);
        self.metrics.put_bytes.inc_by(bytes);
        Ok(Response::new(PutLocalReply { chunks, bytes }))
    }

    async fn locate(&self, req: Request<LocateRequest>) -> Result<Response<LocateReply>, Status> {
        let req = req.into_inner();
        let id = parse_id(&req.id).map_err(to_status)?;
        let more = (req.more as usize).min(LOCATE_MORE_MAX);
        let mut run = self.blocking(move |s| s.locate_run(&id, more)).await?;
        let file = |l: &crate::store::Location| l.file.to_string_lossy().into_owned();
        let first = run.remove(0).1;
        Ok(Response::new(LocateReply {
            file: file(&first),
            offset: first.data_at,
            len: first.len,
            more: run
                .into_iter()
                .map(|(id, l)| Located {
                    id: bytes::Bytes::copy_from_slice(&id.0),
                    file: file(&l),
                    offset: l.data_at,
                    len: l.len,
                })
                .collect(),
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        let id = parse_id(&req.into_inner().id).map_err(to_status)?;
        let data = match self.blocking(move |s| s.get(&id)).await {
            Ok(d) => d,
            Err(st) => {
                if st.code() == tonic::Code::DataLoss {
                    self.metrics.corrupt_chunks.inc();
                }
                return Err(st);
            }
        };
        self.metrics.served_chunks.inc();
        self.metrics.served_bytes.inc_by(data.len() as u64);
        Ok(Response::new(GetReply { data }))
    }

    async fn has(&self, req: Request<HasRequest>) -> Result<Response<HasReply>, Status> {
        let ids = parse_ids(&req.into_inner().ids)?;
        let present = self.blocking(move |s| Ok(s.has(&ids))).await?;
        Ok(Response::new(HasReply { present }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteReply>, Status> {
        let ids = parse_ids(&req.into_inner().ids)?;
        let deleted = self.blocking(move |s| s.delete(&ids)).await?;
        self.metrics.deleted_chunks.inc_by(deleted);
        Ok(Response::new(DeleteReply { deleted }))
    }

    async fn flush(&self, _req: Request<FlushRequest>) -> Result<Response<FlushReply>, Status> {
        let chunks = self.blocking(|s| s.flush()).await?;
        Ok(Response::new(FlushReply { chunks }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let r = req.into_inner();
        let after = if r.after.is_empty() {
            None
        } else {
            Some(parse_id(&r.after).map_err(to_status)?)
        };
        let limit = (r.limit as usize).min(crate::store::scan::PAGE * 4);
        let (ids, done) = self
            .blocking(move |s| s.list(after.as_ref(), limit))
            .await?;
        Ok(Response::new(ListReply {
            ids: ids
                .iter()
                .map(|id| bytes::Bytes::copy_from_slice(&id.0))
                .collect(),
            done,
        }))
    }

    async fn pull(&self, req: Request<PullRequest>) -> Result<Response<PullReply>, Status> {
        let r = req.into_inner();
        let ids = parse_ids(&r.ids)?;
        let reply = crate::pull::pull(&self.store, &r.from, &ids).await?;
        self.metrics
            .put_chunks
            .inc_by(reply.ok.iter().filter(|o| **o).count() as u64);
        self.metrics.put_bytes.inc_by(reply.bytes);
        Ok(Response::new(reply))
    }

    async fn scrub(&self, _req: Request<ScrubRequest>) -> Result<Response<ScrubReply>, Status> {
        let r = self.blocking(|s| s.scrub(0, &|| true)).await?;
        self.metrics.corrupt_chunks.inc_by(r.corrupt.len() as u64);
        Ok(Response::new(ScrubReply {
            checked: r.checked,
            bytes: r.bytes,
            corrupt: r
                .corrupt
                .iter()
                .map(|id| bytes::Bytes::copy_from_slice(&id.0))
                .collect(),
        }))
    }

    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        let st = self.blocking(|s| s.stats()).await?;
        Ok(Response::new(StatsReply {
            node_id: st.node_id,
            chunks: st.chunks,
            bytes: st.bytes,
            free_bytes: st.free_bytes,
            total_bytes: st.total_bytes,
            packs_dir: self.store.packs_dir().to_string_lossy().into_owned(),
            host_view: blobvirt_core::chunk::host_view(),
            tmp_dir: self.store.tmp_dir().to_string_lossy().into_owned(),
            pid: std::process::id(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn store_errors_map_to_the_codes_clients_match_on() {
        let id = ChunkId::of(b"x");
        let node = "n7".to_string();
        let cases = [
            (StoreError::BadId(3), Code::InvalidArgument),
            (
                StoreError::HashMismatch { chunk: id, len: 1 },
                Code::InvalidArgument,
            ),
            (
                StoreError::NotFound {
                    chunk: id,
                    node: node.clone(),
                },
                Code::NotFound,
            ),
            (
                StoreError::Corrupt {
                    chunk: id,
                    node: node.clone(),
                },
                Code::DataLoss,
            ),
            (
                StoreError::NoSpace { node: node.clone() },
                Code::ResourceExhausted,
            ),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let s = to_status(e);
            assert_eq!(s.code(), code, "{msg}");
            assert_eq!(s.message(), msg);
        }
        let s = to_status(StoreError::NoSpace { node });
        assert_eq!(
            s.message(),
            "chunkd node n7 is out of disk space; free space or add nodes"
        );
    }
}
