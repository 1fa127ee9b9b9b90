//! `pool-define`, `pool-undefine`, `hook-install`: the libvirt `dir` pool
//! whose target is a mirrord mount, the hook's configuration entry for it
//! (`/etc/blobvirt/hook.json`), and the installed hook
//! (`/etc/libvirt/hooks/qemu.d/50-blobvirt`).
//!
//! With the pool, `virsh vol-create-as/vol-delete/vol-upload/vol-download`
//! are file operations on the mount, so they change the repository;
//! `virsh pool-refresh` rescans the mount (mirrord follows poold within
//! about 2 s).
//!
//! DAC: libvirt's default `dynamic_ownership` chowns a disk to QEMU's user
//! (`libvirt-qemu`) at start and back at stop. mirrord accepts chown/chmod
//! (owner and mode are kept per host) and mounts with `allow_other` and
//! `default_permissions` (files `root:root 0600` until chowned, see
//! `docs/mount.md`), so QEMU opens the volumes with the stock `qemu.conf`;
//! `remember_owner`'s xattrs are refused with ENOTSUP,
//! which libvirt tolerates. No `<seclabel>` is needed in domain XML.
//!
//! libvirt reads the hook directory when libvirtd starts and on SIGHUP; a
//! newly installed hook is activated by sending the local system libvirtd
//! SIGHUP (checked by `/proc/PID/exe`), or the user is told to.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use blobvirt_hook::config::{self, HookConfig, PoolConfig};
use blobvirt_hook::{HOOK_DIR, HOOK_NAME};
use virt::connect::Connect;
use virt::storage_pool::StoragePool;

use super::conn::{self, esc, msg, DEFAULT_URI};
use crate::cli::{HookInstall, PoolDefine, PoolUndefine};
use crate::cluster_file::load;
use crate::procs::find_binary;

/// Opens a libvirt connection, pointing at scripts/libvirt-setup.sh when
/// libvirtd is not reachable.
fn open(uri: &str) -> Result<Connect> {
    conn::open_hinted(uri, "start libvirtd (scripts/libvirt-setup.sh)")
}

/// Where the pool points and how the hook reaches mirrord.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolTarget {
    pub mount: PathBuf,
    pub control: PathBuf,
    pub pool_url: String,
}

/// What [`define`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defined {
    /// A new persistent pool was defined (false: it existed already).
    pub created: bool,
    /// The pool was started now (false: it was running).
    pub started: bool,
    /// Volumes libvirt sees after the refresh.
    pub volumes: usize,
}

/// The libvirt XML of a blobvirt pool.
pub fn pool_xml(name: &str, mount: &Path) -> String {
    format!(
        "<pool type='dir'>\n  <name>{}</name>\n  <target>\n    <path>{}</path>\n  </target>\n</pool>\n",
        esc(name),
        esc(&mount.display().to_string())
    )
}

/// (type, target path) of a pool's XML.
fn pool_shape(xml: &str) -> Option<(String, PathBuf)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    let path = root
        .children()
        .find(|n| n.has_tag_name("target"))?
        .children()
        .find(|n| n.has_tag_name("path"))?
        .text()?;
    Some((
        root.attribute("type").unwrap_or("").to_string(),
        PathBuf::from(path.trim()),
    ))
}

fn lookup(c: &Connect, name: &str) -> Option<StoragePool> {
    c.lookup_storage_pool_by_name(name).ok()
}

/// Defines (or checks), builds, starts, autostarts and refreshes the `dir`
/// pool `name` on `mount`. Idempotent; a pool of that name with another
/// target or type is an error.
pub fn define(c: &Connect, name: &str, mount: &Path) -> Result<Defined> {
    let mut out = Defined::default();
    let pool = match lookup(c, name) {
        Some(p) => {
            let xml = p
                .xml_desc(0)
                .map_err(|e| anyhow!("cannot read libvirt pool {name}: {}", msg(&e)))?;
            let (kind, path) = pool_shape(&xml).unwrap_or_default();
            if kind != "dir" || path != mount {
                bail!(
                    "libvirt pool {name} already exists as a {kind} pool on {}; pick another --name or remove it with blobvirt pool-undefine --name {name}",
                    path.display()
                );
            }
            if !p.is_persistent().unwrap_or(true) {
                c.define_storage_pool_xml(&pool_xml(name, mount), 0)
                    .map_err(|e| anyhow!("cannot make libvirt pool {name} persistent: {}; remove it with virsh pool-destroy {name} and run pool-define again", msg(&e)))?;
            }
            p
        }
        None => {
            out.created = true;
            c.define_storage_pool_xml(&pool_xml(name, mount), 0)
                .map_err(|e| anyhow!("libvirt refused to define pool {name} on {} ({}); check the name and that libvirtd can see the mount", mount.display(), msg(&e)))?
        }
    };
    if !pool.is_active().unwrap_or(false) {
        pool.build(0).map_err(|e| {
            anyhow!(
                "cannot build libvirt pool {name} on {} ({}); check that mirrord is mounted there",
                mount.display(),
                msg(&e)
            )
        })?;
        pool.create(0).map_err(|e| {
            anyhow!(
                "cannot start libvirt pool {name} on {} ({}); check that mirrord is mounted there",
                mount.display(),
                msg(&e)
            )
        })?;
        out.started = true;
    }
    pool.set_autostart(true).map_err(|e| {
        anyhow!(
            "cannot mark libvirt pool {name} autostart: {}; run as root",
            msg(&e)
        )
    })?;
    pool.refresh(0).map_err(|e| {
        anyhow!(
            "cannot refresh libvirt pool {name}: {}; check that mirrord is mounted at {}",
            msg(&e),
            mount.display()
        )
    })?;
    out.volumes = pool.num_of_volumes().unwrap_or(0) as usize;
    Ok(out)
}

/// Stops and removes pool `name`; false when libvirt has no such pool.
/// The volumes (the repository) are not touched.
pub fn undefine(c: &Connect, name: &str) -> Result<bool> {
    let Some(p) = lookup(c, name) else {
        return Ok(false);
    };
    if p.is_active().unwrap_or(false) {
        p.destroy().map_err(|e| {
            anyhow!(
                "cannot stop libvirt pool {name}: {}; stop it with virsh pool-destroy {name}",
                msg(&e)
            )
        })?;
    }
    if p.is_persistent().unwrap_or(false) {
        p.undefine()
            .map_err(|e| anyhow!("cannot undefine libvirt pool {name}: {}; remove it with virsh pool-undefine {name}", msg(&e)))?;
    }
    Ok(true)
}

/// The libvirt URI pool `p` was defined on.
fn uri_of(p: &PoolConfig) -> &str {
    if p.connect.is_empty() {
        DEFAULT_URI
    } else {
        &p.connect
    }
}

/// Removes the libvirt pools (and hook entries) that serve `mount`;
/// used by `cluster down`. Returns the pool names.
pub fn undefine_mount(mount: &Path) -> Result<Vec<String>> {
    let cfg = HookConfig::load(&config::path())?;
    let mut gone = Vec::new();
    for p in cfg.pools.iter().filter(|p| p.mount == mount) {
        let uri = uri_of(p);
        undefine(&open(uri)?, &p.name)?;
        HookConfig::remove(&config::path(), &p.name)?;
        gone.push(p.name.clone());
    }
    Ok(gone)
}

/// Refreshes the running libvirt pools served by the mirrord whose control
/// socket is `control`, so that a volume imported, cloned or deleted just
/// now is in `virsh vol-list` when the command returns. Returns the names
/// of the pools refreshed.
pub fn refresh_pools_of(control: &Path) -> Result<Vec<String>> {
    let cfg = HookConfig::load(&config::path())?;
    let mut done = Vec::new();
    for p in cfg.pools.iter().filter(|p| p.control == control) {
        let uri = uri_of(p);
        let c = open(uri)?;
        if let Some(pool) = lookup(&c, &p.name).filter(|x| x.is_active().unwrap_or(false)) {
            pool.refresh(0).map_err(|e| {
                anyhow!(
                    "cannot refresh libvirt pool {} ({}); refresh it with virsh pool-refresh {}",
                    p.name,
                    msg(&e),
                    p.name
                )
            })?;
            done.push(p.name.clone());
        }
    }
    Ok(done)
}

/// True when a mirrord FUSE file system (`fuse` or `fuse.blobvirt`, source
/// `blobvirt`) is mounted at `mount`.
pub fn is_blobvirt_mount(mount: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        let Some((pre, post)) = l.split_once(" - ") else {
            return false;
        };
        let mut post = post.split(' ');
        let (fstype, source) = (post.next().unwrap_or(""), post.next().unwrap_or(""));
        let point = pre.split(' ').nth(4).unwrap_or("").replace("\\040", " ");
        Path::new(&point) == mount
            && (fstype == "fuse.blobvirt" || (fstype == "fuse" && source == "blobvirt"))
    })
}

/// (pid, argv) of the running mirrord whose `--mount` is `mount`.
fn mirrord_of(mount: &Path) -> Option<(u32, Vec<String>)> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if argv.first().and_then(|a| Path::new(a).file_name()) != Some("mirrord".as_ref()) {
            continue;
        }
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if arg(&argv, "--mount").is_some_and(|m| cwd.join(m) == mount) {
            return Some((pid, argv));
        }
    }
    None
}

/// The value of `--flag V` or `--flag=V` in `argv`.
fn arg(argv: &[String], flag: &str) -> Option<String> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            argv.get(i + 1).cloned()
        } else {
            a.strip_prefix(flag)?.strip_prefix('=').map(str::to_string)
        }
    })
}

/// Works out the mount, control socket and pool URL of `pool-define`.
pub fn resolve(pool: Option<&str>, a: &PoolDefine) -> Result<PoolTarget> {
    let cluster = a.ctl.dir.as_deref().map(load).transpose()?;
    let rec = cluster.as_ref().and_then(|c| c.mirror.clone());
    let mount = match (&a.mount, &rec) {
        (Some(m), _) => m.clone(),
        (None, Some(r)) => r.mount.clone(),
        (None, None) => bail!("pool-define needs the mirrord mount; pass --mount DIR or the --dir of a cluster started with --mount"),
    };
    let mount = fs::canonicalize(&mount)
        .map_err(|e| anyhow!("cannot reach the mount {} ({e}); start mirrord there first, e.g. blobvirt cluster up --mount {}", mount.display(), mount.display()))?;
    if !is_blobvirt_mount(&mount) {
        bail!(
            "no mirrord is mounted at {}; start it first, e.g. blobvirt cluster up --mount {}",
            mount.display(),
            mount.display()
        );
    }
    let proc_args = mirrord_of(&mount).map(|(pid, argv)| {
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let control = arg(&argv, "--control")
            .map(|c| cwd.join(c))
            .or_else(|| arg(&argv, "--cache").map(|c| cwd.join(c).join("control.sock")));
        (control, arg(&argv, "--pool"))
    });
    let control = a
        .ctl
        .control
        .clone()
        .or_else(|| rec.as_ref().filter(|r| r.mount == mount).map(|r| r.control.clone()))
        .or_else(|| proc_args.as_ref().and_then(|p| p.0.clone()))
        .ok_or_else(|| anyhow!("cannot find the control socket of the mirrord mounted at {}; pass --control SOCKET", mount.display()))?;
    let pool_url = pool
        .map(str::to_string)
        .or_else(|| cluster.as_ref().map(|c| c.pool.clone()))
        .or_else(|| proc_args.and_then(|p| p.1))
        .unwrap_or_default();
    Ok(PoolTarget {
        mount,
        control,
        pool_url,
    })
}

/// What [`install_hook`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookState {
    pub path: PathBuf,
    /// The file was written (new or different).
    pub changed: bool,
    /// It did not exist before: libvirtd must reread its hooks.
    pub new: bool,
}

/// Copies `blobvirt-hook` (next to `blobvirt`, else on PATH) to
/// `/etc/libvirt/hooks/qemu.d/50-blobvirt` when it differs.
pub fn install_hook() -> Result<HookState> {
    let src = find_binary("blobvirt-hook")?;
    let dir = Path::new(HOOK_DIR);
    let dst = dir.join(HOOK_NAME);
    let data = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    let new = !dst.exists();
    if !new && fs::read(&dst).ok().as_deref() == Some(&data[..]) {
        return Ok(HookState {
            path: dst,
            changed: false,
            new,
        });
    }
    let fail = |e: std::io::Error| {
        anyhow!(
            "cannot install the libvirt hook {} ({e}); run as root",
            dst.display()
        )
    };
    fs::create_dir_all(dir).map_err(fail)?;
    let tmp = dir.join(format!(".{HOOK_NAME}.{}", std::process::id()));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, &dst)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(HookState {
        path: dst,
        changed: true,
        new,
    })
}

/// Written with libvirtd's pid after a SIGHUP (see scripts/libvirt-setup.sh).
const RELOAD_STAMP: &str = "/run/blobvirt/libvirtd-hook-reload";

/// Sends SIGHUP to the local system libvirtd (pid file checked against
/// `/proc/PID/exe`) so it rereads its hooks; false when none was found. A
/// libvirtd started with `-p /run/libvirt/libvirtd.pid` (one per mount
/// namespace, as the test bed's hosts run it) is found first.
pub fn reload_libvirtd() -> bool {
    for pidfile in [
        "/run/libvirt/libvirtd.pid",
        "/run/libvirtd.pid",
        "/var/run/libvirtd.pid",
    ] {
        let Some(pid) = fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.file_name() == Some("libvirtd".as_ref()) {
            let p = nix::unistd::Pid::from_raw(pid);
            let sent = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGHUP).is_ok();
            if sent {
                // Tells scripts/libvirt-setup.sh this libvirtd has reread its hooks.
                let _ = fs::create_dir_all("/run/blobvirt");
                let _ = fs::write(RELOAD_STAMP, format!("{pid}\n"));
            }
            return sent;
        }
    }
    false
}

fn is_local_system(uri: &str) -> bool {
    matches!(uri, "qemu:///system" | "qemu+unix:///system")
}

/// Installs the hook and activates it; prints what happened.
pub fn install_and_activate(uri: &str) -> Result<()> {
    let h = install_hook()?;
    if !h.changed {
        println!("hook {} is up to date", h.path.display());
    } else if !h.new {
        println!("updated hook {}", h.path.display());
    } else if is_local_system(uri) && reload_libvirtd() {
        // libvirtd handles SIGHUP asynchronously.
        std::thread::sleep(std::time::Duration::from_millis(500));
        println!(
            "installed hook {}; sent libvirtd SIGHUP so it runs it",
            h.path.display()
        );
    } else {
        println!(
            "installed hook {}; restart libvirtd (or send it SIGHUP) so it runs the hook",
            h.path.display()
        );
    }
    Ok(())
}

/// `blobvirt pool-define`.
pub async fn pool_define(pool: Option<&str>, a: PoolDefine) -> Result<()> {
    let t = resolve(pool, &a)?;
    define_all(&a.name, &t, &a.lv.connect, !a.no_hook)
}

/// pool-define's work once the target is known (also `cluster up --libvirt`).
pub fn define_all(name: &str, t: &PoolTarget, uri: &str, hook: bool) -> Result<()> {
    let c = open(uri)?;
    let d = define(&c, name, &t.mount)?;
    HookConfig::upsert(
        &config::path(),
        PoolConfig {
            name: name.into(),
            mount: t.mount.clone(),
            control: t.control.clone(),
            pool_url: t.pool_url.clone(),
            connect: uri.into(),
        },
    )?;
    println!(
        "libvirt pool {name} {} on {} ({} volumes), autostart",
        match (d.created, d.started) {
            (true, _) => "defined and started",
            (false, true) => "started",
            (false, false) => "already running",
        },
        t.mount.display(),
        d.volumes
    );
    println!(
        "hook configuration {} names mirrord at {}",
        config::path().display(),
        t.control.display()
    );
    if hook {
        install_and_activate(uri)?;
    }
    Ok(())
}

/// `cluster up --libvirt`: pool-define on the cluster's mount.
pub fn cluster_pool(c: &crate::cluster_file::ClusterFile, name: &str) -> Result<()> {
    let dir = c.dir.display();
    let m = c
        .mirror
        .as_ref()
        .ok_or_else(|| anyhow!("--libvirt needs --mount; the cluster in {dir} runs no mirrord"))?;
    let t = PoolTarget {
        mount: fs::canonicalize(&m.mount).unwrap_or_else(|_| m.mount.clone()),
        control: m.control.clone(),
        pool_url: c.pool.clone(),
    };
    define_all(name, &t, DEFAULT_URI, true).map_err(|e| {
        anyhow!("{e:#}; the cluster in {dir} runs without it: retry with blobvirt pool-define --name {name} --dir {dir}, or stop it with blobvirt cluster down --dir {dir}")
    })
}

/// `cluster down`: removes the pools on `mount` (before mirrord stops);
/// a failure is a warning, the cluster still goes down.
pub fn cluster_pool_down(mount: &Path) {
    let mount = fs::canonicalize(mount).unwrap_or_else(|_| mount.to_path_buf());
    match undefine_mount(&mount) {
        Ok(names) => {
            for n in names {
                println!("libvirt pool {n} removed");
            }
        }
        Err(e) => eprintln!(
            "warning: {e:#}; remove the libvirt pool on {} by hand with blobvirt pool-undefine",
            mount.display()
        ),
    }
}

/// `blobvirt pool-undefine`.
pub async fn pool_undefine(a: PoolUndefine) -> Result<()> {
    let c = open(&a.lv.connect)?;
    let was_pool = undefine(&c, &a.name)?;
    let was_cfg = HookConfig::remove(&config::path(), &a.name)?;
    if !was_pool && !was_cfg {
        bail!(
            "libvirt pool {} does not exist; list pools with virsh pool-list --all",
            a.name
        );
    }
    println!(
        "libvirt pool {} removed (the volumes stay in the repository)",
        a.name
    );
    Ok(())
}

/// `blobvirt hook-install`.
pub async fn hook_install(a: HookInstall) -> Result<()> {
    install_and_activate(&a.lv.connect)
}
