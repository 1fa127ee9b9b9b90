//! The FUSE file system: a root directory with one regular file per volume.
//!
//! Requests whose data is local are answered on the FUSE thread that got
//! them; anything that waits for the network (fetches, leases, commits,
//! poold calls) is moved to a tokio task that replies when it is done, so a
//! slow fetch never holds up reads of local data.
//!
//! Permissions are the kernel's (`default_permissions`): the attributes in
//! `helpers.rs` carry the owners and modes `access.rs` describes.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, FileType, Filesystem, Generation, INodeNo,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

pub mod access;
mod helpers;

use helpers::fopen_flags;

use crate::ioctl;
use crate::trace::Tracer;
use crate::volumes::{OpError, Volumes};

const TTL: Duration = Duration::from_secs(1);

thread_local! {
    /// Each FUSE thread's buffer for the reads it answers itself: reused,
    /// so a read pays neither an allocation nor clearing the buffer.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The mounted file system.
pub struct Fs {
    vols: Arc<Volumes>,
    rt: tokio::runtime::Handle,
    started: SystemTime,
    trace: Option<Arc<Tracer>>,
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

/// Replies to a request that returns no data, logging a failure.
fn answer(reply: ReplyEmpty, op: &str, r: Result<(), OpError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => {
            log_err(op, &e);
            reply.error(errno(e.errno))
        }
    }
}

fn log_err(op: &str, e: &OpError) {
    if e.errno == libc::ENOENT {
        tracing::debug!("{op}: {}", e.msg);
    } else {
        tracing::warn!("{op} failed: {}", e.msg);
    }
}

impl Fs {
    pub fn new(vols: Arc<Volumes>, rt: tokio::runtime::Handle) -> Self {
        Fs {
            vols,
            rt,
            started: SystemTime::now(),
            trace: None,
        }
    }

    /// Logs every read of a volume file to `trace` (`--trace-reads`).
    pub fn with_trace(mut self, trace: Option<Arc<Tracer>>) -> Self {
        self.trace = trace;
        self
    }

    fn name_of(&self, ino: INodeNo) -> Option<String> {
        self.vols.by_ino(ino.0).map(|e| e.name)
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        // The kernel keeps the smaller of its offer (128 KiB) and this; the
        // mount's real read-ahead is set in sysfs after mounting (see
        // `daemon::set_read_ahead`).
        let _ = config.set_max_readahead(128 * 1024);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(e) = self.vols.by_name(&name) {
            return reply.entry(&TTL, &self.attr(&e), Generation(0));
        }
        // Not listed yet: ask poold (a volume created elsewhere just now).
        let vols = self.vols.clone();
        let fs = self.clone_for_task();
        self.rt.spawn(async move {
            match vols.fetch_entry(&name).await {
                Ok(e) => reply.entry(&TTL, &fs.attr(&e), Generation(0)),
                Err(e) => reply.error(errno(e.errno())),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.root_attr());
        }
        match self.vols.by_ino(ino.0) {
            Some(e) => reply.attr(&TTL, &self.attr(&e)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino == INodeNo::ROOT {
            return self.setattr_root(mode, uid, gid, reply);
        }
        let Some(name) = self.name_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let fs = self.clone_for_task();
        let vols = self.vols.clone();
        let perm = mode.map(|m| (m & 0o7777) as u16);
        self.rt.spawn(async move {
            // Ownership and mode are kept per host (libvirt chowns disks).
            let res = async {
                vols.set_owner(ino.0, perm, uid, gid).await?;
                if let Some(size) = size {
                    vols.set_size(&name, size).await?;
                }
                Ok::<_, OpError>(())
            }
            .await;
            match res {
                Ok(()) => match vols.by_name(&name) {
                    Some(e) => reply.attr(&TTL, &fs.attr(&e)),
                    None => reply.error(Errno::ENOENT),
                },
                Err(e) => {
                    log_err("setattr", &e);
                    reply.error(errno(e.errno))
                }
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (true, Some(name)) = (parent == INodeNo::ROOT, name.to_str().map(str::to_string))
        else {
            return reply.error(Errno::ENOENT);
        };
        let vols = self.vols.clone();
        self.rt
            .spawn(async move { answer(reply, "delete", vols.unlink(&name).await) });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (Some(name), Some(new)) = (name.to_str(), newname.to_str()) else {
            return reply.error(Errno::EINVAL);
        };
        if parent != INodeNo::ROOT || newparent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let (name, new) = (name.to_string(), new.to_string());
        let vols = self.vols.clone();
        self.rt
            .spawn(async move { answer(reply, "rename", vols.rename(&name, &new).await) });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(name) = self.name_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let pid = req.pid();
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let direct = flags.0 & libc::O_DIRECT != 0;
        let vols = self.vols.clone();
        self.rt.spawn(async move {
            match vols.open(&name, writable, pid).await {
                Ok((fh, _)) => reply.opened(FileHandle(fh), fopen_flags(direct)),
                Err(e) => {
                    log_err("open", &e);
                    reply.error(errno(e.errno))
                }
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (true, Some(name)) = (parent == INodeNo::ROOT, name.to_str().map(str::to_string))
        else {
            return reply.error(Errno::EINVAL);
        };
        let vols = self.vols.clone();
        let fs = self.clone_for_task();
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let direct = flags & libc::O_DIRECT != 0;
        let pid = req.pid();
        // The kernel checked that the caller may write the root; the new
        // file is the caller's.
        let owner = (access::created_mode(mode, umask), req.uid(), req.gid());
        self.rt.spawn(async move {
            let res = async {
                vols.create(&name, owner).await?;
                vols.open(&name, writable, pid).await
            }
            .await;
            match (res, vols.by_name(&name)) {
                (Ok((fh, _)), Some(e)) => reply.created(
                    &TTL,
                    &fs.attr(&e),
                    Generation(0),
                    FileHandle(fh),
                    fopen_flags(direct),
                ),
                (Ok(_), None) => reply.error(Errno::EIO),
                (Err(e), _) => {
                    log_err("create", &e);
                    reply.error(errno(e.errno))
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = self.vols.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if let Some(t) = &self.trace {
            t.record(&h.mirror.name(), offset, size as u64, h.mirror.size());
        }
        let read = self.vols.metrics.read_bytes.clone();
        // Served here when every chunk is local (or just fetched), from
        // this thread's reused buffer; otherwise a task fetches first.
        let mut reply = Some(reply);
        READ_BUF.with_borrow_mut(|buf| {
            let r = h.mirror.try_read_local(offset, size as u64, buf)?;
            let reply = reply.take()?;
            match r {
                Ok(n) => {
                    read.inc_by(n as u64);
                    reply.data(&buf[..n])
                }
                Err(e) => reply.error(errno(e)),
            }
            Some(())
        });
        if let Some(reply) = reply {
            self.rt.spawn(async move {
                match h.mirror.read(offset, size as u64).await {
                    Ok(b) => {
                        read.inc_by(b.len() as u64);
                        reply.data(&b)
                    }
                    Err(e) => reply.error(errno(e)),
                }
            });
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(h) = self.vols.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if !h.writable {
            return reply.error(Errno::EBADF);
        }
        let written = self.vols.metrics.written_bytes.clone();
        match h.mirror.try_write_local(offset, data) {
            Some(Ok(n)) => {
                written.inc_by(n as u64);
                reply.written(n as u32)
            }
            Some(Err(e)) => reply.error(errno(e)),
            None => {
                let data = data.to_vec();
                self.rt.spawn(async move {
                    match h.mirror.write(offset, &data).await {
                        Ok(n) => {
                            written.inc_by(n as u64);
                            reply.written(n as u32)
                        }
                        Err(e) => reply.error(errno(e)),
                    }
                });
            }
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.sync(fh, true, req.pid(), reply);
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(fh, false, req.pid(), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _g = self.rt.enter();
        self.vols.release(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut all = vec![
            (INodeNo::ROOT, FileType::Directory, ".".to_string()),
            (INodeNo::ROOT, FileType::Directory, "..".to_string()),
        ];
        all.extend(
            self.vols
                .list()
                .into_iter()
                .map(|e| (INodeNo(e.ino), FileType::RegularFile, e.name)),
        );
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.vols.vols_dir) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(_) => reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // No xattrs at all (setxattr is unimplemented, i.e. EOPNOTSUPP):
        // libvirt's DAC driver then skips remember_owner instead of failing.
        reply.error(Errno::EOPNOTSUPP);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let Some(h) = self.vols.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // Both publish what was written: only for a file open for writing.
        if !h.writable {
            return reply.error(Errno::EBADF);
        }
        let vols = self.vols.clone();
        match cmd as u64 {
            c if c == ioctl::COMMIT as u64 => {
                self.rt.spawn(async move {
                    match h.mirror.commit().await {
                        Ok(o) => reply.ioctl(0, &o.version.to_le_bytes()),
                        Err(e) => {
                            tracing::warn!("COMMIT ioctl failed: {e}");
                            reply.error(errno(e.errno()))
                        }
                    }
                });
            }
            c if c == ioctl::CLONE as u64 => {
                let Some(new) = ioctl::parse_name(in_data) else {
                    return reply.error(Errno::EINVAL);
                };
                // A new name in the root, which the kernel does not check.
                if !access::may_change_names(req.uid(), req.gid(), req.pid()) {
                    tracing::warn!(volume = %h.mirror.name(), new_name = %new, uid = req.uid(), "CLONE ioctl refused: only root and group {} may create volumes", access::ADMIN_GROUP);
                    return reply.error(Errno::EACCES);
                }
                self.rt.spawn(async move {
                    match vols.clone_volume(&h.mirror.name(), &new).await {
                        Ok(v) => {
                            let mut out = [0u8; ioctl::NAME_MAX];
                            out[..8].copy_from_slice(&v.to_le_bytes());
                            reply.ioctl(0, &out)
                        }
                        Err(e) => {
                            log_err("CLONE ioctl", &e);
                            reply.error(errno(e.errno))
                        }
                    }
                });
            }
            _ => reply.error(Errno::ENOTTY),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let vols = self.vols.clone();
        self.rt.spawn(async move {
            match vols.fallocate(fh.0, offset, length, mode).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(h) = self.vols.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        match h.mirror.seek(offset.max(0) as u64, data) {
            Ok(p) => reply.offset(p as i64),
            Err(e) => reply.error(errno(e)),
        }
    }
}
