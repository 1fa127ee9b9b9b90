//! What one self-healing pass must do, worked out from the chunk lists of
//! the live nodes: which referenced chunks lack replicas, where each new
//! replica comes from, which misplaced copies can go, and which chunks have
//! no replica left. Pure computation, tested without daemons.

use std::collections::{BTreeMap, HashMap};

use blobvirt_core::placement::{Member, Placement};
use blobvirt_core::ChunkId;

/// Node indices holding a chunk (a chunk rarely has more than a few).
pub type Holders = Vec<u16>;

/// The work of one pass.
#[derive(Debug, Default)]
pub struct Plan {
    /// (target node, source node) → chunks to copy.
    pub copies: BTreeMap<(u16, u16), Vec<ChunkId>>,
    /// Chunk → nodes whose copy goes once every copy of the chunk landed.
    pub extras: HashMap<ChunkId, Vec<u16>>,
    /// Referenced chunks with fewer live replicas than configured.
    pub degraded: u64,
    /// Referenced chunks no live node holds.
    pub lost: Vec<ChunkId>,
}

/// Plans a pass. `members` are all known nodes (their `alive` = listed in
/// this pass); `holders` maps chunk → indices into `members`.
pub fn plan(
    members: &[Member],
    replicas: usize,
    referenced: &[ChunkId],
    holders: &HashMap<ChunkId, Holders>,
) -> Plan {
    let placement = Placement::new(members.to_vec(), replicas);
    let index: HashMap<&str, u16> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i as u16))
        .collect();
    let mut p = Plan::default();
    let none = Holders::new();
    for c in referenced {
        let have = holders.get(c).unwrap_or(&none);
        if have.len() < replicas {
            p.degraded += 1;
        }
        let Some(&source) = have
            .iter()
            .find(|&&h| members[h as usize].placed)
            .or_else(|| have.first())
        else {
            p.lost.push(*c);
            continue;
        };
        let targets: Vec<u16> = placement
            .targets(c)
            .iter()
            .map(|m| index[m.id.as_str()])
            .collect();
        let mut all_there = true;
        for &t in &targets {
            if have.contains(&t) {
                continue;
            }
            if members[t as usize].alive {
                p.copies.entry((t, source)).or_default().push(*c);
            } else {
                all_there = false;
            }
        }
        if all_there {
            let extra: Vec<u16> = have
                .iter()
                .copied()
                .filter(|h| !targets.contains(h))
                .collect();
            if !extra.is_empty() {
                p.extras.insert(*c, extra);
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: format!("n{i}"),
                addr: format!("a{i}"),
                alive: true,
                placed: true,
            })
            .collect()
    }

    fn ids(n: u32) -> Vec<ChunkId> {
        (0..n).map(|i| ChunkId::of(&i.to_le_bytes())).collect()
    }

    /// Holders as the targets of `m` say (a healthy cluster).
    fn placed(m: &[Member], r: usize, ids: &[ChunkId]) -> HashMap<ChunkId, Holders> {
        let p = Placement::new(m.to_vec(), r);
        ids.iter()
            .map(|c| {
                let h = p
                    .targets(c)
                    .iter()
                    .map(|t| t.id[1..].parse::<u16>().unwrap())
                    .collect();
                (*c, h)
            })
            .collect()
    }

    #[test]
    fn healthy_cluster_needs_nothing() {
        let m = members(4);
        let c = ids(200);
        let p = plan(&m, 2, &c, &placed(&m, 2, &c));
        assert!(p.copies.is_empty() && p.extras.is_empty() && p.lost.is_empty());
        assert_eq!(p.degraded, 0);
    }

    #[test]
    fn an_out_node_is_replaced_and_a_down_one_waits() {
        let mut m = members(5);
        let c = ids(300);
        let mut h = placed(&m, 2, &c);
        for v in h.values_mut() {
            v.retain(|&n| n != 2);
        }
        // Down (not yet out): degraded, but nothing moves.
        m[2].alive = false;
        let p = plan(&m, 2, &c, &h);
        assert!(p.copies.is_empty() && p.extras.is_empty());
        let lost_one = p.degraded;
        assert!(lost_one > 60, "{lost_one}");
        // Out: every degraded chunk gets one copy, from its survivor.
        m[2].placed = false;
        let p = plan(&m, 2, &c, &h);
        let copies: usize = p.copies.values().map(Vec::len).sum();
        assert_eq!(copies as u64, lost_one);
        for ((t, s), list) in &p.copies {
            assert_ne!(t, s);
            assert_ne!(*t, 2);
            for id in list {
                assert!(h[id].contains(s));
            }
        }
        assert!(p.extras.is_empty() && p.lost.is_empty());
    }

    #[test]
    fn a_new_node_takes_its_share_and_old_copies_go() {
        let m4 = members(4);
        let c = ids(400);
        let h = placed(&m4, 2, &c);
        let m6 = members(6);
        let p = plan(&m6, 2, &c, &h);
        let moved: usize = p.copies.values().map(Vec::len).sum();
        assert!(moved > 150, "about a third of 800 replicas move: {moved}");
        assert!(p.copies.keys().all(|(t, _)| *t >= 4));
        // Each moved replica leaves one old copy behind to delete.
        let extra: usize = p.extras.values().map(Vec::len).sum();
        assert_eq!(extra, moved);
    }

    #[test]
    fn a_draining_node_is_emptied_and_lost_chunks_are_named() {
        let mut m = members(4);
        let c = ids(100);
        let mut h = placed(&m, 2, &c);
        m[1].placed = false;
        let p = plan(&m, 2, &c, &h);
        let on_1 = h.values().filter(|v| v.contains(&1)).count();
        assert_eq!(p.extras.values().filter(|v| v.contains(&1)).count(), on_1);
        h.insert(c[7], Holders::new());
        let p = plan(&m, 2, &c, &h);
        assert_eq!(p.lost, vec![c[7]]);
    }
}
