//! The poold process: options, startup (open the store, load membership,
//! serve `/metrics` with `--metrics`, its bound address in
//! `DIR/poold.metrics`, bind, publish the address file), the background GC
//! and self-healing loops, and graceful
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
use crate::heal::{HealConfig, Healer};
use crate::kv::Engine;
use crate::leases::Leases;
use crate::membership::Membership;
use crate::meta::Meta;
use crate::service::PoolService;

/// poold: the blobvirt version manager and metadata service.
#[derive(Parser, Debug, Clone)]
#[command(name = "poold", version, about)]
pub struct Opts {
    /// Configuration file (default /etc/blobvirt/blobvirt.toml, if it
    /// exists); flags and environment beat it, it beats the defaults.
    #[arg(long, env = blobvirt_core::config::ENV)]
    pub config: Option<PathBuf>,
    /// Directory of the metadata store and the address file.
    #[arg(long, default_value = "/var/lib/blobvirt/poold")]
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
    /// A chunkd down this long is out: its chunks get new replicas.
    #[arg(long, default_value_t = 600.0)]
    pub out_after_secs: f64,
    /// Interval of the background self-healing pass (it also runs when
    /// the membership changes).
    #[arg(long, default_value_t = 600.0)]
    pub repair_interval_secs: f64,
    /// Bandwidth of recovery, rebalance and drain copies, in MB/s (0 =
    /// unlimited).
    #[arg(long, default_value_t = 100)]
    pub recovery_mbps: u64,
    /// Copies (Pulls of up to 32 chunks) running at once.
    #[arg(long, default_value_t = 4)]
    pub recovery_concurrency: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Client URLs of the etcd members, comma-separated (`--engine etcd`);
    /// `https://` ones use the configuration file's TLS identity.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub etcd_endpoints: Vec<String>,
    /// Prefix of poold's keys in etcd (one blobvirt cluster per prefix).
    #[arg(long, default_value = "/blobvirt/")]
    pub etcd_prefix: String,
    /// The etcd members' `--max-txn-ops` (what blobvirt asks them for).
    #[arg(long, default_value_t = 8192)]
    pub etcd_max_txn_ops: usize,
    /// The etcd members' `--max-request-bytes`.
    #[arg(long, default_value_t = 8 << 20)]
    pub etcd_max_request_bytes: usize,
    /// Lifetime of the active poold's election lease (etcd engine): a
    /// standby takes over about this long after the active one died.
    #[arg(long, default_value_t = 5)]
    pub election_ttl_secs: u64,
}

impl Opts {
    /// How to reach etcd, for `--engine etcd`.
    pub fn etcd(&self) -> anyhow::Result<Option<crate::kv::etcd_engine::EtcdOptions>> {
        use crate::kv::etcd_engine::{EtcdOptions, EtcdTls};
        if self.engine != Engine::Etcd {
            return Ok(None);
        }
        if self.etcd_endpoints.is_empty() {
            anyhow::bail!("poold --engine etcd needs the members' addresses; give --etcd-endpoints URL[,URL…] or etcd_endpoints in [poold]");
        }
        let mut o = EtcdOptions::new(self.etcd_endpoints.clone(), self.etcd_prefix.clone());
        o.max_txn_ops = self.etcd_max_txn_ops;
        o.max_request_bytes = self.etcd_max_request_bytes;
        if self
            .etcd_endpoints
            .iter()
            .any(|e| e.starts_with("https://"))
        {
            let Some(t) = blobvirt_core::tls::installed() else {
                anyhow::bail!("the etcd endpoints use https but poold has no TLS identity; set [tls] in the configuration file");
            };
            let (ca, cert, key) = t.pems();
            o.tls = Some(EtcdTls {
                ca_pem: ca.to_vec(),
                cert_pem: cert.to_vec(),
                key_pem: key.to_vec(),
            });
        }
        Ok(Some(o))
    }
}

impl Opts {
    /// Parses the command line, fills what it leaves open from the
    /// configuration file, and installs the file's TLS identity.
    pub fn from_args() -> anyhow::Result<Opts> {
        use blobvirt_core::config::{pick, Config, ConfigError};
        use clap::{CommandFactory, FromArgMatches};
        let m = Opts::command().get_matches();
        let mut o = Opts::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
        let cfg = Config::locate(o.config.as_deref(), &[])?;
        let p = cfg.poold.clone();
        if let Some(e) = &p.engine {
            let engine =
                <Engine as clap::ValueEnum>::from_str(e, true).map_err(|_| ConfigError::Value {
                    path: cfg.path.clone().unwrap_or_default(),
                    key: "[poold] engine".into(),
                    problem: format!(
                        "{e:?} is not an engine, expected \"redb\", \"sled\" or \"etcd\""
                    ),
                })?;
            pick(&m, "engine", &mut o.engine, Some(engine));
        }
        pick(&m, "dir", &mut o.dir, p.data_dir);
        pick(&m, "listen", &mut o.listen, p.listen);
        pick(&m, "replicas", &mut o.replicas, cfg.cluster.replicas);
        pick(&m, "gc_grace_secs", &mut o.gc_grace_secs, p.gc_grace_secs);
        pick(
            &m,
            "gc_interval_secs",
            &mut o.gc_interval_secs,
            p.gc_interval_secs,
        );
        pick(
            &m,
            "heartbeat_timeout_ms",
            &mut o.heartbeat_timeout_ms,
            p.heartbeat_timeout_ms,
        );
        pick(&m, "lease_ttl_ms", &mut o.lease_ttl_ms, p.lease_ttl_ms);
        pick(
            &m,
            "out_after_secs",
            &mut o.out_after_secs,
            p.out_after_secs,
        );
        pick(
            &m,
            "repair_interval_secs",
            &mut o.repair_interval_secs,
            p.repair_interval_secs,
        );
        pick(&m, "recovery_mbps", &mut o.recovery_mbps, p.recovery_mbps);
        pick(
            &m,
            "recovery_concurrency",
            &mut o.recovery_concurrency,
            p.recovery_concurrency,
        );
        for (key, v) in [
            ("out_after_secs", o.out_after_secs),
            ("repair_interval_secs", o.repair_interval_secs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                anyhow::bail!("[poold] {key} is {v}; give a number of seconds of 0 or more");
            }
        }
        pick(&m, "metrics", &mut o.metrics, p.metrics.map(Some));
        pick(
            &m,
            "etcd_endpoints",
            &mut o.etcd_endpoints,
            p.etcd_endpoints,
        );
        pick(&m, "etcd_prefix", &mut o.etcd_prefix, p.etcd_prefix);
        pick(
            &m,
            "etcd_max_txn_ops",
            &mut o.etcd_max_txn_ops,
            p.etcd_max_txn_ops,
        );
        pick(
            &m,
            "etcd_max_request_bytes",
            &mut o.etcd_max_request_bytes,
            p.etcd_max_request_bytes,
        );
        pick(
            &m,
            "election_ttl_secs",
            &mut o.election_ttl_secs,
            p.election_ttl_secs,
        );
        blobvirt_core::tls::install_from(&cfg)?;
        Ok(o)
    }
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

/// Waits until this instance is the active poold of its etcd cluster.
async fn campaign(
    ekv: &Arc<crate::kv::etcd_engine::EtcdKv>,
    election: &str,
    opts: &Opts,
) -> anyhow::Result<crate::kv::etcd_leader::Leadership> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let me = format!(
        "{} pid {} {}",
        host.trim(),
        std::process::id(),
        opts.dir.display()
    );
    tracing::info!(%election, "standby: waiting to become the active poold");
    let (e, name, ttl) = (
        ekv.clone(),
        election.to_string(),
        Duration::from_secs(opts.election_ttl_secs),
    );
    let l = tokio::task::spawn_blocking(move || e.campaign(&name, &me, ttl))
        .await?
        .with_context(|| format!("campaign for the active poold ({election})"))?;
    tracing::info!(
        key = %String::from_utf8_lossy(&l.key),
        waited_ms = l.waited.as_millis() as u64,
        "active: elected; every metadata commit is fenced on the election key"
    );
    Ok(l)
}

/// Ends the process once the election lease is lost: another poold may
/// be active by then, and this one's commits fail on the fence anyway.
async fn exit_when_lost(mut l: crate::kv::etcd_leader::Leadership) {
    l.lost().await;
    tracing::error!("lost the election lease (etcd unreachable, or this poold was paused); exiting so that the active poold serves alone");
    std::process::exit(3);
}

/// Runs poold until SIGTERM/SIGINT.
pub async fn run(opts: Opts) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("create the directory {}", opts.dir.display()))?;
    let _lock = blobvirt_core::fsutil::lock_dir(&opts.dir, "poold", "--dir")?;
    let (dir, engine, etcd) = (opts.dir.clone(), opts.engine, opts.etcd()?);
    let meta = match etcd {
        Some(o) => {
            let eps = o.endpoints.join(",");
            let election = format!(
                "{}.election",
                String::from_utf8_lossy(&o.prefix).trim_end_matches('/')
            );
            let ekv = tokio::task::spawn_blocking(move || {
                crate::kv::etcd_engine::EtcdKv::connect(o).map(Arc::new)
            })
            .await?
            .with_context(|| format!("connect to etcd ({eps})"))?;
            let leadership = campaign(&ekv, &election, &opts).await?;
            tokio::spawn(exit_when_lost(leadership));
            let kv: Arc<dyn crate::kv::Kv> = ekv;
            tokio::task::spawn_blocking(move || Meta::new(kv))
                .await?
                .with_context(|| format!("open the metadata store in etcd ({eps})"))?
        }
        None => {
            tokio::task::spawn_blocking(move || Meta::new(crate::kv::open(engine, &dir, None)?))
                .await?
                .with_context(|| format!("open the metadata store in {}", opts.dir.display()))?
        }
    };
    let m = meta.clone();
    let dropped = tokio::task::spawn_blocking(move || m.recover())
        .await?
        .context("drop what interrupted publishes and deletes left in the metadata store")?;
    if dropped > 0 {
        tracing::info!("dropped the staging roots of {dropped} publishes a crash interrupted");
    }
    let members = Arc::new(
        Membership::load(
            &meta,
            Duration::from_millis(opts.heartbeat_timeout_ms),
            Duration::from_secs_f64(opts.out_after_secs),
        )
        .context("load the chunkd membership")?,
    );
    let gc = Arc::new(Gc::new(meta.clone(), members.clone(), opts.gc_grace_secs));
    let healer = Arc::new(Healer::new(
        meta.clone(),
        members.clone(),
        gc.clone(),
        opts.replicas as usize,
        HealConfig {
            interval: Duration::from_secs_f64(opts.repair_interval_secs.max(1.0)),
            bytes_per_sec: opts.recovery_mbps * 1_000_000,
            concurrency: opts.recovery_concurrency.max(1),
        },
    ));
    let leases = {
        let (meta, ttl) = (meta.clone(), Duration::from_millis(opts.lease_ttl_ms));
        tokio::task::spawn_blocking(move || Leases::load(meta, ttl))
            .await?
            .context("load the writer leases")?
    };
    let mut registry = blobvirt_core::metrics::Registry::default();
    crate::metrics::register(&mut registry, meta.clone(), members.clone(), &gc, &healer);
    let rpc = blobvirt_core::metrics::RpcMetrics::register(&mut registry);
    let metrics_file = opts.dir.join("poold.metrics");
    let _ = std::fs::remove_file(&metrics_file);
    let _metrics_server = match opts.metrics {
        Some(a) => {
            let srv =
                blobvirt_core::metrics::serve(a, "[poold] metrics", Arc::new(registry)).await?;
            write_atomic(&metrics_file, srv.addr.to_string().as_bytes())
                .with_context(|| format!("writing {}", metrics_file.display()))?;
            Some(srv)
        }
        None => None,
    };
    let svc = PoolService {
        meta: meta.clone(),
        members,
        leases: Arc::new(leases),
        gc: gc.clone(),
        healer: healer.clone(),
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
    tracing::info!(%addr, engine = meta.engine(), dir = %opts.dir.display(),
        tls = blobvirt_core::tls::installed().is_some(), "poold listening");
    blobvirt_core::fsutil::notify_ready();

    let gc_task = tokio::spawn(gc.run_every(Duration::from_secs(opts.gc_interval_secs)));
    let heal_task = tokio::spawn(healer.run());
    let server = PoolServer::new(svc)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let res = blobvirt_core::tls::server_builder()
        .map_err(anyhow::Error::msg)?
        .layer(rpc)
        .add_service(server)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
        .await
        .context("serve gRPC");
    gc_task.abort();
    heal_task.abort();
    let _ = std::fs::remove_file(&metrics_file);
    res
}
