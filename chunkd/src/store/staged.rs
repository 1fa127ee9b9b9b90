//! Staged Puts: a chunk written to `tmp/` and acknowledged before it is
//! durable, made durable in bulk by Flush.
//!
//! A bulk writer (an import, a COMMIT) stages all its chunks and then calls
//! Flush once before it publishes, so the chunks of one import are synced
//! together, several at once, instead of one fsync pair per chunk in turn.
//! Staged files are written like a Put's temp file (`Store::write_tmp`) and
//! made durable through the same [`Syncer`](crate::durable::Syncer) as Puts
//! (see `crate::durable`, which describes both paths): Flush waits for
//! [`Syncer::files`] (the staged data is durable), renames each staged file
//! into `chunks/` (never replacing), then waits for [`Syncer::dirs`] (the
//! names are durable). So a file under `chunks/` is always durable, and a
//! crash before Flush only loses staged files, which are cleared from
//! `tmp/` at the next start and were never published.
//!
//! [`Syncer::files`]: crate::durable::Syncer::files
//! [`Syncer::dirs`]: crate::durable::Syncer::dirs
//!
//! Flushes are serialised: a Flush returns only after every staged Put that
//! reached the node before it is durable, even one taken by a concurrent
//! Flush. Has answers false for a staged chunk (it is not durable yet); Get
//! serves it, verified, from its temp file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use blobvirt_core::ChunkId;

use super::{Store, StoreError};

/// Staged chunks of one store: id → (temp file, length).
#[derive(Default)]
pub struct Staged {
    files: Mutex<HashMap<ChunkId, (PathBuf, u64)>>,
    flush: Mutex<()>,
}

impl Staged {
    pub fn path_of(&self, id: &ChunkId) -> Option<PathBuf> {
        self.files
            .lock()
            .expect("staged lock")
            .get(id)
            .map(|(p, _)| p.clone())
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.files.lock().expect("staged lock").contains_key(id)
    }

    /// Forgets a staged chunk (Delete); returns its temp file.
    pub fn remove(&self, id: &ChunkId) -> Option<PathBuf> {
        self.files
            .lock()
            .expect("staged lock")
            .remove(id)
            .map(|(p, _)| p)
    }

    pub fn is_empty(&self) -> bool {
        self.files.lock().expect("staged lock").is_empty()
    }

    /// How many chunks are staged.
    pub fn len(&self) -> usize {
        self.files.lock().expect("staged lock").len()
    }
}

impl Store {
    /// Writes chunk `id` to a temp file without syncing it. Returns false
    /// when the chunk is already stored or staged.
    pub fn put_staged(&self, id: &ChunkId, data: &[u8]) -> Result<bool, StoreError> {
        self.check(id, data)?;
        if self.chunk_path(id).exists() || self.staged().contains(id) {
            return Ok(false);
        }
        let tmp = self.tmp_path(id);
        if let Err(e) = self.write_tmp(&tmp, data) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut files = self.staged().files.lock().expect("staged lock");
        if files.contains_key(id) {
            drop(files);
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        }
        files.insert(*id, (tmp, data.len() as u64));
        Ok(true)
    }

    /// Stages chunk `id` from `name` in `tmp/`, a file a client of this
    /// machine wrote (PutLocal): reads it, checks its hash, then owns it
    /// like [`Store::put_staged`]'s temp file. Returns whether it was new,
    /// and its length. A file that does not verify, or whose chunk is
    /// already stored or staged, is removed.
    pub fn put_staged_file(&self, id: &ChunkId, name: &str) -> Result<(bool, u64), StoreError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        if !name.starts_with("in.") || name.contains('/') || name.len() > 255 {
            return Err(StoreError::BadFile(name.to_string()));
        }
        let tmp = self.tmp_dir().join(name);
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&tmp)?;
            if !f.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            Ok(data)
        };
        let data = match read() {
            Ok(d) => d,
            Err(_) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(StoreError::BadFile(name.to_string()));
            }
        };
        let len = data.len() as u64;
        if let Err(e) = self.check(id, &data) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut files = self.staged().files.lock().expect("staged lock");
        if files.contains_key(id) || self.chunk_path(id).exists() {
            drop(files);
            let _ = std::fs::remove_file(&tmp);
            return Ok((false, len));
        }
        files.insert(*id, (tmp, len));
        Ok((true, len))
    }

    /// Makes every chunk staged before this call durable; returns how many
    /// this call moved into place.
    pub fn flush(&self) -> Result<u64, StoreError> {
        let _serial = self.staged().flush.lock().expect("flush lock");
        let batch = std::mem::take(&mut *self.staged().files.lock().expect("staged lock"));
        if batch.is_empty() {
            return Ok(0);
        }
        let put_back = |batch: HashMap<ChunkId, (PathBuf, u64)>| {
            self.staged()
                .files
                .lock()
                .expect("staged lock")
                .extend(batch);
        };
        let paths: Vec<&std::path::Path> = batch.values().map(|(p, _)| p.as_path()).collect();
        if let Err(e) = self.sync.files(&paths) {
            let e = self.io_err("sync the staged chunks in", self.tmp_dir(), e);
            put_back(batch);
            return Err(e);
        }
        let mut moved = 0;
        let mut prefixes = std::collections::BTreeSet::new();
        for (id, (tmp, len)) in batch {
            let dst = self.chunk_path(&id);
            match crate::store::rename_noreplace(&tmp, &dst) {
                Ok(true) => {
                    moved += 1;
                    prefixes.insert(id.0[0]);
                    self.count(len);
                }
                Ok(false) => {
                    let _ = std::fs::remove_file(&tmp);
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(self.io_err("rename into", &dst, e));
                }
            }
        }
        self.sync
            .dirs(&prefixes)
            .map_err(|e| self.io_err("sync the directories of", self.chunks_dir(), e))?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> (ChunkId, Vec<u8>) {
        let d = vec![n; 4096];
        (ChunkId::of(&d), d)
    }

    #[test]
    fn staged_chunks_are_served_and_become_durable_on_flush() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), "n1").unwrap();
        let (a, da) = chunk(1);
        assert!(s.put_staged(&a, &da).unwrap());
        assert!(!s.put_staged(&a, &da).unwrap(), "staged twice");
        assert!(s.put_staged(&a, b"wrong").is_err());
        assert_eq!(s.has(&[a]), vec![false], "not durable yet");
        assert_eq!(&s.get(&a).unwrap()[..], &da[..]);
        assert_eq!(s.stats().unwrap().chunks, 0);
        assert_eq!(s.flush().unwrap(), 1);
        assert_eq!(s.has(&[a]), vec![true]);
        assert!(s.chunk_path(&a).is_file());
        assert_eq!(s.stats().unwrap().chunks, 1);
        assert_eq!(s.flush().unwrap(), 0);
        assert!(!s.put_staged(&a, &da).unwrap(), "already stored");
        assert_eq!(std::fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_file_written_by_a_local_client_is_verified_then_staged() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path(), "n1").unwrap();
        let tmp = t.path().join("tmp");
        let (a, da) = chunk(2);
        let (b, _) = chunk(3);
        // Names outside the PutLocal convention are refused untouched.
        std::fs::write(tmp.join("x"), &da).unwrap();
        for bad in ["x", "../x", "in./../x", ""] {
            assert!(
                matches!(s.put_staged_file(&a, bad), Err(StoreError::BadFile(_))),
                "{bad:?}"
            );
        }
        assert!(tmp.join("x").exists());
        std::fs::remove_file(tmp.join("x")).unwrap();
        // Bytes that do not hash to the id: refused and removed.
        std::fs::write(tmp.join("in.b"), &da).unwrap();
        assert!(matches!(
            s.put_staged_file(&b, "in.b"),
            Err(StoreError::HashMismatch { .. })
        ));
        assert!(!tmp.join("in.b").exists());
        // A symbolic link is not followed.
        std::os::unix::fs::symlink(tmp.join("elsewhere"), tmp.join("in.l")).unwrap();
        std::fs::write(tmp.join("elsewhere"), &da).unwrap();
        assert!(matches!(
            s.put_staged_file(&a, "in.l"),
            Err(StoreError::BadFile(_))
        ));
        std::fs::remove_file(tmp.join("elsewhere")).unwrap();
        // A good file is staged (served, not yet in Has), then flushed.
        std::fs::write(tmp.join("in.a"), &da).unwrap();
        assert_eq!(s.put_staged_file(&a, "in.a").unwrap(), (true, 4096));
        assert_eq!(s.has(&[a]), vec![false]);
        assert_eq!(&s.get(&a).unwrap()[..], &da[..]);
        std::fs::write(tmp.join("in.a2"), &da).unwrap();
        assert_eq!(s.put_staged_file(&a, "in.a2").unwrap(), (false, 4096));
        assert!(!tmp.join("in.a2").exists(), "a duplicate is removed");
        assert_eq!(s.flush().unwrap(), 1);
        assert_eq!(s.has(&[a]), vec![true]);
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn flush_syncs_through_the_syncer_in_both_modes() {
        use crate::durable::Durability;
        for mode in [Durability::PerPut, Durability::Syncfs] {
            let t = tempfile::tempdir().unwrap();
            let s = Store::open_with(t.path(), "n1", mode).unwrap();
            for n in 4..7 {
                let (id, d) = chunk(n);
                assert!(s.put_staged(&id, &d).unwrap());
            }
            assert_eq!(s.sync.rounds_done(), 0, "{mode:?}: staging syncs nothing");
            assert_eq!(s.flush().unwrap(), 3);
            // PerPut syncs only the staged files and their directories,
            // never the whole file system; Syncfs shares two rounds.
            let rounds = if mode == Durability::Syncfs { 2 } else { 0 };
            assert_eq!(
                s.sync.rounds_done(),
                rounds,
                "{mode:?}: syncfs rounds of one flush"
            );
            assert_eq!(s.flush().unwrap(), 0);
            assert_eq!(s.sync.rounds_done(), rounds, "{mode:?}: nothing staged");
            assert_eq!(s.has(&[chunk(4).0, chunk(6).0]), vec![true, true]);
        }
    }

    #[test]
    fn unflushed_chunks_vanish_at_restart_and_delete_drops_staged() {
        let t = tempfile::tempdir().unwrap();
        let (a, da) = chunk(2);
        let (b, db) = chunk(3);
        {
            let s = Store::open(t.path(), "n1").unwrap();
            s.put_staged(&a, &da).unwrap();
            s.put_staged(&b, &db).unwrap();
            assert_eq!(s.delete(&[b]).unwrap(), 0);
            assert!(s.get(&b).is_err());
        }
        let s = Store::open(t.path(), "n1").unwrap();
        assert!(matches!(s.get(&a), Err(StoreError::NotFound { .. })));
        assert_eq!(s.stats().unwrap().chunks, 0);
    }
}
