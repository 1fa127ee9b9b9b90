//! Pull: copies chunks from another chunkd to this one (self-healing's
//! recovery, rebalance and drain). Each chunk is fetched with Get, checked
//! against its id, staged here, and one Flush makes the batch durable
//! before the answer, so poold deletes a misplaced copy only after its new
//! home holds it durably.

use std::sync::Arc;

use blobvirt_core::client::{channel, chunk_client};
use blobvirt_core::proto::{GetRequest, PullReply};
use blobvirt_core::ChunkId;
use futures::StreamExt;
use tonic::Status;

use crate::service::to_status;
use crate::store::Store;

/// Chunks fetched at once within one Pull.
const PARALLEL: usize = 8;

/// Copies `ids` from the chunkd at `from` into `store`.
pub async fn pull(store: &Arc<Store>, from: &str, ids: &[ChunkId]) -> Result<PullReply, Status> {
    let ch = channel(from).map_err(|e| {
        Status::invalid_argument(format!(
            "pull source {from:?} is not a chunkd address ({e}); poold passes HOST:PORT"
        ))
    })?;
    let client = chunk_client(ch);
    let one = |id: ChunkId| {
        let mut c = client.clone();
        let store = store.clone();
        async move {
            if store.has(&[id])[0] {
                return Ok(0);
            }
            let req = GetRequest {
                id: bytes::Bytes::copy_from_slice(&id.0),
            };
            let data = c
                .get(req)
                .await
                .map_err(|s| format!("chunk {id} from {from}: {}", s.message()))?
                .into_inner()
                .data;
            let len = data.len() as u64;
            tokio::task::spawn_blocking(move || store.put_staged(&id, &data))
                .await
                .map_err(|e| format!("chunk {id}: store task failed: {e}"))?
                .map_err(|e| format!("chunk {id}: {e}"))?;
            Ok::<u64, String>(len)
        }
    };
    let results: Vec<Result<u64, String>> = futures::stream::iter(ids.iter().copied())
        .map(one)
        .buffered(PARALLEL)
        .collect()
        .await;
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.flush())
        .await
        .map_err(|e| Status::internal(format!("chunkd flush task failed: {e}")))?
        .map_err(to_status)?;
    let mut reply = PullReply::default();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(n) => {
                reply.ok.push(true);
                reply.bytes += n;
            }
            Err(e) => {
                reply.ok.push(false);
                errors.push(e);
            }
        }
    }
    reply.errors = errors.join("; ");
    Ok(reply)
}
