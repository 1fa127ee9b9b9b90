//! A metadata write transaction ([`MetaTx`]): the repository counters, and
//! the segment-tree [`NodeStore`] with reference counts and the GC queue,
//! all inside one KV write transaction. [`ReadStore`] is the read-only
//! `NodeStore` used to resolve trees in a read transaction.
//!
//! Reference counting rules: a node counts its parents plus the versions
//! whose root it is; a chunk likewise (its count lives under `C`, absent =
//! 0). When a chunk's count drops to 0 it is queued for GC as pending; when
//! a pending chunk gets a reference again it leaves the queue (resurrection).
//! The queue (`G` entries) and its count (`gc_pending`) change only through
//! [`MetaTx::gc_unqueue`], [`MetaTx::gc_mark_deleting`] and the private
//! `gc_queue`, which GC passes (`crate::gc`) use too.

use blobvirt_core::tree::{Child, Node, NodeId, NodeStore};

use super::MetaError;
use crate::codec::{dec_u64, enc_u64, key, GcState, NodeRec};
use crate::kv::{ReadTx, WriteTx};

/// The repository-wide counters (`M` keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub next_blob: u64,
    pub next_node: u64,
    pub blobs: u64,
    pub versions: u64,
    pub nodes: u64,
    pub live_chunks: u64,
    pub gc_pending: u64,
    pub gc_epoch: u64,
    /// Sequence of staging and release-queue keys (`S`, `F`).
    pub next_hold: u64,
}

const NAMES: [&str; 9] = [
    "next_blob",
    "next_node",
    "blobs",
    "versions",
    "nodes",
    "live_chunks",
    "gc_pending",
    "gc_epoch",
    "next_hold",
];

impl Counters {
    fn fields(&mut self) -> [&mut u64; 9] {
        [
            &mut self.next_blob,
            &mut self.next_node,
            &mut self.blobs,
            &mut self.versions,
            &mut self.nodes,
            &mut self.live_chunks,
            &mut self.gc_pending,
            &mut self.gc_epoch,
            &mut self.next_hold,
        ]
    }

    /// Loads the counters (absent = 0; ids start at 1).
    pub fn load(tx: &dyn ReadTx) -> Result<Self, MetaError> {
        let mut c = Counters::default();
        for (name, f) in NAMES.iter().zip(c.fields()) {
            if let Some(v) = tx.get(&key::counter(name))? {
                *f = dec_u64(&v, "counter")?;
            }
        }
        c.next_blob = c.next_blob.max(1);
        c.next_node = c.next_node.max(1);
        Ok(c)
    }

    fn save(mut self, old: &mut Counters, tx: &mut dyn WriteTx) -> Result<(), MetaError> {
        for ((name, new), old) in NAMES.iter().zip(self.fields()).zip(old.fields()) {
            if *new != *old {
                tx.put(&key::counter(name), &enc_u64(*new))?;
            }
        }
        Ok(())
    }
}

/// A metadata write transaction.
pub struct MetaTx<'a> {
    pub tx: &'a mut dyn WriteTx,
    pub c: Counters,
    loaded: Counters,
    /// Unix seconds, for records and GC timestamps.
    pub now: i64,
}

impl<'a> MetaTx<'a> {
    pub fn begin(tx: &'a mut dyn WriteTx, now: i64) -> Result<Self, MetaError> {
        let c = Counters::load(tx.as_read())?;
        Ok(MetaTx {
            tx,
            c,
            loaded: c,
            now,
        })
    }

    /// Writes the counters that changed; call before the transaction commits.
    pub fn finish(mut self) -> Result<(), MetaError> {
        self.c.save(&mut self.loaded, self.tx)
    }

    pub fn r(&self) -> &dyn ReadTx {
        self.tx.as_read()
    }

    fn node_rec(&self, id: NodeId) -> Result<NodeRec, MetaError> {
        node_rec(self.r(), id)
    }

    /// The reference count of a chunk.
    pub fn chunk_refs(&self, id: &blobvirt_core::ChunkId) -> Result<u64, MetaError> {
        chunk_refs(self.r(), id)
    }

    /// The GC state of a chunk, if queued.
    pub fn gc_state(&self, id: &blobvirt_core::ChunkId) -> Result<Option<GcState>, MetaError> {
        match self.tx.get(&key::gc(id))? {
            Some(v) => Ok(Some(GcState::decode(&v)?)),
            None => Ok(None),
        }
    }

    // The GC queue: `G` entries and their count `gc_pending`, changed only
    // by these four.

    /// Queues an unreferenced chunk for GC as pending since now (a chunk
    /// already queued is counted once and gets the new time stamp).
    fn gc_queue(&mut self, id: &blobvirt_core::ChunkId) -> Result<(), MetaError> {
        self.gc_queue_since(id, self.now)
    }

    /// Queues an unreferenced chunk for GC as pending since `since` (0:
    /// past any grace delay). Deferred deletions of a returning node and
    /// fsck's orphans go through here, so the GC pass and its epoch guard
    /// every deletion alike. A chunk being deleted stays so.
    pub fn gc_queue_since(
        &mut self,
        id: &blobvirt_core::ChunkId,
        since: i64,
    ) -> Result<(), MetaError> {
        match self.gc_state(id)? {
            None => self.c.gc_pending += 1,
            Some(GcState::Deleting) => return Ok(()),
            Some(GcState::Pending { .. }) => {}
        }
        let st = GcState::Pending { since };
        self.tx.put(&key::gc(id), &st.encode())?;
        Ok(())
    }

    /// Marks a queued chunk as being deleted by a GC pass.
    pub fn gc_mark_deleting(&mut self, id: &blobvirt_core::ChunkId) -> Result<(), MetaError> {
        self.tx.put(&key::gc(id), &GcState::Deleting.encode())?;
        Ok(())
    }

    /// Takes a chunk the caller knows is queued out of the GC queue (it got
    /// a reference again, or a GC pass deleted it).
    pub fn gc_unqueue(&mut self, id: &blobvirt_core::ChunkId) -> Result<(), MetaError> {
        self.tx.delete(&key::gc(id))?;
        self.c.gc_pending = self.c.gc_pending.saturating_sub(1);
        Ok(())
    }
}

pub fn node_rec(tx: &dyn ReadTx, id: NodeId) -> Result<NodeRec, MetaError> {
    match tx.get(&key::node(id))? {
        Some(v) => Ok(NodeRec::decode(&v)?),
        None => Err(MetaError::Corrupt(format!("tree node {id} is missing"))),
    }
}

pub fn chunk_refs(tx: &dyn ReadTx, id: &blobvirt_core::ChunkId) -> Result<u64, MetaError> {
    match tx.get(&key::chunk(id))? {
        Some(v) => Ok(dec_u64(&v, "chunk refcount")?),
        None => Ok(0),
    }
}

impl NodeStore for MetaTx<'_> {
    type Error = MetaError;

    fn get(&self, id: NodeId) -> Result<Node, MetaError> {
        Ok(self.node_rec(id)?.node)
    }

    fn insert(&mut self, node: Node) -> Result<NodeId, MetaError> {
        let id = self.c.next_node;
        self.c.next_node += 1;
        self.c.nodes += 1;
        self.tx
            .put(&key::node(id), &NodeRec { node, refs: 0 }.encode())?;
        Ok(id)
    }

    fn incref(&mut self, c: Child) -> Result<(), MetaError> {
        match c {
            Child::Hole => {}
            Child::Node(id) => {
                let mut rec = self.node_rec(id)?;
                rec.refs += 1;
                self.tx.put(&key::node(id), &rec.encode())?;
            }
            Child::Chunk(ch) => {
                let refs = self.chunk_refs(&ch)?;
                if refs == 0 {
                    self.c.live_chunks += 1;
                    if self.gc_state(&ch)?.is_some() {
                        self.gc_unqueue(&ch)?;
                    }
                }
                self.tx.put(&key::chunk(&ch), &enc_u64(refs + 1))?;
            }
        }
        Ok(())
    }

    fn decref(&mut self, c: Child) -> Result<u64, MetaError> {
        match c {
            Child::Hole => Ok(0),
            Child::Node(id) => {
                let mut rec = self.node_rec(id)?;
                if rec.refs == 0 {
                    return Err(MetaError::Corrupt(format!(
                        "tree node {id} lost more references than it had"
                    )));
                }
                rec.refs -= 1;
                self.tx.put(&key::node(id), &rec.encode())?;
                Ok(rec.refs)
            }
            Child::Chunk(ch) => {
                let refs = self.chunk_refs(&ch)?;
                match refs {
                    0 => Err(MetaError::Corrupt(format!(
                        "chunk {ch} lost more references than it had"
                    ))),
                    1 => {
                        self.tx.delete(&key::chunk(&ch))?;
                        self.c.live_chunks = self.c.live_chunks.saturating_sub(1);
                        self.gc_queue(&ch)?;
                        Ok(0)
                    }
                    n => {
                        self.tx.put(&key::chunk(&ch), &enc_u64(n - 1))?;
                        Ok(n - 1)
                    }
                }
            }
        }
    }

    fn remove(&mut self, id: NodeId) -> Result<(), MetaError> {
        self.tx.delete(&key::node(id))?;
        self.c.nodes = self.c.nodes.saturating_sub(1);
        Ok(())
    }
}

/// A read-only [`NodeStore`] over a read transaction (for `tree::resolve`).
pub struct ReadStore<'a>(pub &'a dyn ReadTx);

impl NodeStore for ReadStore<'_> {
    type Error = MetaError;

    fn get(&self, id: NodeId) -> Result<Node, MetaError> {
        Ok(node_rec(self.0, id)?.node)
    }
    fn insert(&mut self, _: Node) -> Result<NodeId, MetaError> {
        Err(read_only())
    }
    fn incref(&mut self, _: Child) -> Result<(), MetaError> {
        Err(read_only())
    }
    fn decref(&mut self, _: Child) -> Result<u64, MetaError> {
        Err(read_only())
    }
    fn remove(&mut self, _: NodeId) -> Result<(), MetaError> {
        Err(read_only())
    }
}

fn read_only() -> MetaError {
    MetaError::Internal("a read transaction tried to change the segment tree".into())
}
