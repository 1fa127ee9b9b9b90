//! Test data: seeded pseudo-random bytes (one generator, [`rng`], for
//! everything), images with holes, in-place changes, whole-file reads and
//! writes, sha256, and the chunk files chunkd keeps on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// The seeded generator of all test data.
pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// `len` deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng(seed).fill_bytes(&mut v);
    v
}

/// An image in memory: random data where every 4th `chunk` and the last
/// quarter are zeros (holes).
pub fn image(seed: u64, size: usize, chunk: usize) -> Vec<u8> {
    let mut v = random_bytes(seed, size);
    for c in (0..size / chunk).step_by(4) {
        v[c * chunk..(c + 1) * chunk].fill(0);
    }
    let q = size - size / 4;
    v[q..].fill(0);
    v
}

/// Writes a `size`-byte image file of seeded random data with zero
/// `holes` (offset, length); holes are left sparse.
pub fn write_image(path: &Path, size: u64, holes: &[(u64, u64)], seed: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = rng(seed);
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        let len = MIB.min(size - off);
        let b = &mut buf[..len as usize];
        rng.fill_bytes(b);
        for &(h, hl) in holes {
            let (s, e) = (h.max(off), (h + hl).min(off + len));
            if s < e {
                b[(s - off) as usize..(e - off) as usize].fill(0);
            }
        }
        if b.iter().any(|&x| x != 0) {
            f.write_all_at(b, off).unwrap();
        }
        off += len;
    }
    f.sync_all().unwrap();
}

/// Overwrites `len` bytes at `off` with seeded random data, durably.
pub fn overwrite(path: &Path, off: u64, len: u64, seed: u64) {
    pwrite(path, off, &random_bytes(seed, len as usize));
}

/// Writes `data` at `off` of an existing file, durably.
pub fn pwrite(path: &Path, off: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

/// Writes `data` from the start of an existing file (no truncation, no
/// fsync).
pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(data).unwrap();
}

pub fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn sha256_file(path: &Path) -> [u8; 32] {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

pub fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Number of `chunk_size` chunks of `path` that are not all zero.
pub fn nonzero_chunks(path: &Path, chunk_size: u64) -> u64 {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; chunk_size as usize];
    let mut n = 0;
    loop {
        let mut got = 0;
        while got < buf.len() {
            let r = f.read(&mut buf[got..]).unwrap();
            if r == 0 {
                break;
            }
            got += r;
        }
        if got == 0 {
            return n;
        }
        if buf[..got].iter().any(|&b| b != 0) {
            n += 1;
        }
        if got < buf.len() {
            return n;
        }
    }
}

/// A live chunk record in a chunkd's segments (`packs/`, the record format
/// of `blobvirt_core::pack`), as found on disk.
#[derive(Clone, Debug)]
pub struct ChunkOnDisk {
    pub id: blobvirt_core::ChunkId,
    pub hex: String,
    pub file: PathBuf,
    /// Offset of the chunk's bytes in `file`.
    pub data_at: u64,
    pub len: u64,
}

impl ChunkOnDisk {
    /// The chunk's bytes as they are on disk.
    pub fn read(&self) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(&self.file).unwrap();
        let mut b = vec![0u8; self.len as usize];
        f.read_exact_at(&mut b, self.data_at).unwrap();
        b
    }

    /// Flips a byte in the middle of the chunk's bytes (a bad disk).
    pub fn flip(&self) {
        use std::os::unix::fs::FileExt;
        let f = fs::File::options()
            .read(true)
            .write(true)
            .open(&self.file)
            .unwrap();
        let at = self.data_at + self.len / 2;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x41;
        f.write_all_at(&b, at).unwrap();
    }
}

/// The live chunks stored under a chunkd dir.
pub fn chunk_files(chunkd_dir: &Path) -> Vec<ChunkOnDisk> {
    blobvirt_core::pack::live_records(&chunkd_dir.join("packs"))
        .unwrap_or_default()
        .into_iter()
        .map(|(id, f)| ChunkOnDisk {
            id,
            hex: id.to_hex(),
            file: f.file,
            data_at: f.data_at,
            len: f.len,
        })
        .collect()
}

/// Chunk `id` under a chunkd dir, when it holds it.
pub fn chunk_on_disk(chunkd_dir: &Path, id: &blobvirt_core::ChunkId) -> Option<ChunkOnDisk> {
    chunk_files(chunkd_dir).into_iter().find(|c| c.id == *id)
}

/// Bytes allocated on disk (st_blocks × 512, as `du` counts) by the
/// segments under a chunkd dir.
pub fn chunk_alloc_bytes(chunkd_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(chunkd_dir.join("packs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.metadata().map(|m| m.blocks() * 512).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}
