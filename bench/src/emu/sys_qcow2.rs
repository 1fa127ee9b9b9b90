//! System under test 3, qcow2 over shared storage: the raw image is served
//! read-only by `qemu-nbd` from the server namespace; each node creates a
//! local qcow2 overlay backed by that export and reads through QEMU's own
//! block layer (`qemu-storage-daemon` exporting the overlay as a file over
//! FUSE). The snapshot is every overlay copied back to the server at once
//! (`socat` into `dd conv=fsync`, one receiver per node).

use std::time::{Duration, Instant};

use anyhow::Result;

use super::instances::Spec;
use super::proc::{disk_usage, Daemon};
use super::{Env, System};

const NBD_PORT: u16 = 10809;
const SINK_PORT: u16 = 9100;

#[derive(Default)]
pub struct Qcow2 {
    nbd: Option<Daemon>,
}

impl Qcow2 {}

impl System for Qcow2 {
    fn name(&self) -> &'static str {
        "qcow2-nbd"
    }

    fn setup(&mut self, env: &Env) -> Result<()> {
        let img = env.serve_image()?;
        let mut c = env.in_ns(&env.net.srv(), "qemu-nbd");
        c.args([
            "--read-only",
            "--persistent",
            "--format=raw",
            "--export-name=base",
        ])
        .arg(format!("--bind={}", env.net.srv_addr()))
        .arg(format!("--port={NBD_PORT}"))
        .arg("--shared=0")
        .arg(&img);
        let mut d = Daemon::spawn("qemu-nbd", c, &env.dir.join("qemu-nbd.log"))?;
        std::thread::sleep(Duration::from_millis(500));
        d.check()?;
        self.nbd = Some(d);
        Ok(())
    }

    fn spec(&self, env: &Env, i: usize) -> Result<Spec> {
        let d = env.node_dir(i);
        std::fs::create_dir_all(&d)?;
        let ov = d.join("overlay.qcow2");
        let disk = d.join("disk");
        std::fs::write(&disk, b"")?;
        let backing = format!("nbd://{}:{NBD_PORT}/base", env.net.srv_addr());
        let script = format!(
            "set -euo pipefail\n\
             qemu-img create -q -f qcow2 -F raw -b {backing} {ov} {size}\n\
             qemu-storage-daemon --daemonize --pidfile {pid} \
             --blockdev driver=qcow2,node-name=ov,file.driver=file,file.filename={ov} \
             --export type=fuse,id=e,node-name=ov,mountpoint={disk},writable=on\n",
            ov = ov.display(),
            size = env.image_size,
            pid = d.join("qsd.pid").display(),
            disk = disk.display(),
        );
        let path = d.join("prepare.sh");
        std::fs::write(&path, script)?;
        Ok(Spec {
            file: disk,
            prepare: Some(format!("bash {}", path.display())),
            write_mib: env.write_mib,
        })
    }

    fn snapshot(&mut self, env: &Env) -> Result<Option<Vec<f64>>> {
        let n = env.net.nodes;
        let snaps = env.srv_dir().join("snapshots");
        std::fs::create_dir_all(&snaps)?;
        let mut sinks = Vec::new();
        for i in 0..n {
            let port = SINK_PORT as usize + i;
            let cmd = format!(
                "socat -u TCP-LISTEN:{port},bind={} STDOUT | dd of={} bs=1M conv=fsync status=none",
                env.net.srv_addr(),
                snaps.join(format!("inst-{}.qcow2", i + 1)).display()
            );
            let mut c = env.in_ns(&env.net.srv(), "bash");
            c.args(["-o", "pipefail", "-c", &cmd]);
            let log = env.dir.join(format!("sink-{}.log", i + 1));
            sinks.push(Daemon::spawn(
                &format!("snapshot receiver {}", i + 1),
                c,
                &log,
            )?);
        }
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let mut senders = Vec::new();
        for i in 0..n {
            let ov = env.node_dir(i).join("overlay.qcow2");
            let mut c = env.in_ns(&env.net.node(i), "socat");
            c.arg("-u")
                .arg(format!("OPEN:{}", ov.display()))
                .arg(format!(
                    "TCP:{}:{},retry=100,interval=0.05",
                    env.net.srv_addr(),
                    SINK_PORT as usize + i
                ));
            let log = env.dir.join(format!("send-{}.log", i + 1));
            senders.push(Daemon::spawn(
                &format!("overlay sender {}", i + 1),
                c,
                &log,
            )?);
        }
        // A snapshot is done when the server has it on disk (the receiver's
        // dd exits after fsync).
        let mut times = vec![0.0; n];
        let mut pending: Vec<usize> = (0..n).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for i in pending {
                match sinks[i].poll_exit()? {
                    Some(at) => times[i] = (at - t0).as_secs_f64(),
                    None => still.push(i),
                }
            }
            if t0.elapsed() > Duration::from_secs(900) {
                anyhow::bail!("overlay copy-back did not finish within 900 s");
            }
            pending = still;
            std::thread::sleep(Duration::from_millis(1));
        }
        for mut s in senders {
            s.wait_exit(Duration::from_secs(30))?;
        }
        Ok(Some(times))
    }

    fn stored(&self, env: &Env) -> u64 {
        disk_usage(&env.srv_dir())
    }

    fn local(&self, env: &Env) -> u64 {
        (0..env.net.nodes)
            .map(|i| disk_usage(&env.node_dir(i).join("overlay.qcow2")))
            .sum()
    }

    fn teardown(&mut self, env: &Env) {
        // qemu-storage-daemon daemonized itself: stop it through its pid
        // file, then the server.
        for i in 0..env.net.nodes {
            let pidf = env.node_dir(i).join("qsd.pid");
            if let Some(pid) = std::fs::read_to_string(&pidf)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        super::net::unmount_under(&env.dir);
        self.nbd = None;
    }
}
