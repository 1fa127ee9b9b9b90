//! The data path of a mirror: reads (local, holes as zeros, or fetched once
//! per chunk however many readers wait), local writes, hole punching and
//! `SEEK_DATA`/`SEEK_HOLE`.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blobvirt_core::ChunkId;
use bytes::Bytes;

use super::{chunk_len, lock, Errno, Fetched, Mirror};
use crate::statemap::ChunkState;

/// How many times a chunk fetch is tried (each try walks every replica).
const FETCH_TRIES: u32 = 3;

/// Why a write cannot go ahead on the calling thread.
enum Blocked {
    /// These chunks must be fetched first.
    Fetch(Vec<u64>),
    /// The volume must first grow to this size.
    Grow(u64),
}

enum Seg {
    Local,
    Zero,
    Mem(Bytes),
}

fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Mirror {
    fn chunks_of(&self, off: u64, len: u64) -> RangeInclusive<u64> {
        off / self.chunk_size..=(off + len - 1) / self.chunk_size
    }

    /// Reads `[off, off+len)` into `buf[..n]` if no chunk of it must be
    /// fetched first (`Ok(n)`, clamped to the volume size); otherwise
    /// returns the chunks to fetch. `buf` grows as needed and is never
    /// zeroed whole: a caller that reuses it pays no clearing per read
    /// (holes are zeroed where they fall). A chunk whose fetch is over but
    /// whose copy into the data file is still being written is served from
    /// the fetched bytes, like one in `mem`.
    fn read_with(
        &self,
        off: u64,
        len: u64,
        mem: &HashMap<u64, Bytes>,
        buf: &mut Vec<u8>,
    ) -> Result<Result<usize, Vec<u64>>, Errno> {
        let cs = self.chunk_size;
        let mut plan = Vec::new();
        let end;
        {
            let mut inner = lock(&self.inner);
            if off >= inner.size || len == 0 {
                return Ok(Ok(0));
            }
            end = (off + len).min(inner.size);
            let mut need = Vec::new();
            for i in self.chunks_of(off, end - off) {
                let u = i as usize;
                let seg = if inner.st[u].is_local() {
                    Seg::Local
                } else if inner.ids[u].is_none() {
                    Seg::Zero
                } else if let Some(b) = mem.get(&i) {
                    Seg::Mem(b.clone())
                } else if let Some(Ok(Some(b))) = inner.inflight.get(&i).and_then(|f| f.cell.get())
                {
                    Seg::Mem(b.clone())
                } else {
                    need.push(i);
                    continue;
                };
                plan.push((i, seg));
            }
            if !need.is_empty() {
                return Ok(Err(need));
            }
            for &(i, _) in &plan {
                if !inner.seen[i as usize] {
                    inner.seen[i as usize] = true;
                    inner.order.push(i);
                }
            }
        }
        let n = (end - off) as usize;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        let buf = &mut buf[..n];
        let mut k = 0;
        while k < plan.len() {
            let i = plan[k].0;
            let start = (i * cs).max(off);
            let stop = ((i + 1) * cs).min(end);
            let dst = (start - off) as usize..(stop - off) as usize;
            match &plan[k].1 {
                Seg::Zero => {
                    buf[dst].fill(0);
                    k += 1;
                }
                Seg::Mem(b) => {
                    let from = (start - i * cs) as usize;
                    let to = ((stop - i * cs) as usize).min(b.len()).max(from);
                    let (have, rest) = buf[dst].split_at_mut(to - from);
                    have.copy_from_slice(&b[from..to]);
                    rest.fill(0);
                    k += 1;
                }
                Seg::Local => {
                    // One pread for the whole run of local chunks.
                    let mut j = k;
                    while j + 1 < plan.len() && matches!(plan[j + 1].1, Seg::Local) {
                        j += 1;
                    }
                    let stop = ((plan[j].0 + 1) * cs).min(end);
                    let dst = &mut buf[(start - off) as usize..(stop - off) as usize];
                    read_full_at(&self.data, dst, start).map_err(|e| errno_of(&e))?;
                    k = j + 1;
                }
            }
        }
        Ok(Ok(n))
    }

    /// Reads into `buf[..n]` without waiting: `None` when a chunk must be
    /// fetched first (then call [`Mirror::read`]). This is the entry of
    /// every read of the mounted file: it also feeds the sequential
    /// read-ahead, so call it once per request. `buf` is grown, never
    /// cleared (see `read_with`), so keep one per thread.
    pub fn try_read_local(
        self: &Arc<Self>,
        off: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Option<Result<usize, Errno>> {
        self.read_ahead(off, len);
        match self.read_with(off, len, &HashMap::new(), buf) {
            Ok(Ok(n)) => Some(Ok(n)),
            Ok(Err(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Reads `[off, off+len)` (clamped to the volume size), fetching the
    /// covering chunks that are not local in parallel.
    pub async fn read(self: &Arc<Self>, off: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let mut mem = HashMap::new();
        let mut buf = Vec::new();
        for _ in 0..4 {
            match self.read_with(off, len, &mem, &mut buf)? {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(need) => {
                    self.demand.fetch_add(1, Ordering::SeqCst);
                    let res =
                        futures::future::join_all(need.iter().map(|&i| self.ensure(i, false)))
                            .await;
                    self.demand.fetch_sub(1, Ordering::SeqCst);
                    for (i, r) in need.into_iter().zip(res) {
                        if let Some(b) = r? {
                            mem.insert(i, b);
                        }
                    }
                }
            }
        }
        Err(libc::EIO)
    }

    /// Fetches chunk `i` unless it is local already or a hole, and returns
    /// its bytes to serve; they are stored in the data file in the
    /// background (see [`Mirror::ensure_local`] to wait for that).
    /// Concurrent callers for the same chunk share one fetch.
    pub(crate) async fn ensure(self: &Arc<Self>, i: u64, prefetch: bool) -> Fetched {
        let counter = prefetch.then_some(&self.stats.prefetched);
        self.ensure_counted(i, counter).await
    }

    /// [`Mirror::ensure`] that, when `counter` is given, also waits for
    /// the store and then adds one to `counter` if this call did the fetch
    /// (not when it joined another caller's). Prefetches go through here:
    /// waiting for the store bounds how many fetched chunks sit in memory.
    pub(crate) async fn ensure_counted(
        self: &Arc<Self>,
        i: u64,
        counter: Option<&std::sync::atomic::AtomicU64>,
    ) -> Fetched {
        let Some((fetch, r, leader)) = self.join_fetch(i).await else {
            return Ok(None);
        };
        if let Some(c) = counter {
            fetch.stored().await;
            if leader && r.is_ok() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    /// Makes chunk `i` local in the data file (unless it is a hole): fetches
    /// it and waits for its store. False when the fetched bytes could not be
    /// stored (cache disk full).
    pub(crate) async fn ensure_local(self: &Arc<Self>, i: u64) -> Result<bool, Errno> {
        let Some((fetch, r, _)) = self.join_fetch(i).await else {
            return Ok(true);
        };
        r?;
        fetch.stored().await;
        let inner = lock(&self.inner);
        let u = i as usize;
        Ok(u >= inner.st.len() || inner.st[u].is_local() || inner.ids[u].is_none())
    }

    /// Joins chunk `i`'s fetch, leading it when none runs: its entry, what
    /// it produced, and whether this call led it. `None` when the chunk is
    /// local or a hole.
    async fn join_fetch(self: &Arc<Self>, i: u64) -> Option<(Arc<super::Fetch>, Fetched, bool)> {
        let (fetch, id) = self.fetch_entry(i)?;
        let mut leader = false;
        let r = fetch
            .cell
            .get_or_init(|| {
                leader = true;
                self.fetch_store(i, id, fetch.clone())
            })
            .await
            .clone();
        Some((fetch, r, leader))
    }

    /// The in-flight fetch of chunk `i`, made if needed; `None` when the
    /// chunk is local or a hole.
    fn fetch_entry(&self, i: u64) -> Option<(Arc<super::Fetch>, ChunkId)> {
        let mut inner = lock(&self.inner);
        let u = i as usize;
        if u >= inner.st.len() || inner.st[u].is_local() {
            return None;
        }
        let id = inner.ids[u]?;
        Some((inner.inflight.entry(i).or_default().clone(), id))
    }

    /// The leader's fetch: returns the bytes as soon as they are here and
    /// verified, and writes them to the data file in the background; the
    /// `inflight` entry goes once that write is over, so a writer of the
    /// chunk (which waits for the entry) never races the store.
    async fn fetch_store(
        self: &Arc<Self>,
        i: u64,
        id: ChunkId,
        fetch: Arc<super::Fetch>,
    ) -> Fetched {
        let data = match self.fetch_remote(i, id).await {
            Ok(d) => d,
            Err(e) => {
                self.fetch_over(i, id, &fetch, false);
                return Err(e);
            }
        };
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_fetched
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let len = chunk_len(lock(&self.inner).size, self.chunk_size, i) as usize;
        let m = self.clone();
        let d = data.clone();
        let fetch2 = fetch.clone();
        tokio::spawn(async move {
            let mm = m.clone();
            let stored = tokio::task::spawn_blocking(move || {
                let at = i * mm.chunk_size;
                let _one_at_a_time = lock(&mm.store_lock);
                if d.len() == len {
                    return mm.data.write_all_at(&d, at);
                }
                let mut buf = d.to_vec();
                buf.resize(len, 0);
                mm.data.write_all_at(&buf, at)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = &stored {
                tracing::warn!(volume = %m.name(), chunk = i, "cannot store a fetched chunk in the cache ({e}); serving it from memory");
            }
            m.fetch_over(i, id, &fetch2, stored.is_ok());
        });
        Ok(Some(data))
    }

    /// Ends chunk `i`'s fetch: marks it present when its bytes were stored
    /// (and nothing changed the chunk meanwhile), drops the `inflight`
    /// entry, and wakes whoever waits for the store.
    fn fetch_over(&self, i: u64, id: ChunkId, fetch: &Arc<super::Fetch>, present: bool) {
        let mut inner = lock(&self.inner);
        let u = i as usize;
        if present
            && u < inner.st.len()
            && inner.st[u] == ChunkState::Absent
            && inner.ids[u] == Some(id)
        {
            inner.st[u] = ChunkState::Present;
            inner.changed = true;
        }
        if inner
            .inflight
            .get(&i)
            .is_some_and(|f| Arc::ptr_eq(f, fetch))
        {
            inner.inflight.remove(&i);
        }
        drop(inner);
        fetch.done();
    }

    async fn fetch_remote(&self, i: u64, id: ChunkId) -> Result<Bytes, Errno> {
        let mut last = None;
        for attempt in 0..FETCH_TRIES {
            match self.repo.get_chunk(id).await {
                Ok(b) => return Ok(b),
                Err(e) => {
                    tracing::warn!(volume = %self.name(), chunk = i, id = %id, attempt = attempt + 1, "chunk fetch failed: {e}");
                    last = Some(e);
                    if attempt + 1 < FETCH_TRIES {
                        tokio::time::sleep(Duration::from_millis(200 * (attempt as u64 + 1))).await;
                        let _ = self.repo.refresh().await;
                    }
                }
            }
        }
        let e = last.expect("at least one try");
        tracing::error!(volume = %self.name(), chunk = i, id = %id, "giving up on chunk after {FETCH_TRIES} tries, reads of it fail with EIO: {e}");
        Err(libc::EIO)
    }

    /// Copies frozen chunks of `range` aside before they are overwritten.
    fn cow(&self, range: RangeInclusive<u64>) -> Result<(), Errno> {
        let mut sh = lock(&self.shadow);
        if sh.frozen.is_empty() {
            return Ok(());
        }
        for i in range {
            if sh.frozen.contains(&i) && !sh.copies.contains_key(&i) {
                let len = chunk_len(sh.size, self.chunk_size, i) as usize;
                let mut buf = vec![0u8; len];
                read_full_at(&self.data, &mut buf, i * self.chunk_size)
                    .map_err(|e| errno_of(&e))?;
                sh.copies.insert(i, Bytes::from(buf));
                self.stats.cow_copies.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Writes locally unless a chunk that the write covers only partly
    /// must be fetched first, or the volume must grow first.
    fn try_write(&self, off: u64, data: &[u8]) -> Result<Result<usize, Blocked>, Errno> {
        let len = data.len() as u64;
        if len == 0 {
            return Ok(Ok(0));
        }
        if self.is_gone() {
            return Err(libc::ESTALE);
        }
        let cs = self.chunk_size;
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let range;
        {
            let mut inner = lock(&self.inner);
            let end = off
                .checked_add(len)
                .filter(|e| *e <= super::MAX_SIZE)
                .ok_or(libc::EFBIG)?;
            if end > inner.size {
                return Ok(Err(Blocked::Grow(end)));
            }
            range = self.chunks_of(off, len);
            let mut need = Vec::new();
            let mut zero = Vec::new();
            for i in range.clone() {
                let u = i as usize;
                if inner.st[u].is_local() {
                    continue;
                }
                let full = off <= i * cs && off + len >= i * cs + chunk_len(inner.size, cs, i);
                if inner.inflight.contains_key(&i) {
                    need.push(i);
                } else if full {
                } else if inner.ids[u].is_none() {
                    zero.push(i);
                } else {
                    need.push(i);
                }
            }
            if !need.is_empty() {
                return Ok(Err(Blocked::Fetch(need)));
            }
            // A hole chunk written partly: its other bytes must read as zeros.
            for &i in &zero {
                self.punch_local(i * cs, chunk_len(inner.size, cs, i))?;
            }
            for i in range.clone() {
                let u = i as usize;
                if inner.st[u] != ChunkState::Dirty {
                    inner.st[u] = ChunkState::Dirty;
                    inner.changed = true;
                }
                inner.dirty.insert(i);
            }
        }
        self.cow(range)?;
        self.data
            .write_all_at(data, off)
            .map_err(|e| errno_of(&e))?;
        Ok(Ok(data.len()))
    }

    /// Writes without waiting: `None` when a chunk must be fetched first.
    pub fn try_write_local(&self, off: u64, data: &[u8]) -> Option<Result<usize, Errno>> {
        match self.try_write(off, data) {
            Ok(Ok(n)) => Some(Ok(n)),
            Ok(Err(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Writes `data` at `off` into the local mirror. Writing past the end
    /// grows the volume first, as for any regular file (the new size is
    /// published with the next commit).
    pub async fn write(self: &Arc<Self>, off: u64, data: &[u8]) -> Result<usize, Errno> {
        for _ in 0..8 {
            match self.try_write(off, data)? {
                Ok(n) => return Ok(n),
                Err(Blocked::Grow(end)) => self.grow(end).await.map_err(|e| e.errno())?,
                Err(Blocked::Fetch(need)) => {
                    self.demand.fetch_add(1, Ordering::SeqCst);
                    let res =
                        futures::future::join_all(need.iter().map(|&i| self.ensure_local(i))).await;
                    self.demand.fetch_sub(1, Ordering::SeqCst);
                    for r in res {
                        if !r? {
                            return Err(libc::ENOSPC);
                        }
                    }
                }
            }
        }
        Err(libc::EIO)
    }

    /// Deallocates `[off, off+len)` of the local data file.
    fn punch_local(&self, off: u64, len: u64) -> Result<(), Errno> {
        use nix::fcntl::FallocateFlags as F;
        if len == 0 {
            return Ok(());
        }
        let mode = F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE;
        match nix::fcntl::fallocate(self.data.as_raw_fd(), mode, off as i64, len as i64) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) => self
                .data
                .write_all_at(&vec![0u8; len as usize], off)
                .map_err(|e| errno_of(&e)),
            Err(e) => Err(e as i32),
        }
    }

    /// Zeroes `[off, off+len)`: whole chunks become holes at the next
    /// commit without any fetch; the partial chunks at the ends are zeroed.
    pub async fn punch(self: &Arc<Self>, off: u64, len: u64) -> Result<(), Errno> {
        let cs = self.chunk_size;
        let size = self.size();
        let end = off.saturating_add(len).min(size);
        if off >= end {
            return Ok(());
        }
        let first_whole = off.div_ceil(cs);
        let mut last_whole_end = (end / cs) * cs;
        if end == size {
            last_whole_end = end; // the short last chunk counts as whole
        }
        let whole_start = first_whole * cs;
        if whole_start >= last_whole_end {
            return self
                .write(off, &vec![0u8; (end - off) as usize])
                .await
                .map(|_| ());
        }
        if off < whole_start {
            self.write(off, &vec![0u8; (whole_start - off) as usize])
                .await?;
        }
        if last_whole_end < end {
            self.write(last_whole_end, &vec![0u8; (end - last_whole_end) as usize])
                .await?;
        }
        let range = first_whole..=(last_whole_end - 1) / cs;
        for _ in 0..8 {
            let waiting: Vec<u64> = {
                let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
                let mut inner = lock(&self.inner);
                let waiting: Vec<u64> = range
                    .clone()
                    .filter(|i| inner.inflight.contains_key(i))
                    .collect();
                if waiting.is_empty() {
                    for i in range.clone() {
                        let u = i as usize;
                        if inner.st[u] == ChunkState::Absent && inner.ids[u].is_none() {
                            continue;
                        }
                        inner.st[u] = ChunkState::Dirty;
                        inner.dirty.insert(i);
                        inner.changed = true;
                    }
                    drop(inner);
                    self.cow(range.clone())?;
                    let end = ((range.end() + 1) * cs).min(size);
                    return self.punch_local(range.start() * cs, end - range.start() * cs);
                }
                waiting
            };
            for i in waiting {
                self.ensure_local(i).await?;
            }
        }
        Err(libc::EIO)
    }

    /// `SEEK_DATA` / `SEEK_HOLE` at chunk granularity (local chunks with no
    /// allocated bytes in the data file count as holes).
    pub fn seek(&self, off: u64, data: bool) -> Result<u64, Errno> {
        let cs = self.chunk_size;
        let inner = lock(&self.inner);
        if off >= inner.size {
            return Err(libc::ENXIO);
        }
        for i in off / cs..inner.st.len() as u64 {
            let u = i as usize;
            let is_hole = if inner.st[u].is_local() {
                let start = i * cs;
                match nix::unistd::lseek(
                    self.data.as_raw_fd(),
                    start as i64,
                    nix::unistd::Whence::SeekData,
                ) {
                    Ok(p) => p as u64 >= start + chunk_len(inner.size, cs, i),
                    Err(_) => true,
                }
            } else {
                inner.ids[u].is_none()
            };
            if is_hole != data {
                return Ok((i * cs).max(off));
            }
        }
        if data {
            Err(libc::ENXIO)
        } else {
            Ok(inner.size)
        }
    }

    /// Reads the phase-1 content of frozen chunk `i` (from its copy if a
    /// writer made one) and drops it from the frozen set.
    pub(crate) fn read_frozen(&self, i: u64) -> std::io::Result<Bytes> {
        let mut sh = lock(&self.shadow);
        let b = match sh.copies.remove(&i) {
            Some(b) => b,
            None => {
                let len = chunk_len(sh.size, self.chunk_size, i) as usize;
                let mut buf = vec![0u8; len];
                read_full_at(&self.data, &mut buf, i * self.chunk_size)?;
                Bytes::from(buf)
            }
        };
        sh.frozen.remove(&i);
        Ok(b)
    }

    /// Waits while on-demand fetches are in flight (prefetch runs behind them).
    pub(crate) async fn yield_to_demand(&self) {
        while self.demand.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// `read_exact_at` that treats bytes past the end of the file as zeros.
pub(crate) fn read_full_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
