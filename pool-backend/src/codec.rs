//! Binary encoding of poold's metadata keys and values.
//!
//! All tables share one keyspace; a key starts with a one-byte table tag and
//! integers in keys are big-endian so that key order is numeric order:
//!
//! | key | value |
//! | --- | --- |
//! | `M` name | counter: u64 LE (`format`, `next_blob`, `next_node`, `blobs`, `versions`, `nodes`, `live_chunks`, `gc_pending`, `gc_epoch`) |
//! | `B` blob u64 BE | [`BlobRec`] |
//! | `N` name bytes | blob id u64 LE |
//! | `V` blob u64 BE, version u64 BE | [`VersionRec`] |
//! | `T` node u64 BE | [`NodeRec`] |
//! | `C` chunk id (32) | reference count u64 LE (absent = 0) |
//! | `G` chunk id (32) | [`GcState`] |
//! | `P` blob u64 BE | profile: u32 LE count, then u64 LE chunk indices |
//! | `R` chunkd id bytes | chunkd address (UTF-8) |
//! | `D` chunkd id bytes | empty: the node is draining |
//! | `Q` chunkd id bytes, 0, chunk id (32) | empty: GC deleted the chunk while the node was down; delete it there when it is back |
//! | `L` volume name bytes | writer lease: holder string, expiry u64 (Unix ms) |
//!
//! Values are little-endian. Records begin with a format byte (currently 1)
//! so later versions can add fields; strings are u32 LE length + UTF-8. A
//! tree [`Child`] is a tag byte: 0 = hole, 1 = chunk (32 bytes follow),
//! 2 = node (u64 LE follows).

use blobvirt_core::tree::{Child, Node, NodeId};
use blobvirt_core::ChunkId;

/// Format byte of every record written by this version.
pub const RECORD_V1: u8 = 1;

/// Decoding failed: the store holds bytes this version does not understand.
#[derive(Debug, thiserror::Error)]
#[error("metadata record {what} is malformed; the metadata store is damaged or from a newer poold")]
pub struct DecodeError {
    pub what: &'static str,
}

pub mod key {
    //! Key builders (see the table in the module doc).
    use super::*;

    pub const COUNTER: u8 = b'M';
    pub const BLOB: u8 = b'B';
    pub const NAME: u8 = b'N';
    pub const VERSION: u8 = b'V';
    pub const NODE: u8 = b'T';
    pub const CHUNK: u8 = b'C';
    pub const GC: u8 = b'G';
    pub const PROFILE: u8 = b'P';
    pub const MEMBER: u8 = b'R';
    pub const DRAINING: u8 = b'D';
    pub const DEFERRED: u8 = b'Q';
    pub const LEASE: u8 = b'L';
    /// A publish being applied in slices: its staging root (`meta/bounded.rs`).
    pub const STAGING: u8 = b'S';
    /// A reference queued to be freed in bounded batches (`meta/bounded.rs`).
    pub const FREE: u8 = b'F';

    pub fn counter(name: &str) -> Vec<u8> {
        tagged(COUNTER, name.as_bytes())
    }
    pub fn blob(id: u64) -> Vec<u8> {
        tagged(BLOB, &id.to_be_bytes())
    }
    pub fn name(name: &str) -> Vec<u8> {
        tagged(NAME, name.as_bytes())
    }
    pub fn versions_of(blob: u64) -> Vec<u8> {
        tagged(VERSION, &blob.to_be_bytes())
    }
    pub fn version(blob: u64, v: u64) -> Vec<u8> {
        let mut k = versions_of(blob);
        k.extend_from_slice(&v.to_be_bytes());
        k
    }
    /// The version number at the end of a version key.
    pub fn version_of_key(k: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(k.get(9..17)?.try_into().ok()?))
    }
    pub fn node(id: NodeId) -> Vec<u8> {
        tagged(NODE, &id.to_be_bytes())
    }
    pub fn chunk(id: &ChunkId) -> Vec<u8> {
        tagged(CHUNK, &id.0)
    }
    pub fn gc(id: &ChunkId) -> Vec<u8> {
        tagged(GC, &id.0)
    }
    /// The chunk id at the end of a `C` or `G` key.
    pub fn chunk_of_key(k: &[u8]) -> Option<ChunkId> {
        ChunkId::from_slice(k.get(1..)?)
    }
    pub fn profile(blob: u64) -> Vec<u8> {
        tagged(PROFILE, &blob.to_be_bytes())
    }
    pub fn member(id: &str) -> Vec<u8> {
        tagged(MEMBER, id.as_bytes())
    }
    pub fn draining(id: &str) -> Vec<u8> {
        tagged(DRAINING, id.as_bytes())
    }
    /// The prefix of every deferred deletion of node `id`.
    pub fn deferred_of(id: &str) -> Vec<u8> {
        let mut k = tagged(DEFERRED, id.as_bytes());
        k.push(0);
        k
    }
    pub fn deferred(node: &str, chunk: &ChunkId) -> Vec<u8> {
        let mut k = deferred_of(node);
        k.extend_from_slice(&chunk.0);
        k
    }
    /// The chunk id at the end of a `Q` key.
    pub fn chunk_of_deferred(k: &[u8]) -> Option<ChunkId> {
        ChunkId::from_slice(k.get(k.len().checked_sub(32)?..)?)
    }
    pub fn lease(name: &str) -> Vec<u8> {
        tagged(LEASE, name.as_bytes())
    }
    pub fn staging(seq: u64) -> Vec<u8> {
        tagged(STAGING, &seq.to_be_bytes())
    }
    pub fn free(seq: u64) -> Vec<u8> {
        tagged(FREE, &seq.to_be_bytes())
    }

    fn tagged(tag: u8, rest: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + rest.len());
        k.push(tag);
        k.extend_from_slice(rest);
        k
    }
}

/// Appends little-endian fields.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn child(&mut self, c: Child) -> &mut Self {
        match c {
            Child::Hole => self.u8(0),
            Child::Chunk(id) => {
                self.u8(1);
                self.0.extend_from_slice(&id.0);
                self
            }
            Child::Node(n) => self.u8(2).u64(n),
        }
    }
}

/// Reads little-endian fields; every read checks the length.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }
    fn err(&self) -> DecodeError {
        DecodeError { what: self.what }
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8")))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.bytes(8)?.try_into().expect("8")))
    }
    pub fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err())
    }
    pub fn child(&mut self) -> Result<Child, DecodeError> {
        match self.u8()? {
            0 => Ok(Child::Hole),
            1 => Ok(Child::Chunk(ChunkId(
                self.bytes(32)?.try_into().expect("32"),
            ))),
            2 => Ok(Child::Node(self.u64()?)),
            _ => Err(self.err()),
        }
    }
    /// True when every byte was read (optional trailing fields are absent).
    pub fn at_end(&self) -> bool {
        self.buf.is_empty()
    }
    /// Checks the record's format byte.
    pub fn version(&mut self) -> Result<(), DecodeError> {
        if self.u8()? == RECORD_V1 {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

/// Encodes a u64 value (counters, refcounts, name → id).
pub fn enc_u64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// Decodes a u64 value.
pub fn dec_u64(b: &[u8], what: &'static str) -> Result<u64, DecodeError> {
    Reader::new(b, what).u64()
}

/// The source of a clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub blob: u64,
    pub name: String,
    pub version: u64,
}

/// A blob (volume).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRec {
    pub name: String,
    pub chunk_size: u32,
    pub created: i64,
    /// The number the next published version gets (numbers are never reused).
    pub next_version: u64,
    pub origin: Option<Origin>,
}

impl BlobRec {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(RECORD_V1)
            .str(&self.name)
            .u32(self.chunk_size)
            .i64(self.created)
            .u64(self.next_version);
        match &self.origin {
            None => w.u8(0),
            Some(o) => w.u8(1).u64(o.blob).str(&o.name).u64(o.version),
        };
        w.0
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b, "blob");
        r.version()?;
        Ok(BlobRec {
            name: r.str()?,
            chunk_size: r.u32()?,
            created: r.i64()?,
            next_version: r.u64()?,
            origin: match r.u8()? {
                0 => None,
                _ => Some(Origin {
                    blob: r.u64()?,
                    name: r.str()?,
                    version: r.u64()?,
                }),
            },
        })
    }
}

/// A published version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRec {
    pub size: u64,
    /// Depth of the segment tree (`tree::depth_for` of the chunk count).
    pub depth: u32,
    pub created: i64,
    /// The root; the version holds one reference on it.
    pub root: Child,
    pub label: String,
    /// The request id of the publish that made it (empty: none); an
    /// optional trailing field, absent in records of older poolds.
    pub request: Vec<u8>,
}

impl VersionRec {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(RECORD_V1)
            .u64(self.size)
            .u32(self.depth)
            .i64(self.created)
            .child(self.root)
            .str(&self.label);
        if !self.request.is_empty() {
            w.u32(self.request.len() as u32);
            w.0.extend_from_slice(&self.request);
        }
        w.0
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b, "version");
        r.version()?;
        Ok(VersionRec {
            size: r.u64()?,
            depth: r.u32()?,
            created: r.i64()?,
            root: r.child()?,
            label: r.str()?,
            request: if r.at_end() {
                Vec::new()
            } else {
                let n = r.u32()? as usize;
                r.bytes(n)?.to_vec()
            },
        })
    }
}

/// A segment tree node with its reference count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeRec {
    pub node: Node,
    pub refs: u64,
}

impl NodeRec {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(RECORD_V1)
            .child(self.node.left)
            .child(self.node.right)
            .u64(self.refs);
        w.0
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b, "tree node");
        r.version()?;
        Ok(NodeRec {
            node: Node {
                left: r.child()?,
                right: r.child()?,
            },
            refs: r.u64()?,
        })
    }
}

/// Where an unreferenced chunk is in garbage collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcState {
    /// Unreferenced since this unix time (seconds); may be resurrected.
    Pending { since: i64 },
    /// Being deleted from the chunk daemons; must be uploaded again to be used.
    Deleting,
}

impl GcState {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            GcState::Pending { since } => w.u8(0).i64(*since),
            GcState::Deleting => w.u8(1),
        };
        w.0
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b, "gc entry");
        match r.u8()? {
            0 => Ok(GcState::Pending { since: r.i64()? }),
            1 => Ok(GcState::Deleting),
            _ => Err(DecodeError { what: "gc entry" }),
        }
    }
}

/// Encodes a profile (chunk indices in first-read order).
pub fn encode_profile(chunks: &[u64]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(4 + 8 * chunks.len()));
    w.u32(chunks.len() as u32);
    for c in chunks {
        w.u64(*c);
    }
    w.0
}

pub fn decode_profile(b: &[u8]) -> Result<Vec<u64>, DecodeError> {
    let mut r = Reader::new(b, "profile");
    let n = r.u32()? as usize;
    if b.len() != 4 + 8 * n {
        return Err(DecodeError { what: "profile" });
    }
    (0..n).map(|_| r.u64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let b = BlobRec {
            name: "web-01".into(),
            chunk_size: 1 << 18,
            created: 1_700_000_000,
            next_version: 4,
            origin: Some(Origin {
                blob: 3,
                name: "base".into(),
                version: 2,
            }),
        };
        assert_eq!(BlobRec::decode(&b.encode()).unwrap(), b);
        let b2 = BlobRec { origin: None, ..b };
        assert_eq!(BlobRec::decode(&b2.encode()).unwrap(), b2);
        let v = VersionRec {
            size: 12345,
            depth: 3,
            created: -1,
            root: Child::Chunk(ChunkId::of(b"x")),
            label: "snap".into(),
            request: Vec::new(),
        };
        assert_eq!(VersionRec::decode(&v.encode()).unwrap(), v);
        // The request id is a trailing field: records without one are
        // byte for byte what older poolds wrote, and both decode.
        let with = VersionRec {
            request: vec![7; 16],
            ..v.clone()
        };
        let (old, new) = (v.encode(), with.encode());
        assert_eq!(&new[..old.len()], &old[..]);
        assert_eq!(VersionRec::decode(&new).unwrap(), with);
        assert!(VersionRec::decode(&new[..new.len() - 1]).is_err());
        let n = NodeRec {
            node: Node {
                left: Child::Node(u64::MAX),
                right: Child::Hole,
            },
            refs: 2,
        };
        assert_eq!(NodeRec::decode(&n.encode()).unwrap(), n);
        for g in [GcState::Pending { since: 5 }, GcState::Deleting] {
            assert_eq!(GcState::decode(&g.encode()).unwrap(), g);
        }
        assert_eq!(
            decode_profile(&encode_profile(&[3, 1, 2])).unwrap(),
            vec![3, 1, 2]
        );
    }

    #[test]
    fn truncated_records_are_errors() {
        let v = VersionRec {
            size: 1,
            depth: 0,
            created: 0,
            root: Child::Node(7),
            label: "l".into(),
            request: Vec::new(),
        }
        .encode();
        for n in 0..v.len() {
            assert!(VersionRec::decode(&v[..n]).is_err());
        }
        assert!(decode_profile(&[1, 0, 0, 0]).is_err());
        assert!(NodeRec::decode(&[9]).is_err());
    }

    #[test]
    fn version_keys_sort_numerically() {
        assert!(key::version(1, 255) < key::version(1, 256));
        assert!(key::version(1, u64::MAX) < key::version(2, 0));
        assert_eq!(key::version_of_key(&key::version(7, 300)), Some(300));
    }
}
