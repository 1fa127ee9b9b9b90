//! Replicas on a chunkd of this machine, reached through its files instead
//! of gRPC bodies: staged writes go into a batch file that the node adopts
//! (PutLocal), and reads `pread` the record that Locate points at.
//!
//! A [`Repo`](crate::Repo) learns with Stats whether a chunkd shares this
//! process's view of the machine (`chunk::host_view`). For such a node it
//! appends every staged replica to one batch file in the node's `tmp/`, in
//! the record format of [`crate::pack`], and hands it over with PutLocal
//! once it holds [`BATCH_MAX`] bytes, and at Flush. The node checks every
//! record's hash and adopts the file as a staged segment: the bytes are
//! written once, and there is one RPC per batch instead of one per chunk.
//! Hand-overs and the Flush after them are serialised per node
//! ([`LocalStore::handover`]), so a Flush never overtakes a batch that holds
//! chunks staged before it. A batch the node refused makes the next Flush
//! of that node fail, naming the reason.
//!
//! Reads ask Locate for a chunk and up to [`LOCATE_MORE`] records after it
//! in its segment, and keep those places for a
//! while, so a sequential read costs one Locate per run of chunks instead of
//! one per chunk. A place may go stale (a segment renamed at Flush, a record
//! deleted and its bytes punched out): every read is hash-checked, and a
//! read that fails there drops the place and asks Locate again.
//!
//! Files in a node's directory are protected by its permissions (root and
//! the `blobvirt` user and group), not by mutual TLS.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::chunk::ChunkId;

/// Bytes after which a batch is handed over without waiting for a Flush.
pub const BATCH_MAX: u64 = 32 << 20;

/// Records after the asked one that a Locate returns.
pub const LOCATE_MORE: u32 = 512;
/// Places kept per node; the cache is emptied when it grows past this.
const PLACES_MAX: usize = 1 << 16;

/// Where a chunk's bytes are in a node's segment file.
#[derive(Clone, Debug)]
pub(crate) struct Place {
    file: Arc<str>,
    offset: u64,
    len: u64,
}

#[derive(Default)]
struct Places {
    at: HashMap<ChunkId, Place>,
}

/// Names of the batch files this process writes.
static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Batch {
    file: File,
    name: String,
    len: u64,
}

/// A chunkd of this machine.
pub(crate) struct LocalStore {
    tmp: PathBuf,
    /// `/proc/<pid>` of the chunkd process (None: unknown).
    proc_dir: Option<PathBuf>,
    batch: Mutex<Option<Batch>>,
    places: Mutex<Places>,
    /// Held while a batch is handed over or the node flushed; holds the
    /// first refusal of a batch since the last Flush.
    pub handover: tokio::sync::Mutex<Option<String>>,
}

impl LocalStore {
    pub fn new(tmp: PathBuf, pid: u32) -> Self {
        LocalStore {
            tmp,
            proc_dir: (pid != 0).then(|| PathBuf::from(format!("/proc/{pid}"))),
            batch: Mutex::new(None),
            places: Mutex::default(),
            handover: tokio::sync::Mutex::new(None),
        }
    }

    pub fn usable(&self) -> bool {
        self.tmp.is_dir()
    }

    /// Whether the chunkd still runs: a stopped node's files are not read,
    /// so it is unreachable here as it is over gRPC. (A reused pid only
    /// means reading files that are hash-checked anyway.)
    pub fn runs(&self) -> bool {
        self.proc_dir.as_ref().is_none_or(|p| p.exists())
    }

    /// Appends chunk `id` to this process's batch for the node (not synced:
    /// the node's Flush makes it durable). Returns true when the batch is
    /// now full: the caller then takes it with [`LocalStore::take_full`]
    /// under [`LocalStore::handover`] and hands it over. Blocks.
    pub fn append(&self, id: &ChunkId, data: &[u8]) -> std::io::Result<bool> {
        let mut b = self.batch.lock().expect("batch lock");
        if b.is_none() {
            *b = Some(self.new_batch()?);
        }
        let batch = b.as_mut().expect("a batch");
        match crate::pack::write_record(&batch.file, batch.len, id, data) {
            Ok(end) => batch.len = end,
            Err(e) => {
                let _ = batch.file.set_len(batch.len);
                return Err(e);
            }
        }
        Ok(batch.len >= BATCH_MAX)
    }

    /// Takes the batch when it is full. Called only under `handover`, like
    /// [`LocalStore::take`]: a batch is taken and handed over under that
    /// lock, so a Flush (which takes it too) never runs while a batch that
    /// holds chunks appended before it is on its way.
    pub fn take_full(&self) -> Option<String> {
        let mut b = self.batch.lock().expect("batch lock");
        if b.as_ref().is_some_and(|b| b.len >= BATCH_MAX) {
            return b.take().map(|b| b.name);
        }
        None
    }

    /// Takes the batch being filled, for a hand-over before a Flush (under
    /// `handover`).
    pub fn take(&self) -> Option<String> {
        self.batch
            .lock()
            .expect("batch lock")
            .take()
            .map(|b| b.name)
    }

    /// A new batch file, writable by the node's group: the node marks
    /// deleted records in it once it has adopted it.
    fn new_batch(&self) -> std::io::Result<Batch> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("in.{}.{seq}", std::process::id());
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.tmp.join(&name))?;
        if let Ok(gid) = std::fs::metadata(&self.tmp).map(|m| m.gid()) {
            // Not allowed for a user outside the node's group: the node
            // then copies the batch instead.
            let _ = std::os::unix::fs::fchown(&file, None, Some(gid));
        }
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o660));
        Ok(Batch { file, name, len: 0 })
    }
}

impl LocalStore {
    /// The place of chunk `id` from an earlier Locate.
    pub fn place(&self, id: &ChunkId) -> Option<Place> {
        self.places.lock().expect("places lock").at.get(id).cloned()
    }

    /// Drops a place that did not read back.
    pub fn forget(&self, id: &ChunkId) {
        let mut g = self.places.lock().expect("places lock");
        g.at.remove(id);
    }

    /// Keeps the places of a Locate reply; returns the asked chunk's.
    pub fn learn(&self, id: &ChunkId, r: crate::proto::LocateReply) -> Place {
        let mut g = self.places.lock().expect("places lock");
        if g.at.len() + r.more.len() > PLACES_MAX {
            g.at.clear();
        }
        let file: Arc<str> = Arc::from(r.file);
        for m in r.more {
            let Ok(mid) = <[u8; 32]>::try_from(&m.id[..]) else {
                continue;
            };
            let f = if *m.file == *file {
                file.clone()
            } else {
                Arc::from(m.file)
            };
            g.at.insert(
                ChunkId(mid),
                Place {
                    file: f,
                    offset: m.offset,
                    len: m.len,
                },
            );
        }
        let p = Place {
            file,
            offset: r.offset,
            len: r.len,
        };
        g.at.insert(*id, p.clone());
        p
    }

    /// Reads chunk `id` at `p` and checks it: `None` when it cannot be
    /// read, `Some(None)` when the bytes do not verify. Blocks.
    ///
    /// The file is opened for each read, as a file per chunk was: a kept
    /// descriptor would keep a removed segment's blocks allocated, and a
    /// shared one cannot be read without `pread` into a zeroed buffer,
    /// which measured slower than open, seek and `read_to_end`.
    pub fn read(&self, p: &Place, id: &ChunkId) -> Option<Option<Bytes>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = File::open(&*p.file).ok()?;
        f.seek(SeekFrom::Start(p.offset)).ok()?;
        let mut buf = Vec::with_capacity(p.len as usize);
        f.take(p.len).read_to_end(&mut buf).ok()?;
        if buf.len() as u64 != p.len {
            return None;
        }
        Some(id.verifies(&buf).then(|| Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LocateReply, Located};
    use std::os::unix::fs::FileExt;

    #[test]
    fn kept_places_read_back_and_a_stale_one_does_not() {
        let t = tempfile::tempdir().unwrap();
        let seg = t.path().join("0.pack");
        let f = File::create(&seg).unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| ChunkId::of(c)).collect();
        let mut off = 0;
        let mut at = Vec::new();
        for (id, c) in ids.iter().zip(&chunks) {
            at.push(off + crate::pack::HEADER);
            off = crate::pack::write_record(&f, off, id, c).unwrap();
        }
        let file = seg.to_string_lossy().into_owned();
        let l = LocalStore::new(t.path().to_path_buf(), 0);
        let reply = LocateReply {
            file: file.clone(),
            offset: at[0],
            len: 1000,
            more: (1..3)
                .map(|i| Located {
                    id: Bytes::copy_from_slice(&ids[i].0),
                    file: file.clone(),
                    offset: at[i],
                    len: chunks[i].len() as u64,
                })
                .collect(),
        };
        let p0 = l.learn(&ids[0], reply);
        assert_eq!(l.read(&p0, &ids[0]).unwrap().unwrap(), chunks[0]);
        let p2 = l.place(&ids[2]).expect("a neighbour's place is kept");
        assert_eq!(l.read(&p2, &ids[2]).unwrap().unwrap(), chunks[2]);
        // Bytes that changed under a kept place do not verify.
        f.write_all_at(&[9u8; 10], at[2]).unwrap();
        assert!(l.read(&p2, &ids[2]).unwrap().is_none());
        l.forget(&ids[2]);
        assert!(l.place(&ids[2]).is_none());
        // A segment that went away cannot be read at all.
        let p1 = l.place(&ids[1]).unwrap();
        std::fs::remove_file(&seg).unwrap();
        assert!(l.read(&p1, &ids[1]).is_none());
    }
}
