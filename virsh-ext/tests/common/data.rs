//! Test data: seeded images with holes, in-place changes, sha256, and the
//! chunk files chunkd keeps on disk.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use super::MIB;

/// Chunk files (`chunks/<2 hex>/<64 hex>`) under a chunkd dir, with sizes.
pub fn chunk_files(chunkd_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(prefixes) = fs::read_dir(chunkd_dir.join("chunks")) else {
        return out;
    };
    for p in prefixes.flatten() {
        let Ok(files) = fs::read_dir(p.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                let m = f.metadata().unwrap();
                if m.is_file() {
                    out.push((f.path(), m.len()));
                }
            }
        }
    }
    out
}

/// Bytes allocated on disk (st_blocks × 512, as `du` counts) by the chunk
/// files under a chunkd dir.
pub fn chunk_alloc_bytes(chunkd_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    chunk_files(chunkd_dir)
        .iter()
        .map(|(p, _)| fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0))
        .sum()
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

/// Writes a `size`-byte image of seeded random data with zero `holes`
/// (offset, length); holes are left sparse.
pub fn write_image(path: &Path, size: u64, holes: &[(u64, u64)], seed: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
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

/// Overwrites `len` bytes at `off` with seeded random data.
pub fn overwrite(path: &Path, off: u64, len: u64, seed: u64) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; len as usize];
    rng.fill_bytes(&mut buf);
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(off)).unwrap();
    f.write_all(&buf).unwrap();
    f.sync_all().unwrap();
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

pub fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
