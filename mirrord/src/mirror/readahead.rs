//! Adaptive sequential read-ahead for one mirror.
//!
//! Every read of the mounted file is fed to a small stream detector (a few
//! streams per volume, least recently used one replaced). A read continues
//! a stream when it starts no more than one chunk before or after where
//! the stream's furthest read ended; any other read starts a new stream, so
//! a random read never grows a window (and a stream it evicts starts over).
//!
//! * No read-ahead at all until a stream has read [`START_RUN`] bytes in
//!   sequence. The kernel splits one large read into many requests of at
//!   most 1 MiB, so this is what keeps a single read of up to 16 MiB from
//!   fetching more than the chunks it covers (plus the one chunk on each
//!   side that kernel readahead may touch).
//! * Then the window opens at [`FIRST_WINDOW`] chunks past the chunk being
//!   read and doubles each time the stream enters a new chunk, up to
//!   [`MAX_WINDOW`] chunks and [`MAX_BYTES`] bytes.
//! * Read-ahead fetches use the mirror's once-per-chunk fetch path (a chunk
//!   already being fetched is joined, a local chunk or a hole is skipped);
//!   at most [`IN_FLIGHT`] of them run at once per volume, issued in order,
//!   while on-demand fetches are never queued behind them. They are
//!   counted in `readahead` of the volume status.
//! * Local chunks are cheaper: once a stream has read [`WARM_START`] bytes
//!   in sequence (a 1 MiB reader's second read), the next
//!   [`WARM_AHEAD`] bytes of chunks that are already local are handed to
//!   the kernel (`POSIX_FADV_WILLNEED` on the cache file, from a blocking
//!   task), so the page cache is filled off the FUSE threads and the
//!   reads find their data in memory. Nothing is fetched for this.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::{lock, Mirror};

/// Sequential bytes a stream reads before read-ahead starts.
pub const START_RUN: u64 = 16 << 20;
/// Window, in chunks, when read-ahead starts.
pub const FIRST_WINDOW: u64 = 4;
/// Largest window in chunks.
pub const MAX_WINDOW: u64 = 64;
/// Largest window in bytes (large chunk sizes get fewer chunks).
pub const MAX_BYTES: u64 = 32 << 20;
/// Read-ahead fetches running at once per volume.
pub const IN_FLIGHT: usize = 16;
/// Streams tracked per volume.
const STREAMS: usize = 4;
/// Bytes of local chunks warmed ahead of a sequential stream.
pub const WARM_AHEAD: u64 = 8 << 20;
/// Sequential bytes a stream reads before local chunks are warmed.
pub const WARM_START: u64 = 1 << 20;
/// Smallest step by which warming advances (fewer, larger advices).
const WARM_STEP: u64 = 2 << 20;

/// What one read asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Chunks to fetch ahead.
    pub fetch: Option<Range<u64>>,
    /// Bytes of the cache file to warm (where the chunks are local).
    pub warm: Option<Range<u64>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stream {
    live: bool,
    /// End of the furthest read of the stream.
    next: u64,
    /// Bytes read in sequence so far.
    run: u64,
    /// Read-ahead window in chunks (0: not started).
    window: u64,
    /// Chunks below this index were handed to read-ahead already.
    issued: u64,
    /// Furthest chunk the stream's reads touched.
    chunk: u64,
    /// Bytes below this offset were warmed already.
    warmed: u64,
    /// Logical clock of the last read (least recently used is replaced).
    used: u64,
}

/// The stream detector: pure bookkeeping, no I/O.
#[derive(Debug, Default)]
pub struct Detector {
    streams: [Stream; STREAMS],
    clock: u64,
}

impl Detector {
    /// Records a read of `[off, end)` of a volume of `chunks` chunks of
    /// `cs` bytes; returns what to fetch and warm ahead now.
    pub fn observe(&mut self, off: u64, end: u64, cs: u64, chunks: u64) -> Plan {
        let Some(k) = self.track(off, end, cs) else {
            return Plan::default();
        };
        let s = &mut self.streams[k];
        let (from, to) = (s.warmed.max(s.next), s.next + WARM_AHEAD);
        let warm = (s.run >= WARM_START && to >= from + WARM_STEP).then(|| {
            s.warmed = to;
            from..to
        });
        Plan {
            fetch: self.fetch_ahead(k, end, cs, chunks),
            warm,
        }
    }

    /// The stream `[off, end)` continues (its index), or `None` when the
    /// read starts a new one.
    fn track(&mut self, off: u64, end: u64, cs: u64) -> Option<usize> {
        if end <= off || cs == 0 {
            return None;
        }
        self.clock += 1;
        let clock = self.clock;
        let found = self
            .streams
            .iter()
            .position(|s| s.live && off + cs >= s.next && off <= s.next + cs);
        let Some(k) = found else {
            let lru = (0..STREAMS)
                .min_by_key(|&k| (self.streams[k].live, self.streams[k].used))
                .unwrap_or(0);
            self.streams[lru] = Stream {
                live: true,
                next: end,
                run: end - off,
                chunk: (end - 1) / cs,
                used: clock,
                ..Stream::default()
            };
            return None;
        };
        let s = &mut self.streams[k];
        s.used = clock;
        if end > s.next {
            s.run += end - s.next;
            s.next = end;
        }
        Some(k)
    }

    /// Chunks stream `k`, just read up to `end`, should fetch ahead now.
    fn fetch_ahead(&mut self, k: usize, end: u64, cs: u64, chunks: u64) -> Option<Range<u64>> {
        let s = &mut self.streams[k];
        let c = (end - 1) / cs;
        if s.run < START_RUN {
            s.chunk = s.chunk.max(c);
            return None;
        }
        let max = MAX_WINDOW.min(MAX_BYTES / cs).max(1);
        if s.window == 0 {
            s.window = FIRST_WINDOW.min(max);
        } else if c > s.chunk {
            s.window = (s.window * 2).min(max);
        }
        s.chunk = s.chunk.max(c);
        let from = s.issued.max(s.chunk + 1);
        let to = (s.chunk + 1 + s.window).min(chunks);
        if from >= to {
            return None;
        }
        s.issued = to;
        Some(from..to)
    }
}

/// Read-ahead state of one mirror.
pub struct ReadAhead {
    detector: Mutex<Detector>,
    permits: Arc<tokio::sync::Semaphore>,
    rt: tokio::runtime::Handle,
}

impl ReadAhead {
    /// Must be called inside the daemon's tokio runtime (fetches are
    /// spawned on it from the FUSE threads).
    pub fn new() -> Self {
        ReadAhead {
            detector: Mutex::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            rt: tokio::runtime::Handle::current(),
        }
    }
}

impl Mirror {
    /// Feeds a read of `[off, off+len)` to the stream detector and starts
    /// the read-ahead fetches it asks for in the background.
    pub(crate) fn read_ahead(self: &Arc<Self>, off: u64, len: u64) {
        let cs = self.chunk_size;
        let (end, chunks) = {
            let inner = lock(&self.inner);
            (
                (off.saturating_add(len)).min(inner.size),
                inner.st.len() as u64,
            )
        };
        let plan = lock(&self.ra.detector).observe(off, end, cs, chunks);
        if let Some(w) = plan.warm {
            self.warm(w);
        }
        let Some(range) = plan.fetch else {
            return;
        };
        let todo: Vec<u64> = {
            let inner = lock(&self.inner);
            range
                .filter(|&i| {
                    let u = i as usize;
                    u < inner.st.len()
                        && !inner.st[u].is_local()
                        && inner.ids[u].is_some()
                        && !inner.inflight.contains_key(&i)
                })
                .collect()
        };
        if todo.is_empty() {
            return;
        }
        let m = self.clone();
        self.ra.rt.spawn(async move {
            for i in todo {
                let Ok(permit) = m.ra.permits.clone().acquire_owned().await else {
                    return;
                };
                let mm = m.clone();
                tokio::spawn(async move {
                    if mm.ensure_counted(i, Some(&mm.stats.readahead)).await.is_err() {
                        tracing::debug!(volume = %mm.name(), chunk = i, "read-ahead fetch failed; a read of the chunk will retry");
                    }
                    drop(permit);
                });
            }
        });
    }
}

impl Mirror {
    /// Asks the kernel to read the local chunks of `[w.start, w.end)` of
    /// the cache file into the page cache, from a blocking task.
    fn warm(self: &Arc<Self>, w: Range<u64>) {
        let cs = self.chunk_size;
        let runs: Vec<(u64, u64)> = {
            let inner = lock(&self.inner);
            let end = w.end.min(inner.size);
            let mut runs: Vec<(u64, u64)> = Vec::new();
            let mut i = w.start / cs;
            while i * cs < end {
                let u = i as usize;
                if inner.st[u].is_local() {
                    let (a, b) = ((i * cs).max(w.start), ((i + 1) * cs).min(end));
                    match runs.last_mut() {
                        Some(r) if r.1 == a => r.1 = b,
                        _ => runs.push((a, b)),
                    }
                }
                i += 1;
            }
            runs
        };
        if runs.is_empty() {
            return;
        }
        let m = self.clone();
        self.ra.rt.spawn_blocking(move || {
            use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
            use std::os::fd::AsRawFd;
            for (a, b) in runs {
                let advice = PosixFadviseAdvice::POSIX_FADV_WILLNEED;
                let _ = posix_fadvise(m.data.as_raw_fd(), a as i64, (b - a) as i64, advice);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 256 * 1024;
    const MIB: u64 = 1 << 20;

    /// Feeds `n` reads of `step` bytes from `start`; returns every chunk
    /// handed to read-ahead.
    fn feed(d: &mut Detector, start: u64, step: u64, n: u64, chunks: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for k in 0..n {
            let off = start + k * step;
            if let Some(r) = d.observe(off, off + step, CS, chunks).fetch {
                out.extend(r);
            }
        }
        out
    }

    #[test]
    fn a_short_sequential_run_reads_nothing_ahead() {
        let mut d = Detector::default();
        // 15 MiB in 128 KiB requests: what one large read turns into.
        assert!(feed(&mut d, 7 * MIB + 12345, 128 * 1024, 120, 1 << 20).is_empty());
    }

    #[test]
    fn a_long_run_opens_and_grows_the_window_in_order_without_repeats() {
        let mut d = Detector::default();
        let chunks = 4096;
        let got = feed(&mut d, 0, MIB, 64, chunks);
        assert!(!got.is_empty());
        // In order, each chunk once, never the chunk being read.
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        let first = got[0];
        assert_eq!(
            first,
            START_RUN / CS,
            "starts right after the chunk being read"
        );
        // After 64 MiB read, the window reaches its maximum ahead of the reader.
        let reader_chunk = 64 * MIB / CS - 1;
        assert_eq!(*got.last().unwrap(), reader_chunk + MAX_WINDOW);
    }

    #[test]
    fn the_window_is_bounded_in_bytes_and_by_the_volume_end() {
        let mut d = Detector::default();
        let big = 4 * MIB;
        let mut last = 0;
        for k in 0..40 {
            if let Some(r) = d.observe(k * big, (k + 1) * big, big, 1000).fetch {
                last = r.end;
            }
        }
        assert_eq!(last, 40 + MAX_BYTES / big, "at most MAX_BYTES ahead");
        let mut d = Detector::default();
        let got = feed(&mut d, 0, MIB, 40, 100);
        assert_eq!(got.last().copied(), Some(99), "never past the last chunk");
    }

    #[test]
    fn random_reads_start_new_streams_and_leave_a_sequential_one_alone() {
        let mut d = Detector::default();
        let chunks = 1 << 20;
        feed(&mut d, 0, MIB, 20, chunks);
        // A few random 4 KiB reads far away start nothing.
        for k in 1..=3u64 {
            assert_eq!(
                d.observe(k * 1000 * MIB, k * 1000 * MIB + 4096, CS, chunks),
                Plan::default()
            );
        }
        // The sequential stream continues where it was.
        assert!(d.observe(20 * MIB, 21 * MIB, CS, chunks).fetch.is_some());
        // A random reader alone never starts read-ahead.
        let mut d = Detector::default();
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 20) % (1 << 30) / 4096 * 4096;
            assert_eq!(d.observe(off, off + 4096, CS, chunks), Plan::default());
        }
    }

    #[test]
    fn local_data_is_warmed_ahead_from_the_second_sequential_read() {
        let mut d = Detector::default();
        assert_eq!(d.observe(0, MIB, CS, 4096).warm, None, "first read");
        assert_eq!(
            d.observe(MIB, 2 * MIB, CS, 4096).warm,
            Some(2 * MIB..2 * MIB + WARM_AHEAD)
        );
        // Then in steps of at least WARM_STEP, contiguous, never twice.
        let mut warmed = 2 * MIB + WARM_AHEAD;
        for k in 2..40 {
            if let Some(w) = d.observe(k * MIB, (k + 1) * MIB, CS, 4096).warm {
                assert_eq!(w.start, warmed);
                assert!(w.end - w.start >= WARM_STEP);
                warmed = w.end;
            }
        }
        assert_eq!(warmed, 40 * MIB + WARM_AHEAD);
    }

    #[test]
    fn slightly_reordered_requests_stay_one_stream() {
        let mut d = Detector::default();
        let chunks = 1 << 20;
        let mut got = Vec::new();
        for k in 0..64u64 {
            // Pairs of 128 KiB requests arriving swapped.
            let j = k ^ 1;
            let off = j * 128 * 1024;
            if let Some(r) = d.observe(off, off + 128 * 1024, CS, chunks).fetch {
                got.extend(r);
            }
        }
        assert!(got.is_empty(), "8 MiB is below the start threshold");
        for k in 64..256u64 {
            let j = k ^ 1;
            let off = j * 128 * 1024;
            if let Some(r) = d.observe(off, off + 128 * 1024, CS, chunks).fetch {
                got.extend(r);
            }
        }
        assert!(!got.is_empty(), "32 MiB of reordered requests is a stream");
    }
}
