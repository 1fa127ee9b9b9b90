//! System under test 1, blobvirt: poold in the server namespace, a chunkd
//! and a mirrord in every node namespace, the image striped over all
//! chunkds. An instance clones the image (O(1)) and reads its clone
//! through its node's mount; the snapshot is COMMIT sent to every mirrord
//! at the same moment.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::instances::Spec;
use super::proc::{disk_usage, run_ok, wait_file, Daemon};
use super::{Env, System};

#[derive(Default)]
pub struct Blobvirt {
    pool: String,
    poold: Option<Daemon>,
    chunkds: Vec<Daemon>,
    mirrords: Vec<Daemon>,
}

impl Blobvirt {
    fn cli(&self, env: &Env, ns: &str, args: &[&str]) -> Result<String> {
        let mut c = env.in_ns(ns, env.bin.join("blobvirt"));
        c.env("BLOBVIRT_POOL", &self.pool).args(args);
        run_ok(c, &format!("blobvirt {}", args.join(" ")))
    }

    fn wait_nodes(&self, env: &Env) -> Result<()> {
        let t = Instant::now();
        loop {
            let out = self.cli(env, &env.net.srv(), &["cluster", "status", "--json"]);
            if let Ok(s) = out {
                let v: serde_json::Value = serde_json::from_str(&s)?;
                if v["nodes_alive"].as_u64() == Some(env.net.nodes as u64) {
                    return Ok(());
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("not every chunkd registered with poold within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl System for Blobvirt {
    fn name(&self) -> &'static str {
        "blobvirt"
    }

    fn setup(&mut self, env: &Env) -> Result<()> {
        let net = env.net;
        let pdir = env.dir.join("poold");
        std::fs::create_dir_all(&pdir)?;
        let mut c = env.in_ns(&net.srv(), env.bin.join("poold"));
        c.arg("--dir")
            .arg(&pdir)
            .args(["--listen", &format!("{}:0", net.srv_addr())])
            .args(["--replicas", &env.replicas.to_string()])
            .args(["--gc-grace-secs", "3600"]);
        let mut poold = Daemon::spawn("poold", c, &env.dir.join("poold.log"))?;
        let addr = wait_file(
            &pdir.join("poold.addr"),
            &mut poold,
            Duration::from_secs(30),
        )?;
        self.pool = format!("http://{addr}");
        self.poold = Some(poold);
        for i in 0..net.nodes {
            let d = env.node_dir(i);
            std::fs::create_dir_all(d.join("chunkd"))?;
            let mut c = env.in_ns(&net.node(i), env.bin.join("chunkd"));
            c.arg("--dir")
                .arg(d.join("chunkd"))
                .args(["--pool", &self.pool])
                .args(["--listen", &format!("{}:0", net.node_addr(i))]);
            let name = format!("chunkd-{}", i + 1);
            self.chunkds
                .push(Daemon::spawn(&name, c, &d.join("chunkd.log"))?);
        }
        for (i, d) in self.chunkds.iter_mut().enumerate() {
            let f = env.node_dir(i).join("chunkd/chunkd.addr");
            wait_file(&f, d, Duration::from_secs(30))?;
        }
        self.wait_nodes(env)?;
        let image = env.image.to_string_lossy().into_owned();
        self.cli(env, &net.srv(), &["vol-import", &image, "base"])
            .context("importing the image into blobvirt")?;
        for i in 0..net.nodes {
            let d = env.node_dir(i);
            for sub in ["mnt", "cache"] {
                std::fs::create_dir_all(d.join(sub))?;
            }
            let mut c = env.in_ns(&net.node(i), env.bin.join("mirrord"));
            c.args(["--pool", &self.pool])
                .arg("--mount")
                .arg(d.join("mnt"))
                .arg("--cache")
                .arg(d.join("cache"));
            let name = format!("mirrord-{}", i + 1);
            self.mirrords
                .push(Daemon::spawn(&name, c, &d.join("mirrord.log"))?);
        }
        for i in 0..net.nodes {
            let sock = env.node_dir(i).join("cache/control.sock");
            let t = Instant::now();
            while !(sock.exists() && super::proc::is_mounted(&env.node_dir(i).join("mnt"))) {
                self.mirrords[i].check()?;
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("mirrord-{} did not mount within 30 s", i + 1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn spec(&self, env: &Env, i: usize) -> Result<Spec> {
        let name = format!("inst-{}", i + 1);
        let bin = env.bin.join("blobvirt");
        Ok(Spec {
            file: env.node_dir(i).join("mnt").join(&name),
            prepare: Some(format!(
                "{} vol-clone base {name} --pool {} >/dev/null",
                bin.display(),
                self.pool
            )),
            write_mib: env.write_mib,
        })
    }

    fn snapshot(&mut self, env: &Env) -> Result<Option<Vec<f64>>> {
        let rt = tokio::runtime::Handle::current();
        let socks: Vec<PathBuf> = (0..env.net.nodes)
            .map(|i| env.node_dir(i).join("cache/control.sock"))
            .collect();
        let times = rt.block_on(async move {
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(socks.len()));
            let tasks: Vec<_> = socks
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let b = barrier.clone();
                    tokio::spawn(async move {
                        let c = mirrord_client::Client::new(s);
                        b.wait().await;
                        let t = Instant::now();
                        c.commit(&format!("inst-{}", i + 1), true)
                            .await
                            .with_context(|| format!("committing inst-{}", i + 1))?;
                        anyhow::Ok(t.elapsed().as_secs_f64())
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await??);
            }
            anyhow::Ok(out)
        })?;
        Ok(Some(times))
    }

    fn stored(&self, env: &Env) -> u64 {
        let nodes: u64 = (0..env.net.nodes)
            .map(|i| disk_usage(&env.node_dir(i).join("chunkd")))
            .sum();
        nodes + disk_usage(&env.dir.join("poold"))
    }

    fn local(&self, env: &Env) -> u64 {
        (0..env.net.nodes)
            .map(|i| disk_usage(&env.node_dir(i).join("cache")))
            .sum()
    }

    fn teardown(&mut self, env: &Env) {
        for m in &mut self.mirrords {
            m.stop();
        }
        super::net::unmount_under(&env.dir);
        self.mirrords.clear();
        self.chunkds.clear();
        self.poold = None;
    }
}
