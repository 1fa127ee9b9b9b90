//! Lost fsyncs: a power cut loses everything the page cache held. A SIGKILL
//! does not (the kernel keeps the dead process's dirty pages), so the other
//! crash tests cannot catch an acknowledgement that rests on the page cache.
//! This one can.
//!
//! Every daemon's directory (poold's metadata, the chunkd stores, mirrord's
//! cache) sits on an ext4 file system on a loop device. It is mounted with
//! `commit=600,noauto_da_alloc`, so only an fsync (or syncfs) moves data to
//! the device: the kernel neither commits the journal nor writes back
//! renamed-over files by itself within the test's few seconds. The test
//! imports, clones, writes through the mount with fsync, and commits. It
//! SIGKILLs every daemon and copies the loop device's backing file. The
//! copy is the disk as a power cut would leave it: what was synced is in it,
//! and the page cache is not. It then mounts the copy in place of the disk,
//! restarts the cluster on it, and checks that every acknowledged version and
//! every fsynced write is there, exactly. A write that was never fsynced may
//! be lost, but only page by page: each page is either old or new.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use testbed::harness::data::random_bytes;
use testbed::harness::{
    blobvirt, running_in, show, sigkill, tempdir, wait_gone, wait_path, wait_until,
};

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 256 * 1024;
const SIZE: usize = 8 * MIB;
const PAGE: usize = 4096;

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let o = sh(cmd, args);
    assert!(
        o.status.success(),
        "{}",
        show(&format!("{cmd} {args:?}"), &o)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The loop-backed disk, the cluster on it, and clean-up of both.
struct Disk {
    tmp: tempfile::TempDir,
    loopdev: Option<String>,
    pids: Vec<u32>,
}

impl Disk {
    fn base(&self) -> &Path {
        self.tmp.path()
    }
    fn root(&self) -> PathBuf {
        self.base().join("disk")
    }
    fn dir(&self) -> PathBuf {
        self.root().join("cluster")
    }
    fn mnt(&self) -> PathBuf {
        self.base().join("mnt")
    }

    fn new() -> Disk {
        let tmp = tempdir("lostfsync");
        let img = tmp.path().join("disk.img");
        fs::File::create(&img)
            .unwrap()
            .set_len(1024 * MIB as u64)
            .unwrap();
        sh_ok("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
        let mut d = Disk {
            tmp,
            loopdev: None,
            pids: Vec::new(),
        };
        fs::create_dir(d.root()).unwrap();
        fs::create_dir(d.mnt()).unwrap();
        d.attach(&img);
        d
    }

    /// Attaches `img` to a loop device and mounts it where the disk goes.
    fn attach(&mut self, img: &Path) {
        let dev = sh_ok("losetup", &["--find", "--show", img.to_str().unwrap()]);
        self.loopdev = Some(dev.clone());
        sh_ok(
            "mount",
            &[
                "-o",
                "commit=600,noauto_da_alloc",
                &dev,
                self.root().to_str().unwrap(),
            ],
        );
    }

    /// Unmounts the disk and detaches its loop device. The file system's
    /// dirty pages go to the old backing file, which nobody reads again.
    fn detach(&mut self) {
        let _ = sh("umount", &["-l", self.mnt().to_str().unwrap()]);
        if let Some(dev) = self.loopdev.take() {
            let root = self.root();
            let r = root.to_str().unwrap();
            if !wait_until(Duration::from_secs(20), || {
                sh("umount", &[r]).status.success()
            }) {
                let _ = sh("umount", &["-l", r]);
            }
            let _ = sh("losetup", &["-d", &dev]);
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(blobvirt())
            .args(args)
            .env_remove("BLOBVIRT_POOL")
            .env_remove("BLOBVIRT_CONFIG")
            .env_remove("BLOBVIRT_CONTROL")
            .env("BLOBVIRT_CLUSTER_DIR", self.dir())
            .output()
            .expect("run blobvirt")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{}",
            show(&format!("blobvirt {args:?}"), &o)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// The pids in cluster.json, remembered for clean-up.
    fn record_pids(&mut self) -> Vec<u32> {
        let s = fs::read_to_string(self.dir().join("cluster.json")).expect("cluster.json");
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid cluster.json");
        let pids: Vec<u32> = v["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .map(|p| p["pid"].as_u64().expect("pid") as u32)
            .collect();
        for p in &pids {
            if !self.pids.contains(p) {
                self.pids.push(*p);
            }
        }
        pids
    }

    fn kill_all(&self) {
        // Only processes that still run in this test's directory: a pid of
        // the first cluster may since belong to someone else.
        let ours: Vec<u32> = self
            .pids
            .iter()
            .copied()
            .filter(|p| running_in(*p, self.base()))
            .collect();
        for p in &ours {
            sigkill(*p);
        }
        for p in &ours {
            assert!(wait_gone(*p, 10), "daemon {p} survived SIGKILL");
        }
    }

    fn export(&self, spec: &str) -> Vec<u8> {
        let out = self.base().join("export.raw");
        let _ = fs::remove_file(&out);
        self.ok(&["vol-export", spec, out.to_str().unwrap()]);
        fs::read(&out).unwrap()
    }

    fn wait_file(&self, name: &str) -> PathBuf {
        wait_path(&self.mnt().join(name), 20, "a volume file of the mount")
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.loopdev.is_some() && self.dir().join("cluster.json").exists() {
            self.record_pids();
        }
        self.kill_all();
        self.detach();
    }
}

fn pwrite_sync(f: &fs::File, off: usize, data: &[u8], sync: bool) {
    f.write_all_at(data, off as u64).unwrap();
    if sync {
        f.sync_all().unwrap();
    }
}

#[test]
fn nothing_acknowledged_rests_on_the_page_cache() {
    if sh("losetup", &["--find"]).status.code() != Some(0) {
        panic!("this test needs loop devices (losetup --find failed); run it as root");
    }
    let mut d = Disk::new();
    let (dir, mnt) = (d.dir(), d.mnt());
    d.ok(&[
        "cluster",
        "up",
        "--nodes",
        "3",
        "--replicas",
        "2",
        "--dir",
        dir.to_str().unwrap(),
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    d.record_pids();

    // Acknowledged: an import, a clone, a fsynced write, a commit.
    let a = random_bytes(1, SIZE);
    let mut b = random_bytes(2, SIZE);
    b[3 * MIB..4 * MIB].fill(0);
    for (name, data) in [("a", &a), ("b", &b)] {
        let p = d.base().join(format!("{name}.raw"));
        fs::File::create(&p).unwrap().write_all(data).unwrap();
        d.ok(&["vol-import", p.to_str().unwrap(), name]);
    }
    d.ok(&["vol-clone", "a", "a2"]);

    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.wait_file("b"))
        .unwrap();
    // X: written, fsynced, committed as b@2.
    let x = random_bytes(3, CHUNK + 5000);
    pwrite_sync(&f, CHUNK / 2, &x, true);
    b[CHUNK / 2..CHUNK / 2 + x.len()].copy_from_slice(&x);
    let committed = b.clone();
    d.ok(&["commit", "b"]);
    // Y: written and fsynced, not committed; a hole chunk among them.
    let y = random_bytes(4, 2 * CHUNK);
    let y_off = 3 * MIB - CHUNK;
    pwrite_sync(&f, y_off, &y, true);
    b[y_off..y_off + y.len()].copy_from_slice(&y);
    // Z: written, never fsynced: may be lost, page by page.
    let z = random_bytes(5, CHUNK);
    let z_off = 6 * MIB;
    pwrite_sync(&f, z_off, &z, false);
    let before_z = b.clone();
    let mut after_z = b.clone();
    after_z[z_off..z_off + z.len()].copy_from_slice(&z);

    // The power cut: every daemon dies, and the disk keeps only what reached
    // the loop device.
    d.kill_all();
    drop(f);
    let crashed = d.base().join("crashed.img");
    sh_ok(
        "cp",
        &[
            "--sparse=always",
            d.base().join("disk.img").to_str().unwrap(),
            crashed.to_str().unwrap(),
        ],
    );
    d.detach();
    d.attach(&crashed);

    d.ok(&["cluster", "restart", "--dir", dir.to_str().unwrap()]);
    d.record_pids();

    assert!(d.export("a@1") == a, "acknowledged import a@1 changed");
    assert!(d.export("a2") == a, "acknowledged clone a2 changed");
    assert!(
        d.export("b@2") == committed,
        "acknowledged commit b@2 changed"
    );

    // The mount: the fsynced but uncommitted write Y is there; Z is old or
    // new, page by page.
    let got = fs::read(d.wait_file("b")).unwrap();
    assert_eq!(got.len(), SIZE);
    let mut lost = 0;
    for p in 0..SIZE / PAGE {
        let r = p * PAGE..(p + 1) * PAGE;
        if got[r.clone()] == after_z[r.clone()] {
            continue;
        }
        assert!(
            got[r.clone()] == before_z[r.clone()],
            "page {p} (offset {}) of b holds neither the acknowledged data nor the unsynced write",
            r.start
        );
        lost += 1;
    }
    eprintln!("{lost} pages of the unsynced write were lost");
    // Whatever the mount holds now is what the next version gets.
    d.ok(&["commit", "b"]);
    assert!(
        d.export("b") == got,
        "the commit after the crash differs from the mount"
    );
}
