//! mirrord from the command line: the cluster's mirrord (`cluster up
//! --mount` starts it and waits for its mount, `cluster down` stops it and
//! lazily unmounts what a killed one left), and the commands that talk to
//! its control socket: `mirror-status`, `commit`, `clone`, `attach`,
//! `detach`.
//!
//! The socket is `--control`, else `BLOBVIRT_CONTROL`, else the one recorded
//! in the cluster.json of `--dir`/`BLOBVIRT_CLUSTER_DIR`, else `[mirrord]
//! control` of the configuration file, else [`DEFAULT_CONTROL`].

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use blobvirt_core::fsutil::absolute;
use blobvirt_core::parse_spec;
use mirrord_client::VolumeStatus;
use mirrord_client::{Client, ControlError};
use serde::Serialize;

use crate::cli::{
    ControlArgs, MirrorAttach, MirrorClone, MirrorCommit, MirrorDetach, MirrorStatus,
};
use crate::cluster_file::{load, ClusterFile, MirrorRec, Proc};
use crate::output::{human_size, print_json, Table};
use crate::procs::{self, spawn};

/// The control socket of a mirrord started with the default cache directory.
pub const DEFAULT_CONTROL: &str = "/var/lib/blobvirt/cache/control.sock";

/// How long `cluster down` lets mirrord commit and unmount before SIGKILL.
pub const STOP_WAIT: Duration = Duration::from_secs(60);

/// What mirrord logs once its file system is mounted.
const READY: &str = "mirrord ready";

/// True when something is mounted at `p` (per /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    blobvirt_core::fsutil::is_mounted(&absolute(p))
}

/// Lazily unmounts `mount` (`umount2(MNT_DETACH)`) while something is
/// mounted there: what a killed mirrord left behind.
pub fn unmount_stale(mount: &Path) -> Result<()> {
    let mount = absolute(mount);
    for _ in 0..8 {
        if !is_mounted(&mount) {
            return Ok(());
        }
        nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            anyhow!(
                "cannot unmount {m} ({e}); unmount it by hand with umount -l {m}",
                m = mount.display()
            )
        })?;
    }
    Ok(())
}

/// Refuses a mount point where a live file system is mounted; lazily
/// unmounts a stale one (left by a killed mirrord).
pub fn check_mount(mount: &Path) -> Result<()> {
    let m = absolute(mount);
    if is_mounted(&m) {
        if fs::metadata(&m).is_ok() {
            bail!(
                "{} is already a live mount point; stop what runs there (blobvirt cluster down, or umount) or pick another --mount",
                m.display()
            );
        }
        unmount_stale(&m)?;
    }
    Ok(())
}

/// The mirrord process and mount record of `cluster up --mount`. The mount
/// point and cache directory are created and made absolute (see
/// [`check_mount`]).
pub fn plan(
    mount: &Path,
    cache: &Path,
    pool: &str,
    exe: &Path,
    logs: &Path,
) -> Result<(Proc, MirrorRec)> {
    let m = absolute(mount);
    check_mount(&m)?;
    let mk = |d: &Path, what: &str| -> Result<PathBuf> {
        fs::create_dir_all(d)
            .and_then(|_| d.canonicalize())
            .map_err(|e| {
                anyhow!(
                    "cannot create the {what} {} ({e}); pick a writable directory",
                    d.display()
                )
            })
    };
    let mount = mk(&m, "mount point")?;
    let cache = mk(cache, "mirror cache directory")?;
    let control = cache.join("control.sock");
    // sockaddr_un holds 108 bytes with the final NUL.
    if control.as_os_str().len() > 107 {
        bail!(
            "the control socket path {} is longer than 107 bytes; pass a shorter --cache",
            control.display()
        );
    }
    let args = vec![
        "--pool".to_string(),
        pool.to_string(),
        "--mount".into(),
        mount.display().to_string(),
        "--cache".into(),
        cache.display().to_string(),
        "--control".into(),
        control.display().to_string(),
        crate::cluster_file::METRICS_ARGS[0].into(),
        crate::cluster_file::METRICS_ARGS[1].into(),
    ];
    let p = Proc {
        name: "mirrord".into(),
        binary: "mirrord".into(),
        pid: 0,
        addr: control.display().to_string(),
        dir: cache.clone(),
        log: logs.join("mirrord.log"),
        exe: exe.to_path_buf(),
        args,
        node_id: None,
        metrics: None,
    };
    Ok((
        p,
        MirrorRec {
            mount,
            cache,
            control,
        },
    ))
}

/// Starts the recorded mirrord `p` and waits (until `deadline`) for its
/// mount: "mirrord ready" in its log and the mount point in mountinfo.
pub fn start(p: &mut Proc, deadline: Instant) -> Result<Child> {
    let mount = p
        .args
        .iter()
        .position(|a| a == "--mount")
        .and_then(|i| p.args.get(i + 1))
        .map(PathBuf::from)
        .ok_or_else(|| {
            anyhow!(
                "the mirrord record in cluster.json has no --mount; start the cluster again with blobvirt cluster up --mount DIR"
            )
        })?;
    let from = fs::metadata(&p.log).map(|m| m.len()).unwrap_or(0);
    let mut child = spawn(&p.exe, &p.args, &p.log)?;
    p.pid = child.id();
    let res = loop {
        if is_mounted(&mount) && log_since(&p.log, from).contains(READY) {
            break Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            break Err(anyhow!(
                "mirrord exited during startup ({st}); read {} to see why",
                p.log.display()
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow!(
                "mirrord did not mount {} within 30 s; read {} to see why",
                mount.display(),
                p.log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    match res {
        Ok(()) => {
            p.read_metrics();
            Ok(child)
        }
        Err(e) => {
            procs::stop_children(std::slice::from_mut(&mut child));
            let _ = unmount_stale(&mount);
            Err(e)
        }
    }
}

fn log_since(log: &Path, from: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(log) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let mut b = Vec::new();
            let _ = f.read_to_end(&mut b);
            s = String::from_utf8_lossy(&b).into_owned();
        }
    }
    s
}

/// The control socket chosen by `a` (see the module doc).
pub fn control_path(a: &ControlArgs) -> Result<PathBuf> {
    if let Some(p) = &a.control {
        return Ok(p.clone());
    }
    if let Some(d) = &a.dir {
        return load(d)?.mirror.map(|m| m.control).ok_or_else(|| {
            anyhow!(
                "the cluster in {} runs no mirrord; start it with blobvirt cluster up --mount DIR or pass --control",
                d.display()
            )
        });
    }
    if let Some(p) = crate::config().and_then(|c| c.mirrord.control.clone()) {
        return Ok(p);
    }
    Ok(PathBuf::from(DEFAULT_CONTROL))
}

/// A control-client error as one user sentence.
pub fn control_error(path: &Path, e: ControlError) -> anyhow::Error {
    match e {
        // The socket is root:blobvirt 0660; the sentence says so.
        e @ ControlError::PermissionDenied { .. } => anyhow!(e),
        ControlError::Connect { .. } => anyhow!(
            "mirrord is not running at {}; if blobvirt cluster up started it, start it again with blobvirt cluster restart --dir DIR mirrord, else start mirrord or pass --control",
            path.display()
        ),
        ControlError::Protocol { msg, .. } => anyhow!(
            "mirrord at {} sent no usable reply ({msg}); read mirrord's log and check that mirrord and blobvirt come from the same build",
            path.display()
        ),
        // mirrord's refusals are already user sentences.
        ControlError::Refused(s) => anyhow!(s),
    }
}

/// After a command changed volumes `names` in poold: tells this host's
/// mirrord (when one runs at the socket `a` selects) to show the change in
/// its mount now, and refreshes the libvirt pools on that mount. A host
/// without a mirrord is left alone; a failure is a warning, since the
/// change itself is done.
pub async fn announce(a: &ControlArgs, names: &[String]) {
    let Ok(p) = control_path(a) else {
        return;
    };
    if !p.exists() {
        return;
    }
    if let Err(e) = Client::new(&p).refresh(names).await {
        eprintln!(
            "warning: {}; the mount shows the change within a few seconds",
            control_error(&p, e)
        );
        return;
    }
    let pp = p.clone();
    match tokio::task::spawn_blocking(move || crate::libvirt::pool::refresh_pools_of(&pp)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("warning: {e:#}"),
        Err(e) => eprintln!("warning: refreshing the libvirt pools failed: {e}"),
    }
}

/// Refuses to delete `name` (or its version `version`, 0: the whole
/// volume) while this host's mirrord has it open. Other hosts' writers are
/// refused by poold through their lease.
pub async fn check_not_open(a: &ControlArgs, name: &str, version: u64) -> Result<()> {
    let Ok(p) = control_path(a) else {
        return Ok(());
    };
    let st = match Client::new(&p).status().await {
        Ok(st) => st,
        // A user kept out of the socket cannot tell whether the volume is
        // open here: refuse rather than delete it under a running domain.
        Err(e @ ControlError::PermissionDenied { .. }) => return Err(control_error(&p, e)),
        Err(_) => return Ok(()),
    };
    let Some(v) = st.volumes.iter().find(|v| v.name == name) else {
        return Ok(());
    };
    if v.open_handles > 0 && (version == 0 || version == v.version) {
        let what = if version == 0 {
            format!("volume {name}")
        } else {
            format!("version {name}@{version}")
        };
        bail!(
            "{what} cannot be deleted: it is open on this host ({} open files, mirrord at {}); close it (stop the domain) first, or pass --force to delete it and lose its uncommitted changes",
            v.open_handles,
            p.display()
        );
    }
    Ok(())
}

fn client(a: &ControlArgs) -> Result<(Client, PathBuf)> {
    let p = control_path(a)?;
    Ok((Client::new(&p), p))
}

pub async fn status(a: MirrorStatus) -> Result<()> {
    let (c, p) = client(&a.ctl)?;
    let vols = c.status().await.map_err(|e| control_error(&p, e))?.volumes;
    if a.json {
        return print_json(&vols);
    }
    if vols.is_empty() {
        println!("no volume is attached to mirrord at {}", p.display());
        return Ok(());
    }
    let mut t = Table::new(&[
        "NAME",
        "VERSION",
        "SIZE",
        "LOCAL",
        "DIRTY",
        "FETCHED",
        "COMMITTED",
        "FETCHES",
        "PREFETCHED",
    ]);
    for v in &vols {
        t.row(vec![
            v.name.clone(),
            v.version.to_string(),
            human_size(v.size),
            format!("{}/{}", v.chunks_present, v.chunks),
            v.chunks_dirty.to_string(),
            human_size(v.bytes_fetched),
            human_size(v.bytes_committed),
            v.fetches.to_string(),
            v.prefetched.to_string(),
        ]);
    }
    t.print();
    for v in &vols {
        if let Some(e) = &v.last_error {
            println!(
                "{}: the last commit failed ({} failures so far): {e}",
                v.name, v.commit_failures
            );
        }
    }
    Ok(())
}

pub async fn commit(a: MirrorCommit) -> Result<()> {
    let (c, p) = client(&a.ctl)?;
    let out = c
        .commit(&a.name, !a.no_wait)
        .await
        .map_err(|e| control_error(&p, e))?;
    let name = &a.name;
    if a.no_wait {
        println!(
            "{name}: phase 1 done ({} chunks frozen on top of {name}@{}, {} µs); the new version is published in the background, see blobvirt mirror-status",
            out.chunks_changed, out.version, out.freeze_us
        );
    } else {
        println!("{name}@{}", out.version);
        if !out.published {
            eprintln!(
                "nothing to commit: {name} has no local changes, {name}@{} is its current version",
                out.version
            );
        }
    }
    Ok(())
}

pub async fn clone(a: MirrorClone) -> Result<()> {
    let (c, p) = client(&a.ctl)?;
    let r = c
        .clone_volume(&a.name, &a.new)
        .await
        .map_err(|e| control_error(&p, e))?;
    println!("{}@{}", r.name, r.version);
    Ok(())
}

pub async fn attach(a: MirrorAttach) -> Result<()> {
    let (name, version) = parse_spec(&a.spec).map_err(|e| anyhow!(e))?;
    let (c, p) = client(&a.ctl)?;
    let r = c
        .attach(&name, (version > 0).then_some(version))
        .await
        .map_err(|e| control_error(&p, e))?;
    println!(
        "attached {}@{} ({}, {} chunks)",
        r.name,
        r.version,
        human_size(r.size),
        human_size(u64::from(r.chunk_size))
    );
    Ok(())
}

pub async fn detach(a: MirrorDetach) -> Result<()> {
    let (c, p) = client(&a.ctl)?;
    c.detach(&a.name, a.discard)
        .await
        .map_err(|e| control_error(&p, e))?;
    if a.discard {
        println!("detached {}; its local changes were discarded", a.name);
    } else {
        println!("detached {}", a.name);
    }
    Ok(())
}

/// The mirrord part of `cluster status`.
#[derive(Debug, Serialize)]
pub struct MountStatus {
    pub mount: PathBuf,
    pub control: PathBuf,
    pub pid: u32,
    /// The recorded mirrord process runs.
    pub running: bool,
    /// Something is mounted at `mount`.
    pub mounted: bool,
    /// Why the volumes are unknown, when mirrord did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub volumes: Vec<VolumeStatus>,
}

/// Asks the cluster's mirrord (if it has one) for its attached volumes.
pub async fn mount_status(c: &ClusterFile) -> Option<MountStatus> {
    let m = c.mirror.as_ref()?;
    let p = c.processes.iter().find(|p| p.binary == "mirrord");
    let client = Client::new(&m.control);
    let (volumes, error) = match tokio::time::timeout(Duration::from_secs(5), client.status()).await
    {
        Ok(Ok(r)) => (r.volumes, None),
        Ok(Err(e)) => (Vec::new(), Some(control_error(&m.control, e).to_string())),
        Err(_) => (
            Vec::new(),
            Some(format!(
                "mirrord at {} did not answer within 5 s",
                m.control.display()
            )),
        ),
    };
    Some(MountStatus {
        mount: m.mount.clone(),
        control: m.control.clone(),
        pid: p.map_or(0, |p| p.pid),
        running: p.is_some_and(Proc::running),
        mounted: is_mounted(&m.mount),
        error,
        volumes,
    })
}

/// Prints `s` for `cluster status`: the mount, then a line per volume.
pub fn print_mount_status(s: &MountStatus) {
    println!(
        "mount {} ({}; mirrord pid {} {}, control {})",
        s.mount.display(),
        if s.mounted { "mounted" } else { "not mounted" },
        s.pid,
        if s.running { "runs" } else { "is not running" },
        s.control.display()
    );
    if let Some(e) = &s.error {
        println!("  {e}");
    } else if s.volumes.is_empty() {
        println!("  no volume attached");
    }
    for v in &s.volumes {
        println!(
            "  {}@{}: {}/{} chunks local, {} dirty, {} fetched, {} committed",
            v.name,
            v.version,
            v.chunks_present,
            v.chunks,
            v.chunks_dirty,
            human_size(v.bytes_fetched),
            human_size(v.bytes_committed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_file::save;

    fn args(control: Option<&str>, dir: Option<&Path>) -> ControlArgs {
        ControlArgs {
            control: control.map(PathBuf::from),
            dir: dir.map(Path::to_path_buf),
        }
    }

    #[test]
    fn control_socket_lookup() {
        let t = tempfile::tempdir().unwrap();
        let mut c = ClusterFile {
            pool: "http://127.0.0.1:1".into(),
            dir: t.path().to_path_buf(),
            replicas: 1,
            processes: vec![],
            mirror: None,
        };
        save(&c).unwrap();
        let e = control_path(&args(None, Some(t.path())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("runs no mirrord; start it with blobvirt cluster up --mount DIR"));
        assert_eq!(
            control_path(&args(Some("/x.sock"), Some(t.path()))).unwrap(),
            Path::new("/x.sock")
        );
        c.mirror = Some(MirrorRec {
            mount: "/m".into(),
            cache: "/c".into(),
            control: "/c/control.sock".into(),
        });
        save(&c).unwrap();
        assert_eq!(
            control_path(&args(None, Some(t.path()))).unwrap(),
            Path::new("/c/control.sock")
        );
        assert_eq!(
            control_path(&args(None, None)).unwrap(),
            Path::new(DEFAULT_CONTROL)
        );
        let missing = t.path().join("none");
        let e = control_path(&args(None, Some(&missing))).unwrap_err();
        assert!(e.to_string().contains("no cluster is recorded"), "{e}");
    }

    #[test]
    fn errors_are_sentences() {
        let p = Path::new("/run/x.sock");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = control_error(
            p,
            ControlError::Connect {
                path: p.display().to_string(),
                source: refused,
            },
        );
        assert_eq!(
            e.to_string(),
            "mirrord is not running at /run/x.sock; if blobvirt cluster up started it, start it again with blobvirt cluster restart --dir DIR mirrord, else start mirrord or pass --control"
        );
        let e = control_error(
            p,
            ControlError::PermissionDenied {
                path: p.display().to_string(),
            },
        );
        assert_eq!(
            e.to_string(),
            "permission denied on mirrord's control socket /run/x.sock; run as root or as a member of group blobvirt"
        );
        let e = control_error(
            p,
            ControlError::Refused("volume a does not exist; x".into()),
        );
        assert_eq!(e.to_string(), "volume a does not exist; x");
    }
}
