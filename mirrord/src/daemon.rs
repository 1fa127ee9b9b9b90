//! The daemon's life: clean a stale mount, connect to poold, serve the
//! control socket and (`--metrics`) `/metrics`, its bound address in
//! `CACHE/mirrord.metrics`, mount the file system, refresh the listing and flush
//! mirror states in the background, and on SIGTERM/SIGINT commit or keep
//! per policy, unmount and exit 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use blobvirt_core::Repo;
use fuser::{Config, MountOption, SessionACL};

use crate::fs::Fs;
use crate::volumes::Volumes;

/// Command-line options of `mirrord`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "mirrord",
    about = "blobvirt mirroring module: shows the repository's volumes as raw files"
)]
pub struct Options {
    /// Configuration file (default /etc/blobvirt/blobvirt.toml, if it
    /// exists); flags and environment beat it, it beats the defaults.
    #[arg(long, env = blobvirt_core::config::ENV)]
    pub config: Option<PathBuf>,
    /// poold address (https://HOST:PORT; default: [cluster] pool of the
    /// configuration file).
    #[arg(
        long,
        env = "BLOBVIRT_POOL",
        default_value = "",
        hide_default_value = true
    )]
    pub pool: String,
    /// Mount point; every volume appears as DIR/NAME.
    #[arg(long, default_value = "/var/lib/blobvirt/pool")]
    pub mount: PathBuf,
    /// Cache directory for the local mirrors.
    #[arg(long, default_value = "/var/lib/blobvirt/cache")]
    pub cache: PathBuf,
    /// Control socket (default CACHE/control.sock).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Append one line `NAME OFFSET LENGTH` per read of a volume file to
    /// FILE (LENGTH clipped to the volume size).
    #[arg(long, value_name = "FILE")]
    pub trace_reads: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// MiB of recently fetched chunks kept in memory and shared by every
    /// mirror on this host, so clones of one image fetch each chunk once
    /// (0: off).
    #[arg(
        long,
        env = "BLOBVIRT_CHUNK_CACHE_MIB",
        value_name = "MIB",
        default_value_t = crate::chunk_cache::DEFAULT_MIB
    )]
    pub chunk_cache_mib: u64,
    /// KiB the kernel reads ahead of a buffered sequential reader of the
    /// mount (written to the mount's `read_ahead_kb` in sysfs; 0: none).
    /// O_DIRECT readers such as QEMU with cache=none are not affected.
    #[arg(
        long,
        env = "BLOBVIRT_READ_AHEAD_KIB",
        value_name = "KIB",
        default_value_t = DEFAULT_READ_AHEAD_KIB
    )]
    pub read_ahead_kib: u64,
}

/// Default kernel read-ahead of the mount: the kernel's own default for a
/// block device. 4 MiB (the default from b850dc1 to 2026-12-03) doubled the
/// bytes fetched by the emulated deployment's buffered boot reads and gave
/// a sequential reader nothing measurable, which mirrord's own read-ahead
/// serves (bench/RESULTS.md).
pub const DEFAULT_READ_AHEAD_KIB: u64 = 128;
/// Largest read-ahead mirrord accepts.
pub const MAX_READ_AHEAD_KIB: u64 = 65536;

impl Options {
    /// Parses the command line, fills what it leaves open from the
    /// configuration file, and installs the file's TLS identity.
    pub fn from_args() -> Result<Options> {
        use blobvirt_core::config::{pick, Config};
        use clap::{CommandFactory, FromArgMatches};
        let m = Options::command().get_matches();
        let mut o = Options::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
        let cfg = Config::locate(o.config.as_deref(), &[])?;
        let c = cfg.mirrord.clone();
        pick(&m, "pool", &mut o.pool, cfg.pool());
        pick(&m, "mount", &mut o.mount, c.mount);
        pick(&m, "cache", &mut o.cache, c.cache_dir);
        pick(&m, "control", &mut o.control, c.control.map(Some));
        pick(&m, "threads", &mut o.threads, c.threads);
        pick(&m, "metrics", &mut o.metrics, c.metrics.map(Some));
        pick(
            &m,
            "chunk_cache_mib",
            &mut o.chunk_cache_mib,
            c.chunk_cache_mib,
        );
        pick(
            &m,
            "read_ahead_kib",
            &mut o.read_ahead_kib,
            c.read_ahead_kib,
        );
        if o.read_ahead_kib > MAX_READ_AHEAD_KIB {
            anyhow::bail!(
                "mirrord read-ahead of {} KiB is too large; set read_ahead_kib in [mirrord] of {} (or --read-ahead-kib) to at most {MAX_READ_AHEAD_KIB}",
                o.read_ahead_kib,
                cfg.origin()
            );
        }
        if o.pool.is_empty() {
            anyhow::bail!("mirrord does not know where poold is; pass --pool URL or set pool in [cluster] of {}", cfg.origin());
        }
        blobvirt_core::tls::install_from(&cfg)?;
        Ok(o)
    }
}

pub use blobvirt_core::fsutil::absolute;

/// True when something is mounted at `p` (made absolute, not resolved).
pub fn is_mounted(p: &Path) -> bool {
    blobvirt_core::fsutil::is_mounted(&absolute(p))
}

/// Lazily unmounts whatever a previous (killed) mirrord left at `p`.
pub fn clean_stale_mount(p: &Path) -> Result<()> {
    for _ in 0..8 {
        if !is_mounted(p) {
            return Ok(());
        }
        tracing::warn!(mount = %p.display(), "found a stale mount (an earlier mirrord died); unmounting it lazily");
        nix::mount::umount2(&absolute(p), nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting the stale mount at {}", p.display()))?;
    }
    Ok(())
}

async fn connect(pool: &str) -> Result<Repo> {
    let mut last = None;
    for _ in 0..60 {
        match Repo::connect(pool).await {
            Ok(r) => return Ok(r),
            // A refused certificate does not heal by waiting.
            Err(e @ blobvirt_core::RepoError::Tls(_)) => {
                return Err(e).context("connecting to poold")
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.expect("tried")).context("connecting to poold")
}

/// Sets the kernel read-ahead of the file system mounted at `mount` (its
/// backing device's `read_ahead_kb`); returns the sysfs file written.
///
/// The FUSE handshake cannot raise it above the kernel's 128 KiB default
/// (the kernel takes the smaller of its offer and the reply), so it is set
/// here, once the mount exists.
pub fn set_read_ahead(mount: &Path, kib: u64) -> Result<PathBuf> {
    let st = nix::sys::stat::stat(mount)
        .with_context(|| format!("reading the device of {}", mount.display()))?;
    let (maj, min) = (
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev),
    );
    let p = PathBuf::from(format!("/sys/class/bdi/{maj}:{min}/read_ahead_kb"));
    std::fs::write(&p, format!("{kib}\n")).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

async fn background(vols: Arc<Volumes>) {
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tick += 1;
        if let Err(e) = vols.refresh().await {
            tracing::debug!("cannot refresh the volume list: {e}");
        }
        for m in vols.mirrors() {
            let mm = m.clone();
            let r = tokio::task::spawn_blocking(move || mm.flush_if_changed()).await;
            if let Ok(Err(e)) = r {
                tracing::warn!(volume = %m.name(), "cannot save the mirror state: {e}");
            }
            if tick.is_multiple_of(15) {
                vols.save_profile(&m).await;
            }
        }
    }
}

/// Runs mirrord until SIGTERM/SIGINT or until the file system is unmounted.
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mount = absolute(&opts.mount);
    let cache = absolute(&opts.cache);
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache directory {}", cache.display()))?;
    // Before touching the mount: a second mirrord on the same cache must
    // not unmount the live one or take its control socket.
    let _lock = blobvirt_core::fsutil::lock_dir(&cache, "mirrord", "--cache")?;
    clean_stale_mount(&mount)?;
    std::fs::create_dir_all(&mount)
        .with_context(|| format!("creating the mount point {}", mount.display()))?;
    let vols_dir = cache.join("vols");
    std::fs::create_dir_all(&vols_dir)
        .with_context(|| format!("creating the cache directory {}", vols_dir.display()))?;
    let repo = rt.block_on(connect(&opts.pool))?;
    let holder = format!("mirrord@{}:{}", hostname(), mount.display());
    let vols = Arc::new(Volumes::new(
        repo,
        vols_dir,
        holder,
        opts.chunk_cache_mib << 20,
    ));
    if let Err(e) = rt.block_on(vols.refresh()) {
        tracing::warn!("cannot list volumes yet: {e}");
    }
    let control = opts
        .control
        .clone()
        .unwrap_or_else(|| cache.join("control.sock"));
    let listener = {
        let _g = rt.enter();
        crate::control::bind(&control)
            .with_context(|| format!("binding the control socket {}", control.display()))?
    };
    let metrics_file = cache.join("mirrord.metrics");
    let _ = std::fs::remove_file(&metrics_file);
    let _metrics_server = match opts.metrics {
        Some(a) => {
            let mut reg = blobvirt_core::metrics::Registry::default();
            crate::metrics::register(&mut reg, vols.clone());
            let srv = rt.block_on(blobvirt_core::metrics::serve(
                a,
                "[mirrord] metrics",
                Arc::new(reg),
            ))?;
            blobvirt_core::fsutil::write_atomic(&metrics_file, srv.addr.to_string().as_bytes())
                .with_context(|| format!("writing {}", metrics_file.display()))?;
            Some(srv)
        }
        None => None,
    };
    rt.spawn(crate::control::serve(listener, vols.clone()));
    rt.spawn(background(vols.clone()));

    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("blobvirt".into()),
        MountOption::Subtype("blobvirt".into()),
        MountOption::RW,
        MountOption::NoDev,
        MountOption::NoSuid,
        // The kernel checks the modes and owners mirrord reports (see
        // fs/access.rs); allow_other (SessionACL::All) lets QEMU's user in.
        MountOption::DefaultPermissions,
    ];
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(opts.threads.max(1));
    cfg.clone_fd = true;
    let tracer = match &opts.trace_reads {
        Some(p) => Some(
            crate::trace::Tracer::open(&absolute(p))
                .with_context(|| format!("opening the read trace {}", p.display()))?,
        ),
        None => None,
    };
    let fs = Fs::new(vols.clone(), rt.handle().clone()).with_trace(tracer.clone());
    let mut session = fuser::Session::new(fs, &mount, &cfg)
        .with_context(|| format!("mounting the FUSE file system at {}", mount.display()))?;
    vols.set_notifier(session.notifier());
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let fuse_thread = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let r = session.run();
            let _ = done_tx.send(r);
        })
        .context("starting the FUSE session")?;
    // After the session runs: the stat of the mount root is a FUSE request.
    match set_read_ahead(&mount, opts.read_ahead_kib) {
        Ok(p) => tracing::debug!(
            kib = opts.read_ahead_kib,
            "kernel read-ahead set in {}",
            p.display()
        ),
        Err(e) => tracing::warn!(
            "keeping the kernel's read-ahead of {}: {e:#}",
            mount.display()
        ),
    }
    tracing::info!(mount = %mount.display(), control = %control.display(), pool = %opts.pool, "mirrord ready");
    blobvirt_core::fsutil::notify_ready();

    let ended_by_signal = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => true,
            r = done_rx => {
                if let Ok(Err(e)) = r {
                    tracing::error!("the FUSE session ended: {e}");
                }
                false
            }
        }
    });
    tracing::info!("shutting down");
    rt.block_on(vols.shutdown());
    if ended_by_signal {
        if let Err(e) = unmounter.unmount() {
            tracing::warn!("unmount failed ({e}); detaching the mount lazily");
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        // With files still open the lazily detached session lingers until
        // they close; do not wait for it beyond a moment.
        let t = std::time::Instant::now();
        while !fuse_thread.is_finished() && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(t) = &tracer {
        t.flush();
    }
    let _ = std::fs::remove_file(&control);
    let _ = std::fs::remove_file(&metrics_file);
    drop(_metrics_server);
    rt.shutdown_timeout(Duration::from_secs(2));
    tracing::info!("mirrord stopped");
    Ok(())
}
