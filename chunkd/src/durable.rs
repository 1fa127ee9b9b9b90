//! Making renamed chunk files durable: group commit of directory fsyncs.
//!
//! After a Put renames its (already fdatasync'ed) temp file into
//! `chunks/<xx>/`, the directory entry must reach the disk before the Put is
//! acknowledged. Instead of one directory fsync per Put, concurrent Puts share
//! one *sync round*: the first waiter becomes the leader, takes the set of
//! dirty prefix directories, fsyncs each of them once, and wakes every waiter
//! whose rename happened before the round started. Waiters that arrive while a
//! round runs are served by the next round, so nobody is acknowledged before
//! its rename is durable. On ext4 the first fsync of a round commits the
//! journal and the others find their changes already committed, so a round
//! costs about one journal commit no matter how many Puts it covers.
//!
//! [`Durability::PerPut`] (one fsync per Put, no sharing) and
//! [`Durability::Syncfs`] (a round is one `syncfs(2)` of the whole file
//! system) are kept for measurement; see the crate docs for the numbers.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Condvar, Mutex};

/// How a Put's rename is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Group commit: concurrent Puts share one round of directory fsyncs.
    #[default]
    Group,
    /// Each Put fsyncs its own directory.
    PerPut,
    /// Group commit where a round is one `syncfs` of the file system.
    Syncfs,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "group" => Ok(Durability::Group),
            "per-put" => Ok(Durability::PerPut),
            "syncfs" => Ok(Durability::Syncfs),
            _ => Err(format!(
                "durability mode {s} is unknown; use group, per-put or syncfs"
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
    /// Prefix directories renamed into since the current round started.
    dirty: [u64; 4],
    /// The last round that failed, and how.
    failed: u64,
    failure: Option<(io::ErrorKind, Option<i32>, String)>,
}

/// The 256 prefix directories of the chunk store, kept open for fsync.
pub struct DirSync {
    dirs: Vec<File>,
    mode: Durability,
    round: Mutex<Round>,
    wake: Condvar,
}

impl DirSync {
    /// `dirs[i]` must be the open directory `chunks/<i as 2 hex>`.
    pub fn new(dirs: Vec<File>, mode: Durability) -> Self {
        assert_eq!(dirs.len(), 256, "one directory per prefix byte");
        DirSync {
            dirs,
            mode,
            round: Mutex::new(Round::default()),
            wake: Condvar::new(),
        }
    }

    pub fn mode(&self) -> Durability {
        self.mode
    }

    /// Returns once every rename done into directory `prefix` before this
    /// call is durable. Blocks: call from a blocking thread.
    pub fn sync(&self, prefix: u8) -> io::Result<()> {
        if self.mode == Durability::PerPut {
            return self.dirs[prefix as usize].sync_all();
        }
        let mut r = self.round.lock().expect("sync round lock");
        r.dirty[prefix as usize / 64] |= 1 << (prefix % 64);
        // The first round that starts after this point covers our rename.
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
                r = self.wake.wait(r).expect("sync round lock");
                continue;
            }
            r.running = true;
            r.started += 1;
            let this = r.started;
            let dirty = std::mem::take(&mut r.dirty);
            drop(r);
            let res = self.run_round(dirty);
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

    fn run_round(&self, dirty: [u64; 4]) -> io::Result<()> {
        if self.mode == Durability::Syncfs {
            return nix::unistd::syncfs(self.dirs[0].as_raw_fd()).map_err(io::Error::from);
        }
        let mut first_err = None;
        for p in 0..256usize {
            if dirty[p / 64] & (1 << (p % 64)) != 0 {
                if let Err(e) = self.dirs[p].sync_all() {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn dirs(root: &std::path::Path) -> Vec<File> {
        (0..256)
            .map(|i| {
                let p = root.join(format!("{i:02x}"));
                std::fs::create_dir_all(&p).unwrap();
                File::open(&p).unwrap()
            })
            .collect()
    }

    #[test]
    fn concurrent_waiters_share_rounds() {
        let t = tempfile::tempdir().unwrap();
        let s = Arc::new(DirSync::new(dirs(t.path()), Durability::Group));
        let hs: Vec<_> = (0..32u8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        s.sync(i.wrapping_mul(7)).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let r = s.round.lock().unwrap();
        assert!(!r.running);
        assert_eq!(r.started, r.done);
        assert!(r.done >= 20 && r.done <= 640, "rounds: {}", r.done);
        assert_eq!(r.dirty, [0; 4], "every dirty directory was synced");
    }

    #[test]
    fn modes_parse() {
        assert_eq!("syncfs".parse::<Durability>(), Ok(Durability::Syncfs));
        assert_eq!("per-put".parse::<Durability>(), Ok(Durability::PerPut));
        assert!("fast".parse::<Durability>().is_err());
    }
}
