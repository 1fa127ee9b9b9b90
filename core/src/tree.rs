//! Segment trees: the versioned map from chunk index to `ChunkId`.
//!
//! A version's root covers chunk indices `[0, 2^depth)`. Inner nodes are
//! immutable and shared between versions and clones; a leaf position holds a
//! chunk id or a hole directly in its parent (`Child::Chunk` / `Child::Hole`),
//! and a subtree that is all holes is a single `Child::Hole`, so thin images
//! cost nothing.
//!
//! * shadowing: `apply` of k changes creates at most k·depth new nodes, the
//!   paths from the changed leaves to the root; all else is shared;
//! * cloning: a new version may point at any existing root, O(1);
//! * reference counts: each node and chunk counts the parents (and version
//!   roots) that point at it; `release` frees what drops to zero.
//!
//! Storage is behind [`NodeStore`], so poold runs these algorithms inside its
//! KV transaction and tests run them against [`mem::MemStore`].

use crate::chunk::ChunkId;

pub type NodeId = u64;

/// What a tree position points at.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Child {
    Hole,
    Chunk(ChunkId),
    Node(NodeId),
}

/// An inner node: the two halves of its range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Node {
    pub left: Child,
    pub right: Child,
}

/// Errors of the tree algorithms themselves (beyond the store's own).
#[derive(Debug, thiserror::Error)]
pub enum TreeError<E> {
    #[error(transparent)]
    Store(E),
    #[error("segment tree is inconsistent: {0}")]
    Corrupt(String),
}

impl<E> From<E> for TreeError<E> {
    fn from(e: E) -> Self {
        TreeError::Store(e)
    }
}

/// Where tree nodes and reference counts live.
pub trait NodeStore {
    type Error;
    fn get(&self, id: NodeId) -> Result<Node, Self::Error>;
    /// Stores a new node with no references yet and returns its id.
    fn insert(&mut self, node: Node) -> Result<NodeId, Self::Error>;
    /// Adds one reference to a node or chunk. Never called with `Hole`.
    fn incref(&mut self, c: Child) -> Result<(), Self::Error>;
    /// Drops one reference and returns how many are left. Never called with `Hole`.
    fn decref(&mut self, c: Child) -> Result<u64, Self::Error>;
    /// Deletes a node whose count reached zero.
    fn remove(&mut self, id: NodeId) -> Result<(), Self::Error>;
}

/// Depth of the tree covering `n_chunks` leaves (0 for zero or one chunk).
pub fn depth_for(n_chunks: u64) -> u32 {
    if n_chunks <= 1 {
        0
    } else {
        64 - (n_chunks - 1).leading_zeros()
    }
}

/// Resolves chunk indices `[first, first+count)` of the tree at `root`.
/// Indices past the tree's capacity resolve as holes.
pub fn resolve<S: NodeStore>(
    store: &S,
    root: Child,
    depth: u32,
    first: u64,
    count: u64,
) -> Result<Vec<Option<ChunkId>>, TreeError<S::Error>> {
    let mut out = vec![None; count as usize];
    walk(store, root, depth, 0, first, first + count, &mut out)?;
    Ok(out)
}

fn walk<S: NodeStore>(
    store: &S,
    c: Child,
    level: u32,
    base: u64,
    lo: u64,
    hi: u64,
    out: &mut [Option<ChunkId>],
) -> Result<(), TreeError<S::Error>> {
    let span = 1u64 << level;
    if base >= hi || base + span <= lo {
        return Ok(());
    }
    match c {
        Child::Hole => Ok(()),
        Child::Chunk(id) if level == 0 => {
            out[(base - lo) as usize] = Some(id);
            Ok(())
        }
        Child::Chunk(_) => Err(TreeError::Corrupt(format!(
            "chunk at level {level} (index {base})"
        ))),
        Child::Node(n) => {
            if level == 0 {
                return Err(TreeError::Corrupt(format!("node {n} at leaf level")));
            }
            let node = store.get(n)?;
            let half = span / 2;
            walk(store, node.left, level - 1, base, lo, hi, out)?;
            walk(store, node.right, level - 1, base + half, lo, hi, out)
        }
    }
}

/// Applies `changes` (sorted by index, unique, each below `2^depth`) with
/// shadowing and returns the new root. The caller takes the reference on the
/// returned root (e.g. by recording it as a version).
pub fn apply<S: NodeStore>(
    store: &mut S,
    root: Child,
    depth: u32,
    changes: &[(u64, Option<ChunkId>)],
) -> Result<Child, TreeError<S::Error>> {
    update(store, root, depth, 0, changes)
}

fn update<S: NodeStore>(
    store: &mut S,
    c: Child,
    level: u32,
    base: u64,
    changes: &[(u64, Option<ChunkId>)],
) -> Result<Child, TreeError<S::Error>> {
    let Some(last) = changes.last() else {
        return Ok(c);
    };
    if level == 0 {
        return Ok(last.1.map_or(Child::Hole, Child::Chunk));
    }
    let (l, r) = children(store, c, level)?;
    let mid = base + (1u64 << (level - 1));
    let split = changes.partition_point(|(i, _)| *i < mid);
    let nl = update(store, l, level - 1, base, &changes[..split])?;
    let nr = update(store, r, level - 1, mid, &changes[split..])?;
    if nl == l && nr == r {
        return Ok(c);
    }
    make_node(store, nl, nr)
}

fn children<S: NodeStore>(
    store: &S,
    c: Child,
    level: u32,
) -> Result<(Child, Child), TreeError<S::Error>> {
    match c {
        Child::Hole => Ok((Child::Hole, Child::Hole)),
        Child::Node(n) => {
            let node = store.get(n)?;
            Ok((node.left, node.right))
        }
        Child::Chunk(_) => Err(TreeError::Corrupt(format!("chunk at level {level}"))),
    }
}

fn make_node<S: NodeStore>(
    store: &mut S,
    left: Child,
    right: Child,
) -> Result<Child, TreeError<S::Error>> {
    if left == Child::Hole && right == Child::Hole {
        return Ok(Child::Hole);
    }
    let id = store.insert(Node { left, right })?;
    for c in [left, right] {
        if c != Child::Hole {
            store.incref(c)?;
        }
    }
    Ok(Child::Node(id))
}

/// Reshapes a tree of `old_n` chunks into one of `new_n` chunks: chunks at
/// indices `>= new_n` become holes, and the depth follows the new size.
/// Returns the new root and depth; the caller references the root.
pub fn resize<S: NodeStore>(
    store: &mut S,
    root: Child,
    old_n: u64,
    new_n: u64,
) -> Result<(Child, u32), TreeError<S::Error>> {
    let mut depth = depth_for(old_n);
    let new_depth = depth_for(new_n);
    let mut root = root;
    // Shrink: the right halves above the new depth lie wholly past new_n.
    while depth > new_depth {
        root = children(store, root, depth)?.0;
        depth -= 1;
    }
    if new_n < old_n {
        root = truncate(store, root, depth, 0, new_n)?;
    }
    // Grow: the old tree becomes the left-most subtree.
    while depth < new_depth {
        root = make_node(store, root, Child::Hole)?;
        depth += 1;
    }
    Ok((root, depth))
}

fn truncate<S: NodeStore>(
    store: &mut S,
    c: Child,
    level: u32,
    base: u64,
    keep: u64,
) -> Result<Child, TreeError<S::Error>> {
    let span = 1u64 << level;
    if base + span <= keep || c == Child::Hole {
        return Ok(c);
    }
    if base >= keep {
        return Ok(Child::Hole);
    }
    let (l, r) = children(store, c, level)?;
    let mid = base + span / 2;
    let nl = truncate(store, l, level - 1, base, keep)?;
    let nr = truncate(store, r, level - 1, mid, keep)?;
    if nl == l && nr == r {
        return Ok(c);
    }
    make_node(store, nl, nr)
}

/// Drops one reference to `c`, freeing every node (and chunk reference) that
/// is no longer reachable.
pub fn release<S: NodeStore>(store: &mut S, c: Child) -> Result<(), TreeError<S::Error>> {
    let mut stack = vec![c];
    while let Some(c) = stack.pop() {
        if c == Child::Hole {
            continue;
        }
        if store.decref(c)? == 0 {
            if let Child::Node(id) = c {
                let node = store.get(id)?;
                store.remove(id)?;
                stack.push(node.left);
                stack.push(node.right);
            }
        }
    }
    Ok(())
}

/// Sorts changes by index and keeps the last change to each index.
pub fn normalize_changes(mut changes: Vec<(u64, Option<ChunkId>)>) -> Vec<(u64, Option<ChunkId>)> {
    changes.reverse();
    changes.sort_by_key(|(i, _)| *i); // stable: the last write stays first
    changes.dedup_by_key(|(i, _)| *i);
    changes
}

pub mod mem {
    //! An in-memory [`NodeStore`](super::NodeStore) for tests and models.
    use super::*;
    use std::collections::HashMap;

    #[derive(Default, Debug)]
    pub struct MemStore {
        pub nodes: HashMap<NodeId, (Node, u64)>,
        pub chunks: HashMap<ChunkId, u64>,
        next: NodeId,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no such node {0}")]
    pub struct Missing(pub NodeId);

    impl NodeStore for MemStore {
        type Error = Missing;
        fn get(&self, id: NodeId) -> Result<Node, Missing> {
            self.nodes.get(&id).map(|(n, _)| *n).ok_or(Missing(id))
        }
        fn insert(&mut self, node: Node) -> Result<NodeId, Missing> {
            self.next += 1;
            self.nodes.insert(self.next, (node, 0));
            Ok(self.next)
        }
        fn incref(&mut self, c: Child) -> Result<(), Missing> {
            match c {
                Child::Node(id) => self.nodes.get_mut(&id).ok_or(Missing(id))?.1 += 1,
                Child::Chunk(ch) => *self.chunks.entry(ch).or_default() += 1,
                Child::Hole => {}
            }
            Ok(())
        }
        fn decref(&mut self, c: Child) -> Result<u64, Missing> {
            Ok(match c {
                Child::Node(id) => {
                    let e = self.nodes.get_mut(&id).ok_or(Missing(id))?;
                    e.1 -= 1;
                    e.1
                }
                Child::Chunk(ch) => {
                    let e = self.chunks.get_mut(&ch).expect("chunk refcount");
                    *e -= 1;
                    let left = *e;
                    if left == 0 {
                        self.chunks.remove(&ch);
                    }
                    left
                }
                Child::Hole => 0,
            })
        }
        fn remove(&mut self, id: NodeId) -> Result<(), Missing> {
            self.nodes.remove(&id).map(|_| ()).ok_or(Missing(id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mem::MemStore;
    use super::*;
    use proptest::prelude::*;

    fn cid(n: u8) -> ChunkId {
        ChunkId::of(&[n])
    }

    #[test]
    fn depths() {
        assert_eq!(depth_for(0), 0);
        assert_eq!(depth_for(1), 0);
        assert_eq!(depth_for(2), 1);
        assert_eq!(depth_for(3), 2);
        assert_eq!(depth_for(4096), 12);
        assert_eq!(depth_for(4097), 13);
    }

    #[test]
    fn shadowing_creates_only_paths() {
        let mut s = MemStore::default();
        let n = 4096u64;
        let d = depth_for(n);
        let all: Vec<_> = (0..n).map(|i| (i, Some(cid((i % 251) as u8)))).collect();
        let v1 = apply(&mut s, Child::Hole, d, &all).unwrap();
        s.incref(v1).unwrap();
        let before = s.nodes.len();
        let v2 = apply(&mut s, v1, d, &[(7, Some(cid(1))), (3000, None)]).unwrap();
        s.incref(v2).unwrap();
        assert!(s.nodes.len() - before <= 2 * d as usize);
        release(&mut s, v1).unwrap();
        release(&mut s, v2).unwrap();
        assert!(s.nodes.is_empty() && s.chunks.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Publish {
            vol: usize,
            changes: Vec<(u64, Option<u8>)>,
        },
        Clone {
            vol: usize,
        },
        Resize {
            vol: usize,
            n: u64,
        },
        DropOldest {
            vol: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4usize, prop::collection::vec((0..80u64, prop::option::of(0..20u8)), 0..20))
                .prop_map(|(vol, changes)| Op::Publish { vol, changes }),
            1 => (0..4usize).prop_map(|vol| Op::Clone { vol }),
            1 => (0..4usize, 0..90u64).prop_map(|(vol, n)| Op::Resize { vol, n }),
            1 => (0..4usize).prop_map(|vol| Op::DropOldest { vol }),
        ]
    }

    struct Ver {
        root: Child,
        n: u64,
        model: Vec<Option<ChunkId>>,
    }

    proptest! {
        #[test]
        fn tree_matches_model(ops in prop::collection::vec(op(), 1..60)) {
            let mut s = MemStore::default();
            // Each volume: list of live versions (oldest first).
            let mut vols: Vec<Vec<Ver>> = vec![vec![Ver { root: Child::Hole, n: 64, model: vec![None; 64] }]];
            for op in ops {
                match op {
                    Op::Publish { vol, changes } => {
                        let v = vol % vols.len();
                        let Some(cur) = vols[v].last() else { continue };
                        let ch: Vec<_> = changes.into_iter()
                            .filter(|(i, _)| *i < cur.n)
                            .map(|(i, c)| (i, c.map(cid))).collect();
                        let ch = normalize_changes(ch);
                        let mut model = cur.model.clone();
                        for (i, c) in &ch { model[*i as usize] = *c; }
                        let root = apply(&mut s, cur.root, depth_for(cur.n), &ch).unwrap();
                        if root != Child::Hole { s.incref(root).unwrap(); }
                        let n = cur.n;
                        vols[v].push(Ver { root, n, model });
                    }
                    Op::Clone { vol } => {
                        let v = vol % vols.len();
                        let Some(cur) = vols[v].last() else { continue };
                        if cur.root != Child::Hole { s.incref(cur.root).unwrap(); }
                        let nv = Ver { root: cur.root, n: cur.n, model: cur.model.clone() };
                        vols.push(vec![nv]);
                    }
                    Op::Resize { vol, n } => {
                        let v = vol % vols.len();
                        let Some(cur) = vols[v].last() else { continue };
                        let (root, _) = resize(&mut s, cur.root, cur.n, n).unwrap();
                        if root != Child::Hole { s.incref(root).unwrap(); }
                        let mut model = cur.model.clone();
                        model.resize(n as usize, None);
                        vols[v].push(Ver { root, n, model });
                    }
                    Op::DropOldest { vol } => {
                        let v = vol % vols.len();
                        if vols[v].len() > 1 {
                            let old = vols[v].remove(0);
                            release(&mut s, old.root).unwrap();
                        }
                    }
                }
                for vs in &vols {
                    for ver in vs {
                        let got = resolve(&s, ver.root, depth_for(ver.n), 0, ver.n).unwrap();
                        prop_assert_eq!(&got, &ver.model);
                        // A sub-range resolves to the same slice.
                        if ver.n > 10 {
                            let part = resolve(&s, ver.root, depth_for(ver.n), 3, 7).unwrap();
                            prop_assert_eq!(&part[..], &ver.model[3..10]);
                        }
                    }
                }
            }
            for vs in vols { for ver in vs { release(&mut s, ver.root).unwrap(); } }
            prop_assert!(s.nodes.is_empty(), "leaked nodes: {}", s.nodes.len());
            prop_assert!(s.chunks.is_empty(), "leaked chunk refs");
        }
    }
}
