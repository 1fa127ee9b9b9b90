//! Rendezvous (highest-random-weight) placement of chunks on chunk daemons.
//!
//! Every client computes a chunk's home nodes from the membership list alone.
//! The ranking is taken over all registered nodes, dead or alive, so a node's
//! death does not move the other chunks: writers put a chunk on the first
//! `replicas` live nodes of its ranking, and readers try the ranking in order.

use crate::chunk::ChunkId;

/// A chunk daemon as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub addr: String,
    pub alive: bool,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn node_seed(id: &str) -> u64 {
    let h = blake3::hash(id.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Membership with precomputed per-node seeds.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    members: Vec<Member>,
    seeds: Vec<u64>,
    replicas: usize,
}

impl Placement {
    pub fn new(members: Vec<Member>, replicas: usize) -> Self {
        let seeds = members.iter().map(|m| node_seed(&m.id)).collect();
        Placement {
            members,
            seeds,
            replicas: replicas.max(1),
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// All members, best home first.
    pub fn ranking(&self, chunk: &ChunkId) -> Vec<&Member> {
        let key = chunk.prefix_u64();
        let mut idx: Vec<(u64, usize)> = self
            .seeds
            .iter()
            .enumerate()
            .map(|(i, s)| (mix(s ^ key), i))
            .collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        idx.into_iter().map(|(_, i)| &self.members[i]).collect()
    }

    /// Where a new chunk goes: the first `replicas` live members of its ranking.
    pub fn homes(&self, chunk: &ChunkId) -> Vec<&Member> {
        self.ranking(chunk)
            .into_iter()
            .filter(|m| m.alive)
            .take(self.replicas)
            .collect()
    }

    /// Where to look for a chunk: live members in ranking order, then the
    /// ones believed dead (membership may be stale).
    pub fn read_order(&self, chunk: &ChunkId) -> Vec<&Member> {
        let r = self.ranking(chunk);
        let (mut live, dead): (Vec<_>, Vec<_>) = r.into_iter().partition(|m| m.alive);
        live.extend(dead);
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: format!("node-{i}"),
                addr: format!("a{i}"),
                alive: true,
            })
            .collect()
    }

    #[test]
    fn balanced_and_stable() {
        let p = Placement::new(members(4), 2);
        let mut counts = [0usize; 4];
        for i in 0..4000u32 {
            let c = ChunkId::of(&i.to_le_bytes());
            let homes = p.homes(&c);
            assert_eq!(homes.len(), 2);
            assert_ne!(homes[0].id, homes[1].id);
            for h in homes {
                counts[h.id[5..].parse::<usize>().unwrap()] += 1;
            }
        }
        let (mx, mn) = (*counts.iter().max().unwrap(), *counts.iter().min().unwrap());
        assert!(mx as f64 <= mn as f64 * 1.15, "{counts:?}");
    }

    #[test]
    fn dead_node_only_moves_its_own_chunks() {
        let mut m = members(4);
        let p = Placement::new(m.clone(), 1);
        m[2].alive = false;
        let q = Placement::new(m, 1);
        for i in 0..1000u32 {
            let c = ChunkId::of(&i.to_le_bytes());
            let a = &p.homes(&c)[0].id;
            if a != "node-2" {
                assert_eq!(a, &q.homes(&c)[0].id);
            }
        }
    }
}
