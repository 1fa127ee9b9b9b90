//! OpenNebula's calling conventions for the `blobvirt` drivers of
//! `packaging/opennebula/remotes` (OpenNebula cannot be installed here):
//! DS actions with the ID as argument and base64 `DS_DRIVER_ACTION_DATA`
//! on stdin, as one_datastore runs them; TM actions with `host:path`
//! arguments and stdin empty, as one_tm runs them; `SSH` pointing at a
//! stand-in that runs `CMD` "on HOST" (in the root namespace, or in an
//! emulated host's namespaces) and fails as ssh does for an unknown host;
//! and the domain XML OpenNebula's KVM driver writes for a VM.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{root, show};
use crate::Host;

/// Where `SSH HOST CMD` runs CMD.
pub enum Target<'a> {
    /// The root namespace (this machine).
    Local,
    /// An emulated host's network and mount namespaces.
    In(&'a Host),
}

/// The drivers as oned calls them.
pub struct Driver {
    pub remotes: PathBuf,
    pub ssh: PathBuf,
    /// The front-end, where DS and TM scripts run (`None`: the root namespace).
    front: Option<Host>,
    env: Vec<(String, OsString)>,
}

impl Driver {
    /// Writes the SSH stand-in into `dir`: each `(name, target)` is a host
    /// it reaches. `env` is what the scripts run with.
    pub fn new(
        dir: &Path,
        hosts: &[(&str, Target)],
        front: Option<&Host>,
        env: &[(&str, OsString)],
    ) -> Driver {
        let mut s = String::from(
            "#!/bin/sh\n# ssh HOST CMD, for the tests\nhost=$1; shift\ncase $host in\n",
        );
        for (name, t) in hosts {
            let run = match t {
                Target::Local => "exec sh -c \"$*\"".to_string(),
                // From inside another host too: back to the root mount
                // namespace (the test's own), where the hosts' namespace
                // files are.
                Target::In(h) => format!(
                    "exec nsenter --mount=/proc/{}/ns/mnt -- nsenter --net=/run/netns/{} --mount={} -- sh -c \"$*\"",
                    std::process::id(),
                    h.netns,
                    h.mnt_ns.display()
                ),
            };
            s.push_str(&format!("  {name}) {run} ;;\n"));
        }
        s.push_str("  *) echo \"ssh: Could not resolve hostname $host: Name or service not known\" >&2; exit 255 ;;\nesac\n");
        let ssh = dir.join("ssh");
        std::fs::write(&ssh, s).expect("write the ssh stand-in");
        let o = Command::new("chmod").arg("755").arg(&ssh).output().unwrap();
        assert!(o.status.success(), "{}", show("chmod the ssh stand-in", &o));
        let mut e: Vec<(String, OsString)> = vec![
            (
                "BLOBVIRT_DRIVER_CONF".into(),
                root().join("packaging/opennebula/opennebula.conf").into(),
            ),
            ("SSH".into(), ssh.clone().into()),
            ("BLOBVIRT".into(), super::blobvirt().into()),
            ("BLOBVIRT_SUDO".into(), "".into()),
            ("BLOBVIRT_DISK_OWNER".into(), "".into()),
        ];
        e.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        Driver {
            remotes: root().join("packaging/opennebula/remotes"),
            ssh,
            front: front.cloned(),
            env: e,
        }
    }

    fn command(&self, script: PathBuf) -> Command {
        let mut c = match &self.front {
            Some(h) => h.cmd(script),
            None => Command::new(script),
        };
        for v in [
            "BLOBVIRT_POOL",
            "BLOBVIRT_CONFIG",
            "BLOBVIRT_CLUSTER_DIR",
            "BLOBVIRT_CONTROL",
            "BLOBVIRT_MOUNT",
        ] {
            c.env_remove(v);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// DS action `action ID` with `xml` base64-encoded on stdin.
    pub fn ds(&self, action: &str, id: &str, xml: &str) -> Output {
        let mut c = self.command(self.remotes.join("datastore/blobvirt").join(action));
        c.arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut ch = c.spawn().expect("run a DS action");
        ch.stdin.take().unwrap().write_all(&base64(xml)).unwrap();
        let o = ch.wait_with_output().unwrap();
        eprintln!("{}", show(&format!("ds/{action} {id}"), &o));
        o
    }

    /// [`Driver::ds`] that must succeed; its stdout.
    pub fn ds_ok(&self, action: &str, id: &str, xml: &str) -> String {
        let o = self.ds(action, id, xml);
        assert!(o.status.success(), "{}", show(action, &o));
        String::from_utf8(o.stdout).unwrap()
    }

    /// TM action `action args…`.
    pub fn tm(&self, action: &str, args: &[&str]) -> Output {
        let mut c = self.command(self.remotes.join("tm/blobvirt").join(action));
        c.args(args).stdin(Stdio::null());
        let o = c.output().expect("run a TM action");
        eprintln!("{}", show(&format!("tm/{action} {}", args.join(" ")), &o));
        o
    }

    /// [`Driver::tm`] that must succeed.
    pub fn tm_ok(&self, action: &str, args: &[&str]) {
        let o = self.tm(action, args);
        assert!(o.status.success(), "{}", show(action, &o));
    }
}

/// `text` as `base64 -w0` encodes it (OpenNebula's driver sends it so).
fn base64(text: &str) -> Vec<u8> {
    let mut b = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run base64");
    b.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    b.wait_with_output().unwrap().stdout
}

/// A failed action: non-zero exit and exactly one line on stderr (what
/// OpenNebula shows), returned.
pub fn one_line_failure(o: &Output) -> String {
    assert!(!o.status.success(), "{}", show("expected a failure", o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one stderr line: {err:?}");
    assert!(
        !lines[0].starts_with("ERROR:") && !lines[0].starts_with("INFO:"),
        "OpenNebula would log, not show, {:?}",
        lines[0]
    );
    lines[0].to_string()
}

/// `DS_DRIVER_ACTION_DATA` of image `id` in datastore 100 (`blobvirt`),
/// with `extra` elements inside `<IMAGE>`.
pub fn image_xml(id: &str, path: &str, source: &str, extra: &str) -> String {
    format!(
        "<DS_DRIVER_ACTION_DATA><IMAGE><ID>{id}</ID><NAME>img-{id}</NAME><TYPE>0</TYPE>\
         <PATH>{path}</PATH><SOURCE>{source}</SOURCE><FORMAT>raw</FORMAT>{extra}</IMAGE>\
         <DATASTORE><ID>100</ID><NAME>blobvirt</NAME><DS_MAD>blobvirt</DS_MAD>\
         <TM_MAD>blobvirt</TM_MAD><BASE_PATH>/var/lib/one/datastores/100</BASE_PATH>\
         <TEMPLATE><DS_MAD>blobvirt</DS_MAD></TEMPLATE></DATASTORE></DS_DRIVER_ACTION_DATA>"
    )
}

/// The domain OpenNebula's KVM driver writes for VM `vmid` (`one-VMID`):
/// file disks at `disks` (the system datastore's `disk.N`), raw,
/// `cache='none'`, virtio; the test guest's serial console appended to
/// `console`.
pub fn deployment_xml(vmid: u32, disks: &[PathBuf], console: &Path) -> String {
    let mut devs = String::new();
    for (i, d) in disks.iter().enumerate() {
        devs.push_str(&format!(
            "<disk type='file' device='disk'><source file='{}'/><target dev='vd{}' bus='virtio'/>\
             <driver name='qemu' type='raw' cache='none'/></disk>",
            d.display(),
            (b'a' + i as u8) as char
        ));
    }
    format!(
        "<domain type='qemu'><name>one-{vmid}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <sysinfo type='smbios'><system><entry name='serial'>one-{vmid}</entry></system></sysinfo>\
         <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/><smbios mode='sysinfo'/></os>\
         <features><acpi/></features><on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{devs}\
         <serial type='file'><source path='{}' append='on'/><target port='0'/></serial>\
         <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
        console.display()
    )
}
