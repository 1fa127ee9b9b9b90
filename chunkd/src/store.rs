//! The on-disk chunk store: a packed, append-only layout, verified Get,
//! quarantine of corrupt chunks, batched Has/Delete and the counters.
//!
//! Layout under the data directory:
//! - `packs/<seq>.{open,staged,pack}` — segments of records in the format of
//!   [`blobvirt_core::pack`] (a 64-byte header, then the chunk's bytes). `.open`
//!   takes durable Puts, `.staged` takes staged Puts and PutLocal batches
//!   until a Flush, `.pack` is sealed (see [`segments`]);
//! - `tmp/` — batch files that clients of this machine write for PutLocal
//!   (emptied at open);
//! - `corrupt/` — copies of chunks whose bytes no longer matched their id.
//!
//! An in-memory index maps every chunk id to its record; it is rebuilt from
//! the headers at open. One record replaces one file per chunk: no inode,
//! no rename and no directory sync per chunk, and one `fdatasync` makes a
//! whole staged segment durable. A Put is acknowledged only once its record
//! is durable, a staged Put once written (Flush makes it durable). Delete
//! marks the record dead in place, syncs, then punches its data out; a
//! sealed segment with no live record is removed. All methods block; call
//! them from blocking threads.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use blobvirt_core::{pack, ChunkId};
use bytes::Bytes;
use nix::errno::Errno;

use crate::durable::{Durability, Syncer};
use segments::{Inner, Kind, Loc, Writer};

pub mod scan;
pub mod segments;
pub mod staged;

/// Errors of store operations; the service maps them to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk id is {0} bytes instead of 32; send the BLAKE3-256 digest of the chunk")]
    BadId(usize),
    #[error("data of {len} bytes does not hash to chunk {chunk}; it was not stored, send the chunk again")]
    HashMismatch { chunk: ChunkId, len: usize },
    #[error("{0} is not a batch file for PutLocal in this node's tmp/ (a name starting with \"in.\", records in the pack format); send the chunks with Put")]
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

/// Where a chunk's bytes are (Locate): its segment file and data range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub data_at: u64,
    pub len: u64,
}

/// A chunk store in one data directory.
pub struct Store {
    node: String,
    packs_dir: PathBuf,
    tmp_dir: PathBuf,
    corrupt_dir: PathBuf,
    inner: Mutex<Inner>,
    /// The segment durable Puts append to.
    open: Mutex<Option<Writer>>,
    /// The segment staged Puts append to.
    staging: Mutex<Option<Writer>>,
    flush_lock: Mutex<()>,
    sync: Syncer,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for node `node`: empties
    /// `tmp/`, rebuilds the index from the segments (cutting a torn tail off)
    /// and moves chunks of the old one-file-per-chunk layout into segments.
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
        let packs_dir = dir.join("packs");
        let tmp_dir = dir.join("tmp");
        let corrupt_dir = dir.join("corrupt");
        for d in [&packs_dir, &corrupt_dir] {
            fs::create_dir_all(d).map_err(io("create", d))?;
        }
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(io("clear", &tmp_dir))?;
        }
        fs::create_dir_all(&tmp_dir).map_err(io("create", &tmp_dir))?;
        let packs = fs::File::open(&packs_dir).map_err(io("open", &packs_dir))?;
        for d in [&packs_dir, dir] {
            fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", d))?;
        }
        let store = Store {
            node: node.to_string(),
            packs_dir,
            tmp_dir,
            corrupt_dir,
            inner: Mutex::new(Inner::default()),
            open: Mutex::new(None),
            staging: Mutex::new(None),
            flush_lock: Mutex::new(()),
            sync: Syncer::new(packs, mode),
        };
        store.load()?;
        store.migrate(&dir.join("chunks"))?;
        Ok(store)
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    pub fn durability(&self) -> Durability {
        self.sync.mode()
    }

    /// The `packs/` directory.
    pub fn packs_dir(&self) -> &Path {
        &self.packs_dir
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    pub(crate) fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store index lock")
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

    /// Stores `data` as chunk `id`. Returns false when it was already there.
    /// Returns only once the chunk is durable.
    pub fn put(&self, id: &ChunkId, data: &[u8]) -> Result<bool, StoreError> {
        self.check(id, data)?;
        if self.inner().index.get(id).is_some_and(|l| l.durable) {
            return Ok(false);
        }
        let (seg, off, file) = {
            let mut w = self.open.lock().expect("open segment lock");
            self.append(&mut w, Kind::Open, id, data)?
        };
        self.sync
            .data(&file)
            .map_err(|e| self.io_err("sync", &self.packs_dir, e))?;
        let loc = Loc {
            seg,
            off,
            len: data.len() as u64,
            durable: true,
        };
        Ok(self.inner().insert(*id, loc, &file))
    }

    /// Reads chunk `id`, re-verifying its hash. A corrupt chunk is copied to
    /// `corrupt/`, dropped from the store and reported as
    /// [`StoreError::Corrupt`]; its bytes are never returned.
    pub fn get(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        let found = self.inner().lookup(id);
        let Some((loc, file, path)) = found else {
            return Err(StoreError::NotFound {
                chunk: *id,
                node: self.node.clone(),
            });
        };
        let data = match pack::read_data(&file, loc.off, loc.len) {
            Ok(d) => d,
            // Cut short: corrupt, unless it was deleted meanwhile (below).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Vec::new(),
            Err(e) => return Err(self.io_err("read", &path, e)),
        };
        if id.verifies(&data) {
            return Ok(Bytes::from(data));
        }
        if self.inner().index.get(id) != Some(&loc) {
            // Deleted (and punched) while it was read.
            return Err(StoreError::NotFound {
                chunk: *id,
                node: self.node.clone(),
            });
        }
        self.quarantine(id, &data);
        Err(StoreError::Corrupt {
            chunk: *id,
            node: self.node.clone(),
        })
    }

    /// Where chunk `id`'s bytes are, for a reader on this machine; the
    /// reader checks the hash of what it reads like any answer.
    pub fn locate(&self, id: &ChunkId) -> Result<Location, StoreError> {
        let mut run = self.locate_run(id, 0)?;
        Ok(run.swap_remove(0).1)
    }

    /// Where chunk `id` is, followed by up to `more` of the records after
    /// it in its segment that the index also points at (in file order), so a
    /// client reading sequentially asks once per run of chunks. Headers are
    /// read outside the index lock; a neighbour is checked against the index
    /// afterwards, and a client hash-checks whatever it reads anyway.
    pub fn locate_run(
        &self,
        id: &ChunkId,
        more: usize,
    ) -> Result<Vec<(ChunkId, Location)>, StoreError> {
        let Some((loc, file, path)) = self.inner().lookup(id) else {
            return Err(StoreError::NotFound {
                chunk: *id,
                node: self.node.clone(),
            });
        };
        let at = |off: u64, len: u64| Location {
            file: path.clone(),
            data_at: off + pack::HEADER,
            len,
        };
        let mut out = vec![(*id, at(loc.off, loc.len))];
        let mut next = Vec::new();
        let mut off = loc.off + pack::HEADER + loc.len;
        let mut h = [0u8; pack::HEADER as usize];
        while next.len() < more && file.read_exact_at(&mut h, off).is_ok() {
            let Some(hd) = pack::decode(&h) else { break };
            if hd.live {
                next.push((hd.id, off, hd.len));
            }
            off += pack::HEADER + hd.len;
        }
        let g = self.inner();
        for (nid, noff, nlen) in next {
            if g.index
                .get(&nid)
                .is_some_and(|l| l.seg == loc.seg && l.off == noff)
            {
                out.push((nid, at(noff, nlen)));
            }
        }
        Ok(out)
    }

    fn quarantine(&self, id: &ChunkId, data: &[u8]) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let to = self.corrupt_dir.join(format!("{}.{nanos}", id.to_hex()));
        if let Err(e) = fs::write(&to, data) {
            tracing::warn!(chunk = %id, "could not keep a copy of corrupt chunk {id} in {}: {e}", to.display());
        }
        match self.delete(&[*id]) {
            Ok(_) => {
                tracing::error!(chunk = %id, node = %self.node, copied_to = %to.display(),
                    "chunk {id} on chunkd node {} is corrupt; quarantined it", self.node);
            }
            Err(e) => {
                tracing::error!(chunk = %id, node = %self.node,
                    "chunk {id} on chunkd node {} is corrupt and could not be dropped: {e}", self.node);
            }
        }
    }

    /// Which of `ids` are present and durable, in order.
    pub fn has(&self, ids: &[ChunkId]) -> Vec<bool> {
        let inner = self.inner();
        ids.iter()
            .map(|id| inner.index.get(id).is_some_and(|l| l.durable))
            .collect()
    }

    /// Removes the chunks present among `ids` (staged ones too); returns
    /// how many durable chunks it removed. Each record is marked dead and
    /// synced before its data is punched out, so a crash never brings back
    /// a record whose data is gone.
    pub fn delete(&self, ids: &[ChunkId]) -> Result<u64, StoreError> {
        let (gone, deleted) = self.inner().remove(ids);
        let mut touched = HashSet::new();
        for (loc, file, path) in &gone {
            pack::set_state(file, loc.off, pack::DEAD)
                .map_err(|e| self.io_err("mark a deleted chunk in", path, e))?;
            touched.insert(loc.seg);
        }
        let files: Vec<(fs::File, PathBuf)> = {
            let inner = self.inner();
            touched
                .iter()
                .filter_map(|s| inner.segs.get(s))
                .filter_map(|s| s.file.try_clone().ok().map(|f| (f, s.path.clone())))
                .collect()
        };
        let refs: Vec<&fs::File> = files.iter().map(|(f, _)| f).collect();
        self.sync
            .files(&refs)
            .map_err(|e| self.io_err("sync deletions in", &self.packs_dir, e))?;
        for (loc, file, path) in &gone {
            if let Err(e) = segments::punch(file, loc.off + pack::HEADER, loc.len) {
                tracing::warn!(path = %path.display(), "could not free the space of a deleted chunk: {e}");
            }
        }
        self.reap(&touched)?;
        Ok(deleted)
    }

    /// Chunk and byte counts plus the space of the file system.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let vfs = nix::sys::statvfs::statvfs(&self.packs_dir)
            .map_err(|e| self.io_err("statvfs", &self.packs_dir, e.into()))?;
        let frag = vfs.fragment_size() as u64;
        let inner = self.inner();
        Ok(Stats {
            node_id: self.node.clone(),
            chunks: inner.chunks,
            bytes: inner.bytes,
            free_bytes: vfs.blocks_available() as u64 * frag,
            total_bytes: vfs.blocks() as u64 * frag,
        })
    }
}

#[cfg(test)]
mod tests;
