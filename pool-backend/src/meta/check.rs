//! A consistency check of the whole metadata store: recounts every
//! reference from the version roots and compares with the stored node and
//! chunk counts, the GC queue and the counters. Used by tests (after crashes
//! and random operations) and by `blobvirt fsck`; [`Meta::repair_counts`]
//! (`fsck --repair`) writes the recount back.

use std::collections::{BTreeMap, HashMap};

use blobvirt_core::tree::Child;
use blobvirt_core::ChunkId;

use super::{Meta, Result};
use crate::codec::{dec_u64, enc_u64, key, GcState, NodeRec, VersionRec};
use crate::kv::{ReadTx, ReadTxExt};

/// References counted from the version roots.
struct Recount {
    nodes: HashMap<u64, NodeRec>,
    node_refs: HashMap<u64, u64>,
    chunk_refs: BTreeMap<ChunkId, u64>,
    versions: u64,
    /// Nodes referenced but not stored.
    missing: Vec<u64>,
}

fn recount(tx: &dyn ReadTx) -> Result<Recount> {
    let nodes: HashMap<u64, NodeRec> = tx
        .prefix(&[key::NODE])?
        .into_iter()
        .map(|(k, v)| {
            let id = u64::from_be_bytes(k[1..].try_into().unwrap_or_default());
            Ok((id, NodeRec::decode(&v)?))
        })
        .collect::<Result<_>>()?;
    let mut r = Recount {
        nodes,
        node_refs: HashMap::new(),
        chunk_refs: BTreeMap::new(),
        versions: 0,
        missing: Vec::new(),
    };
    let mut stack = Vec::new();
    for (_, v) in tx.prefix(&[key::VERSION])? {
        r.versions += 1;
        stack.push(VersionRec::decode(&v)?.root);
    }
    // Staging roots and queued releases hold references too.
    stack.extend(super::bounded::held_roots(tx)?);
    // Count references; descend into a node only on its first one.
    while let Some(c) = stack.pop() {
        match c {
            Child::Hole => {}
            Child::Chunk(id) => *r.chunk_refs.entry(id).or_default() += 1,
            Child::Node(id) => {
                let n = r.node_refs.entry(id).or_default();
                *n += 1;
                if *n == 1 {
                    match r.nodes.get(&id) {
                        Some(rec) => {
                            stack.push(rec.node.left);
                            stack.push(rec.node.right);
                        }
                        None => r.missing.push(id),
                    }
                }
            }
        }
    }
    Ok(r)
}

fn stored_chunk_refs(tx: &dyn ReadTx) -> Result<BTreeMap<ChunkId, u64>> {
    tx.prefix(&[key::CHUNK])?
        .into_iter()
        .filter_map(|(k, v)| Some((key::chunk_of_key(&k)?, v)))
        .map(|(id, v)| Ok((id, dec_u64(&v, "chunk refcount")?)))
        .collect()
}

impl Meta {
    /// Returns every inconsistency found (empty = consistent).
    pub fn check(&self) -> Result<Vec<String>> {
        self.read(|tx| {
            let r = recount(tx)?;
            let mut problems: Vec<String> = r
                .missing
                .iter()
                .map(|id| format!("node {id} is referenced but missing"))
                .collect();
            for (id, rec) in &r.nodes {
                let want = r.node_refs.get(id).copied().unwrap_or(0);
                if rec.refs != want {
                    problems.push(format!(
                        "node {id} counts {} references, found {want}",
                        rec.refs
                    ));
                }
            }
            let stored = stored_chunk_refs(tx)?;
            if stored != r.chunk_refs {
                let diff = r
                    .chunk_refs
                    .iter()
                    .filter(|(id, n)| stored.get(id) != Some(n))
                    .count()
                    + stored
                        .keys()
                        .filter(|id| !r.chunk_refs.contains_key(id))
                        .count();
                problems.push(format!("{diff} chunk reference counts are wrong"));
            }
            let gc = tx.prefix(&[key::GC])?;
            for (k, v) in &gc {
                GcState::decode(v)?;
                if let Some(id) = key::chunk_of_key(k) {
                    if r.chunk_refs.contains_key(&id) {
                        problems.push(format!("chunk {id} is referenced but queued for GC"));
                    }
                }
            }
            let c = super::Counters::load(tx)?;
            let blobs = tx.prefix(&[key::BLOB])?.len() as u64;
            let expect = [
                ("blobs", c.blobs, blobs),
                ("versions", c.versions, r.versions),
                ("nodes", c.nodes, r.nodes.len() as u64),
                ("live_chunks", c.live_chunks, r.chunk_refs.len() as u64),
                ("gc_pending", c.gc_pending, gc.len() as u64),
            ];
            for (name, have, want) in expect {
                if have != want {
                    problems.push(format!("counter {name} is {have}, found {want}"));
                }
            }
            if let Some(max) = r.nodes.keys().max() {
                if *max >= c.next_node {
                    problems.push(format!("node {max} is not below next_node {}", c.next_node));
                }
            }
            Ok(problems)
        })
    }

    /// Writes the recount back in one transaction: node and chunk counts,
    /// unreachable nodes removed, chunks no longer referenced queued for
    /// GC and referenced ones taken out of its queue, the counters. A node
    /// referenced but missing cannot be made up: it stays a problem.
    /// Returns what it changed, one sentence each.
    pub fn repair_counts(&self) -> Result<Vec<String>> {
        self.write(|m| {
            let r = recount(m.r())?;
            let mut fixed = Vec::new();
            let (mut recounted, mut removed) = (0, 0);
            for (id, rec) in &r.nodes {
                match r.node_refs.get(id).copied().unwrap_or(0) {
                    0 => {
                        m.tx.delete(&key::node(*id))?;
                        removed += 1;
                    }
                    want if want != rec.refs => {
                        let mut rec = *rec;
                        rec.refs = want;
                        m.tx.put(&key::node(*id), &rec.encode())?;
                        recounted += 1;
                    }
                    _ => {}
                }
            }
            if removed > 0 {
                fixed.push(format!("removed {removed} unreachable metadata nodes"));
            }
            if recounted > 0 {
                fixed.push(format!("recounted the references of {recounted} metadata nodes"));
            }
            let stored = stored_chunk_refs(m.r())?;
            let (mut wrong, mut dropped) = (0, 0);
            for (id, n) in &r.chunk_refs {
                if stored.get(id) != Some(n) {
                    m.tx.put(&key::chunk(id), &enc_u64(*n))?;
                    wrong += 1;
                }
                if m.gc_state(id)?.is_some() {
                    m.gc_unqueue(id)?;
                }
            }
            for id in stored.keys().filter(|id| !r.chunk_refs.contains_key(*id)) {
                m.tx.delete(&key::chunk(id))?;
                let now = m.now;
                m.gc_queue_since(id, now)?;
                dropped += 1;
            }
            if wrong + dropped > 0 {
                fixed.push(format!(
                    "recounted {wrong} chunk reference counts and queued {dropped} unreferenced chunks for GC"
                ));
            }
            let gc = m.r().prefix(&[key::GC])?.len() as u64;
            let blobs = m.r().prefix(&[key::BLOB])?.len() as u64;
            let c = &mut m.c;
            let before = *c;
            c.blobs = blobs;
            c.versions = r.versions;
            c.nodes = r.nodes.len() as u64 - removed;
            c.live_chunks = r.chunk_refs.len() as u64;
            c.gc_pending = gc;
            if let Some(max) = r.nodes.keys().max() {
                c.next_node = c.next_node.max(max + 1);
            }
            if *c != before {
                fixed.push("rewrote the repository counters".into());
            }
            Ok(fixed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Engine;
    use blobvirt_core::proto as pb;

    #[test]
    fn repair_writes_the_recount_back() {
        let d = tempfile::tempdir().unwrap();
        let m = Meta::open(Engine::Redb, d.path()).unwrap();
        let changes = (0..8)
            .map(|i| pb::ChunkChange {
                index: i,
                id: bytes::Bytes::copy_from_slice(&ChunkId::of(&i.to_le_bytes()).0),
            })
            .collect();
        m.publish(&pb::PublishRequest {
            name: "v".into(),
            create: true,
            chunk_size: 65536,
            size: 8 * 65536,
            changes,
            ..Default::default()
        })
        .unwrap();
        assert!(m.check().unwrap().is_empty());
        assert!(m.repair_counts().unwrap().is_empty(), "nothing to repair");
        // Damage: a wrong chunk count, an unreachable node, a bad counter.
        let c0 = ChunkId::of(&0u64.to_le_bytes());
        let stray = ChunkId::of(b"stray");
        m.write(|t| {
            t.tx.put(&key::chunk(&c0), &enc_u64(7))?;
            t.tx.put(&key::chunk(&stray), &enc_u64(1))?;
            let (id, rec) = recount(t.r())?.nodes.into_iter().next().unwrap();
            t.tx.put(&key::node(id + 1000), &rec.encode())?;
            t.c.next_node = t.c.next_node.max(id + 1001);
            t.c.live_chunks += 5;
            Ok(())
        })
        .unwrap();
        let problems = m.check().unwrap();
        assert!(problems.len() >= 3, "{problems:?}");
        let fixed = m.repair_counts().unwrap();
        assert!(
            fixed.iter().any(|f| f.contains("removed 1 unreachable")),
            "{fixed:?}"
        );
        assert!(m.check().unwrap().is_empty(), "{:?}", m.check());
        assert_eq!(
            m.stats().unwrap().gc_pending,
            1,
            "the stray chunk is queued"
        );
    }
}
