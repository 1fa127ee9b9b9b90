//! The repository client: talks to poold for metadata and to the chunk
//! daemons for data, with placement computed locally and bounded parallelism.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tonic::transport::{Channel, Endpoint};

use crate::chunk::ChunkId;
pub use crate::failover::PoolChannel;
use crate::placement::{Member, Placement};
use crate::proto::chunk_store_client::ChunkStoreClient;
use crate::proto::pool_client::PoolClient;
use crate::proto::{self as pb};
use crate::MAX_MESSAGE;

mod get;
mod nearby;
use nearby::LocalEntry;

/// Errors of repository operations that callers match on.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// poold refused or failed; its message is already a user sentence.
    #[error("{}", .0.message())]
    Pool(#[from] tonic::Status),
    #[error("cannot connect to the pool at {url}: {reason}; check --pool or BLOBVIRT_POOL and that poold runs")]
    Connect { url: String, reason: String },
    /// No replica served the chunk; `corrupt` of them answered with bytes
    /// that fail the hash check (data that is never returned).
    #[error("chunk {chunk} could not be read from any replica ({tried}); check that its chunkd nodes run")]
    ChunkUnavailable {
        chunk: ChunkId,
        tried: String,
        corrupt: usize,
    },
    #[error("chunk {chunk} could not be stored on enough chunkd nodes ({tried}); check the nodes with `blobvirt cluster status`")]
    ChunkNotStored { chunk: ChunkId, tried: String },
    #[error("chunkd node at {node} could not make the uploaded chunks durable ({reason}); check the node and try again")]
    Flush { node: String, reason: String },
    /// The address cannot be used as given (scheme, TLS); a sentence.
    #[error("{0}")]
    Address(String),
    /// A TLS handshake was refused; the sentence names the certificate.
    #[error("{0}")]
    Tls(String),
    #[error("no live chunkd node is registered; start chunkd nodes first")]
    NoLiveNodes,
}

impl RepoError {
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            RepoError::Pool(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// Makes a lazily connecting channel to `addr` (`host:port` or a URL), with
/// TLS when this process has an identity ([`crate::tls`]).
pub fn channel(addr: &str) -> Result<Channel, String> {
    let url = crate::tls::url_for(addr)?;
    let mut ep = Endpoint::from_shared(url).map_err(|e| e.to_string())?;
    if let Some(tls) = crate::tls::installed() {
        ep = ep.tls_config(tls.client_config()).map_err(|e| {
            format!("the TLS configuration of this host cannot be used ({e}); check [tls]")
        })?;
    }
    Ok(ep
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // Chunks are up to 4 MiB: HTTP/2's default 64 KiB windows would
        // stall every transfer on window updates.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(32 << 20)
        // Large DATA frames: fewer frames and far fewer reads per chunk.
        .max_frame_size(crate::MAX_FRAME)
        .connect_lazy())
}

/// A chunk store client with raised message limits.
pub fn chunk_client(ch: Channel) -> ChunkStoreClient<Channel> {
    ChunkStoreClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// A channel to poold at `addrs`: one address, or several separated by
/// commas (fail-over between an active poold and its standbys, see
/// [`crate::failover`]).
pub fn pool_channel(addrs: &str) -> Result<PoolChannel, String> {
    let chans = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(channel)
        .collect::<Result<Vec<_>, _>>()?;
    if chans.is_empty() {
        return Err("no poold address given".into());
    }
    Ok(PoolChannel::new(chans))
}

impl From<Channel> for PoolChannel {
    fn from(ch: Channel) -> Self {
        PoolChannel::new(vec![ch])
    }
}

/// A pool client with raised message limits.
pub fn pool_client(ch: impl Into<PoolChannel>) -> PoolClient<PoolChannel> {
    PoolClient::new(ch.into())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

struct View {
    placement: Arc<Placement>,
    gc_epoch: u64,
}

/// A connection to one repository.
#[derive(Clone)]
pub struct Repo {
    url: String,
    pool: PoolClient<PoolChannel>,
    view: Arc<RwLock<View>>,
    chans: Arc<Mutex<HashMap<String, ChunkStoreClient<Channel>>>>,
    /// chunkd address → the node when it shares this process's view of the
    /// machine (`None`: it does not); see [`crate::local`].
    local: Arc<Mutex<HashMap<String, LocalEntry>>>,
    /// How many chunk transfers run at once.
    pub concurrency: usize,
    /// Read a replica on a chunkd of this machine from its segment instead
    /// of over gRPC ([`Repo::get_chunk`]), and write staged replicas there
    /// into a batch file handed over with PutLocal
    /// ([`Repo::put_chunk_staged`]); on unless `BLOBVIRT_LOCAL_READS=0`.
    pub local_reads: bool,
}

impl Repo {
    /// Connects to poold at `url` and loads the membership.
    pub async fn connect(url: &str) -> Result<Self> {
        let ch = pool_channel(url).map_err(RepoError::Address)?;
        let repo = Repo {
            url: url.to_string(),
            pool: pool_client(ch),
            view: Arc::new(RwLock::new(View {
                placement: Arc::default(),
                gc_epoch: 0,
            })),
            chans: Arc::default(),
            local: Arc::default(),
            concurrency: 16,
            local_reads: std::env::var("BLOBVIRT_LOCAL_READS").map_or(true, |v| v != "0"),
        };
        repo.refresh().await.map_err(|e| match e {
            RepoError::Pool(s) if s.code() == tonic::Code::Unavailable => {
                match crate::tls::explain(url, &s) {
                    Some(sentence) => RepoError::Tls(sentence),
                    None => RepoError::Connect {
                        url: url.into(),
                        reason: s.message().to_string(),
                    },
                }
            }
            e => e,
        })?;
        Ok(repo)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The raw poold client, for calls without a wrapper here.
    pub fn pool(&self) -> PoolClient<PoolChannel> {
        self.pool.clone()
    }

    /// Reloads membership, replication factor and GC epoch from poold.
    pub async fn refresh(&self) -> Result<()> {
        let r = self
            .pool
            .clone()
            .nodes(pb::NodesRequest {})
            .await?
            .into_inner();
        let members = r
            .nodes
            .into_iter()
            .map(|n| Member {
                id: n.id,
                addr: n.addr,
                alive: n.alive,
                placed: n.state != "out" && !n.draining,
            })
            .collect();
        let mut v = self.view.write().expect("view lock");
        v.placement = Arc::new(Placement::new(members, r.replicas as usize));
        v.gc_epoch = r.gc_epoch;
        Ok(())
    }

    pub fn placement(&self) -> Arc<Placement> {
        self.view.read().expect("view lock").placement.clone()
    }

    pub fn gc_epoch(&self) -> u64 {
        self.view.read().expect("view lock").gc_epoch
    }

    /// A client for the chunkd at `addr` (cached).
    pub fn node(&self, addr: &str) -> ChunkStoreClient<Channel> {
        let mut m = self.chans.lock().expect("chans lock");
        if let Some(c) = m.get(addr) {
            return c.clone();
        }
        let c = chunk_client(channel(addr).expect("valid chunkd address"));
        m.insert(addr.to_string(), c.clone());
        c
    }

    /// Stores one chunk durably on its home nodes, all replicas at once. A
    /// home that fails is replaced by the next live node of the ranking.
    pub async fn put_chunk(&self, id: ChunkId, data: Bytes) -> Result<()> {
        self.put_replicas(id, data, false).await.map(drop)
    }

    /// Stores one chunk on its home nodes without waiting for it to be
    /// durable; returns the nodes (addresses) that took it. The caller must
    /// [`Repo::flush`] those nodes before it publishes anything that uses it.
    pub async fn put_chunk_staged(&self, id: ChunkId, data: Bytes) -> Result<Vec<String>> {
        self.put_replicas(id, data, true).await
    }

    async fn put_replicas(&self, id: ChunkId, data: Bytes, staged: bool) -> Result<Vec<String>> {
        let p = self.placement();
        let live: Vec<&Member> = p
            .ranking(&id)
            .into_iter()
            .filter(|m| m.alive && m.placed)
            .collect();
        let want = p.replicas().min(live.len());
        if want == 0 {
            return Err(RepoError::NoLiveNodes);
        }
        let put = |m: &Member| {
            let data = data.clone();
            let mut c = self.node(&m.addr);
            let (node, addr) = (m.id.clone(), m.addr.clone());
            async move {
                // A staged replica on this machine: append it to the batch
                // for that node (no gRPC body, no TLS); a batch that is full
                // is handed over now, the rest at Flush. Any failure to
                // write it falls back to Put.
                if let Some(l) = self.local_store(&addr).await.filter(|l| staged && l.runs()) {
                    let (l2, d) = (l.clone(), data.clone());
                    let appended = tokio::task::spawn_blocking(move || l2.append(&id, &d))
                        .await
                        .ok()
                        .and_then(|r| {
                            r.map_err(|e| {
                                tracing::debug!(node = %node, "cannot write a local batch ({e}); sending the chunk over gRPC")
                            })
                            .ok()
                        });
                    if let Some(full) = appended {
                        if full {
                            let mut refused = l.handover.lock().await;
                            if let Some(name) = l.take_full() {
                                if let Err(e) = self.hand_over(&mut c, name).await {
                                    refused.get_or_insert(e);
                                }
                            }
                        }
                        return Ok(addr);
                    }
                }
                let req = pb::PutRequest {
                    id: Bytes::copy_from_slice(&id.0),
                    data,
                    staged,
                };
                c.put(req)
                    .await
                    .map(|_| addr)
                    .map_err(|s| format!("{node}: {}", s.message()))
            }
        };
        let mut stored = Vec::new();
        let mut tried = Vec::new();
        for r in futures::future::join_all(live[..want].iter().map(|m| put(m))).await {
            match r {
                Ok(addr) => stored.push(addr),
                Err(e) => tried.push(e),
            }
        }
        for m in &live[want..] {
            if stored.len() == want {
                break;
            }
            match put(m).await {
                Ok(addr) => stored.push(addr),
                Err(e) => tried.push(e),
            }
        }
        if stored.len() == want {
            Ok(stored)
        } else {
            Err(RepoError::ChunkNotStored {
                chunk: id,
                tried: tried.join("; "),
            })
        }
    }

    /// Hands the batch file `name` over to a node of this machine.
    async fn hand_over(
        &self,
        c: &mut ChunkStoreClient<Channel>,
        name: String,
    ) -> Result<(), String> {
        c.put_local(pb::PutLocalRequest { file: name })
            .await
            .map(drop)
            .map_err(|s| s.message().to_string())
    }

    /// Makes the staged chunks on these nodes durable (after handing over
    /// what this process batched for a node of this machine).
    pub async fn flush<'a>(&self, addrs: impl IntoIterator<Item = &'a String>) -> Result<()> {
        let calls = addrs.into_iter().map(|addr| {
            let mut c = self.node(addr);
            let local = match self.local.lock().expect("local lock").get(addr) {
                Some(LocalEntry::Known(Some(l))) => Some(l.clone()),
                _ => None,
            };
            async move {
                let err = |reason: String| RepoError::Flush {
                    node: addr.clone(),
                    reason,
                };
                let mut guard = match &local {
                    Some(l) => Some(l.handover.lock().await),
                    None => None,
                };
                if let (Some(l), Some(g)) = (&local, guard.as_mut()) {
                    if let Some(name) = l.take() {
                        if let Err(e) = self.hand_over(&mut c, name).await {
                            g.get_or_insert(e);
                        }
                    }
                    if let Some(e) = g.take() {
                        return Err(err(format!("it refused a batch of staged chunks: {e}")));
                    }
                }
                c.flush(pb::FlushRequest {})
                    .await
                    .map_err(|s| err(s.message().to_string()))
            }
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok(())
    }

    /// Stores many chunks, `concurrency` at a time.
    pub async fn put_chunks(&self, chunks: Vec<(ChunkId, Bytes)>) -> Result<()> {
        let mut s = stream::iter(chunks)
            .map(|(id, d)| self.put_chunk(id, d))
            .buffer_unordered(self.concurrency);
        while let Some(r) = s.next().await {
            r?;
        }
        Ok(())
    }

    pub async fn get_blob(&self, name: &str) -> Result<pb::BlobInfo> {
        let req = pb::GetBlobRequest {
            name: name.to_string(),
        };
        Ok(self.pool.clone().get_blob(req).await?.into_inner())
    }

    pub async fn list_blobs(&self) -> Result<Vec<pb::BlobInfo>> {
        Ok(self
            .pool
            .clone()
            .list_blobs(pb::ListBlobsRequest {})
            .await?
            .into_inner()
            .blobs)
    }

    /// The whole chunk map of `name@version` (0 = latest), fetched in pages.
    pub async fn resolve(&self, name: &str, version: u64) -> Result<Resolved> {
        let mut chunks = Vec::new();
        let mut first = 0u64;
        loop {
            let req = pb::ResolveRequest {
                name: name.into(),
                version,
                first_chunk: first,
                count: 0,
            };
            let r = self.pool.clone().resolve(req).await?.into_inner();
            let n = r.chunks.len() as u64;
            chunks.extend(r.chunks.iter().map(|c| ChunkId::from_slice(c)));
            first += n;
            let total = crate::chunk::chunk_count(r.size, r.chunk_size);
            if first >= total || n == 0 {
                return Ok(Resolved {
                    version: r.version,
                    size: r.size,
                    chunk_size: r.chunk_size,
                    chunks,
                });
            }
        }
    }

    /// Publishes a version. The reply may ask for chunks to be uploaded
    /// again (see [`Publish::Reupload`]). The publish gets a request id
    /// (unless it has one), so over several poold endpoints it is resent
    /// after a lost connection too: poold answers a resent one with the
    /// version the first try made.
    pub async fn publish(&self, mut req: pb::PublishRequest) -> Result<Publish> {
        if req.request_id.is_empty() {
            req.request_id = crate::failover::request_id();
        }
        let r = self
            .pool
            .clone()
            .publish(crate::failover::idempotent(req))
            .await?
            .into_inner();
        if r.reupload.is_empty() {
            Ok(Publish::Done(r.version))
        } else {
            self.view.write().expect("view lock").gc_epoch = r.gc_epoch;
            Ok(Publish::Reupload(
                r.reupload
                    .iter()
                    .filter_map(|c| ChunkId::from_slice(c))
                    .collect(),
            ))
        }
    }

    pub async fn clone_blob(&self, src: &str, version: u64, dst: &str) -> Result<pb::BlobInfo> {
        let req = pb::CloneRequest {
            src: src.into(),
            version,
            dst: dst.into(),
            request_id: crate::failover::request_id(),
        };
        Ok(self
            .pool
            .clone()
            .clone_volume(crate::failover::idempotent(req))
            .await?
            .into_inner())
    }

    /// Publishes a new latest version of `name` with the content of
    /// `name@version` (O(1) on poold); returns the new version.
    pub async fn revert(&self, name: &str, version: u64, label: &str) -> Result<u64> {
        let req = pb::RevertRequest {
            name: name.into(),
            version,
            label: label.into(),
            request_id: crate::failover::request_id(),
        };
        Ok(self
            .pool
            .clone()
            .revert_volume(crate::failover::idempotent(req))
            .await?
            .into_inner()
            .version)
    }

    /// Sets the label of `name@version` (0 = latest).
    pub async fn label_version(
        &self,
        name: &str,
        version: u64,
        label: &str,
    ) -> Result<pb::VersionInfo> {
        let req = pb::LabelRequest {
            name: name.into(),
            version,
            label: label.into(),
        };
        Ok(self.pool.clone().label_version(req).await?.into_inner())
    }

    /// Deletes `name@version` (0 = the whole volume). Without `force`,
    /// poold refuses while a writer holds the volume's lease.
    pub async fn delete(&self, name: &str, version: u64) -> Result<()> {
        self.delete_with(name, version, false).await
    }

    /// [`Repo::delete`] that, with `force`, deletes under a writer too.
    pub async fn delete_with(&self, name: &str, version: u64, force: bool) -> Result<()> {
        let req = pb::DeleteVolumeRequest {
            name: name.into(),
            version,
            force,
        };
        self.pool.clone().delete_volume(req).await?;
        Ok(())
    }

    /// Renames volume `name` to `new_name`.
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<pb::BlobInfo> {
        let req = pb::RenameRequest {
            name: name.into(),
            new_name: new_name.into(),
        };
        Ok(self.pool.clone().rename_volume(req).await?.into_inner())
    }
}

fn short(s: &str) -> &str {
    s.split(':').next().unwrap_or(s)
}

/// A version's chunk map.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub version: u64,
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: Vec<Option<ChunkId>>,
}

/// Outcome of a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    Done(u64),
    /// GC may have reclaimed these chunks while the client uploaded; put them
    /// again and publish again.
    Reupload(Vec<ChunkId>),
}
