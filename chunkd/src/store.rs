//! The on-disk chunk store: layout, atomic Put, verified Get, quarantine of
//! corrupt chunks, batched Has/Delete and the chunk/byte counters.
//!
//! Layout under the data directory:
//! - `chunks/<first 2 hex>/<64 hex>` — one file per chunk, named by its
//!   BLAKE3-256 id; all 256 prefix directories are created at open;
//! - `tmp/` — Puts in progress (emptied at open);
//! - `corrupt/` — chunks whose bytes no longer match their id.
//!
//! A Put writes a temp file, makes it durable, renames it into place with
//! `RENAME_NOREPLACE` (so concurrent Puts of one id count it once) and makes
//! the rename durable through [`Syncer`] before it returns: a chunk is either
//! fully there or absent. All methods block; call them from blocking threads.
//! [`staged`] holds the Puts that are acknowledged before they are durable
//! and made durable in bulk by Flush, through the same [`Syncer`] (both
//! paths are described in [`crate::durable`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use blobvirt_core::ChunkId;
use bytes::Bytes;
use nix::errno::Errno;

use crate::durable::{Durability, Syncer};
use staged::Staged;

pub mod scan;
pub mod staged;

/// Errors of store operations; the service maps them to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk id is {0} bytes instead of 32; send the BLAKE3-256 digest of the chunk")]
    BadId(usize),
    #[error("data of {len} bytes does not hash to chunk {chunk}; it was not stored, send the chunk again")]
    HashMismatch { chunk: ChunkId, len: usize },
    #[error("{0} is not a file written for PutLocal in this node's tmp/ (a name starting with \"in.\"); send the chunk with Put")]
    BadFile(String),
    #[error("chunk {chunk} is not on chunkd node {node}")]
    NotFound { chunk: ChunkId, node: String },
    #[error("chunk {chunk} on chunkd node {node} is corrupt; it has been quarantined")]
    Corrupt { chunk: ChunkId, node: String },
    #[error("chunkd node {node} is out of disk space; free space or add nodes")]
    NoSpace { node: String },
    #[error("chunkd node {node} could not {op} {}: {source}", path.display())]
    Io {
        node: String,
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Parses a chunk id from its 32-byte wire form.
pub fn parse_id(b: &[u8]) -> Result<ChunkId, StoreError> {
    ChunkId::from_slice(b).ok_or(StoreError::BadId(b.len()))
}

/// Counters and space of one node, as reported by Stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub node_id: String,
    pub chunks: u64,
    pub bytes: u64,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// A chunk store in one data directory.
pub struct Store {
    node: String,
    chunks_dir: PathBuf,
    tmp_dir: PathBuf,
    corrupt_dir: PathBuf,
    chunks: AtomicU64,
    bytes: AtomicU64,
    seq: AtomicU64,
    sync: Syncer,
    staged: Staged,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for node `node`, empties
    /// `tmp/` and counts the chunks present.
    pub fn open(dir: &Path, node: &str) -> Result<Store, StoreError> {
        Store::open_with(dir, node, Durability::default())
    }

    /// Like [`Store::open`] with an explicit durability mode.
    pub fn open_with(dir: &Path, node: &str, mode: Durability) -> Result<Store, StoreError> {
        let io = |op, path: &Path| {
            let node = node.to_string();
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                node,
                op,
                path,
                source,
            }
        };
        let chunks_dir = dir.join("chunks");
        let tmp_dir = dir.join("tmp");
        let corrupt_dir = dir.join("corrupt");
        for d in [&chunks_dir, &corrupt_dir] {
            fs::create_dir_all(d).map_err(io("create", d))?;
        }
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(io("clear", &tmp_dir))?;
        }
        fs::create_dir_all(&tmp_dir).map_err(io("create", &tmp_dir))?;
        let mut dirs = Vec::with_capacity(256);
        for p in 0..256 {
            let d = chunks_dir.join(format!("{p:02x}"));
            fs::create_dir_all(&d).map_err(io("create", &d))?;
            dirs.push(File::open(&d).map_err(io("open", &d))?);
        }
        for d in [&chunks_dir, dir] {
            File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", d))?;
        }
        let store = Store {
            node: node.to_string(),
            chunks_dir,
            tmp_dir,
            corrupt_dir,
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            sync: Syncer::new(dirs, mode),
            staged: Staged::default(),
        };
        let (n, b) = store.scan()?;
        store.chunks.store(n, Ordering::Relaxed);
        store.bytes.store(b, Ordering::Relaxed);
        Ok(store)
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    pub fn durability(&self) -> Durability {
        self.sync.mode()
    }

    /// The `chunks/` directory (see [`blobvirt_core::chunk::chunk_file`]).
    pub fn chunks_dir(&self) -> &Path {
        &self.chunks_dir
    }

    /// Path of a chunk's file.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        blobvirt_core::chunk::chunk_file(&self.chunks_dir, id)
    }

    pub fn staged(&self) -> &Staged {
        &self.staged
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// A fresh temp file name for chunk `id`.
    pub(crate) fn tmp_path(&self, id: &ChunkId) -> PathBuf {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir.join(format!("{}.{seq}", id.to_hex()))
    }

    /// Refuses data that does not hash to `id`.
    pub(crate) fn check(&self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        if id.verifies(data) {
            Ok(())
        } else {
            Err(StoreError::HashMismatch {
                chunk: *id,
                len: data.len(),
            })
        }
    }

    /// Counts one more stored chunk of `len` bytes.
    pub(crate) fn count(&self, len: u64) {
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
    }

    pub(crate) fn io_err(&self, op: &'static str, path: &Path, source: io::Error) -> StoreError {
        if matches!(
            Errno::from_raw(source.raw_os_error().unwrap_or(0)),
            Errno::ENOSPC | Errno::EDQUOT
        ) {
            return StoreError::NoSpace {
                node: self.node.clone(),
            };
        }
        StoreError::Io {
            node: self.node.clone(),
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Counts the chunk files (and their bytes) under `chunks/`.
    fn scan(&self) -> Result<(u64, u64), StoreError> {
        let (mut n, mut b) = (0, 0);
        for p in 0..256 {
            let d = self.chunks_dir.join(format!("{p:02x}"));
            let entries = fs::read_dir(&d).map_err(|e| self.io_err("scan", &d, e))?;
            for e in entries {
                let e = e.map_err(|e| self.io_err("scan", &d, e))?;
                let name = e.file_name();
                let ok = name
                    .to_str()
                    .and_then(ChunkId::from_hex)
                    .is_some_and(|id| id.0[0] == p as u8);
                match e.metadata() {
                    Ok(m) if ok && m.is_file() => {
                        n += 1;
                        b += m.len();
                    }
                    _ => {
                        tracing::warn!(path = %e.path().display(), "ignoring a file that is not a chunk")
                    }
                }
            }
        }
        Ok((n, b))
    }

    /// Stores `data` as chunk `id`. Returns false when it was already there.
    /// Returns only once the chunk is durable.
    pub fn put(&self, id: &ChunkId, data: &[u8]) -> Result<bool, StoreError> {
        self.check(id, data)?;
        let dst = self.chunk_path(id);
        if dst.exists() {
            return Ok(false);
        }
        let tmp = self.tmp_path(id);
        let res = self.put_tmp(&tmp, &dst, data);
        if !matches!(res, Ok(true)) {
            let _ = fs::remove_file(&tmp);
        }
        let stored = res?;
        if stored {
            self.count(data.len() as u64);
            self.sync
                .names(id.0[0])
                .map_err(|e| self.io_err("sync the directory of", &dst, e))?;
        }
        Ok(stored)
    }

    /// Writes, syncs and renames the temp file; false when `dst` appeared
    /// meanwhile (the temp file is then left for the caller to remove).
    fn put_tmp(&self, tmp: &Path, dst: &Path, data: &[u8]) -> Result<bool, StoreError> {
        let f = self.write_tmp(tmp, data)?;
        self.sync
            .data(&f)
            .map_err(|e| self.io_err("sync", tmp, e))?;
        drop(f);
        rename_noreplace(tmp, dst).map_err(|e| self.io_err("rename into", dst, e))
    }

    /// Writes `data` to the new temp file `tmp`, without syncing it (Puts
    /// and staged Puts).
    fn write_tmp(&self, tmp: &Path, data: &[u8]) -> Result<File, StoreError> {
        let mut f = File::create_new(tmp).map_err(|e| self.io_err("create", tmp, e))?;
        f.write_all(data)
            .map_err(|e| self.io_err("write", tmp, e))?;
        Ok(f)
    }

    /// Reads chunk `id`, re-verifying its hash. A corrupt chunk is moved to
    /// `corrupt/` and reported as [`StoreError::Corrupt`]; its bytes are never
    /// returned.
    pub fn get(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        let mut path = self.chunk_path(id);
        let read = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.staged.path_of(id) {
                Some(tmp) => {
                    path = tmp;
                    fs::read(&path)
                }
                None => Err(e),
            },
            r => r,
        };
        let data = match read {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    chunk: *id,
                    node: self.node.clone(),
                })
            }
            Err(e) => return Err(self.io_err("read", &path, e)),
        };
        if id.verifies(&data) {
            return Ok(Bytes::from(data));
        }
        self.quarantine(id, &path);
        Err(StoreError::Corrupt {
            chunk: *id,
            node: self.node.clone(),
        })
    }

    fn quarantine(&self, id: &ChunkId, path: &Path) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let to = self.corrupt_dir.join(format!("{}.{nanos}", id.to_hex()));
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        match fs::rename(path, &to) {
            Ok(()) => {
                self.forget(len);
                tracing::error!(chunk = %id, node = %self.node, moved_to = %to.display(),
                    "chunk {id} on chunkd node {} is corrupt; quarantined it", self.node);
            }
            Err(e) => {
                tracing::error!(chunk = %id, node = %self.node,
                    "chunk {id} on chunkd node {} is corrupt and could not be quarantined: {e}", self.node);
            }
        }
    }

    fn forget(&self, len: u64) {
        let _ = self
            .chunks
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(len))
            });
    }

    /// Which of `ids` are present, in order.
    pub fn has(&self, ids: &[ChunkId]) -> Vec<bool> {
        ids.iter().map(|id| self.chunk_path(id).is_file()).collect()
    }

    /// Removes the chunks present among `ids`; returns how many it removed.
    pub fn delete(&self, ids: &[ChunkId]) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for id in ids {
            if let Some(tmp) = self.staged.remove(id) {
                let _ = fs::remove_file(tmp);
            }
            let path = self.chunk_path(id);
            let len = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_err("inspect", &path, e)),
            };
            match fs::remove_file(&path) {
                Ok(()) => {
                    deleted += 1;
                    self.forget(len);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_err("delete", &path, e)),
            }
        }
        Ok(deleted)
    }

    /// Chunk and byte counts plus the space of the file system.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let vfs = nix::sys::statvfs::statvfs(&self.chunks_dir)
            .map_err(|e| self.io_err("statvfs", &self.chunks_dir, e.into()))?;
        let frag = vfs.fragment_size() as u64;
        Ok(Stats {
            node_id: self.node.clone(),
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            free_bytes: vfs.blocks_available() as u64 * frag,
            total_bytes: vfs.blocks() as u64 * frag,
        })
    }
}

/// `rename(2)` that refuses to replace: Ok(false) when `dst` exists.
pub(crate) fn rename_noreplace(src: &Path, dst: &Path) -> io::Result<bool> {
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, src, None, dst, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        // File systems without RENAME_NOREPLACE: link(2) refuses to replace.
        Err(Errno::EINVAL | Errno::ENOSYS) => match fs::hard_link(src, dst) {
            Ok(()) => {
                fs::remove_file(src)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
