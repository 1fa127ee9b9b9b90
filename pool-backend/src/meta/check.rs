//! A consistency check of the whole metadata store: recounts every
//! reference from the version roots and compares with the stored node and
//! chunk counts, the GC queue and the counters. Used by tests (after crashes
//! and random operations) and meant for an operator's `fsck`.

use std::collections::{BTreeMap, HashMap};

use blobvirt_core::tree::Child;
use blobvirt_core::ChunkId;

use super::{Meta, Result};
use crate::codec::{dec_u64, key, GcState, NodeRec, VersionRec};
use crate::kv::ReadTxExt;

impl Meta {
    /// Returns every inconsistency found (empty = consistent).
    pub fn check(&self) -> Result<Vec<String>> {
        self.read(|tx| {
            let mut problems = Vec::new();
            let nodes: HashMap<u64, NodeRec> = tx
                .prefix(&[key::NODE])?
                .into_iter()
                .map(|(k, v)| {
                    let id = u64::from_be_bytes(k[1..].try_into().unwrap_or_default());
                    Ok((id, NodeRec::decode(&v)?))
                })
                .collect::<Result<_>>()?;
            let mut node_refs: HashMap<u64, u64> = HashMap::new();
            let mut chunk_refs: BTreeMap<ChunkId, u64> = BTreeMap::new();
            let mut stack = Vec::new();
            let mut n_versions = 0u64;
            for (_, v) in tx.prefix(&[key::VERSION])? {
                n_versions += 1;
                stack.push(VersionRec::decode(&v)?.root);
            }
            // Count references; descend into a node only on its first one.
            while let Some(c) = stack.pop() {
                match c {
                    Child::Hole => {}
                    Child::Chunk(id) => *chunk_refs.entry(id).or_default() += 1,
                    Child::Node(id) => {
                        let n = node_refs.entry(id).or_default();
                        *n += 1;
                        if *n == 1 {
                            match nodes.get(&id) {
                                Some(rec) => {
                                    stack.push(rec.node.left);
                                    stack.push(rec.node.right);
                                }
                                None => {
                                    problems.push(format!("node {id} is referenced but missing"))
                                }
                            }
                        }
                    }
                }
            }
            for (id, rec) in &nodes {
                let want = node_refs.get(id).copied().unwrap_or(0);
                if rec.refs != want {
                    problems.push(format!(
                        "node {id} counts {} references, found {want}",
                        rec.refs
                    ));
                }
            }
            let stored: BTreeMap<ChunkId, u64> = tx
                .prefix(&[key::CHUNK])?
                .into_iter()
                .filter_map(|(k, v)| Some((key::chunk_of_key(&k)?, v)))
                .map(|(id, v)| Ok((id, dec_u64(&v, "chunk refcount")?)))
                .collect::<Result<_>>()?;
            if stored != chunk_refs {
                let diff = chunk_refs
                    .iter()
                    .filter(|(id, n)| stored.get(id) != Some(n))
                    .count()
                    + stored
                        .keys()
                        .filter(|id| !chunk_refs.contains_key(id))
                        .count();
                problems.push(format!("{diff} chunk reference counts are wrong"));
            }
            let gc = tx.prefix(&[key::GC])?;
            for (k, v) in &gc {
                GcState::decode(v)?;
                if let Some(id) = key::chunk_of_key(k) {
                    if chunk_refs.contains_key(&id) {
                        problems.push(format!("chunk {id} is referenced but queued for GC"));
                    }
                }
            }
            let c = super::Counters::load(tx)?;
            let blobs = tx.prefix(&[key::BLOB])?.len() as u64;
            let expect = [
                ("blobs", c.blobs, blobs),
                ("versions", c.versions, n_versions),
                ("nodes", c.nodes, nodes.len() as u64),
                ("live_chunks", c.live_chunks, chunk_refs.len() as u64),
                ("gc_pending", c.gc_pending, gc.len() as u64),
            ];
            for (name, have, want) in expect {
                if have != want {
                    problems.push(format!("counter {name} is {have}, found {want}"));
                }
            }
            if let Some(max) = nodes.keys().max() {
                if *max >= c.next_node {
                    problems.push(format!("node {max} is not below next_node {}", c.next_node));
                }
            }
            Ok(problems)
        })
    }
}
