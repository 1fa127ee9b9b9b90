//! The daemons started directly as processes, each stopped by its guard:
//! [`Poold`] and [`Chunkd`] (SIGKILL and reap), a [`Cluster`] of them with
//! a [`Repo`] client on a runtime of its own, and [`Mirrord`] with its
//! FUSE mount (SIGTERM, then SIGKILL; then the mount is lazily unmounted
//! whatever is left). A daemon that logs to a file logs beside its data
//! directory: `DIR.log` for `DIR`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use blobvirt_core::client::{channel, pool_client};
use blobvirt_core::proto::pool_client::PoolClient;
use blobvirt_core::transfer::{export_file, import_file, ImportOpts};
use blobvirt_core::Repo;
use mirrord_client::{Client, VolumeStatus};

use super::bins::bin;
use super::data::chunk_files;
use super::tempdir;
use crate::proc::{kill, lazy_umount, read_nonempty, terminate, wait_exit, wait_until};

/// How long a daemon may take to write its address file or get ready.
const READY: Duration = Duration::from_secs(20);

/// `bin(name) args` with stdin closed, stdout discarded and stderr to
/// `log` (appended to), or to the test's own stderr without one.
fn spawn<S: AsRef<OsStr>>(
    name: &str,
    args: &[S],
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> Child {
    let stderr = match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display())),
        ),
        None => Stdio::inherit(),
    };
    Command::new(bin(name))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(if log.is_some() {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// The address a daemon writes to `file` once it listens; panics when it
/// exits or takes longer than 20 s.
fn wait_addr(file: &Path, child: &mut Child, what: &str) -> String {
    let mut addr = None;
    let mut exited = None;
    wait_until(READY, || {
        addr = read_nonempty(file);
        if addr.is_none() {
            exited = child.try_wait().ok().flatten();
        }
        addr.is_some() || exited.is_some()
    });
    if let Some(st) = exited {
        panic!("{what} exited early: {st}");
    }
    addr.unwrap_or_else(|| panic!("{what} did not write {}", file.display()))
}

/// A running poold; SIGKILLed and reaped on drop.
pub struct Poold {
    pub child: Child,
    /// HOST:PORT from `poold.addr`.
    pub addr: String,
    pub dir: PathBuf,
}

impl Poold {
    /// `poold --dir DIR --engine ENGINE EXTRA` with `RUST_LOG=warn`, logging
    /// to the test's stderr; returns once it wrote `DIR/poold.addr`.
    pub async fn start(dir: &Path, engine: &str, extra: &[&str]) -> Poold {
        let mut args = vec!["--engine", engine];
        args.extend_from_slice(extra);
        let p = Poold::spawn(dir, &args, &[("RUST_LOG", "warn")], None);
        tokio::task::spawn_blocking(move || p.ready())
            .await
            .expect("poold did not start")
    }

    /// `poold --dir DIR ARGS` logging to `DIR.log`, from sync code.
    pub fn start_logged(dir: &Path, args: &[&str]) -> Poold {
        std::fs::create_dir_all(dir).unwrap();
        Poold::spawn(dir, args, &[], Some(&dir.with_extension("log"))).ready()
    }

    /// `poold --dir DIR --engine ENGINE EXTRA` logging to `DIR.log`,
    /// without waiting for it to listen (a standby poold listens only once
    /// it is active); see [`Poold::wait_ready`].
    pub fn spawn_logged(dir: &Path, engine: &str, extra: &[&str]) -> Poold {
        std::fs::create_dir_all(dir).unwrap();
        let mut args = vec!["--engine", engine];
        args.extend_from_slice(extra);
        Poold::spawn(dir, &args, &[], Some(&dir.with_extension("log")))
    }

    /// Waits until it listens (wrote `DIR/poold.addr`); panics when it
    /// exits or takes longer than 20 s.
    pub fn wait_ready(self) -> Poold {
        self.ready()
    }

    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)], log: Option<&Path>) -> Poold {
        let _ = std::fs::remove_file(dir.join("poold.addr"));
        let mut a: Vec<&OsStr> = vec!["--dir".as_ref(), dir.as_os_str()];
        a.extend(args.iter().map(OsStr::new));
        Poold {
            child: spawn("poold", &a, env, log),
            addr: String::new(),
            dir: dir.to_path_buf(),
        }
    }

    fn ready(mut self) -> Poold {
        self.addr = wait_addr(&self.dir.join("poold.addr"), &mut self.child, "poold");
        self
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> PoolClient<blobvirt_core::client::PoolChannel> {
        pool_client(channel(&self.addr).expect("channel"))
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Poold {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running chunkd; SIGKILLed and reaped on drop.
pub struct Chunkd {
    pub id: String,
    pub dir: PathBuf,
    pub child: Child,
}

impl Chunkd {
    /// `chunkd --dir DIR --pool POOL --listen 127.0.0.1:0 --id ID`, logging
    /// to `DIR.log`; it registers with poold by itself.
    pub fn start(dir: &Path, pool: &str, id: &str) -> Chunkd {
        Chunkd::start_at(dir, pool, id, "127.0.0.1:0")
    }

    /// [`Chunkd::start`] listening on `listen` (a restart keeps its port).
    pub fn start_at(dir: &Path, pool: &str, id: &str, listen: &str) -> Chunkd {
        std::fs::create_dir_all(dir).unwrap();
        let _ = std::fs::remove_file(dir.join("chunkd.addr"));
        let args: [&OsStr; 8] = [
            "--dir".as_ref(),
            dir.as_os_str(),
            "--pool".as_ref(),
            pool.as_ref(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--id".as_ref(),
            id.as_ref(),
        ];
        Chunkd {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            child: spawn("chunkd", &args, &[], Some(&dir.with_extension("log"))),
        }
    }

    /// HOST:PORT from `DIR/chunkd.addr`, once it listens.
    pub fn addr(&mut self) -> String {
        wait_addr(&self.dir.join("chunkd.addr"), &mut self.child, "chunkd")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Chunkd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// poold (`DIR/poold`) and chunkd processes (`DIR/chunkd-<i>`, node ids
/// `node-<i>`) in a temporary directory, and a client of them.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub pool: String,
    pub poold: Poold,
    /// poold's flags after `--listen` (for [`Cluster::restart_poold`]).
    poold_args: Vec<String>,
    pub chunkds: Vec<Chunkd>,
    pub rt: tokio::runtime::Runtime,
    pub repo: Repo,
}

impl Cluster {
    /// Starts poold with `--replicas replicas` and `nodes` chunkds, and
    /// waits until all of them are registered and alive.
    pub fn start(nodes: usize, replicas: usize) -> Cluster {
        Cluster::start_with(nodes, replicas, &[])
    }

    /// Like [`Cluster::start`], with more poold flags.
    pub fn start_with(nodes: usize, replicas: usize, poold_args: &[&str]) -> Cluster {
        let dir = tempdir("repo");
        let mut rest = vec!["--replicas".to_string(), replicas.to_string()];
        rest.extend(poold_args.iter().map(|a| a.to_string()));
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend(rest.iter().map(String::as_str));
        let poold = Poold::start_logged(&dir.path().join("poold"), &args);
        let pool = poold.url();
        let chunkds = (0..nodes)
            .map(|i| {
                let d = dir.path().join(format!("chunkd-{i}"));
                Chunkd::start(&d, &pool, &format!("node-{i}"))
            })
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut repo = None;
        let registered = wait_until(READY, || {
            let Ok(r) = rt.block_on(Repo::connect(&pool)) else {
                return false;
            };
            let alive = r.placement().members().iter().filter(|m| m.alive).count();
            repo = (alive == nodes).then_some(r);
            repo.is_some()
        });
        assert!(registered, "chunkd nodes did not register");
        Cluster {
            dir,
            pool,
            poold,
            poold_args: rest,
            chunkds,
            rt,
            repo: repo.unwrap(),
        }
    }

    /// Imports `data` as volume `name` with the given chunk size.
    pub fn import(&self, name: &str, data: &[u8], chunk_size: u32) -> u64 {
        let p = self.dir.path().join(format!("{name}.import"));
        std::fs::write(&p, data).unwrap();
        let opts = ImportOpts {
            chunk_size: Some(chunk_size),
            ..Default::default()
        };
        let r = self
            .rt
            .block_on(import_file(&self.repo, &p, name, &opts, None))
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        r.version
    }

    /// Exports `name@version` (0 = latest) and returns its bytes.
    pub fn export(&self, name: &str, version: u64) -> Vec<u8> {
        let p = self.dir.path().join(format!("{name}-{version}.export"));
        self.rt
            .block_on(export_file(&self.repo, name, version, &p, None))
            .unwrap();
        let b = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        b
    }

    pub fn latest(&self, name: &str) -> u64 {
        self.rt
            .block_on(self.repo.get_blob(name))
            .unwrap()
            .latest_version
    }

    /// Kills chunkd `i` (SIGKILL).
    pub fn kill_chunkd(&mut self, i: usize) {
        self.chunkds[i].kill();
    }

    /// Starts chunkd `i` again (after [`Cluster::kill_chunkd`]) on its
    /// directory and its old port; it registers by itself.
    pub fn restart_chunkd(&mut self, i: usize) {
        let d = self.dir.path().join(format!("chunkd-{i}"));
        let listen = read_nonempty(&d.join("chunkd.addr")).unwrap_or_else(|| "127.0.0.1:0".into());
        self.chunkds[i] = Chunkd::start_at(&d, &self.pool, &format!("node-{i}"), &listen);
        self.chunkds[i].addr();
    }

    /// SIGKILLs poold and starts it again on the same directory and address.
    pub fn restart_poold(&mut self) {
        self.poold.kill();
        let addr = self.poold.addr.clone();
        let mut args = vec!["--listen", addr.as_str()];
        args.extend(self.poold_args.iter().map(String::as_str));
        self.poold = Poold::start_logged(&self.poold.dir.clone(), &args);
    }

    /// Starts one more chunkd (`node-<n>`); returns its index.
    pub fn add_chunkd(&mut self) -> usize {
        let i = self.chunkds.len();
        let d = self.dir.path().join(format!("chunkd-{i}"));
        self.chunkds
            .push(Chunkd::start(&d, &self.pool, &format!("node-{i}")));
        i
    }

    /// Waits until poold reports `n` nodes up, then reloads the client's
    /// membership; false on a timeout of 30 s.
    pub fn wait_up(&self, n: usize) -> bool {
        let ok = wait_until(Duration::from_secs(30), || {
            self.rt.block_on(self.repo.refresh()).is_ok()
                && self
                    .repo
                    .placement()
                    .members()
                    .iter()
                    .filter(|m| m.alive)
                    .count()
                    == n
        });
        ok
    }

    /// Ids of the durable chunks of chunkd `i`, read from its directory.
    pub fn chunks_of(&self, i: usize) -> Vec<blobvirt_core::ChunkId> {
        chunk_files(&self.chunkds[i].dir)
            .into_iter()
            .map(|c| c.id)
            .collect()
    }

    /// Bytes of the chunk files of all chunk daemons.
    pub fn stored_bytes(&self) -> u64 {
        self.chunkds
            .iter()
            .flat_map(|c| chunk_files(&c.dir))
            .map(|c| c.len)
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.chunkds {
            c.kill();
        }
        self.poold.kill();
    }
}

/// A mirrord process with its FUSE mount.
pub struct Mirrord {
    pub child: Option<Child>,
    pub mount: PathBuf,
    pub cache: PathBuf,
    pub log: PathBuf,
    pub pool: String,
}

impl Mirrord {
    /// Starts mirrord with `mount` and `cache` under `base`.
    pub fn start(pool: &str, base: &Path) -> Mirrord {
        Self::start_with(
            pool,
            &base.join("mnt"),
            &base.join("cache"),
            &base.join("mirrord.log"),
        )
    }

    pub fn start_with(pool: &str, mount: &Path, cache: &Path, log: &Path) -> Mirrord {
        Self::start_env(pool, mount, cache, log, &[])
    }

    /// [`Mirrord::start_with`] with extra environment variables.
    pub fn start_env(
        pool: &str,
        mount: &Path,
        cache: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Mirrord {
        Self::start_args(pool, mount, cache, log, env, &[])
    }

    /// `mirrord --pool POOL --mount MOUNT --cache CACHE ARGS` with
    /// `RUST_LOG=info` and `env`, logging to `log` (appended to); returns
    /// once that log says `mirrord ready`.
    pub fn start_args(
        pool: &str,
        mount: &Path,
        cache: &Path,
        log: &Path,
        env: &[(&str, &str)],
        args: &[&OsStr],
    ) -> Mirrord {
        std::fs::create_dir_all(mount).ok();
        std::fs::create_dir_all(cache).unwrap();
        let log_start = std::fs::metadata(log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let mut a: Vec<&OsStr> = vec![
            "--pool".as_ref(),
            pool.as_ref(),
            "--mount".as_ref(),
            mount.as_os_str(),
            "--cache".as_ref(),
            cache.as_os_str(),
        ];
        a.extend_from_slice(args);
        let mut e = vec![("RUST_LOG", "info")];
        e.extend_from_slice(env);
        let mut m = Mirrord {
            child: Some(spawn("mirrord", &a, &e, Some(log))),
            mount: mount.to_path_buf(),
            cache: cache.to_path_buf(),
            log: log.to_path_buf(),
            pool: pool.to_string(),
        };
        let mut exited = None;
        let ready = wait_until(READY, || {
            let text = m.log_text();
            if text
                .get(log_start..)
                .unwrap_or("")
                .contains("mirrord ready")
            {
                return true;
            }
            exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            exited.is_some()
        });
        assert!(
            ready && exited.is_none(),
            "mirrord did not mount{}: {}",
            exited
                .map(|s| format!(" (exited: {s})"))
                .unwrap_or_default(),
            m.log_text()
        );
        m
    }

    pub fn client(&self) -> Client {
        Client::for_cache(&self.cache)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (10 s) until `name` shows up in the mount.
    pub fn wait_for(&self, name: &str) {
        super::wait_path(&self.path(name), 10, "the mount");
    }

    /// Waits (20 s) until the process exited by itself; true if it did.
    pub fn wait_exit(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        let done = wait_exit(c, Duration::from_secs(20)).is_some();
        if done {
            self.child = None;
        }
        done
    }

    /// SIGKILL, leaving the mount stale.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// SIGTERM (SIGKILL after 30 s); returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        terminate(&mut self.child.take()?, Duration::from_secs(30))
    }

    /// Status of one attached volume.
    pub fn status(&self, rt: &tokio::runtime::Runtime, name: &str) -> VolumeStatus {
        rt.block_on(self.client().status())
            .unwrap()
            .volumes
            .into_iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} is not attached"))
    }
}

impl Drop for Mirrord {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
        lazy_umount(&self.mount);
    }
}
