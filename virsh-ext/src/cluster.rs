//! `cluster up|down|restart`: a whole repository (poold and N chunkd nodes)
//! on this machine, recorded in `DIR/cluster.json`.
//!
//! Layout of DIR: `poold/` (metadata), `chunkd-<i>/` (chunks of node
//! `node-<i>`, i from 1), `logs/<name>.log`, `cluster.json`, and with
//! `--mount` the mirrord cache `mirror-cache/` (see `mirror.rs`); `tls/`
//! and `blobvirt.toml` are the cluster's CA and configuration
//! (`cluster_config.rs`).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use blobvirt_core::client::{pool_channel, pool_client};
use blobvirt_core::proto as pb;
use nix::sys::signal::Signal;

use crate::cli::{ClusterDown, ClusterRestart, ClusterUp};
use crate::cluster_config;
pub use crate::cluster_file::{cluster_file, load, ClusterFile, Proc};
use crate::cluster_file::{save, METRICS_ARGS};
use crate::output::Table;
use crate::procs::{self, find_binary};

const STARTUP: Duration = Duration::from_secs(30);

fn abs_dir(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| {
        anyhow!(
            "cannot create {}: {e}; pick a writable directory",
            dir.display()
        )
    })?;
    Ok(dir.canonicalize()?)
}

/// Refuses `cluster down` while the mirrord at `control` has volumes open
/// for writing or claimed by domains (a mirrord that does not answer has
/// nothing open that it could lose).
async fn refuse_open_writers(control: &Path, dir: &Path) -> Result<()> {
    let Ok(st) = mirrord_client::Client::new(control).status().await else {
        return Ok(());
    };
    let mut busy: Vec<String> = st
        .volumes
        .iter()
        .filter(|v| v.writers > 0)
        .map(|v| format!("{} ({} writers)", v.name, v.writers))
        .collect();
    busy.extend(
        st.claims
            .iter()
            .map(|c| format!("{} (claimed by {})", c.name, c.owner)),
    );
    if busy.is_empty() {
        return Ok(());
    }
    bail!(
        "the cluster in {} has volumes in use on its mount: {}; stop the domains and close the files first, or pass --force (changes are committed, domains lose their disks)",
        dir.display(),
        busy.join(", ")
    )
}

/// `--replicas`, else 2 (1 on a one-node cluster).
fn replicas_of(a: &ClusterUp) -> u32 {
    a.replicas.unwrap_or(if a.nodes == 1 { 1 } else { 2 })
}

pub async fn up(a: ClusterUp) -> Result<()> {
    if a.nodes == 0 {
        bail!("a cluster needs at least one chunkd node; pass --nodes 1 or more");
    }
    let replicas = replicas_of(&a);
    if replicas == 0 || replicas as usize > a.nodes {
        bail!(
            "--replicas {replicas} does not fit a cluster of {} nodes; pick from 1 to {}",
            a.nodes,
            a.nodes
        );
    }
    let dir = abs_dir(&a.dir)?;
    if let Ok(old) = load(&dir) {
        if old.processes.iter().any(Proc::running) {
            bail!(
                "a cluster already runs in {d}; stop it with blobvirt cluster down --dir {d}",
                d = dir.display()
            );
        }
    }
    // The address poold had (DIR/blobvirt.toml outlives cluster down), so
    // an exported BLOBVIRT_POOL stays right across cluster down and up.
    let old_poold = cluster_config::old_pool_addr(&dir);
    let poold_exe = find_binary("poold")?;
    let chunkd_exe = find_binary("chunkd")?;
    let config = cluster_config::prepare(&dir, !a.no_tls)?;
    let logs = dir.join("logs");
    fs::create_dir_all(&logs)?;
    let mut children: Vec<Child> = Vec::new();
    let exes = (poold_exe.as_path(), chunkd_exe.as_path());
    let res = start_all(&a, &dir, &config, &logs, exes, old_poold, &mut children).await;
    let c = match res {
        Ok(c) => c,
        Err(e) => {
            procs::stop_children(&mut children);
            return Err(e);
        }
    };
    save(&c)?;
    let mut t = Table::new(&["NAME", "PID", "ADDR", "METRICS", "LOG"]);
    for p in &c.processes {
        t.row(vec![
            p.name.clone(),
            p.pid.to_string(),
            p.addr.clone(),
            p.metrics.clone().unwrap_or_else(|| "-".into()),
            p.log.display().to_string(),
        ]);
    }
    t.print();
    if let Some(m) = &c.mirror {
        println!("mounted every volume under {}", m.mount.display());
        println!("BLOBVIRT_CONTROL={}", m.control.display());
    }
    if a.libvirt {
        crate::libvirt::pool::cluster_pool(&c, &a.libvirt_pool)?;
    }
    println!("BLOBVIRT_POOL={}", c.pool);
    Ok(())
}

async fn start_all(
    a: &ClusterUp,
    dir: &Path,
    config: &Path,
    logs: &Path,
    (poold_exe, chunkd_exe): (&Path, &Path),
    old_poold: Option<String>,
    children: &mut Vec<Child>,
) -> Result<ClusterFile> {
    let mirrord_exe = a
        .mount
        .as_ref()
        .map(|_| find_binary("mirrord"))
        .transpose()?;
    if let Some(m) = &a.mount {
        crate::mirror::check_mount(m)?;
    }
    let deadline = Instant::now() + STARTUP;
    let pdir = dir.join("poold");
    let cfg_args = ["--config".to_string(), config.display().to_string()];
    let mut args = vec![
        cfg_args[0].clone(),
        cfg_args[1].clone(),
        "--dir".to_string(),
        pdir.display().to_string(),
        "--engine".into(),
        a.engine.as_str().into(),
        "--replicas".into(),
        replicas_of(a).to_string(),
        METRICS_ARGS[0].into(),
        METRICS_ARGS[1].into(),
    ];
    if let Some(g) = a.gc_grace_secs {
        args.extend(["--gc-grace-secs".to_string(), g.to_string()]);
    }
    match (a.engine, &a.etcd_endpoints) {
        (crate::cli::Engine::Etcd, Some(eps)) => args.extend([
            "--etcd-endpoints".to_string(),
            eps.clone(),
            "--etcd-prefix".into(),
            a.etcd_prefix.clone(),
        ]),
        (crate::cli::Engine::Etcd, None) => bail!(
            "cluster up --engine etcd needs the members' addresses; give --etcd-endpoints URL[,URL…]"
        ),
        (_, Some(_)) => bail!(
            "--etcd-endpoints is for --engine etcd; add --engine etcd or drop --etcd-endpoints"
        ),
        _ => {}
    }
    let mut poold = Proc {
        name: "poold".into(),
        binary: "poold".into(),
        pid: 0,
        addr: String::new(),
        dir: pdir,
        log: logs.join("poold.log"),
        exe: poold_exe.to_path_buf(),
        args,
        node_id: None,
        metrics: None,
    };
    let first = match old_poold {
        Some(addr) => poold.start(&addr, deadline).ok(),
        None => None,
    };
    match first {
        Some(child) => children.push(child),
        // A new cluster, or the old port is taken now: any free port.
        None => children.push(poold.start("127.0.0.1:0", deadline)?),
    }
    let tls = blobvirt_core::tls::installed().is_some();
    let pool = format!("{}://{}", if tls { "https" } else { "http" }, poold.addr);
    cluster_config::write(dir, tls, Some(&pool))?;
    let mut procs = vec![poold];
    for i in 1..=a.nodes {
        let cdir = dir.join(format!("chunkd-{i}"));
        let id = format!("node-{i}");
        let mut p = Proc {
            name: format!("chunkd-{i}"),
            binary: "chunkd".into(),
            pid: 0,
            addr: String::new(),
            args: vec![
                cfg_args[0].clone(),
                cfg_args[1].clone(),
                "--dir".into(),
                cdir.display().to_string(),
                "--pool".into(),
                pool.clone(),
                "--id".into(),
                id.clone(),
                METRICS_ARGS[0].into(),
                METRICS_ARGS[1].into(),
            ],
            dir: cdir,
            log: logs.join(format!("chunkd-{i}.log")),
            exe: chunkd_exe.to_path_buf(),
            node_id: Some(id),
            metrics: None,
        };
        children.push(p.start("127.0.0.1:0", deadline)?);
        procs.push(p);
    }
    let mut c = ClusterFile {
        pool,
        dir: dir.to_path_buf(),
        replicas: replicas_of(a),
        processes: procs,
        mirror: None,
    };
    wait_registered(&c, deadline).await?;
    if let (Some(mount), Some(exe)) = (&a.mount, &mirrord_exe) {
        let cache = a.cache.clone().unwrap_or_else(|| dir.join("mirror-cache"));
        let (mut p, rec) = crate::mirror::plan(mount, &cache, &c.pool, exe, logs)?;
        p.args.splice(0..0, cfg_args.iter().cloned());
        children.push(start_proc(&mut p, "", Instant::now() + STARTUP)?);
        c.processes.push(p);
        c.mirror = Some(rec);
    }
    Ok(c)
}

/// Waits until poold reports every chunkd of `c` alive.
async fn wait_registered(c: &ClusterFile, deadline: Instant) -> Result<()> {
    let mut client = pool_client(
        pool_channel(&c.pool).map_err(|e| anyhow!("bad pool address {}: {e}", c.pool))?,
    );
    let poold_log = c
        .processes
        .iter()
        .find(|p| p.binary == "poold")
        .map(|p| p.log.clone());
    loop {
        let alive: HashSet<String> = match client.nodes(pb::NodesRequest {}).await {
            Ok(r) => r
                .into_inner()
                .nodes
                .into_iter()
                .filter(|n| n.alive)
                .map(|n| n.id)
                .collect(),
            Err(_) => HashSet::new(),
        };
        let missing = c
            .processes
            .iter()
            .find(|p| p.node_id.as_ref().is_some_and(|id| !alive.contains(id)));
        let Some(m) = missing else {
            return Ok(());
        };
        if Instant::now() > deadline {
            bail!(
                "chunkd {} did not register with poold within 30 s; read {} (and {}) to see why",
                m.node_id.as_deref().unwrap_or("?"),
                m.log.display(),
                poold_log
                    .as_deref()
                    .unwrap_or(Path::new("poold.log"))
                    .display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `sig` to the processes among `ps` that are ours and run, then
/// waits up to `wait` for them to be gone; returns the ones still there.
fn signal_and_wait(ps: &[Proc], sig: Signal, wait: Duration) -> Vec<&Proc> {
    let signalled: Vec<&Proc> = ps.iter().filter(|p| p.running()).collect();
    for p in &signalled {
        procs::signal(p.pid, sig);
    }
    let deadline = Instant::now() + wait;
    loop {
        // Checked by pid alone: an exiting process has no command line.
        let left: Vec<&Proc> = signalled
            .iter()
            .copied()
            .filter(|p| procs::is_running(p.pid))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to `ps`, `wait`, then SIGKILL; returns how many needed SIGKILL.
fn stop_all(ps: &[Proc], wait: Duration) -> Result<usize> {
    let left = signal_and_wait(ps, Signal::SIGTERM, wait);
    let killed = left.len();
    if killed > 0 {
        let names: Vec<Proc> = left.into_iter().cloned().collect();
        let still = signal_and_wait(&names, Signal::SIGKILL, Duration::from_secs(5));
        if let Some(p) = still.first() {
            bail!(
                "{} (pid {}) did not stop even after SIGKILL; check it with ps and stop it by hand",
                p.name,
                p.pid
            );
        }
    }
    Ok(killed)
}

pub async fn down(a: ClusterDown) -> Result<()> {
    let dir = a.dir.canonicalize().map_err(|_| {
        anyhow!("directory {} does not exist; give the --dir of a cluster started with blobvirt cluster up", a.dir.display())
    })?;
    let c = load(&dir)?;
    cluster_config::use_it(&dir)?;
    let running = c.processes.iter().filter(|p| p.running()).count();
    if let Some(m) = c.mirror.as_ref().filter(|_| !a.force) {
        refuse_open_writers(&m.control, &dir).await?;
    }
    if let Some(m) = &c.mirror {
        crate::libvirt::pool::cluster_pool_down(&m.mount);
    }
    // mirrord first: it commits (per policy) and unmounts while the pool runs.
    let (mirrors, rest): (Vec<Proc>, Vec<Proc>) = c
        .processes
        .iter()
        .cloned()
        .partition(|p| p.binary == "mirrord");
    let mut killed = stop_all(&mirrors, crate::mirror::STOP_WAIT)?;
    let unmounted = match &c.mirror {
        Some(m) => crate::mirror::unmount_stale(&m.mount),
        None => Ok(()),
    };
    killed += stop_all(&rest, Duration::from_secs(10))?;
    unmounted?;
    fs::remove_file(cluster_file(&dir))
        .with_context(|| format!("remove {}", cluster_file(&dir).display()))?;
    if a.purge {
        for p in &c.processes {
            let _ = fs::remove_dir_all(&p.dir);
        }
        let _ = fs::remove_dir_all(dir.join("logs"));
    }
    println!(
        "stopped {running} processes of the cluster in {}{}{}",
        dir.display(),
        if killed > 0 {
            format!(" ({killed} needed SIGKILL)")
        } else {
            String::new()
        },
        if a.purge { "; data removed" } else { "" }
    );
    Ok(())
}

pub async fn restart(a: ClusterRestart) -> Result<()> {
    let dir = a.dir.canonicalize().map_err(|_| {
        anyhow!("directory {} does not exist; give the --dir of a cluster started with blobvirt cluster up", a.dir.display())
    })?;
    let mut c = load(&dir)?;
    cluster_config::use_it(&dir)?;
    for n in &a.names {
        let Some(p) = c.processes.iter().find(|p| &p.name == n) else {
            bail!(
                "cluster in {} has no process named {n}; see {}",
                dir.display(),
                cluster_file(&dir).display()
            );
        };
        if p.running() {
            bail!(
                "{n} still runs (pid {}); stop it first or leave it out",
                p.pid
            );
        }
    }
    let deadline = Instant::now() + STARTUP;
    let mut restarted = Vec::new();
    for i in 0..c.processes.len() {
        let p = &c.processes[i];
        let wanted = if a.names.is_empty() {
            !p.running()
        } else {
            a.names.contains(&p.name)
        };
        if !wanted {
            continue;
        }
        let p = &mut c.processes[i];
        // A killed process may still be tearing down its threads and sockets.
        let gone = Instant::now() + Duration::from_secs(5);
        while procs::is_running(p.pid) && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        let listen = p.addr.clone();
        // The child is not waited for: it keeps running after we exit. One
        // retry covers an address that is still briefly in use.
        let _child = match start_proc(p, &listen, deadline) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_secs(1));
                start_proc(p, &listen, deadline)?
            }
        };
        restarted.push(format!("{} (pid {}, {})", p.name, p.pid, p.addr));
        save(&c)?;
    }
    wait_registered(&c, deadline).await?;
    if restarted.is_empty() {
        println!(
            "every process of the cluster in {} already runs",
            dir.display()
        );
    } else {
        println!("restarted {}", restarted.join(", "));
    }
    println!("BLOBVIRT_POOL={}", c.pool);
    Ok(())
}

/// Starts a recorded process: mirrord waits for its mount, the daemons for
/// their address file on `listen`.
fn start_proc(p: &mut Proc, listen: &str, deadline: Instant) -> Result<Child> {
    if p.binary == "mirrord" {
        crate::mirror::start(p, deadline)
    } else {
        p.start(listen, deadline)
    }
}
