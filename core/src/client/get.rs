//! Fetching one chunk: from a replica on this machine's disk when there is
//! one ([`super::nearby`]), else from the replicas over gRPC in ranking
//! order, every answer hash-checked and a corrupt replica repaired from the
//! good copy.

use bytes::Bytes;

use super::RepoError;
use super::{short, Repo, Result};
use crate::chunk::ChunkId;
use crate::proto::{self as pb};

impl Repo {
    /// Fetches one chunk, trying replicas in ranking order. Every answer is
    /// hash-checked; a corrupt replica is skipped and then repaired from the
    /// good copy.
    pub async fn get_chunk(&self, id: ChunkId) -> Result<Bytes> {
        self.fetch_chunk(id, false).await
    }

    /// [`Repo::get_chunk`] for callers that keep chunks (a cache): the
    /// bytes own an allocation of their own size. A chunk read from this
    /// machine's disk is that already; one received over gRPC is a slice
    /// of the message's receive buffer and is copied out of it, so that
    /// keeping it does not keep the larger buffer alive.
    pub async fn get_chunk_owned(&self, id: ChunkId) -> Result<Bytes> {
        self.fetch_chunk(id, true).await
    }

    async fn fetch_chunk(&self, id: ChunkId, owned: bool) -> Result<Bytes> {
        let p = self.placement();
        let mut tried = Vec::new();
        let mut corrupt = 0;
        let mut bad: Vec<String> = Vec::new();
        let order = p.read_order(&id);
        if let Some(data) = self.read_nearby(&id, &order).await {
            return Ok(data);
        }
        for m in order {
            let req = pb::GetRequest {
                id: Bytes::copy_from_slice(&id.0),
            };
            match self.node(&m.addr).get(req).await {
                Ok(r) => {
                    let data = r.into_inner().data;
                    if id.verifies(&data) {
                        for addr in bad {
                            let mut c = self.node(&addr);
                            let req = pb::PutRequest {
                                id: Bytes::copy_from_slice(&id.0),
                                data: data.clone(),
                                staged: false,
                            };
                            tokio::spawn(async move {
                                if let Err(e) = c.put(req).await {
                                    tracing::warn!(chunk = %id, node = %addr, "repair of corrupt replica failed: {}", e.message());
                                }
                            });
                        }
                        return Ok(if owned {
                            Bytes::copy_from_slice(&data)
                        } else {
                            data
                        });
                    }
                    tracing::error!(chunk = %id, node = %m.id, "chunkd returned bytes that do not match the chunk id");
                    tried.push(format!("{}: corrupt", m.id));
                    corrupt += 1;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    tried.push(format!("{}: absent", m.id));
                }
                Err(s) => {
                    if s.code() == tonic::Code::DataLoss {
                        bad.push(m.addr.clone());
                        tracing::error!(chunk = %id, node = %m.id, "replica is corrupt: {}", s.message());
                        tried.push(format!("{}: corrupt", m.id));
                        corrupt += 1;
                    } else {
                        tracing::warn!(chunk = %id, node = %m.id, "fetch failed: {}", s.message());
                        tried.push(format!("{}: {}", m.id, short(s.message())));
                    }
                }
            }
        }
        Err(RepoError::ChunkUnavailable {
            chunk: id,
            tried: tried.join(", "),
            corrupt,
        })
    }
}
