//! Who may do what on the mount and on the control socket.
//!
//! The mount is made with `allow_other` (QEMU runs as libvirt's QEMU user,
//! not as root) and `default_permissions`, so the kernel checks every
//! access against the modes and owners mirrord reports; mirrord itself
//! checks only what the kernel cannot see (the CLONE ioctl, which makes a
//! new volume).
//!
//! * The mount root is `root:blobvirt`, mode [`ROOT_MODE`] (`0771`): root
//!   and group `blobvirt` may create, delete and rename volumes; others may
//!   only reach a volume whose name they know (QEMU opens its disk by
//!   path) and may not list the directory.
//! * A volume file is `root:root` mode [`FILE_MODE`] (`0600`) until
//!   someone changes it (libvirt's DAC driver chowns it to QEMU's user and
//!   back); a file created through the mount belongs to its creator, with
//!   the requested mode cut down to `0600`. Changes are kept per host.
//! * The control socket is `root:blobvirt` mode [`SOCKET_MODE`] (`0660`).
//!
//! Without a group `blobvirt` on the host, gid 0 takes its place (logged
//! once): only root may then change names or use the control socket.

use std::sync::OnceLock;

/// The group that may manage volumes and use the control socket.
pub const ADMIN_GROUP: &str = "blobvirt";
/// Mode of the mount root: rwx for root and the group, search for others.
pub const ROOT_MODE: u16 = 0o771;
/// Mode of a volume file nobody changed.
pub const FILE_MODE: u16 = 0o600;
/// Mode of the control socket.
pub const SOCKET_MODE: u32 = 0o660;

/// The gid of group [`ADMIN_GROUP`], or 0 when the host has no such group
/// (logged the first time).
pub fn admin_gid() -> u32 {
    static GID: OnceLock<u32> = OnceLock::new();
    *GID.get_or_init(|| match nix::unistd::Group::from_name(ADMIN_GROUP) {
        Ok(Some(g)) => g.gid.as_raw(),
        Ok(None) => {
            tracing::warn!(
                group = ADMIN_GROUP,
                "group {ADMIN_GROUP} does not exist on this host, so only root may create, delete or rename volumes on the mount and use the control socket; create it with groupadd --system {ADMIN_GROUP} and restart mirrord to let its members do so"
            );
            0
        }
        Err(e) => {
            tracing::warn!(
                group = ADMIN_GROUP,
                "cannot look up group {ADMIN_GROUP} ({e}), so only root may create, delete or rename volumes on the mount and use the control socket; check /etc/nsswitch.conf and restart mirrord"
            );
            0
        }
    })
}

/// The mode a file created through the mount starts with: the requested
/// one (`mode` of `open(O_CREAT)`, less the `umask`) with nothing beyond
/// [`FILE_MODE`], so `cp` of a world-readable image makes no
/// world-readable disk. The creator widens it with `chmod`.
pub fn created_mode(mode: u32, umask: u32) -> u16 {
    (mode & !umask & u32::from(FILE_MODE)) as u16
}

/// True when the caller (`uid`, `gid`, thread `pid`) may add names to the
/// mount root, as the kernel would decide for an entry of mode
/// [`ROOT_MODE`] owned by `root:`[`admin_gid`]: root, or a member of the
/// group (primary or supplementary, from `/proc/PID/status`).
pub fn may_change_names(uid: u32, gid: u32, pid: u32) -> bool {
    let admin = admin_gid();
    uid == 0 || gid == admin || supplementary_groups(pid).contains(&admin)
}

/// The supplementary groups of thread `pid`; empty when it is gone.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_groups(&s))
        .unwrap_or_default()
}

fn parse_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_files_are_never_readable_by_others() {
        assert_eq!(created_mode(0o100666, 0o022), 0o600, "touch");
        assert_eq!(created_mode(0o644, 0o022), 0o600, "cp of a 0644 image");
        assert_eq!(created_mode(0o600, 0o077), 0o600);
        assert_eq!(created_mode(0o666, 0o277), 0o400, "umask is kept");
        assert_eq!(created_mode(0o4777, 0), 0o600, "no setuid");
    }

    #[test]
    fn groups_line() {
        let s = "Name:\tx\nUid:\t65534\t65534\t65534\t65534\nGroups:\t27 996 \nNgid:\t0\n";
        assert_eq!(parse_groups(s), Some(vec![27, 996]));
        assert_eq!(parse_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups("Name:\tx\n"), None);
    }

    #[test]
    fn root_may_always_change_names() {
        assert!(may_change_names(0, 12345, u32::MAX));
        // A process that is gone has no supplementary groups.
        let admin = admin_gid();
        assert_eq!(may_change_names(65534, 65534, u32::MAX), admin == 65534);
    }
}
