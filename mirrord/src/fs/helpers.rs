//! Helpers of the FUSE file system: file attributes, `chmod`/`chown` of
//! the root, open flags, and the fsync/close path handed to the volume
//! table.

use std::time::UNIX_EPOCH;

use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo, ReplyAttr, ReplyEmpty};

use super::{errno, Fs, TTL};
use crate::volumes::Entry;

impl Fs {
    pub(super) fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind: FileType::Directory,
            perm: super::access::ROOT_MODE,
            nlink: 2,
            uid: 0,
            gid: super::access::admin_gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(super) fn attr(&self, e: &Entry) -> FileAttr {
        let (size, blocks) = match self.vols.attached(&e.name) {
            Some(m) => (m.size(), m.blocks()),
            None => (e.size, e.size.div_ceil(512)),
        };
        let t = if e.mtime == UNIX_EPOCH {
            self.started
        } else {
            e.mtime
        };
        FileAttr {
            ino: INodeNo(e.ino),
            size,
            blocks,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::RegularFile,
            perm: e.perm,
            nlink: 1,
            uid: e.uid,
            gid: e.gid,
            rdev: 0,
            blksize: 65536,
            flags: 0,
        }
    }
}

pub(super) fn fopen_flags(direct: bool) -> FopenFlags {
    if direct {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

impl Fs {
    /// `chmod`/`chown` of the mount root: its owner and mode are fixed (see
    /// `access.rs`), so only a change to what it already is succeeds (as
    /// libvirt's pool build does); anything else is `EPERM`.
    pub(super) fn setattr_root(
        &self,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        reply: ReplyAttr,
    ) {
        let a = self.root_attr();
        let same = mode.is_none_or(|m| (m & 0o7777) as u16 == a.perm)
            && uid.is_none_or(|u| u == a.uid)
            && gid.is_none_or(|g| g == a.gid);
        if same {
            return reply.attr(&TTL, &a);
        }
        tracing::warn!(
            ?mode,
            ?uid,
            ?gid,
            "refused to change the mount root: it stays {}:{} mode {:o} (see docs/mount.md)",
            a.uid,
            a.gid,
            a.perm
        );
        reply.error(Errno::EPERM)
    }

    pub(super) fn clone_for_task(&self) -> Fs {
        Fs {
            vols: self.vols.clone(),
            rt: self.rt.clone(),
            started: self.started,
            trace: self.trace.clone(),
        }
    }

    /// fsync, or with `closing` the flush of a close (see
    /// [`Volumes::sync_handle`]).
    pub(super) fn sync(&self, fh: FileHandle, closing: bool, pid: u32, reply: ReplyEmpty) {
        let vols = self.vols.clone();
        self.rt.spawn(async move {
            match vols.sync_handle(fh.0, closing, pid).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::error!("{} failed: {e}", if closing { "close" } else { "fsync" });
                    reply.error(errno(e.errno))
                }
            }
        });
    }
}
