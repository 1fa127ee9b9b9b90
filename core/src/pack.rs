//! The record format of chunkd's packed store, shared by chunkd (which owns
//! the segments), by clients of the same machine (which write batch files in
//! this format for PutLocal) and by tests (which find a chunk on disk).
//!
//! A segment is a sequence of records, each a 64-byte header followed by the
//! chunk's bytes, with no padding:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `BVPACK01` |
//! | 8..40 | chunk id (BLAKE3-256 of the data) |
//! | 40..48 | data length, little endian |
//! | 48..56 | check: the first 8 bytes of BLAKE3 of bytes 0..48 |
//! | 56..60 | state: [`LIVE`] or [`DEAD`], outside the check so a delete can flip it in place |
//! | 60..64 | zero |
//!
//! The check finds torn or stray headers; the data itself is checked against
//! the id whenever it is read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::chunk::ChunkId;

/// Header size in bytes.
pub const HEADER: u64 = 64;
/// Offset of the state word within a header.
pub const STATE_AT: u64 = 56;
pub const MAGIC: [u8; 8] = *b"BVPACK01";
/// State word of a record that holds a chunk.
pub const LIVE: u32 = 0x4556_494c;
/// State word of a deleted record (its data may be a hole).
pub const DEAD: u32 = 0x4441_4544;
/// Largest data length a header may claim (a chunk is at most 4 MiB).
pub const MAX_LEN: u64 = 64 << 20;

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: ChunkId,
    pub len: u64,
    pub live: bool,
}

fn check_of(b: &[u8]) -> [u8; 8] {
    blake3::hash(&b[..48]).as_bytes()[..8]
        .try_into()
        .expect("8 bytes")
}

/// The header of a live record of chunk `id` with `len` data bytes.
pub fn header(id: &ChunkId, len: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..40].copy_from_slice(&id.0);
    h[40..48].copy_from_slice(&len.to_le_bytes());
    let c = check_of(&h);
    h[48..56].copy_from_slice(&c);
    h[56..60].copy_from_slice(&LIVE.to_le_bytes());
    h
}

/// Decodes a header; `None` when it is not one (wrong magic or check, an
/// unknown state, a length over [`MAX_LEN`]).
pub fn decode(h: &[u8; HEADER as usize]) -> Option<Header> {
    if h[..8] != MAGIC || h[48..56] != check_of(h) {
        return None;
    }
    let len = u64::from_le_bytes(h[40..48].try_into().expect("8 bytes"));
    let state = u32::from_le_bytes(h[56..60].try_into().expect("4 bytes"));
    if len > MAX_LEN || (state != LIVE && state != DEAD) {
        return None;
    }
    Some(Header {
        id: ChunkId(h[8..40].try_into().expect("32 bytes")),
        len,
        live: state == LIVE,
    })
}

/// Writes a live record of `data` at `off`; returns the offset after it.
pub fn write_record(f: &File, off: u64, id: &ChunkId, data: &[u8]) -> io::Result<u64> {
    f.write_all_at(&header(id, data.len() as u64), off)?;
    f.write_all_at(data, off + HEADER)?;
    Ok(off + HEADER + data.len() as u64)
}

/// Sets the state word of the record at `off`.
pub fn set_state(f: &File, off: u64, state: u32) -> io::Result<()> {
    f.write_all_at(&state.to_le_bytes(), off + STATE_AT)
}

/// Reads the data of the record at `off` (header offset).
pub fn read_data(f: &File, off: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, off + HEADER)?;
    Ok(buf)
}

/// What [`scan`] found in a segment.
#[derive(Debug, Default)]
pub struct Scan {
    /// (header offset, header) of every well-formed record, live or dead.
    pub records: Vec<(u64, Header)>,
    /// Where the well-formed records end.
    pub end: u64,
    /// The file's length; more than `end` when its tail is torn or bad.
    pub file_len: u64,
}

/// Reads every header of a segment, stopping at the first that is not
/// well-formed or whose data runs past the end of the file.
pub fn scan(f: &File) -> io::Result<Scan> {
    let file_len = f.metadata()?.len();
    let mut s = Scan {
        file_len,
        ..Scan::default()
    };
    let mut off = 0;
    let mut h = [0u8; HEADER as usize];
    while off + HEADER <= file_len {
        f.read_exact_at(&mut h, off)?;
        let Some(hd) = decode(&h) else { break };
        if off + HEADER + hd.len > file_len {
            break;
        }
        s.records.push((off, hd));
        off += HEADER + hd.len;
    }
    s.end = off;
    Ok(s)
}

/// Where a live record of a chunk sits on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub file: PathBuf,
    /// Offset of the data (after the header).
    pub data_at: u64,
    pub len: u64,
}

/// Every live record in the segments of `packs` (a chunkd's `packs/`
/// directory), for tools and tests that look at a store from outside.
pub fn live_records(packs: &Path) -> io::Result<Vec<(ChunkId, Found)>> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(packs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for p in names {
        let Ok(f) = File::open(&p) else { continue };
        for (off, h) in scan(&f)?.records {
            if h.live {
                out.push((
                    h.id,
                    Found {
                        file: p.clone(),
                        data_at: off + HEADER,
                        len: h.len,
                    },
                ));
            }
        }
    }
    Ok(out)
}

/// The live record of `id` under `packs`, if any.
pub fn find(packs: &Path, id: &ChunkId) -> io::Result<Option<Found>> {
    Ok(live_records(packs)?
        .into_iter()
        .find(|(i, _)| i == id)
        .map(|(_, f)| f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_left_out() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let a = vec![7u8; 1000];
        let b = vec![9u8; 300];
        let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
        let end = write_record(&f, 0, &ia, &a).unwrap();
        let end2 = write_record(&f, end, &ib, &b).unwrap();
        set_state(&f, 0, DEAD).unwrap();
        let s = scan(&f).unwrap();
        assert_eq!(s.end, end2);
        assert_eq!(s.records.len(), 2);
        assert!(!s.records[0].1.live && s.records[1].1.live);
        assert_eq!(read_data(&f, end, 300).unwrap(), b);
        assert_eq!(
            find(d.path(), &ib).unwrap().map(|x| x.data_at),
            Some(end + HEADER)
        );
        assert_eq!(find(d.path(), &ia).unwrap(), None);
        // A header whose data was cut short, then garbage: both left out.
        f.set_len(end2 - 1).unwrap();
        let s = scan(&f).unwrap();
        assert_eq!((s.records.len(), s.end), (1, end));
        f.write_all_at(&[0xffu8; 80], end).unwrap();
        assert_eq!(scan(&f).unwrap().end, end);
        // A flipped bit in a header breaks its check.
        let mut h = header(&ia, 5);
        h[41] ^= 1;
        assert_eq!(decode(&h), None);
    }
}
