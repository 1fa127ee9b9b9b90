//! The poold process: options, startup (open the store, load membership,
//! bind, publish the address file), the background GC loop, and graceful
//! shutdown on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use blobvirt_core::fsutil::write_atomic;
use blobvirt_core::proto::pool_server::PoolServer;
use blobvirt_core::MAX_MESSAGE;
use clap::Parser;
use tokio_stream::wrappers::TcpListenerStream;

use crate::gc::Gc;
use crate::kv::Engine;
use crate::leases::Leases;
use crate::membership::Membership;
use crate::meta::Meta;
use crate::service::PoolService;

/// poold: the blobvirt version manager and metadata service.
#[derive(Parser, Debug, Clone)]
#[command(name = "poold", version, about)]
pub struct Opts {
    /// Directory of the metadata store and the address file.
    #[arg(long)]
    pub dir: PathBuf,
    /// Address to listen on (port 0 = any free port; see DIR/poold.addr).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Metadata engine.
    #[arg(long, value_enum, default_value = "redb")]
    pub engine: Engine,
    /// Replication factor clients use for chunks.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// How long an unreferenced chunk waits before GC deletes it.
    #[arg(long, default_value_t = 60)]
    pub gc_grace_secs: u64,
    /// Interval of the background GC pass.
    #[arg(long, default_value_t = 10)]
    pub gc_interval_secs: u64,
    /// A chunkd is dead after this long without a heartbeat.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_timeout_ms: u64,
    /// Default writer lease lifetime.
    #[arg(long, default_value_t = 10000)]
    pub lease_ttl_ms: u64,
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}

/// Runs poold until SIGTERM/SIGINT.
pub async fn run(opts: Opts) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("create the directory {}", opts.dir.display()))?;
    let _lock = blobvirt_core::fsutil::lock_dir(&opts.dir, "poold", "--dir")?;
    let (dir, engine) = (opts.dir.clone(), opts.engine);
    let meta = tokio::task::spawn_blocking(move || Meta::open(engine, &dir))
        .await?
        .with_context(|| format!("open the metadata store in {}", opts.dir.display()))?;
    let members = Arc::new(
        Membership::load(&meta, Duration::from_millis(opts.heartbeat_timeout_ms))
            .context("load the chunkd membership")?,
    );
    let gc = Arc::new(Gc::new(meta.clone(), members.clone(), opts.gc_grace_secs));
    let svc = PoolService {
        meta: meta.clone(),
        members,
        leases: Arc::new(Leases::new(Duration::from_millis(opts.lease_ttl_ms))),
        gc: gc.clone(),
        replicas: opts.replicas,
    };

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listen on {}", opts.listen))?;
    let addr = listener
        .local_addr()
        .context("read the listening address")?;
    write_atomic(&opts.dir.join("poold.addr"), addr.to_string().as_bytes())
        .with_context(|| format!("write {}", opts.dir.join("poold.addr").display()))?;
    tracing::info!(%addr, engine = meta.engine(), dir = %opts.dir.display(), "poold listening");

    let gc_task = tokio::spawn(gc.run_every(Duration::from_secs(opts.gc_interval_secs)));
    let server = PoolServer::new(svc)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let res = tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
        .await
        .context("serve gRPC");
    gc_task.abort();
    res
}
