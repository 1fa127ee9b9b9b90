//! Test harness: a real repository (poold + chunkd processes started per
//! the process contract) and real mirrord processes with FUSE mounts.
//! Drop guards kill what they started and unmount, even on failure.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobvirt_core::transfer::{export_file, import_file, ImportOpts};
use blobvirt_core::Repo;
use rand::{Rng, SeedableRng};

pub fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_mirrord"))
        .parent()
        .unwrap()
        .to_path_buf();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing; build every binary first: cargo build --workspace --bins",
        p.display()
    );
    p
}

fn wait_for_file(p: &Path, what: &str) -> String {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if let Ok(s) = std::fs::read_to_string(p) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not write {}", p.display());
}

fn kill(c: &mut Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
}

/// poold and chunkd processes in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub pool: String,
    pub poold: Child,
    pub chunkds: Vec<(String, Child)>,
    pub rt: tokio::runtime::Runtime,
    pub repo: Repo,
}

impl Cluster {
    pub fn start(nodes: usize, replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("poold");
        std::fs::create_dir_all(&pdir).unwrap();
        let log = File::create(dir.path().join("poold.log")).unwrap();
        let poold = Command::new(bin("poold"))
            .arg("--dir")
            .arg(&pdir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--replicas",
                &replicas.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr = wait_for_file(&pdir.join("poold.addr"), "poold");
        let pool = format!("http://{addr}");
        let mut chunkds = Vec::new();
        for i in 0..nodes {
            let cdir = dir.path().join(format!("chunkd-{i}"));
            std::fs::create_dir_all(&cdir).unwrap();
            let id = format!("node-{i}");
            let log = File::create(dir.path().join(format!("chunkd-{i}.log"))).unwrap();
            let c = Command::new(bin("chunkd"))
                .arg("--dir")
                .arg(&cdir)
                .args(["--pool", &pool, "--listen", "127.0.0.1:0", "--id", &id])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            chunkds.push((id, c));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let repo = rt.block_on(async {
            let t = Instant::now();
            loop {
                if let Ok(r) = Repo::connect(&pool).await {
                    let alive = r.placement().members().iter().filter(|m| m.alive).count();
                    if alive == nodes {
                        return r;
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "chunkd nodes did not register"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Cluster {
            dir,
            pool,
            poold,
            chunkds,
            rt,
            repo,
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
        let c = &mut self.chunkds[i].1;
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Bytes stored by all chunk daemons (files under chunks/).
    pub fn stored_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        walk(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        }
        (0..self.chunkds.len())
            .map(|i| walk(&self.dir.path().join(format!("chunkd-{i}/chunks"))))
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.chunkds {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.poold.kill();
        let _ = self.poold.wait();
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
        std::fs::create_dir_all(mount).ok();
        std::fs::create_dir_all(cache).unwrap();
        let log_start = std::fs::metadata(log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(bin("mirrord"))
            .args(["--pool", pool])
            .arg("--mount")
            .arg(mount)
            .arg("--cache")
            .arg(cache)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap();
        let m = Mirrord {
            child: Some(child),
            mount: mount.to_path_buf(),
            cache: cache.to_path_buf(),
            log: log.to_path_buf(),
            pool: pool.to_string(),
        };
        let t = Instant::now();
        while !m
            .log_text()
            .get(log_start..)
            .unwrap_or("")
            .contains("mirrord ready")
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "mirrord did not mount: {}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn client(&self) -> mirrord::Client {
        mirrord::Client::for_cache(&self.cache)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `name` shows up in the mount.
    pub fn wait_for(&self, name: &str) {
        let t = Instant::now();
        while !self.path(name).exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name} did not appear in the mount"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (20 s) until the process exited by itself; true if it did.
    pub fn wait_exit(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL, leaving the mount stale.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        kill(&mut c, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Status of one attached volume.
    pub fn status(&self, rt: &tokio::runtime::Runtime, name: &str) -> mirrord::VolumeStatus {
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
            kill(&mut c, nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..4 {
            if !mirrord::daemon::is_mounted(&self.mount) {
                break;
            }
            let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    r.fill(&mut v[..]);
    v
}

/// An image: random data with some zero regions (holes).
pub fn image(seed: u64, size: usize, chunk: usize) -> Vec<u8> {
    let mut v = random_bytes(seed, size);
    // Every 4th chunk and the last quarter are zeros.
    for c in (0..size / chunk).step_by(4) {
        v[c * chunk..(c + 1) * chunk].fill(0);
    }
    let q = size - size / 4;
    v[q..].fill(0);
    v
}

pub fn pwrite(path: &Path, off: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(data).unwrap();
}
