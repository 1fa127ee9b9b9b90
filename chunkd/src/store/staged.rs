//! Staged Puts: chunks acknowledged before they are durable and made
//! durable in bulk by Flush, and PutLocal batches that a client of this
//! machine wrote itself.
//!
//! A bulk writer (an import, a COMMIT) stages all its chunks and then calls
//! Flush once before it publishes. Staged chunks are appended to a `.staged`
//! segment (`super::segments`) without a sync. A PutLocal batch is a file in
//! `tmp/` in the record format of [`blobvirt_core::pack`]: this node reads
//! every record, checks its hash, and then adopts the file as a staged
//! segment by renaming it into `packs/`, so the bytes are written once, by
//! the client, and starts writing it to disk in the background
//! ([`Syncer::early`](crate::durable::Syncer::early)). Flush `fdatasync`s
//! every staged segment (through the [`Syncer`](crate::durable::Syncer)),
//! renames it to `.pack` and syncs the directory; nothing else on the file
//! system is written back. A crash before Flush loses only staged segments,
//! which are removed at the next start and were never published.
//!
//! Flushes are serialised: a Flush returns only after every staged Put that
//! reached the node before it is durable, even one taken by a concurrent
//! Flush. Has answers false for a staged chunk (it is not durable yet); Get
//! serves it.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use blobvirt_core::{pack, ChunkId};

use super::segments::{renamed, Kind, Loc, Seg};
use super::{Store, StoreError};

impl Store {
    /// Appends chunk `id` to the staging segment without syncing it. Returns
    /// false when the chunk is already stored or staged.
    pub fn put_staged(&self, id: &ChunkId, data: &[u8]) -> Result<bool, StoreError> {
        self.check(id, data)?;
        if self.inner().index.contains_key(id) {
            return Ok(false);
        }
        let mut st = self.staging.lock().expect("staging lock");
        let (seg, off, file) = self.append(&mut st, Kind::Staged, id, data)?;
        let loc = Loc {
            seg,
            off,
            len: data.len() as u64,
            durable: false,
        };
        // Indexed under the staging lock, so a Flush that takes this
        // segment also sees its chunk.
        Ok(self.inner().insert(*id, loc, &file))
    }

    /// How many chunks are staged.
    pub fn staged_len(&self) -> u64 {
        self.inner().staged
    }

    /// Stages the chunks of `name` in `tmp/`, a batch file that a client of
    /// this machine wrote (PutLocal): checks every record against its id,
    /// then owns the file as a staged segment. Returns how many chunks were
    /// new and their bytes. A file that is not a well-formed batch, or whose
    /// records do not verify, is removed and refused.
    pub fn put_local_batch(&self, name: &str) -> Result<(u64, u64), StoreError> {
        if !name.starts_with("in.") || name.contains('/') || name.len() > 255 {
            return Err(StoreError::BadFile(name.to_string()));
        }
        let path = self.tmp_dir().join(name);
        let refuse = |e: StoreError| {
            let _ = std::fs::remove_file(&path);
            Err(e)
        };
        let open = |write: bool| -> std::io::Result<File> {
            let f = File::options()
                .read(true)
                .write(write)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&path)?;
            if !f.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            Ok(f)
        };
        let Ok(file) = open(false) else {
            return refuse(StoreError::BadFile(name.to_string()));
        };
        let scan = match pack::scan(&file) {
            Ok(s) if s.end == s.file_len => s,
            _ => return refuse(StoreError::BadFile(name.to_string())),
        };
        let mut records = Vec::new();
        for (off, h) in scan.records.into_iter().filter(|(_, h)| h.live) {
            let data = match pack::read_data(&file, off, h.len) {
                Ok(d) => d,
                Err(_) => return refuse(StoreError::BadFile(name.to_string())),
            };
            if let Err(e) = self.check(&h.id, &data) {
                return refuse(e);
            }
            records.push((off, h));
        }
        let bytes = records.iter().map(|(_, h)| h.len).sum();
        // The node marks deleted records in place, so it must be able to
        // write the file; one made by a user whose file it cannot write
        // (a client without the blobvirt group) is copied instead.
        let file = match open(true) {
            Ok(f) => f,
            Err(_) => {
                let mut new = 0;
                for (off, h) in &records {
                    let data = pack::read_data(&file, *off, h.len)
                        .map_err(|e| self.io_err("read", &path, e))?;
                    new += u64::from(self.put_staged(&h.id, &data)?);
                }
                let _ = std::fs::remove_file(&path);
                return Ok((new, bytes));
            }
        };
        let st = self.staging.lock().expect("staging lock");
        let mut inner = self.inner();
        let (seq, to) = inner.next_path(self.packs_dir(), Kind::Staged);
        if let Err(e) = std::fs::rename(&path, &to) {
            drop(inner);
            return refuse(self.io_err("adopt the batch file", &path, e));
        }
        let file = Arc::new(file);
        inner.segs.insert(
            seq,
            Seg {
                file: file.clone(),
                path: to,
                kind: Kind::Staged,
                live: records.len() as u64,
                staged_ids: Vec::new(),
            },
        );
        let mut new = 0;
        for (off, h) in records {
            let loc = Loc {
                seg: seq,
                off,
                len: h.len,
                durable: false,
            };
            new += u64::from(inner.insert(h.id, loc, &file));
        }
        drop(inner);
        drop(st);
        self.sync.early(file);
        Ok((new, bytes))
    }

    /// Makes every chunk staged before this call durable; returns how many
    /// became durable.
    pub fn flush(&self) -> Result<u64, StoreError> {
        let _serial = self.flush_lock.lock().expect("flush lock");
        let segs: Vec<(u64, Arc<File>, PathBuf)> = {
            let mut st = self.staging.lock().expect("staging lock");
            // Later staged Puts go to a new segment.
            st.take();
            let inner = self.inner();
            inner
                .segs
                .iter()
                .filter(|(_, s)| s.kind == Kind::Staged)
                .map(|(q, s)| (*q, s.file.clone(), s.path.clone()))
                .collect()
        };
        if segs.is_empty() {
            return Ok(0);
        }
        let files: Vec<&File> = segs.iter().map(|(_, f, _)| f.as_ref()).collect();
        self.sync
            .files(&files)
            .map_err(|e| self.io_err("sync the staged chunks in", self.packs_dir(), e))?;
        let mut sealed = Vec::new();
        for (seq, _, path) in &segs {
            let to = renamed(path, Kind::Sealed);
            std::fs::rename(path, &to).map_err(|e| self.io_err("seal", path, e))?;
            if let Some(s) = self.inner().segs.get_mut(seq) {
                s.path = to.clone();
            }
            sealed.push((*seq, to));
        }
        self.sync
            .names()
            .map_err(|e| self.io_err("sync", self.packs_dir(), e))?;
        let mut moved = 0;
        let mut inner = self.inner();
        for (seq, to) in &sealed {
            let Some(s) = inner.segs.get_mut(seq) else {
                continue;
            };
            s.kind = Kind::Sealed;
            s.path = to.clone();
            let ids = std::mem::take(&mut s.staged_ids);
            for id in ids {
                if let Some(l) = inner.index.get_mut(&id) {
                    if l.seg == *seq && !l.durable {
                        l.durable = true;
                        let len = l.len;
                        inner.staged -= 1;
                        inner.chunks += 1;
                        inner.bytes += len;
                        moved += 1;
                    }
                }
            }
        }
        drop(inner);
        self.reap(&sealed.iter().map(|(q, _)| *q).collect::<HashSet<_>>())?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests;
