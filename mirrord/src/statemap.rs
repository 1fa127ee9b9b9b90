//! The persistent chunk-state map of one local mirror (`CACHE/vols/NAME/state`).
//!
//! Format (version 1), all integers little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `BVMIRROR` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | flags: bit 0 = clean shutdown |
//! | 16 | 4 | chunk size |
//! | 20 | 4 | length N of the volume name |
//! | 24 | 8 | blob id |
//! | 32 | 8 | base version of the mirror |
//! | 40 | 8 | volume size of the mirror |
//! | 48 | 8 | chunk count C |
//! | 56 | N | volume name (UTF-8) |
//! | 56+N | C | one state byte per chunk: 0 absent, 1 present, 2 dirty |
//! | 56+N+C | 32 | BLAKE3 of every byte before |
//!
//! The file is replaced atomically (temporary file, fsync, rename, fsync of
//! the directory). The "fetching" state lives only in memory. Callers fsync
//! the data file *before* writing a map that marks chunks present, so after a
//! crash no chunk is marked present whose bytes are not on disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"BVMIRROR";
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 56;

/// The persisted state of one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkState {
    /// Not in the local data file (or its bytes are not trusted).
    Absent = 0,
    /// The local bytes equal the base version's chunk.
    Present = 1,
    /// Written locally since the base version; to be committed.
    Dirty = 2,
}

impl ChunkState {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(ChunkState::Absent),
            1 => Some(ChunkState::Present),
            2 => Some(ChunkState::Dirty),
            _ => None,
        }
    }

    /// Present or dirty: the bytes are in the local data file.
    pub fn is_local(self) -> bool {
        self != ChunkState::Absent
    }
}

/// Everything the state file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMap {
    pub clean: bool,
    pub chunk_size: u32,
    pub blob_id: u64,
    pub version: u64,
    pub size: u64,
    pub name: String,
    pub states: Vec<ChunkState>,
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not a valid mirror state file: {reason}")]
    Corrupt { path: String, reason: String },
}

impl StateMap {
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let mut b = Vec::with_capacity(HEADER + name.len() + self.states.len() + 32);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.clean as u32).to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&(name.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.blob_id.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&(self.states.len() as u64).to_le_bytes());
        b.extend_from_slice(name);
        b.extend(self.states.iter().map(|s| *s as u8));
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER + 32 {
            return Err(format!("{} bytes is too short", b.len()));
        }
        if &b[..8] != MAGIC {
            return Err("bad magic".into());
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err("checksum mismatch".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
        let fv = u32_at(8);
        if fv != FORMAT_VERSION {
            return Err(format!("format version {fv} is not supported"));
        }
        let name_len = u32_at(20) as usize;
        let count = u64_at(48) as usize;
        if body.len() != HEADER + name_len + count {
            return Err("length does not match the header".into());
        }
        let name = std::str::from_utf8(&body[HEADER..HEADER + name_len])
            .map_err(|_| "volume name is not UTF-8".to_string())?
            .to_string();
        let states = body[HEADER + name_len..]
            .iter()
            .map(|&s| ChunkState::from_u8(s).ok_or_else(|| format!("bad chunk state {s}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StateMap {
            clean: u32_at(12) & 1 == 1,
            chunk_size: u32_at(16),
            blob_id: u64_at(24),
            version: u64_at(32),
            size: u64_at(40),
            name,
            states,
        })
    }

    /// Reads `path`; `Ok(None)` when it does not exist.
    pub fn read(path: &Path) -> Result<Option<Self>, StateError> {
        let b = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Self::decode(&b)
            .map(Some)
            .map_err(|reason| StateError::Corrupt {
                path: path.display().to_string(),
                reason,
            })
    }

    /// Replaces `path` atomically and durably.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&self.encode())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateMap {
        StateMap {
            clean: true,
            chunk_size: 65536,
            blob_id: 7,
            version: 3,
            size: 200_000,
            name: "web-01".into(),
            states: vec![
                ChunkState::Absent,
                ChunkState::Present,
                ChunkState::Dirty,
                ChunkState::Absent,
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(StateMap::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn every_torn_or_flipped_byte_is_rejected() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(StateMap::decode(&b[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(StateMap::decode(&c).is_err(), "flipped byte {i}");
        }
    }

    #[test]
    fn file_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        assert!(StateMap::read(&p).unwrap().is_none());
        sample().write(&p).unwrap();
        assert_eq!(StateMap::read(&p).unwrap().unwrap(), sample());
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(
            StateMap::read(&p),
            Err(StateError::Corrupt { .. })
        ));
    }
}
