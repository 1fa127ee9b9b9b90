//! chunkd, the data provider of blobvirt: stores immutable chunks, named by
//! the BLAKE3-256 hash of their content, on the node's local disk and serves
//! them over gRPC (`ChunkStore` in `core/proto/blobvirt.proto`).
//!
//! - [`store`]: disk layout, atomic Put, verified Get, quarantine, counters,
//!   (`store::staged`) staged Puts made durable in bulk by Flush, and
//!   (`store::scan`) the paged listing and the rate-bounded scrub;
//! - [`durable`]: how Puts are made durable (per-Put fsyncs or syncfs group commit);
//! - [`service`]: the gRPC service over the store, and [`pull`] its
//!   node-to-node copy for self-healing;
//! - [`membership`]: registration and heartbeats with poold;
//! - [`metrics`]: the `blobvirt_chunkd_*` metric families;
//! - this module: options, node identity, startup and graceful shutdown.
//!
//! Startup: lock `DIR/chunkd.lock`, open the store (emptying `DIR/tmp/`,
//! counting chunks), serve `/metrics` when `--metrics` is given (its bound
//! address in `DIR/chunkd.metrics`), bind, write `DIR/chunkd.addr` (tmp +
//! rename), start
//! membership in the background, serve until SIGTERM/SIGINT.
//!
//! Throughput (measured on the 2-core dev VM, ext4 on virtio, other builds
//! running, so ±50 %): `cargo run --release -p chunkd --example put_bench --
//! store|grpc MODE 256 256 16` puts 256 MiB of random 256 KiB chunks, 16 at a
//! time. Store level: per-put 225–465 MiB/s, syncfs group commit 257–476
//! MiB/s, group commit of directory fsyncs 88–164 MiB/s (dropped, see
//! [`durable`]). Over gRPC (client and server in one process): per-put
//! 112–189 MiB/s, syncfs 84–162 MiB/s. Per-put is the default: as fast as
//! syncfs here, and not slowed by other writers on the same file system.
//! For reference `dd conv=fsync` of 256 MiB took 0.57–0.72 s (~400 MiB/s).

pub mod durable;
pub mod membership;
pub mod metrics;
pub mod pull;
pub mod service;
pub mod store;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use durable::Durability;
pub use service::ChunkService;
pub use store::{Stats, Store, StoreError};

/// Command line of `chunkd`.
#[derive(Parser, Debug, Clone)]
#[command(name = "chunkd", version, about = "blobvirt chunk store daemon")]
pub struct Opts {
    /// Configuration file (default /etc/blobvirt/blobvirt.toml, if it
    /// exists); flags and environment beat it, it beats the defaults.
    #[arg(long, env = blobvirt_core::config::ENV)]
    pub config: Option<PathBuf>,
    /// Data directory (chunks, node id, address file).
    #[arg(long, default_value = "/var/lib/blobvirt/chunkd")]
    pub dir: PathBuf,
    /// URL of poold, e.g. https://10.0.0.1:7000 (default: [cluster] pool
    /// of the configuration file).
    #[arg(
        long,
        env = "BLOBVIRT_POOL",
        default_value = "",
        hide_default_value = true
    )]
    pub pool: String,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// HOST:PORT registered with poold, which clients dial (default: the
    /// listen address, 127.0.0.1 when that is unspecified).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Node id; default: the one persisted in DIR/node-id (created once).
    #[arg(long)]
    pub id: Option<String>,
    /// How Puts are made durable: per-put or syncfs (see the durable module).
    #[arg(
        long,
        env = "CHUNKD_DURABILITY",
        default_value = "per-put",
        hide = true
    )]
    pub durability: Durability,
    /// Background scrub: re-hash every stored chunk at this many MB/s
    /// (0 = no background scrub; `blobvirt scrub --now` still works).
    #[arg(long, default_value_t = 8)]
    pub scrub_mbps: u64,
    /// Pause between two background scrub passes.
    #[arg(long, default_value_t = 86400)]
    pub scrub_interval_secs: u64,
}

/// Logs to stderr with `RUST_LOG` (default info and refused TLS handshakes).
pub fn init_logging() {
    blobvirt_core::fsutil::init_logging(blobvirt_core::fsutil::DAEMON_LOG);
}

impl Opts {
    /// Parses the command line, fills what it leaves open from the
    /// configuration file, and installs the file's TLS identity.
    pub fn from_args() -> anyhow::Result<Opts> {
        use blobvirt_core::config::{pick, Config};
        use clap::{CommandFactory, FromArgMatches};
        let m = Opts::command().get_matches();
        let mut o = Opts::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
        let cfg = Config::locate(o.config.as_deref(), &[])?;
        let c = cfg.chunkd.clone();
        pick(&m, "dir", &mut o.dir, c.data_dir);
        pick(&m, "pool", &mut o.pool, cfg.pool());
        pick(&m, "listen", &mut o.listen, c.listen);
        pick(&m, "advertise", &mut o.advertise, c.advertise.map(Some));
        pick(&m, "id", &mut o.id, c.node_id.map(Some));
        pick(&m, "metrics", &mut o.metrics, c.metrics.map(Some));
        pick(&m, "scrub_mbps", &mut o.scrub_mbps, c.scrub_mbps);
        pick(
            &m,
            "scrub_interval_secs",
            &mut o.scrub_interval_secs,
            c.scrub_interval_secs,
        );
        if o.pool.is_empty() {
            bail!("chunkd does not know where poold is; pass --pool URL or set pool in [cluster] of {}", cfg.origin());
        }
        blobvirt_core::tls::install_from(&cfg)?;
        Ok(o)
    }
}

/// The store keeps every segment open (one descriptor per 32–64 MiB), so
/// chunkd raises its soft limit on open files to the hard one: 1024, the
/// usual soft limit outside systemd, would cap a node at about 32 GiB
/// (the packaged unit sets `LimitNOFILE=65536`).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard} ({e}); a node with many segments may run out of descriptors");
            }
        }
    }
}

/// Runs chunkd until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(opts: Opts) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    raise_open_files();
    run_until(opts, async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    })
    .await
}

/// Runs chunkd until `shutdown` completes (for embedding in tests and tools).
pub async fn run_until(opts: Opts, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = opts.dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("create the data directory {}", dir.display()))?;
    let _lock = blobvirt_core::fsutil::lock_dir(&dir, "chunkd", "--dir")?;
    let addr_file = dir.join("chunkd.addr");
    let _ = std::fs::remove_file(&addr_file);
    let metrics_file = dir.join("chunkd.metrics");
    let _ = std::fs::remove_file(&metrics_file);
    let id = match opts.id {
        Some(id) => check_id(id)?,
        None => node_id(&dir)?,
    };
    let pool = blobvirt_core::client::pool_channel(&opts.pool).map_err(|e| {
        anyhow!(
            "pool URL {} cannot be used ({e}); pass --pool https://HOST:PORT",
            opts.pool
        )
    })?;
    let store = {
        let (dir, id, mode) = (dir.clone(), id.clone(), opts.durability);
        tokio::task::spawn_blocking(move || Store::open_with(&dir, &id, mode))
            .await
            .context("open the chunk store")??
    };
    let st = store.stats()?;
    tracing::info!(node = %id, dir = %dir.display(), chunks = st.chunks, bytes = st.bytes,
        durability = ?opts.durability, "chunk store opened");

    let store = Arc::new(store);
    let mut registry = blobvirt_core::metrics::Registry::default();
    let counters = metrics::Metrics::register(&mut registry, store.clone());
    let rpc = blobvirt_core::metrics::RpcMetrics::register(&mut registry);
    let _metrics_server = match opts.metrics {
        Some(a) => {
            let srv =
                blobvirt_core::metrics::serve(a, "[chunkd] metrics", Arc::new(registry)).await?;
            write_atomic(&metrics_file, srv.addr.to_string().as_bytes())?;
            Some(srv)
        }
        None => None,
    };

    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listen on {}; pick another --listen address", opts.listen))?;
    let mut local = listener
        .local_addr()
        .context("read the listening address")?;
    if local.ip().is_unspecified() {
        local.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let addr = opts.advertise.clone().unwrap_or_else(|| local.to_string());
    write_atomic(&addr_file, addr.as_bytes())?;
    tracing::info!(node = %id, %addr, tls = blobvirt_core::tls::installed().is_some(), "chunkd listening");
    blobvirt_core::fsutil::notify_ready();

    let member = tokio::spawn(membership::maintain(
        pool,
        opts.pool.clone(),
        id.clone(),
        addr.clone(),
    ));
    // Staged chunks nobody flushed (a writer that died) still become durable.
    let flusher = tokio::spawn({
        let store = store.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if store.staged_len() > 0 {
                    let s = store.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.flush()).await {
                        tracing::error!("background flush of staged chunks failed: {e}");
                    }
                }
            }
        }
    });
    let scrubber = tokio::spawn(scrub_every(
        store.clone(),
        opts.scrub_mbps,
        opts.scrub_interval_secs,
    ));
    let stop = Arc::new(tokio::sync::Notify::new());
    let serve = blobvirt_core::tls::server_builder()
        .map_err(anyhow::Error::msg)?
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(blobvirt_core::MAX_FRAME)
        .tcp_nodelay(true)
        .layer(rpc)
        .add_service(ChunkService::with_metrics(store.clone(), counters).into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
            let stop = stop.clone();
            async move { stop.notified().await }
        });
    tokio::pin!(serve, shutdown);
    let res = tokio::select! {
        r = &mut serve => r,
        _ = &mut shutdown => {
            stop.notify_one();
            match tokio::time::timeout(Duration::from_secs(10), &mut serve).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("clients kept connections open for 10 s after shutdown; exiting anyway");
                    Ok(())
                }
            }
        }
    };
    member.abort();
    flusher.abort();
    scrubber.abort();
    if let Err(e) = tokio::task::spawn_blocking(move || store.flush())
        .await
        .expect("flush task")
    {
        tracing::error!("flush of staged chunks at shutdown failed: {e}");
    }
    let _ = std::fs::remove_file(&addr_file);
    let _ = std::fs::remove_file(&metrics_file);
    res.context("serve gRPC")?;
    tracing::info!(node = %id, "chunkd stopped");
    Ok(())
}

/// Background scrub: a pass at `mbps` MB/s, then a pause of
/// `interval_secs`, forever (nothing when `mbps` is 0). The first pass
/// starts one interval after startup, so a restart does not rescan at once.
async fn scrub_every(store: Arc<Store>, mbps: u64, interval_secs: u64) {
    if mbps == 0 {
        return;
    }
    /// Tells a running pass to stop when the task is aborted (shutdown).
    struct Stop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let stop = Stop(Arc::default());
    let pause = Duration::from_secs(interval_secs.max(1));
    loop {
        tokio::time::sleep(pause).await;
        let (s, flag) = (store.clone(), stop.0.clone());
        let go_on = move || !flag.load(std::sync::atomic::Ordering::Relaxed);
        match tokio::task::spawn_blocking(move || s.scrub(mbps * 1_000_000, &go_on)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("background scrub failed: {e}"),
            Err(e) => tracing::error!("background scrub task failed: {e}"),
        }
    }
}

fn check_id(id: String) -> anyhow::Result<String> {
    let id = id.trim().to_string();
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("node id {id:?} is empty or contains spaces; pass --id like node-1");
    }
    Ok(id)
}

/// The node id persisted in `DIR/node-id`, created as `node-<8 hex>` once.
pub fn node_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => check_id(s).with_context(|| format!("read the node id in {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{:08x}", rand::random::<u32>());
            write_atomic(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read the node id in {}", path.display())),
    }
}

/// Writes `data` to `path` atomically ([`blobvirt_core::fsutil::write_atomic`]).
fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    blobvirt_core::fsutil::write_atomic(path, data)
        .with_context(|| format!("write {}", path.display()))
}
