//! Read tracing for `mirrord --trace-reads FILE`: one line
//! `NAME OFFSET LENGTH` (decimal bytes) per FUSE read of a volume file, in
//! the order the reads arrive. LENGTH is the size the read asked for,
//! clipped to the volume size; reads wholly at or past the end are not
//! recorded. The file is opened for appending; lines go through a
//! `BufWriter` behind a mutex, which a background thread flushes about once
//! a second, and which is flushed again on [`Tracer::flush`] (the daemon
//! calls it after unmounting) and on drop. Without the option the FUSE layer
//! holds no tracer and pays nothing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often the background thread flushes buffered lines.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// An append-only read trace.
pub struct Tracer {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl Tracer {
    /// Opens (creating or appending to) `path` and starts the flusher thread,
    /// which ends when the last `Arc` is dropped.
    pub fn open(path: &Path) -> std::io::Result<Arc<Tracer>> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let t = Arc::new(Tracer {
            path: path.to_path_buf(),
            out: Mutex::new(BufWriter::with_capacity(256 * 1024, f)),
        });
        let weak: Weak<Tracer> = Arc::downgrade(&t);
        std::thread::Builder::new()
            .name("trace-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                match weak.upgrade() {
                    Some(t) => t.flush(),
                    None => return,
                }
            })?;
        Ok(t)
    }

    /// Records a read of `len` bytes at `off` of volume `name` whose size is
    /// `size`; the length is clipped to the size.
    pub fn record(&self, name: &str, off: u64, len: u64, size: u64) {
        let len = len.min(size.saturating_sub(off));
        if len == 0 {
            return;
        }
        let mut w = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(w, "{name} {off} {len}") {
            tracing::warn!(trace = %self.path.display(), "cannot write the read trace: {e}");
        }
    }

    /// Writes buffered lines to the file.
    pub fn flush(&self) {
        let mut w = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.flush() {
            tracing::warn!(trace = %self.path.display(), "cannot flush the read trace: {e}");
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_clipped_and_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("reads.log");
        let t = Tracer::open(&p).unwrap();
        t.record("vm", 0, 4096, 10_000);
        t.record("vm", 8192, 4096, 10_000);
        t.record("vm", 10_000, 4096, 10_000);
        t.flush();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "vm 0 4096\nvm 8192 1808\n"
        );
        t.record("other", 5, 1, 10);
        drop(t);
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .ends_with("other 5 1\n"));
    }
}
