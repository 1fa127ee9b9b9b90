//! Rendezvous (highest-random-weight) placement of chunks on chunk daemons.
//!
//! Every client computes a chunk's home nodes from the membership list alone.
//! The ranking is taken over all *placed* nodes, up or down, so a short
//! outage does not move the other chunks: writers put a chunk on the first
//! `replicas` live nodes of its ranking, and readers try the ranking in order.
//! A node that is *out* (down for longer than the out time) or draining is
//! not placed: it moves to the end of every ranking, so the next node of a
//! chunk's ranking becomes its home, and self-healing (poold's `heal`)
//! copies the chunk there. Readers still try it last, so a chunk is found
//! while it moves.

use crate::chunk::ChunkId;

/// A chunk daemon as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub addr: String,
    pub alive: bool,
    /// Takes part in placement (false: out or draining).
    pub placed: bool,
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

    /// All members, best home first: the placed ones by rendezvous
    /// weight, then the others (out, draining) by weight.
    pub fn ranking(&self, chunk: &ChunkId) -> Vec<&Member> {
        let key = chunk.prefix_u64();
        let mut idx: Vec<(bool, u64, usize)> = self
            .seeds
            .iter()
            .enumerate()
            .map(|(i, s)| (self.members[i].placed, mix(s ^ key), i))
            .collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        idx.into_iter().map(|(_, _, i)| &self.members[i]).collect()
    }

    /// Where a new chunk goes: the first `replicas` live placed members of
    /// its ranking (fewer when fewer are live).
    pub fn homes(&self, chunk: &ChunkId) -> Vec<&Member> {
        self.ranking(chunk)
            .into_iter()
            .filter(|m| m.alive && m.placed)
            .take(self.replicas)
            .collect()
    }

    /// Where a chunk belongs once every node is back: the first `replicas`
    /// placed members of its ranking, up or down. Self-healing makes the
    /// live ones hold it.
    pub fn targets(&self, chunk: &ChunkId) -> Vec<&Member> {
        self.ranking(chunk)
            .into_iter()
            .filter(|m| m.placed)
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
                placed: true,
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
    fn an_out_node_hands_its_chunks_to_the_next_of_the_ranking() {
        let mut m = members(5);
        let p = Placement::new(m.clone(), 2);
        m[3].alive = false;
        m[3].placed = false;
        let q = Placement::new(m, 2);
        for i in 0..1000u32 {
            let c = ChunkId::of(&i.to_le_bytes());
            let before: Vec<_> = p.targets(&c).iter().map(|m| m.id.clone()).collect();
            let after: Vec<_> = q.targets(&c).iter().map(|m| m.id.clone()).collect();
            assert!(!after.contains(&"node-3".to_string()));
            if !before.contains(&"node-3".to_string()) {
                assert_eq!(before, after, "only node-3's chunks move");
            } else {
                // The survivor stays; the third of the old ranking joins.
                let third = p.ranking(&c)[2].id.clone();
                assert!(after.contains(&third), "{before:?} -> {after:?}");
            }
            // Readers still try node-3, last.
            assert_eq!(q.read_order(&c).last().unwrap().id, "node-3");
        }
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
