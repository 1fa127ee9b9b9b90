//! Cluster state kept with the metadata: which chunkds are draining, the
//! GC deletions deferred for nodes that were down, the writer leases, and
//! the set of referenced chunks that self-healing and fsck walk.

use std::collections::{HashMap, HashSet};

use blobvirt_core::ChunkId;

use super::{Meta, Result};
use crate::codec::{dec_u64, enc_u64, key, DecodeError};
use crate::kv::ReadTxExt;

/// A persisted writer lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRec {
    pub holder: String,
    pub expires_ms: u64,
}

fn utf8(b: &[u8], what: &'static str) -> Result<String> {
    Ok(String::from_utf8(b.to_vec()).map_err(|_| DecodeError { what })?)
}

impl Meta {
    /// Node ids marked draining.
    pub fn draining(&self) -> Result<Vec<String>> {
        self.read(|tx| {
            tx.prefix(&[key::DRAINING])?
                .into_iter()
                .map(|(k, _)| utf8(&k[1..], "draining node"))
                .collect()
        })
    }

    /// Marks node `id` draining (or not).
    pub fn set_draining(&self, id: &str, on: bool) -> Result<()> {
        self.write(|m| {
            if on {
                m.tx.put(&key::draining(id), b"")?;
            } else {
                m.tx.delete(&key::draining(id))?;
            }
            Ok(())
        })
    }

    /// Forgets node `id`: its address, its draining mark and the deletions
    /// deferred for it (its disk is gone with it).
    pub fn remove_member(&self, id: &str) -> Result<u64> {
        self.write(|m| {
            m.tx.delete(&key::member(id))?;
            m.tx.delete(&key::draining(id))?;
            let q = m.r().prefix(&key::deferred_of(id))?;
            for (k, _) in &q {
                m.tx.delete(k)?;
            }
            Ok(q.len() as u64)
        })
    }

    /// Records that GC deleted `ids` while the nodes `down` could not be
    /// told; they are deleted there once those nodes are back.
    pub fn gc_defer(&self, down: &[String], ids: &[ChunkId]) -> Result<()> {
        if down.is_empty() || ids.is_empty() {
            return Ok(());
        }
        self.write(|m| {
            for node in down {
                for id in ids {
                    m.tx.put(&key::deferred(node, id), b"")?;
                }
            }
            Ok(())
        })
    }

    /// Deferred deletions per node: (node id, count).
    pub fn gc_deferred(&self) -> Result<Vec<(String, u64)>> {
        self.read(|tx| {
            let mut out: Vec<(String, u64)> = Vec::new();
            for (k, _) in tx.prefix(&[key::DEFERRED])? {
                let end = k.len().saturating_sub(33).max(1);
                let node = utf8(&k[1..end], "deferred deletion")?;
                match out.last_mut() {
                    Some((n, c)) if *n == node => *c += 1,
                    _ => out.push((node, 1)),
                }
            }
            Ok(out)
        })
    }

    /// Node `id` is back: its deferred deletions of chunks that are still
    /// unreferenced go back into the GC queue (past their grace delay), so
    /// the next GC pass deletes them everywhere under the usual epoch
    /// guard; chunks referenced again meanwhile are kept. Returns how many
    /// were queued.
    pub fn gc_undefer(&self, id: &str) -> Result<u64> {
        self.write(|m| {
            let mut n = 0;
            for (k, _) in m.r().prefix(&key::deferred_of(id))? {
                m.tx.delete(&k)?;
                let Some(c) = key::chunk_of_deferred(&k) else {
                    continue;
                };
                if m.chunk_refs(&c)? == 0 {
                    m.gc_queue_since(&c, 0)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Every chunk with at least one reference, in id order.
    pub fn referenced_chunks(&self) -> Result<Vec<ChunkId>> {
        self.read(|tx| {
            let mut out = Vec::new();
            for (k, v) in tx.prefix(&[key::CHUNK])? {
                if let Some(id) = key::chunk_of_key(&k) {
                    if dec_u64(&v, "chunk refcount")? > 0 {
                        out.push(id);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Whether GC knows `id` (pending or being deleted).
    pub fn gc_knows(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.read(|tx| {
            ids.iter()
                .map(|id| Ok(tx.get(&key::gc(id))?.is_some()))
                .collect()
        })
    }

    /// Queues unreferenced chunks found on the nodes (fsck's orphans) for
    /// GC, pending since now; referenced ones are skipped. Returns how many.
    pub fn gc_adopt(&self, ids: &[ChunkId]) -> Result<u64> {
        self.write(|m| {
            let mut n = 0;
            for id in ids {
                if m.chunk_refs(id)? == 0 && m.gc_state(id)?.is_none() {
                    let now = m.now;
                    m.gc_queue_since(id, now)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// "NAME@V" of every version that uses one of `ids`, per id (for the
    /// report of chunks with no good replica left).
    pub fn versions_using(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Vec<String>>> {
        let want: HashSet<ChunkId> = ids.iter().copied().collect();
        let mut out: HashMap<ChunkId, Vec<String>> = HashMap::new();
        for b in self.list_blobs()? {
            for v in &b.versions {
                let mut first = 0;
                loop {
                    let r = self.resolve(&b.name, v.version, first, 0)?;
                    if r.chunks.is_empty() {
                        break;
                    }
                    first += r.chunks.len() as u64;
                    for c in r.chunks.iter().filter_map(|c| ChunkId::from_slice(c)) {
                        if want.contains(&c) {
                            let tag = format!("{}@{}", b.name, v.version);
                            let e = out.entry(c).or_default();
                            if e.last() != Some(&tag) {
                                e.push(tag);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every persisted lease.
    pub fn leases(&self) -> Result<Vec<(String, LeaseRec)>> {
        self.read(|tx| {
            tx.prefix(&[key::LEASE])?
                .into_iter()
                .map(|(k, v)| {
                    let name = utf8(&k[1..], "lease")?;
                    if v.len() < 8 {
                        return Err(DecodeError { what: "lease" }.into());
                    }
                    let (h, e) = v.split_at(v.len() - 8);
                    Ok((
                        name,
                        LeaseRec {
                            holder: utf8(h, "lease holder")?,
                            expires_ms: dec_u64(e, "lease expiry")?,
                        },
                    ))
                })
                .collect()
        })
    }

    /// Stores (Some) or drops (None) the lease of volume `name`.
    pub fn put_lease(&self, name: &str, lease: Option<&LeaseRec>) -> Result<()> {
        self.write(|m| {
            match lease {
                Some(l) => {
                    let mut v = l.holder.as_bytes().to_vec();
                    v.extend_from_slice(&enc_u64(l.expires_ms));
                    m.tx.put(&key::lease(name), &v)?;
                }
                None => m.tx.delete(&key::lease(name))?,
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> (tempfile::TempDir, Meta) {
        let d = tempfile::tempdir().unwrap();
        let m = Meta::open(crate::kv::Engine::Redb, d.path()).unwrap();
        (d, m)
    }

    #[test]
    fn deferred_deletions_follow_their_node() {
        let (_d, m) = meta();
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        m.gc_defer(&["n1".into(), "n2".into()], &[a, b]).unwrap();
        assert_eq!(
            m.gc_deferred().unwrap(),
            vec![("n1".into(), 2), ("n2".into(), 2)]
        );
        assert_eq!(m.gc_undefer("n1").unwrap(), 2);
        assert_eq!(m.stats().unwrap().gc_pending, 2);
        assert_eq!(m.gc_deferred().unwrap(), vec![("n2".into(), 2)]);
        assert_eq!(m.remove_member("n2").unwrap(), 2);
        assert!(m.gc_deferred().unwrap().is_empty());
        assert!(m.check().unwrap().is_empty(), "{:?}", m.check());
    }

    #[test]
    fn leases_and_draining_persist() {
        let (d, m) = meta();
        let l = LeaseRec {
            holder: "mirrord@h:/m".into(),
            expires_ms: 12345,
        };
        m.put_lease("vol", Some(&l)).unwrap();
        m.set_draining("n3", true).unwrap();
        drop(m);
        let m = Meta::open(crate::kv::Engine::Redb, d.path()).unwrap();
        assert_eq!(m.leases().unwrap(), vec![("vol".into(), l)]);
        assert_eq!(m.draining().unwrap(), vec!["n3".to_string()]);
        m.put_lease("vol", None).unwrap();
        m.set_draining("n3", false).unwrap();
        assert!(m.leases().unwrap().is_empty());
        assert!(m.draining().unwrap().is_empty());
    }
}
