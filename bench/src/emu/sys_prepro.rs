//! Systems under test 2a and 2b, prepropagation: the whole raw image is
//! copied to every node's local disk with standard tools before the trace
//! is read from the local copy.
//!
//! * `http`: every node downloads it at once from one HTTP server
//!   (`busybox httpd` in the server namespace) with `curl`.
//! * `chain`: a pipelined chain (`socat` + `tee`): the server sends to node
//!   1, node i forwards to node i+1 while it writes its own copy.
//!
//! Copies are written with `dd conv=sparse`, as a careful operator would,
//! so that N copies of a sparse image fit on one disk; the bytes on the
//! links are the full raw image either way.

use std::time::Duration;

use anyhow::Result;

use super::instances::Spec;
use super::proc::{disk_usage, Daemon};
use super::{Env, System};

const PORT: u16 = 9000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Chain,
}

pub struct Prepro {
    mode: Mode,
    server: Option<Daemon>,
    sender: Option<Daemon>,
}

impl Prepro {
    pub fn new(mode: Mode) -> Prepro {
        Prepro {
            mode,
            server: None,
            sender: None,
        }
    }
}

const SPARSE_DD: &str = "dd bs=1M conv=sparse iflag=fullblock status=none";

impl System for Prepro {
    fn name(&self) -> &'static str {
        match self.mode {
            Mode::Http => "prepro-http",
            Mode::Chain => "prepro-chain",
        }
    }

    fn setup(&mut self, env: &Env) -> Result<()> {
        let srv = env.srv_dir();
        env.serve_image()?;
        if self.mode == Mode::Http {
            let mut c = env.in_ns(&env.net.srv(), "busybox");
            c.args(["httpd", "-f", "-p"])
                .arg(format!("{}:{PORT}", env.net.srv_addr()))
                .arg("-h")
                .arg(&srv);
            let mut d = Daemon::spawn("httpd", c, &env.dir.join("httpd.log"))?;
            std::thread::sleep(Duration::from_millis(300));
            d.check()?;
            self.server = Some(d);
        }
        Ok(())
    }

    fn spec(&self, env: &Env, i: usize) -> Result<Spec> {
        let d = env.node_dir(i);
        std::fs::create_dir_all(&d)?;
        let local = d.join("local.raw");
        let script = match self.mode {
            Mode::Http => format!(
                "curl -sSf http://{}:{PORT}/image.raw | {SPARSE_DD} of={}\n",
                env.net.srv_addr(),
                local.display()
            ),
            Mode::Chain => {
                let listen = format!(
                    "socat -u TCP-LISTEN:{PORT},bind={},reuseaddr STDOUT",
                    env.net.node_addr(i)
                );
                if i + 1 < env.net.nodes {
                    format!(
                        "{listen} | tee >(socat -u STDIN TCP:{}:{PORT},retry=600,interval=0.05) | {SPARSE_DD} of={}\nwait\n",
                        env.net.node_addr(i + 1),
                        local.display()
                    )
                } else {
                    format!("{listen} | {SPARSE_DD} of={}\n", local.display())
                }
            }
        };
        let path = d.join("prepare.sh");
        std::fs::write(&path, format!("set -euo pipefail\n{script}"))?;
        Ok(Spec {
            file: local,
            prepare: Some(format!("bash {}", path.display())),
            write_mib: 0,
        })
    }

    fn on_go(&mut self, env: &Env) -> Result<()> {
        if self.mode == Mode::Chain {
            let mut c = env.in_ns(&env.net.srv(), "socat");
            c.arg("-u")
                .arg(format!(
                    "OPEN:{}",
                    env.srv_dir().join("image.raw").display()
                ))
                .arg(format!(
                    "TCP:{}:{PORT},retry=600,interval=0.05",
                    env.net.node_addr(0)
                ));
            self.sender = Some(Daemon::spawn(
                "chain sender",
                c,
                &env.dir.join("sender.log"),
            )?);
        }
        Ok(())
    }

    fn snapshot(&mut self, _env: &Env) -> Result<Option<Vec<f64>>> {
        Ok(None)
    }

    fn stored(&self, env: &Env) -> u64 {
        disk_usage(&env.srv_dir())
    }

    fn local(&self, env: &Env) -> u64 {
        (0..env.net.nodes)
            .map(|i| disk_usage(&env.node_dir(i).join("local.raw")))
            .sum()
    }

    fn teardown(&mut self, _env: &Env) {
        self.sender = None;
        self.server = None;
    }
}
