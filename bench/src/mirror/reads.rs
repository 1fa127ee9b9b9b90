//! The I/O the mirror suite times: O_DIRECT sequential and random reads,
//! random O_DIRECT writes, and dropping the page cache. All blocking; call
//! them through `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, RngCore, SeedableRng};

/// A 4 KiB-aligned buffer for O_DIRECT.
pub struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let off = (4096 - (v.as_ptr() as usize % 4096)) % 4096;
        AlignedBuf { v, off, len }
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

pub fn open_direct(path: &Path, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .with_context(|| format!("opening {} with O_DIRECT", path.display()))
}

/// Syncs, then drops the page cache (root only). False when not allowed.
pub fn drop_caches() -> bool {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Reads the whole file sequentially with requests of `bs` bytes (O_DIRECT
/// unless `buffered`) until EOF or until `stop` is set; returns (bytes,
/// seconds).
pub fn seq_read(
    path: &Path,
    bs: usize,
    buffered: bool,
    stop: Option<&AtomicBool>,
) -> Result<(u64, f64)> {
    let f = if buffered {
        File::open(path)?
    } else {
        open_direct(path, false)?
    };
    let mut buf = AlignedBuf::new(bs);
    let t = Instant::now();
    let mut off = 0u64;
    loop {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let n = f
            .read_at(buf.as_mut(), off)
            .with_context(|| format!("reading {} at {off}", path.display()))?;
        if n == 0 {
            break;
        }
        off += n as u64;
    }
    Ok((off, t.elapsed().as_secs_f64()))
}

/// `count` O_DIRECT reads of 4 KiB at random 4 KiB-aligned offsets below
/// `size` (the same offsets for the same seed); returns seconds.
pub fn rand_read(path: &Path, size: u64, count: usize, seed: u64) -> Result<f64> {
    let f = open_direct(path, false)?;
    let mut buf = AlignedBuf::new(4096);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pages = size / 4096;
    let t = Instant::now();
    for _ in 0..count {
        let off = rng.gen_range(0..pages) * 4096;
        let n = f.read_at(buf.as_mut(), off)?;
        anyhow::ensure!(n == 4096, "short read of {} at {off}", path.display());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Writes `total` bytes of random data at random places of the open file
/// (O_DIRECT, each write 4 KiB–1 MiB, 4 KiB aligned). Returns the writes.
pub fn random_writes(f: &File, size: u64, total: u64, seed: u64) -> Result<Vec<(u64, u64)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = AlignedBuf::new(1 << 20);
    let mut done = 0u64;
    let mut writes = Vec::new();
    while done < total {
        let len = (rng.gen_range(1..=256u64) * 4096)
            .min(total - done)
            .max(4096);
        let off = rng.gen_range(0..(size - len) / 4096) * 4096;
        let b = &mut buf.as_mut()[..len as usize];
        rng.fill_bytes(b);
        f.write_all_at(b, off)
            .with_context(|| format!("writing {len} bytes at {off}"))?;
        writes.push((off, len));
        done += len;
    }
    Ok(writes)
}
