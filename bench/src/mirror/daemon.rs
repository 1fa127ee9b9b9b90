//! Runs one `mirrord` (the release binary) for the mirror suite, and stops
//! it (SIGTERM, then SIGKILL and a lazy unmount) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Mirrord {
    child: Option<Child>,
    pub mount: PathBuf,
    pub client: mirrord_client::Client,
}

use crate::emu::proc::is_mounted;

impl Mirrord {
    /// Starts `mirrord --pool POOL --mount MOUNT --cache CACHE`, logging to
    /// `log`, and waits until the mount and the control socket answer.
    /// Without `local_reads` it fetches every chunk over gRPC even from the
    /// chunkd nodes of this machine (`BLOBVIRT_LOCAL_READS=0`), e.g. to
    /// measure a node slowed by a proxy.
    pub async fn start(
        bin: &Path,
        config: &Path,
        pool: &str,
        mount: &Path,
        cache: &Path,
        log: &Path,
        local_reads: bool,
    ) -> Result<Mirrord> {
        std::fs::create_dir_all(mount)?;
        std::fs::create_dir_all(cache)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("opening the mirrord log")?;
        let child = Command::new(bin.join("mirrord"))
            .arg("--config")
            .arg(config)
            .args(["--pool", pool, "--mount"])
            .arg(mount)
            .arg("--cache")
            .arg(cache)
            .env("BLOBVIRT_LOCAL_READS", if local_reads { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting mirrord")?;
        let mut m = Mirrord {
            child: Some(child),
            mount: mount.to_path_buf(),
            client: mirrord_client::Client::for_cache(cache),
        };
        let t = Instant::now();
        loop {
            if is_mounted(mount) && m.client.status().await.is_ok() {
                return Ok(m);
            }
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "mirrord exited with {st} during startup; see {}",
                    log.display()
                );
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("mirrord did not come up within 30 s; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Process id of the running mirrord.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    /// Stops mirrord with SIGTERM (it commits or keeps per policy and
    /// unmounts); SIGKILL and a lazy unmount after 30 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mount) {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

impl Drop for Mirrord {
    fn drop(&mut self) {
        self.stop();
    }
}
