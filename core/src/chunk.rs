//! Chunk identity: `ChunkId` is the BLAKE3-256 digest of a chunk's bytes, and
//! an all-zero chunk is a hole that is never stored.

use std::fmt;

/// Name of an immutable chunk: the BLAKE3-256 hash of its content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data` into its id.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Parses the 32-byte wire form.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(ChunkId)
    }

    /// Parses the 64-character hex form used in file names and messages.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChunkId(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// True when `data` hashes to this id.
    pub fn verifies(&self, data: &[u8]) -> bool {
        ChunkId::of(data) == *self
    }

    /// The first 8 bytes as an integer, used by placement.
    pub fn prefix_u64(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Path of chunk `id` in the one-file-per-chunk layout that chunkd used
/// before its packed store: `chunks/<first 2 hex>/<64 hex>` (chunkd moves
/// such a tree into segments once at start; tests build one to check that).
pub fn chunk_file(chunks_dir: &std::path::Path, id: &ChunkId) -> std::path::PathBuf {
    let hex = id.to_hex();
    chunks_dir.join(&hex[..2]).join(hex)
}

/// This process's view of the machine: the kernel boot id and the network,
/// mount and pid namespaces. Two processes with the same view see the same
/// files at the same paths and share loopback; emulated hosts (one network
/// namespace each, `testbed`) have different views. Empty when unknown.
pub fn host_view() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = |n: &str| {
        std::fs::read_link(format!("/proc/self/ns/{n}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (net, mnt, pid) = (ns("net"), ns("mnt"), ns("pid"));
    if boot.trim().is_empty() || net.is_empty() || mnt.is_empty() || pid.is_empty() {
        return String::new();
    }
    format!("{}/{net}/{mnt}/{pid}", boot.trim())
}

/// True when every byte of `data` is zero (such a chunk is a hole).
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// Allowed chunk sizes: powers of two from 64 KiB to 4 MiB.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;

/// Checks a chunk size; the error is a sentence for the user.
pub fn check_chunk_size(cs: u64) -> Result<u32, String> {
    if cs.is_power_of_two() && (MIN_CHUNK_SIZE as u64..=MAX_CHUNK_SIZE as u64).contains(&cs) {
        Ok(cs as u32)
    } else {
        Err(format!(
            "chunk size {cs} is not a power of two from 64K to 4M; pick one such as 256K"
        ))
    }
}

/// Number of chunks covering `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn ids_round_trip() {
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert!(id.verifies(b"hello"));
        assert!(!id.verifies(b"hellO"));
    }

    #[test]
    fn chunk_sizes() {
        assert!(check_chunk_size(256 * 1024).is_ok());
        assert!(check_chunk_size(32 * 1024).is_err());
        assert!(check_chunk_size(300 * 1024).is_err());
        assert!(check_chunk_size(8 * 1024 * 1024).is_err());
    }
}
