//! The N emulated VM instances of one run: one `blobvirt-bench instance`
//! process per node, driven through its stdin/stdout line protocol (see
//! `workload::instance`), released together with `go`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::Env;

/// What one instance runs.
pub struct Spec {
    pub file: PathBuf,
    pub prepare: Option<String>,
    pub write_mib: u64,
}

struct One {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Value>,
    log: PathBuf,
}

pub struct Instances {
    all: Vec<One>,
}

/// Timestamps an instance reports when it has "booted".
#[derive(Clone, Copy, Debug)]
pub struct Deployed {
    pub start_ns: u64,
    pub prepared_ns: u64,
    pub done_ns: u64,
}

impl Instances {
    /// Starts one instance per node (in its namespace and cgroups; logs in
    /// the run's directory) and waits until all are ready.
    pub fn start(
        env: &Env,
        bench_bin: &Path,
        trace: &Path,
        specs: Vec<Spec>,
        block_kib: u64,
    ) -> Result<Instances> {
        let mut all = Vec::new();
        for (i, s) in specs.into_iter().enumerate() {
            let log = env.dir.join(format!("instance-{}.log", i + 1));
            let mut c = env.in_ns(&env.net.node(i), bench_bin);
            c.arg("instance")
                .arg("--file")
                .arg(&s.file)
                .arg("--trace")
                .arg(trace)
                .args(["--concurrency", "4"])
                .args(["--write-mib", &s.write_mib.to_string()])
                .args(["--write-block-kib", &block_kib.to_string()])
                .args(["--seed", &(i + 1).to_string()]);
            if let Some(p) = &s.prepare {
                c.arg("--prepare").arg(p);
            }
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .context("starting an instance")?;
            let stdin = child.stdin.take().context("instance stdin")?;
            let stdout = child.stdout.take().context("instance stdout")?;
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                }
            });
            all.push(One {
                child,
                stdin,
                events: rx,
                log,
            });
        }
        let mut me = Instances { all };
        for i in 0..me.all.len() {
            me.expect(i, "ready", Duration::from_secs(60))?;
        }
        Ok(me)
    }

    fn expect(&mut self, i: usize, event: &str, limit: Duration) -> Result<Value> {
        let one = &mut self.all[i];
        match one.events.recv_timeout(limit) {
            Ok(v) if v["event"] == event => Ok(v),
            Ok(v) => bail!(
                "instance {} sent {v} while {event} was expected; see {}",
                i + 1,
                one.log.display()
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!(
                "instance {} exited before it reported {event}; see {}",
                i + 1,
                one.log.display()
            ),
            Err(_) => bail!(
                "instance {} did not report {event} within {limit:?}; see {}",
                i + 1,
                one.log.display()
            ),
        }
    }

    fn send_all(&mut self, line: &str) -> Result<()> {
        for one in &mut self.all {
            writeln!(one.stdin, "{line}").context("writing to an instance")?;
            one.stdin.flush()?;
        }
        Ok(())
    }

    /// Releases every instance at once.
    pub fn release(&mut self) -> Result<()> {
        self.send_all("go")
    }

    /// Waits for every instance to finish its trace.
    pub fn wait_deployed(&mut self, limit: Duration) -> Result<Vec<Deployed>> {
        let mut out = Vec::new();
        for i in 0..self.all.len() {
            let v = self.expect(i, "deployed", limit)?;
            let g = |k: &str| v[k].as_u64().unwrap_or(0);
            out.push(Deployed {
                start_ns: g("start_ns"),
                prepared_ns: g("prepared_ns"),
                done_ns: g("done_ns"),
            });
        }
        Ok(out)
    }

    /// Every instance writes its scattered data (and fsyncs), keeping the
    /// file open, as a running VM would.
    pub fn write(&mut self, limit: Duration) -> Result<u64> {
        self.send_all("write")?;
        let mut bytes = 0;
        for i in 0..self.all.len() {
            bytes += self.expect(i, "written", limit)?["bytes"]
                .as_u64()
                .unwrap_or(0);
        }
        Ok(bytes)
    }

    /// Lets every instance close its file and exit.
    pub fn finish(mut self) -> Result<()> {
        let _ = self.send_all("exit");
        for (i, one) in self.all.iter_mut().enumerate() {
            let st = one.child.wait()?;
            if !st.success() {
                bail!(
                    "instance {} exited with {st}; see {}",
                    i + 1,
                    one.log.display()
                );
            }
        }
        self.all.clear();
        Ok(())
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for one in &mut self.all {
            let _ = one.child.kill();
            let _ = one.child.wait();
        }
    }
}
