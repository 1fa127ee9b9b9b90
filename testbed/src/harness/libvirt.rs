//! The libvirt tests' lab (libvirt-hook's and virsh-ext's): a [`Lab`] is
//! one local cluster with a mirrord mount (`blobvirt cluster up --mount`),
//! a libvirt pool of its own on that mount (`blobvirt pool-define`, random
//! name), and the domains the test defines. Its Drop guard destroys and
//! undefines those domains, undefines the pool, stops the cluster and
//! unmounts, even when the test failed. virtlogd/libvirtd are started when
//! they are not running (`scripts/libvirt-setup.sh`); `virsh` runs against
//! `qemu:///system`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rand::Rng;
use serde_json::Value;

use super::bins::{require, root};
use super::{cli, show, tempdir};
use crate::proc::{lazy_umount, wait_until};

pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .expect("run virsh")
}

pub fn virsh_ok(args: &[&str]) -> String {
    let o = virsh(args);
    assert!(
        o.status.success(),
        "{}",
        show(&format!("virsh {}", args.join(" ")), &o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts virtlogd/libvirtd when needed (once per test binary).
pub fn ensure_libvirt() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let o = Command::new(root().join("scripts/libvirt-setup.sh"))
            .output()
            .expect("run scripts/libvirt-setup.sh");
        assert!(
            o.status.success(),
            "{}",
            show("scripts/libvirt-setup.sh", &o)
        );
    });
}

/// A short random suffix for pool and domain names.
pub fn suffix() -> String {
    let n: u32 = rand::thread_rng().gen();
    format!("{n:08x}")
}

/// One cluster + mount + libvirt pool.
pub struct Lab {
    pub tmp: tempfile::TempDir,
    /// `cluster up --dir`.
    pub dir: PathBuf,
    pub mount: PathBuf,
    pub pool_url: String,
    pub control: PathBuf,
    /// The libvirt pool's name.
    pub pool: String,
    pub suffix: String,
    domains: Mutex<Vec<String>>,
    cluster_up: bool,
    pool_defined: bool,
}

impl Lab {
    /// Starts a 2-node cluster with a mount and defines pool `bv<tag>-<rand>`.
    pub fn up(tag: &str) -> Lab {
        ensure_libvirt();
        let mut lab = Self::cluster(tag);
        let (d, pool) = (lab.dir.display().to_string(), lab.pool.clone());
        let o = lab.blobvirt(&["pool-define", "--name", &pool, "--dir", &d]);
        lab.pool_defined = true;
        assert!(o.status.success(), "{}", show("blobvirt pool-define", &o));
        lab
    }

    /// Starts a 2-node cluster with a mirrord mount, without libvirt.
    pub fn cluster(tag: &str) -> Lab {
        require(&["blobvirt", "blobvirt-hook", "poold", "chunkd", "mirrord"]);
        let tmp = tempdir("lv");
        let s = suffix();
        let mut lab = Lab {
            dir: tmp.path().join("cluster"),
            mount: tmp.path().join("mnt"),
            tmp,
            pool_url: String::new(),
            control: PathBuf::new(),
            pool: format!("bv{tag}-{s}"),
            suffix: s,
            domains: Mutex::default(),
            cluster_up: false,
            pool_defined: false,
        };
        let (d, m) = (
            lab.dir.display().to_string(),
            lab.mount.display().to_string(),
        );
        let o = lab.blobvirt(&["cluster", "up", "--nodes", "2", "--dir", &d, "--mount", &m]);
        lab.cluster_up = lab.dir.join("cluster.json").exists();
        assert!(o.status.success(), "{}", show("blobvirt cluster up", &o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let var = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("cluster up printed no {k}: {out}"))
                .to_string()
        };
        lab.pool_url = var("BLOBVIRT_POOL=");
        lab.control = PathBuf::from(var("BLOBVIRT_CONTROL="));
        lab
    }

    /// Runs `blobvirt args` against this cluster (its configuration file in
    /// `BLOBVIRT_CONFIG`, its pool, once up, in `BLOBVIRT_POOL`).
    pub fn blobvirt(&self, args: &[&str]) -> Output {
        let mut c = cli::command();
        c.args(args)
            .env("BLOBVIRT_CONFIG", self.dir.join("blobvirt.toml"));
        if !self.pool_url.is_empty() {
            c.env("BLOBVIRT_POOL", &self.pool_url);
        }
        c.output().expect("run blobvirt")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.blobvirt(args);
        assert!(
            o.status.success(),
            "{}",
            show(&format!("blobvirt {}", args.join(" ")), &o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The latest version of volume `vol` (`vol-info --json`).
    pub fn latest_version(&self, vol: &str) -> u64 {
        let v: Value = serde_json::from_str(&self.ok(&["vol-info", vol, "--json"])).expect("json");
        v["latest_version"].as_u64().expect("latest_version")
    }

    /// `blobvirt vol-list --json` names.
    pub fn volumes(&self) -> Vec<String> {
        let v: Value = serde_json::from_str(&self.ok(&["vol-list", "--json"])).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// `virsh pool-refresh` + `vol-list --name`.
    pub fn virsh_volumes(&self) -> Vec<String> {
        virsh_ok(&["pool-refresh", &self.pool]);
        // " Name   Path" / "-----" / " g1     /mnt/g1"
        virsh_ok(&["vol-list", "--pool", &self.pool])
            .lines()
            .skip_while(|l| !l.starts_with("---"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// Waits until libvirt's pool lists (or, with `present: false`, no
    /// longer lists) `name`.
    pub fn wait_virsh_volume(&self, name: &str, present: bool) {
        assert!(
            wait_until(Duration::from_secs(20), || self
                .virsh_volumes()
                .iter()
                .any(|v| v == name)
                == present),
            "virsh vol-list {} still {} {name}",
            self.pool,
            if present { "lacks" } else { "lists" }
        );
    }

    /// mirrord's `status` reply, read straight from its control socket.
    pub fn mirror_status(&self) -> Value {
        let mut s = UnixStream::connect(&self.control).expect("connect to mirrord");
        s.write_all(b"{\"op\":\"status\"}\n").expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read");
        let v: Value = serde_json::from_str(&line).expect("json reply");
        assert_eq!(v["ok"], true, "status failed: {line}");
        v["result"].clone()
    }

    /// (volume, owner) pairs of mirrord's claims.
    pub fn claims(&self) -> Vec<(String, String)> {
        let st = self.mirror_status();
        st["claims"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("").to_string(),
                    c["owner"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The guest's domain XML (guest/domain-template.xml) for `name` on
    /// `volume` of this lab's pool.
    pub fn guest_xml(&self, name: &str, volume: &str) -> String {
        let t =
            std::fs::read_to_string(root().join("guest/domain-template.xml")).expect("template");
        let log = self.tmp.path().join(format!("{name}.console.log"));
        t.replace("NAME", name)
            .replace("VOLUME", volume)
            .replace("CONSOLE_LOG", &log.display().to_string())
            .replace("pool='blobvirt'", &format!("pool='{}'", self.pool))
    }

    /// Defines `xml` as domain `name` (undefined again on drop).
    pub fn define(&self, name: &str, xml: &str) {
        let f = self.tmp.path().join(format!("{name}.xml"));
        std::fs::write(&f, xml).expect("write domain xml");
        self.domains.lock().unwrap().push(name.to_string());
        virsh_ok(&["define", &f.display().to_string()]);
    }

    pub fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("{name}.console.log")))
            .unwrap_or_default()
    }

    /// Builds the test guest into the temp dir and returns its path.
    pub fn build_guest(&self) -> PathBuf {
        let out = self.tmp.path().join("guest.raw");
        build_guest_at(&out);
        out
    }

    /// `guest/read-marker.sh IMAGE [FILE]`.
    pub fn read_marker(&self, image: &Path, file: &str) -> String {
        let o = Command::new(root().join("guest/read-marker.sh"))
            .arg(image)
            .arg(file)
            .output()
            .expect("run guest/read-marker.sh");
        assert!(o.status.success(), "{}", show("guest/read-marker.sh", &o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// Builds the test guest into `out` (`guest/build-guest.sh OUT`).
pub fn build_guest_at(out: &Path) {
    let o = Command::new(root().join("guest/build-guest.sh"))
        .arg(out)
        .output()
        .expect("run guest/build-guest.sh");
    assert!(o.status.success(), "{}", show("guest/build-guest.sh", &o));
}

/// Turns the test guest's stay mode on in `image` (`guest/set-stay.sh
/// IMAGE on`): it stays up and writes a tick every second.
pub fn stay_on(image: &Path) {
    let o = Command::new(root().join("guest/set-stay.sh"))
        .arg(image)
        .arg("on")
        .output()
        .expect("run guest/set-stay.sh");
    assert!(o.status.success(), "{}", show("guest/set-stay.sh", &o));
}

pub fn domstate(name: &str) -> String {
    String::from_utf8_lossy(&virsh(&["domstate", name]).stdout)
        .trim()
        .to_string()
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in self.domains.lock().unwrap().iter() {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", d]);
        }
        if self.pool_defined {
            let _ = self.blobvirt(&["pool-undefine", "--name", &self.pool]);
        }
        if self.cluster_up {
            let d = self.dir.display().to_string();
            let o = self.blobvirt(&["cluster", "down", "--dir", &d, "--force"]);
            if !o.status.success() {
                eprintln!("{}", show("blobvirt cluster down", &o));
            }
        }
        // Never leave a mount behind, whatever happened above.
        lazy_umount(&self.mount);
    }
}
