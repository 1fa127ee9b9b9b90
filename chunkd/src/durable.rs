//! Making chunks durable: a segment's records before a Put is acknowledged
//! or a Flush returns, and the segment's name in `packs/` before anything
//! in it counts as stored. Every path that makes records durable goes
//! through the [`Syncer`] here.
//!
//! Two paths (segments are described in `store::segments`):
//! - **A Put** appends to the `.open` segment and is acknowledged after
//!   [`Syncer::data`] of that segment, which also covers every record
//!   appended before it; a new `.open` segment's name is made durable with
//!   [`Syncer::names`] before its first record.
//! - **Staged Puts** and PutLocal batches (`store::staged`) are acknowledged
//!   once written; Flush makes all of them durable at once:
//!   [`Syncer::files`] (every staged segment's data), the renames to
//!   `.pack`, then [`Syncer::names`]. In PerPut mode these are `fdatasync`s
//!   of the segments, several at once, and one `fsync` of `packs/`; in
//!   Syncfs mode one `syncfs(2)` round each, shared with concurrent Puts.
//!   Flush used to run `syncfs` in both modes, which also wrote back every
//!   other dirty page of the file system: on a compute node, its guests'
//!   mirror data, and on the emulated test bed, every other node's.
//!
//! A PutLocal batch is also handed to [`Syncer::early`] when it is adopted:
//! in PerPut mode one background thread `fdatasync`s it right away, so the
//! disk writes a bulk import while the client goes on, and the Flush at its
//! end waits only for the last batches. An error it meets is kept and
//! returned by the Flush that syncs the file (the kernel reports a
//! write-back error once per open file, so Flush's own `fdatasync` of the
//! same descriptor would not see it again).
//!
//! Two modes for Puts, both correct (no Put is acknowledged before its
//! record and its segment's name are on disk):
//! - [`Durability::PerPut`] (default): each Put `fdatasync`s its segment.
//!   Concurrent Puts append to one segment, and ext4's journal (jbd2)
//!   merges their syncs.
//! - [`Durability::Syncfs`]: group commit with `syncfs(2)`: the first
//!   waiter becomes the leader and runs one `syncfs` for everyone who
//!   arrived before the round started. A round also flushes whatever else
//!   is dirty on that file system.
//!
//! Before the packed store (one file per chunk), a third mode was measured
//! and dropped: group commit of the per-prefix directory fsyncs, about 2x
//! slower than PerPut because a round hardly ever shared a directory.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Condvar, Mutex};

/// How Puts are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// An fdatasync of the segment per Put.
    #[default]
    PerPut,
    /// Group commit: concurrent Puts share `syncfs` rounds.
    Syncfs,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-put" => Ok(Durability::PerPut),
            "syncfs" => Ok(Durability::Syncfs),
            _ => Err(format!(
                "durability mode {s} is unknown; use per-put or syncfs"
            )),
        }
    }
}

#[derive(Default)]
struct Round {
    /// Number of the last round started / finished.
    started: u64,
    done: u64,
    running: bool,
    /// Calls waiting for a round now.
    waiters: u64,
    /// The last round that failed, and how.
    failed: u64,
    failure: Option<(io::ErrorKind, Option<i32>, String)>,
}

/// Threads that sync the files of one Flush at once.
pub const FLUSH_THREADS: usize = 8;

/// Runs `f` on every item, from up to [`FLUSH_THREADS`] threads; the first
/// error wins.
fn parallel<T: Sync>(items: &[T], f: impl Fn(&T) -> io::Result<()> + Sync) -> io::Result<()> {
    if items.len() <= 1 {
        return items.iter().try_for_each(&f);
    }
    let per = items.len().div_ceil(FLUSH_THREADS);
    std::thread::scope(|s| {
        let hs: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(|| part.iter().try_for_each(&f)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("sync thread panicked")))
            })
            .collect::<io::Result<Vec<()>>>()
            .map(drop)
    })
}

/// The `packs/` directory, kept open for fsync, and the group commit state.
pub struct Syncer {
    dir: File,
    mode: Durability,
    round: Mutex<Round>,
    wake: Condvar,
    /// The early write-back thread's queue (started at the first batch).
    early: Mutex<Option<mpsc::Sender<Arc<File>>>>,
    /// Files whose early `fdatasync` failed, with the error, until a
    /// Flush of the file returns it.
    early_failed: Arc<Mutex<Vec<EarlyFailure>>>,
}

/// A file whose early write-back failed, and the error.
type EarlyFailure = (Arc<File>, io::Error);

impl Syncer {
    /// `dir` must be the open `packs/` directory.
    pub fn new(dir: File, mode: Durability) -> Self {
        Syncer {
            dir,
            mode,
            round: Mutex::new(Round::default()),
            wake: Condvar::new(),
            early: Mutex::default(),
            early_failed: Arc::default(),
        }
    }

    /// Starts writing `f`'s data to disk in the background (PerPut mode;
    /// Syncfs mode leaves it to its rounds). Durability still comes only
    /// from [`Syncer::files`], which returns an error this write-back met.
    pub fn early(&self, f: Arc<File>) {
        if self.mode != Durability::PerPut {
            return;
        }
        let mut q = self.early.lock().expect("early write-back lock");
        if q.is_none() {
            let (tx, rx) = mpsc::channel::<Arc<File>>();
            let failed = self.early_failed.clone();
            let started = std::thread::Builder::new()
                .name("early-sync".into())
                .spawn(move || {
                    for f in rx {
                        if let Err(e) = f.sync_data() {
                            failed.lock().expect("early failures lock").push((f, e));
                        }
                    }
                });
            if started.is_err() {
                return; // no thread: Flush syncs everything, as before
            }
            *q = Some(tx);
        }
        if let Some(tx) = q.as_ref() {
            let _ = tx.send(f);
        }
    }

    /// The error an early write-back of one of `files` met, taken.
    fn early_error(&self, files: &[&File]) -> Option<io::Error> {
        let mut failed = self.early_failed.lock().expect("early failures lock");
        let k = failed
            .iter()
            .position(|(f, _)| files.iter().any(|g| std::ptr::eq(f.as_ref(), *g)))?;
        Some(failed.swap_remove(k).1)
    }

    pub fn mode(&self) -> Durability {
        self.mode
    }

    /// Returns once the data written to `f` is durable. Blocks.
    pub fn data(&self, f: &File) -> io::Result<()> {
        match self.mode {
            Durability::PerPut => f.sync_data(),
            Durability::Syncfs => self.round(),
        }
    }

    /// Returns once every name created or renamed in `packs/` before this
    /// call is durable. Blocks.
    pub fn names(&self) -> io::Result<()> {
        match self.mode {
            Durability::PerPut => self.dir.sync_all(),
            Durability::Syncfs => self.round(),
        }
    }

    /// Returns once the data written to each of `files` is durable (Flush,
    /// Delete). PerPut: an `fdatasync` of each, from up to
    /// [`FLUSH_THREADS`] threads at once so that ext4 merges their journal
    /// commits; nothing else on the file system is written back (a compute
    /// node's disk also holds its guests' mirror data). Syncfs: one shared
    /// round. Blocks.
    pub fn files(&self, files: &[&File]) -> io::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        match self.mode {
            Durability::PerPut => {
                parallel(files, |f| f.sync_data())?;
                self.early_error(files).map_or(Ok(()), Err)
            }
            Durability::Syncfs => self.round(),
        }
    }

    /// How many `syncfs` rounds have finished (for tests).
    #[cfg(test)]
    pub(crate) fn rounds_done(&self) -> u64 {
        self.round.lock().expect("sync round lock").done
    }

    /// Waits for a `syncfs` that starts after this call, running it when no
    /// round is under way.
    fn round(&self) -> io::Result<()> {
        let mut r = self.round.lock().expect("sync round lock");
        // The first round that starts after this point covers our writes.
        let target = r.started + 1;
        loop {
            if r.done >= target {
                return match &r.failure {
                    Some((kind, raw, msg)) if r.failed >= target => Err(match raw {
                        Some(code) => io::Error::from_raw_os_error(*code),
                        None => io::Error::new(*kind, msg.clone()),
                    }),
                    _ => Ok(()),
                };
            }
            if r.running {
                r.waiters += 1;
                r = self.wake.wait(r).expect("sync round lock");
                r.waiters -= 1;
                continue;
            }
            r.running = true;
            r.started += 1;
            let this = r.started;
            drop(r);
            let res = nix::unistd::syncfs(self.dir.as_raw_fd()).map_err(io::Error::from);
            r = self.round.lock().expect("sync round lock");
            r.running = false;
            r.done = this;
            if let Err(e) = res {
                r.failed = this;
                r.failure = Some((e.kind(), e.raw_os_error(), e.to_string()));
            }
            self.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_early_write_back_error_fails_the_flush_of_that_file_once() {
        let t = tempfile::tempdir().unwrap();
        let s = Syncer::new(File::open(t.path()).unwrap(), Durability::PerPut);
        let a = Arc::new(File::create(t.path().join("a")).unwrap());
        let b = Arc::new(File::create(t.path().join("b")).unwrap());
        s.early(a.clone());
        s.early(b.clone());
        s.files(&[a.as_ref(), b.as_ref()]).unwrap();
        // What the background thread records when an fdatasync fails
        // (which a test cannot provoke on a healthy disk).
        s.early_failed
            .lock()
            .unwrap()
            .push((a.clone(), io::Error::from_raw_os_error(libc_eio())));
        assert!(
            s.files(&[b.as_ref()]).is_ok(),
            "b's write-back did not fail"
        );
        let e = s.files(&[b.as_ref(), a.as_ref()]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_eio()));
        assert!(s.files(&[a.as_ref()]).is_ok(), "reported once");
    }

    fn libc_eio() -> i32 {
        nix::errno::Errno::EIO as i32
    }

    #[test]
    fn concurrent_waiters_share_rounds() {
        let t = tempfile::tempdir().unwrap();
        let s = Arc::new(Syncer::new(
            File::open(t.path()).unwrap(),
            Durability::Syncfs,
        ));
        // A round is under way (held here) while 16 Puts arrive: none of
        // them may count on it, and all of them must share the next one.
        {
            let mut r = s.round.lock().unwrap();
            r.running = true;
            r.started = 1;
        }
        let hs: Vec<_> = (0..16u8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = i;
                    s.names().unwrap()
                })
            })
            .collect();
        while s.round.lock().unwrap().waiters < 16 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        {
            let mut r = s.round.lock().unwrap();
            r.running = false;
            r.done = 1;
            s.wake.notify_all();
        }
        for h in hs {
            h.join().unwrap();
        }
        let r = s.round.lock().unwrap();
        assert!(!r.running);
        assert_eq!(
            r.done, 2,
            "16 waiters shared one round after the held one (no sharing: 17)"
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!("syncfs".parse::<Durability>(), Ok(Durability::Syncfs));
        assert_eq!("per-put".parse::<Durability>(), Ok(Durability::PerPut));
        assert!("fast".parse::<Durability>().is_err());
    }
}
