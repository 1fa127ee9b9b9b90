//! Segments of the packed store and the in-memory index over them: appends,
//! the index's bookkeeping, removal of empty segments, and start-up (index
//! rebuild, torn tails, the move from the old one-file-per-chunk layout).
//!
//! Segment kinds, by file name `packs/<seq as 16 hex>.<kind>`:
//! - `.open` takes durable Puts, one record after another under a lock; a
//!   Put is acknowledged after an `fdatasync` of the segment, which also
//!   covers every earlier record. At 64 MiB it is renamed to `.pack`. At
//!   start every record of an `.open` segment is hash-checked (they may not
//!   all have been synced), a torn tail is cut off, and it is sealed.
//! - `.staged` takes staged Puts, and a PutLocal batch file becomes one
//!   (renamed from `tmp/`). Flush `fdatasync`s every staged segment,
//!   renames it to `.pack` and syncs the directory. Staged segments are
//!   removed at start: their chunks were never acknowledged as durable.
//! - `.pack` is sealed: only its records' state words change (Delete). At
//!   start only its headers are read; scrub checks the data.
//!
//! A segment's `live` count includes records appended but not yet in the
//! index (a Put waiting for its sync), so a segment is never removed under a
//! Put that is about to be acknowledged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blobvirt_core::{pack, ChunkId};

use super::{Store, StoreError};

/// Size at which a segment stops taking appends.
pub const SEGMENT_MAX: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Open,
    Staged,
    Sealed,
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Staged => "staged",
            Kind::Sealed => "pack",
        }
    }
}

/// Where a chunk's record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub seg: u64,
    /// Offset of the record's header.
    pub off: u64,
    pub len: u64,
    /// False while staged (not yet flushed).
    pub durable: bool,
}

pub struct Seg {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub kind: Kind,
    /// Live records, including appended ones not yet indexed.
    pub live: u64,
    /// Chunks staged in this segment (made durable by its Flush).
    pub staged_ids: Vec<ChunkId>,
}

/// The segment a kind of Put appends to.
pub struct Writer {
    pub seg: u64,
    pub file: Arc<File>,
    pub len: u64,
}

/// The index and the segments.
#[derive(Default)]
pub struct Inner {
    pub index: BTreeMap<ChunkId, Loc>,
    pub segs: HashMap<u64, Seg>,
    /// Durable chunks and their bytes.
    pub chunks: u64,
    pub bytes: u64,
    /// Staged chunks.
    pub staged: u64,
    pub next_seq: u64,
}

impl Inner {
    /// Indexes the record at `loc`, whose `live` was already reserved.
    /// False when the chunk is already there (durable, or staged while this
    /// record is staged too): the record is then marked dead.
    pub fn insert(&mut self, id: ChunkId, loc: Loc, file: &File) -> bool {
        if let Some(old) = self.index.get(&id).copied() {
            if old.durable || !loc.durable {
                self.drop_record(&loc, file);
                return false;
            }
            // A durable record replaces a staged one.
            if let Some(s) = self.segs.get(&old.seg) {
                let f = s.file.clone();
                self.drop_record(&old, &f);
            }
            self.staged -= 1;
        }
        self.index.insert(id, loc);
        if loc.durable {
            self.chunks += 1;
            self.bytes += loc.len;
        } else {
            self.staged += 1;
            if let Some(s) = self.segs.get_mut(&loc.seg) {
                s.staged_ids.push(id);
            }
        }
        true
    }

    /// Marks a record that is not indexed dead and gives back its `live`.
    fn drop_record(&mut self, loc: &Loc, file: &File) {
        let _ = pack::set_state(file, loc.off, pack::DEAD);
        if let Some(s) = self.segs.get_mut(&loc.seg) {
            s.live = s.live.saturating_sub(1);
        }
    }

    /// A chunk's record, its segment's file and path.
    pub fn lookup(&self, id: &ChunkId) -> Option<(Loc, Arc<File>, PathBuf)> {
        let loc = *self.index.get(id)?;
        let s = self.segs.get(&loc.seg)?;
        Some((loc, s.file.clone(), s.path.clone()))
    }

    /// Takes `ids` out of the index; returns their records and how many of
    /// them were durable.
    pub fn remove(&mut self, ids: &[ChunkId]) -> (Vec<(Loc, Arc<File>, PathBuf)>, u64) {
        let mut out = Vec::new();
        let mut durable = 0;
        for id in ids {
            let Some(loc) = self.index.remove(id) else {
                continue;
            };
            if loc.durable {
                durable += 1;
                self.chunks -= 1;
                self.bytes -= loc.len;
            } else {
                self.staged -= 1;
            }
            if let Some(s) = self.segs.get_mut(&loc.seg) {
                s.live = s.live.saturating_sub(1);
                out.push((loc, s.file.clone(), s.path.clone()));
            }
        }
        (out, durable)
    }

    /// Reserves a sequence number and names its segment file.
    pub fn next_path(&mut self, packs: &Path, kind: Kind) -> (u64, PathBuf) {
        let seq = self.next_seq;
        self.next_seq += 1;
        (seq, packs.join(format!("{seq:016x}.{}", kind.ext())))
    }
}

/// Frees the bytes of a deleted record's data.
pub fn punch(f: &File, off: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::FallocateFlags as F;
    nix::fcntl::fallocate(
        f.as_raw_fd(),
        F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
        off as i64,
        len as i64,
    )
    .map_err(io::Error::from)
}

/// The new name of a segment renamed to `kind`.
pub fn renamed(path: &Path, kind: Kind) -> PathBuf {
    path.with_extension(kind.ext())
}

impl Store {
    /// Creates a segment of `kind` and its writer. An `.open` segment's name
    /// is made durable before any Put in it is acknowledged.
    fn new_segment(&self, kind: Kind) -> Result<Writer, StoreError> {
        let (seq, path) = self.inner().next_path(&self.packs_dir, kind);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| self.io_err("create", &path, e))?;
        if kind == Kind::Open {
            self.sync
                .names()
                .map_err(|e| self.io_err("sync", &self.packs_dir, e))?;
        }
        let file = Arc::new(file);
        self.inner().segs.insert(
            seq,
            Seg {
                file: file.clone(),
                path,
                kind,
                live: 0,
                staged_ids: Vec::new(),
            },
        );
        Ok(Writer {
            seg: seq,
            file,
            len: 0,
        })
    }

    /// Appends a record of `data` to the writer's segment (making a new one
    /// when there is none or it is full) and reserves its `live`. Returns
    /// (segment, header offset, file).
    pub(crate) fn append(
        &self,
        w: &mut Option<Writer>,
        kind: Kind,
        id: &ChunkId,
        data: &[u8],
    ) -> Result<(u64, u64, Arc<File>), StoreError> {
        if w.as_ref().is_some_and(|w| w.len >= SEGMENT_MAX) {
            let old = w.take().expect("a writer");
            if kind == Kind::Open {
                self.seal(old.seg)?;
            }
        }
        if w.is_none() {
            *w = Some(self.new_segment(kind)?);
        }
        let wr = w.as_mut().expect("a writer");
        match pack::write_record(&wr.file, wr.len, id, data) {
            Ok(end) => {
                let off = wr.len;
                wr.len = end;
                if let Some(s) = self.inner().segs.get_mut(&wr.seg) {
                    s.live += 1;
                }
                Ok((wr.seg, off, wr.file.clone()))
            }
            Err(e) => {
                let _ = wr.file.set_len(wr.len);
                Err(self.io_err("append to a segment in", &self.packs_dir, e))
            }
        }
    }

    /// Renames a full `.open` segment to `.pack`. (Both names load the same
    /// records, so the rename needs no directory sync of its own.)
    fn seal(&self, seg: u64) -> Result<(), StoreError> {
        let mut inner = self.inner();
        let Some(s) = inner.segs.get_mut(&seg) else {
            return Ok(());
        };
        let to = renamed(&s.path, Kind::Sealed);
        fs::rename(&s.path, &to).map_err(|e| self.io_err("seal", &s.path, e))?;
        s.path = to;
        s.kind = Kind::Sealed;
        drop(inner);
        self.reap(&HashSet::from([seg]))
    }

    /// Removes the sealed segments among `segs` that hold no live record.
    pub(crate) fn reap(&self, segs: &HashSet<u64>) -> Result<(), StoreError> {
        let mut inner = self.inner();
        for seq in segs {
            let empty = inner
                .segs
                .get(seq)
                .is_some_and(|s| s.live == 0 && s.kind == Kind::Sealed);
            if empty {
                let s = inner.segs.remove(seq).expect("present");
                match fs::remove_file(&s.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io_err("remove the empty segment", &s.path, e)),
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the index from `packs/` (see the module docs).
    pub(crate) fn load(&self) -> Result<(), StoreError> {
        let entries =
            fs::read_dir(&self.packs_dir).map_err(|e| self.io_err("list", &self.packs_dir, e))?;
        let mut found: Vec<(u64, Kind, PathBuf)> = Vec::new();
        for e in entries {
            let e = e.map_err(|e| self.io_err("list", &self.packs_dir, e))?;
            let path = e.path();
            let parsed = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| s.len() == 16)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .zip(match path.extension().and_then(|x| x.to_str()) {
                    Some("open") => Some(Kind::Open),
                    Some("staged") => Some(Kind::Staged),
                    Some("pack") => Some(Kind::Sealed),
                    _ => None,
                });
            match parsed {
                Some((seq, kind)) => found.push((seq, kind, path)),
                None => {
                    tracing::warn!(path = %path.display(), "ignoring a file that is not a segment")
                }
            }
        }
        found.sort_by_key(|(seq, _, _)| *seq);
        let next = found.last().map_or(0, |(s, _, _)| s + 1);
        self.inner().next_seq = next;
        for (seq, kind, path) in found {
            if kind == Kind::Staged {
                fs::remove_file(&path).map_err(|e| self.io_err("remove", &path, e))?;
                continue;
            }
            self.load_segment(seq, kind, path)?;
        }
        self.sync
            .names()
            .map_err(|e| self.io_err("sync", &self.packs_dir, e))
    }

    fn load_segment(&self, seq: u64, kind: Kind, path: PathBuf) -> Result<(), StoreError> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| self.io_err("open", &path, e))?;
        let s = pack::scan(&file).map_err(|e| self.io_err("read", &path, e))?;
        let mut end = s.end;
        let mut good = Vec::new();
        for (off, h) in s.records {
            if !h.live {
                continue;
            }
            if kind == Kind::Open {
                // Not every record of an open segment was synced: keep
                // those whose data is whole, cut the store off at the first
                // that is not (a Put acknowledged after it would have
                // synced it).
                let ok = pack::read_data(&file, off, h.len).is_ok_and(|d| h.id.verifies(&d));
                if !ok {
                    end = off;
                    break;
                }
            }
            good.push((off, h));
        }
        if end < s.file_len {
            if kind == Kind::Open {
                tracing::warn!(path = %path.display(), cut = s.file_len - end,
                    "cutting the torn tail off a segment (writes that were never acknowledged)");
                file.set_len(end)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| self.io_err("truncate", &path, e))?;
            } else {
                tracing::error!(path = %path.display(), unreadable = s.file_len - end,
                    "segment has bytes after its last readable record; they are ignored, and repair passes copy their chunks back from other replicas");
            }
        }
        let path = if kind == Kind::Open {
            let to = renamed(&path, Kind::Sealed);
            fs::rename(&path, &to).map_err(|e| self.io_err("seal", &path, e))?;
            to
        } else {
            path
        };
        let file = Arc::new(file);
        let mut inner = self.inner();
        inner.segs.insert(
            seq,
            Seg {
                file: file.clone(),
                path: path.clone(),
                kind: Kind::Sealed,
                live: good.len() as u64,
                staged_ids: Vec::new(),
            },
        );
        for (off, h) in good {
            let loc = Loc {
                seg: seq,
                off,
                len: h.len,
                durable: true,
            };
            inner.insert(h.id, loc, &file);
        }
        drop(inner);
        self.reap(&HashSet::from([seq]))
    }

    /// Moves the chunks of the old layout (`chunks/<xx>/<hex>`, one file per
    /// chunk) into segments, once; a file that does not hash to its name goes
    /// to `corrupt/`.
    pub(crate) fn migrate(&self, chunks: &Path) -> Result<(), StoreError> {
        if !chunks.is_dir() {
            return Ok(());
        }
        let mut moved = 0u64;
        for p in 0..256 {
            let d = chunks.join(format!("{p:02x}"));
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let id = e.file_name().to_str().and_then(ChunkId::from_hex);
                let data = fs::read(&path).map_err(|e| self.io_err("read", &path, e))?;
                match id {
                    Some(id) if id.verifies(&data) => {
                        self.put_staged(&id, &data)?;
                        moved += 1;
                    }
                    _ => {
                        let to = self.corrupt_dir.join(e.file_name());
                        tracing::warn!(path = %path.display(), "old chunk file does not hash to its name; moved to {}", to.display());
                        let _ = fs::rename(&path, &to);
                    }
                }
            }
        }
        self.flush()?;
        fs::remove_dir_all(chunks).map_err(|e| self.io_err("remove", chunks, e))?;
        if let Some(parent) = chunks.parent() {
            let _ = File::open(parent).and_then(|f| f.sync_all());
        }
        tracing::info!(node = %self.node, chunks = moved, "moved the chunks of the one-file-per-chunk layout into packs/");
        Ok(())
    }
}
