//! The ledger's Merkle accumulator (SPEC §4.2): append leaves in sequence
//! order, the root after any prefix, and inclusion and consistency proofs
//! that `ron_proto::merkle` verifies.
//!
//! It keeps every complete subtree's hash in post-order, as a Merkle
//! mountain range lays them out: appending a leaf appends its hash, then
//! the root of every subtree it completes. The nodes of `n` leaves are
//! [`node_count`]`(n) = 2n − popcount(n)` hashes, written only at the end,
//! so they can live in an append-only store ([`Nodes`]; the committer keeps
//! them on disk). The current root comes from the peaks (one complete
//! subtree per set bit of `n`), kept in memory; the root after any prefix
//! and any proof take O(log² n) node reads.

use ron_proto::merkle::{self, Hash};

/// Where an accumulator's nodes are kept, by post-order position.
pub trait Nodes {
    /// Nodes stored so far.
    fn len(&self) -> u64;
    /// The node at `position` (below `len`).
    fn get(&self, position: u64) -> Hash;
    fn push(&mut self, node: Hash);
    /// Forgets the nodes from `len` on.
    fn truncate(&mut self, len: u64);

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Nodes for Vec<Hash> {
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }

    fn get(&self, position: u64) -> Hash {
        self[position as usize]
    }

    fn push(&mut self, node: Hash) {
        Vec::push(self, node);
    }

    fn truncate(&mut self, len: u64) {
        Vec::truncate(self, len as usize);
    }
}

/// A tree that keeps no nodes: its current root only (a scan that checks
/// a log's roots). Proofs and past roots read nodes, and panic.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNodes(u64);

impl Nodes for NoNodes {
    fn len(&self) -> u64 {
        self.0
    }

    fn get(&self, _: u64) -> Hash {
        panic!("this tree keeps no nodes")
    }

    fn push(&mut self, _: Hash) {
        self.0 += 1;
    }

    fn truncate(&mut self, len: u64) {
        self.0 = len;
    }
}

/// The leaf count and peaks of a tree, to go back to (`Accumulator::rollback`).
#[derive(Clone, Debug)]
pub struct Frontier {
    leaves: u64,
    peaks: Vec<Hash>,
}

/// How many nodes a tree of `leaves` leaves keeps.
pub const fn node_count(leaves: u64) -> u64 {
    2 * leaves - leaves.count_ones() as u64
}

/// The position of the root of the aligned subtree of `2^level` leaves
/// that starts at leaf `start`: its nodes follow those of the `start`
/// leaves before it, and its root is the last of them.
const fn position(start: u64, level: u32) -> u64 {
    node_count(start) + (1 << (level + 1)) - 2
}

#[derive(Clone, Debug, Default)]
pub struct Accumulator<N = Vec<Hash>> {
    nodes: N,
    leaves: u64,
    /// The roots of the complete subtrees of the whole tree, largest
    /// first: one per set bit of `leaves`.
    peaks: Vec<Hash>,
}

impl Accumulator {
    pub fn new() -> Accumulator {
        Accumulator::default()
    }
}

impl<N: Nodes> Accumulator<N> {
    /// The tree of the first `leaves` leaves whose nodes `nodes` holds
    /// (nodes beyond them are forgotten).
    pub fn open(mut nodes: N, leaves: u64) -> Accumulator<N> {
        assert!(nodes.len() >= node_count(leaves), "the nodes cover the leaves");
        nodes.truncate(node_count(leaves));
        let peaks = Self::peaks_of(&nodes, leaves);
        Accumulator { nodes, leaves, peaks }
    }

    fn peaks_of(nodes: &N, leaves: u64) -> Vec<Hash> {
        let mut peaks = Vec::with_capacity(leaves.count_ones() as usize);
        let mut start = 0;
        for level in (0..64).rev() {
            if leaves & (1 << level) != 0 {
                peaks.push(nodes.get(position(start, level)));
                start += 1 << level;
            }
        }
        peaks
    }

    /// Leaves appended so far.
    pub fn len(&self) -> u64 {
        self.leaves
    }

    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }

    pub fn nodes(&self) -> &N {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut N {
        &mut self.nodes
    }

    /// Appends one leaf hash (`merkle::leaf_hash` of the encoded entry).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        self.nodes.push(node);
        // Each trailing one of the old count is a peak the new leaf's
        // subtree completes.
        for _ in 0..self.leaves.trailing_ones() {
            let left = self.peaks.pop().expect("a peak per set bit");
            node = merkle::node_hash(&left, &node);
            self.nodes.push(node);
        }
        self.peaks.push(node);
        self.leaves += 1;
        debug_assert_eq!(self.nodes.len(), node_count(self.leaves));
    }

    /// The hash of leaf `index` (from 0).
    pub fn leaf(&self, index: u64) -> Hash {
        assert!(index < self.leaves);
        self.nodes.get(node_count(index))
    }

    /// Forgets every leaf from `len` on (a batch that was not made durable).
    pub fn truncate(&mut self, len: u64) {
        assert!(len <= self.leaves);
        self.nodes.truncate(node_count(len));
        self.leaves = len;
        self.peaks = Self::peaks_of(&self.nodes, len);
    }

    /// Where the tree is now.
    pub fn frontier(&self) -> Frontier {
        Frontier { leaves: self.leaves, peaks: self.peaks.clone() }
    }

    /// Forgets every leaf appended since `frontier` was taken, without
    /// reading a node.
    pub fn rollback(&mut self, frontier: Frontier) {
        assert!(frontier.leaves <= self.leaves);
        self.nodes.truncate(node_count(frontier.leaves));
        self.leaves = frontier.leaves;
        self.peaks = frontier.peaks;
    }

    /// The root of the whole tree: the peaks folded from the smallest.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else { return merkle::empty_root() };
        peaks.fold(*last, |right, left| merkle::node_hash(left, &right))
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Hash {
        assert!(size <= self.leaves);
        if size == self.leaves {
            return self.root();
        }
        if size == 0 {
            return merkle::empty_root();
        }
        self.range(0, size)
    }

    /// MTH of leaves `start..end`, where `start` is a multiple of the largest
    /// power of two not above `end - start` (true of every range the
    /// RFC 9162 recursion visits).
    fn range(&self, start: u64, end: u64) -> Hash {
        let size = end - start;
        assert!(size >= 1);
        if size.is_power_of_two() {
            return self.nodes.get(position(start, size.trailing_zeros()));
        }
        let split = 1u64 << (63 - (size - 1).leading_zeros());
        merkle::node_hash(&self.range(start, start + split), &self.range(start + split, end))
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.leaves {
            return None;
        }
        let mut path = Vec::new();
        self.path(index, 0, size, &mut path);
        Some(path)
    }

    fn path(&self, index: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let size = end - start;
        if size == 1 {
            return;
        }
        let split = 1u64 << (63 - (size - 1).leading_zeros());
        if index < start + split {
            self.path(index, start, start + split, out);
            out.push(self.range(start + split, end));
        } else {
            self.path(index, start + split, end, out);
            out.push(self.range(start, start + split));
        }
    }

    /// The consistency proof from the first `first` leaves to the first
    /// `second` leaves.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Option<Vec<Hash>> {
        if first == 0 || first > second || second > self.leaves {
            return None;
        }
        let mut proof = Vec::new();
        self.subproof(first, 0, second, true, &mut proof);
        Some(proof)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.range(start, end));
            }
            return;
        }
        let split = 1u64 << (63 - (n - 1).leading_zeros());
        if m <= split {
            self.subproof(m, start, start + split, whole, out);
            out.push(self.range(start + split, end));
        } else {
            self.subproof(m - split, start + split, end, false, out);
            out.push(self.range(start, start + split));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ron_proto::merkle::{leaf_hash, node_hash, verify_consistency, verify_inclusion};

    /// RFC 9162's MTH, written straight from its definition.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => merkle::empty_root(),
            1 => leaves[0],
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
    }

    #[test]
    fn roots_match_the_definition_for_every_prefix() {
        let all = leaves(70);
        let mut accumulator = Accumulator::new();
        assert_eq!(accumulator.root(), merkle::empty_root());
        for (i, leaf) in all.iter().enumerate() {
            accumulator.push(*leaf);
            assert_eq!(accumulator.root(), naive_root(&all[..=i]), "size {}", i + 1);
        }
        for size in 0..=70 {
            assert_eq!(accumulator.root_at(size), naive_root(&all[..size as usize]));
        }
        // Truncating and appending again gives the same tree.
        for size in [69, 64, 33, 1, 0] {
            accumulator.truncate(size);
            assert_eq!(accumulator.root(), naive_root(&all[..size as usize]));
        }
        all.iter().for_each(|l| accumulator.push(*l));
        assert_eq!(accumulator.root(), naive_root(&all));
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_tampering_fails() {
        let all = leaves(33);
        let mut accumulator = Accumulator::new();
        all.iter().for_each(|l| accumulator.push(*l));
        for size in 1..=33u64 {
            let root = accumulator.root_at(size);
            for index in 0..size {
                let path = accumulator.inclusion_proof(index, size).unwrap();
                assert!(verify_inclusion(index, size, &all[index as usize], &path, &root));
                if let Some(first) = path.first() {
                    let mut bad = path.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(index, size, &all[index as usize], &bad, &root));
                }
                let other = all[((index + 1) % 33) as usize];
                assert!(!verify_inclusion(index, size, &other, &path, &root));
            }
            for first in 1..=size {
                let proof = accumulator.consistency_proof(first, size).unwrap();
                let first_root = accumulator.root_at(first);
                assert!(
                    verify_consistency(first, size, &first_root, &root, &proof),
                    "{first}→{size}"
                );
                if first < size {
                    let wrong = accumulator.root_at(first - 1);
                    assert!(!verify_consistency(first, size, &wrong, &root, &proof));
                    let mut bad = proof.clone();
                    bad.last_mut().unwrap()[0] ^= 1;
                    assert!(!verify_consistency(first, size, &first_root, &root, &bad));
                }
            }
        }
        assert!(accumulator.inclusion_proof(33, 33).is_none());
        assert!(accumulator.consistency_proof(0, 3).is_none());
    }

    #[test]
    fn a_tree_without_nodes_has_the_same_roots_and_rolls_back() {
        let all = leaves(40);
        let mut full = Accumulator::new();
        let mut bare = Accumulator::open(NoNodes::default(), 0);
        for leaf in &all[..20] {
            full.push(*leaf);
            bare.push(*leaf);
            assert_eq!(bare.root(), full.root());
        }
        let before = bare.frontier();
        all[20..].iter().for_each(|l| bare.push(*l));
        assert_eq!(bare.root(), naive_root(&all));
        bare.rollback(before);
        assert_eq!((bare.len(), bare.root()), (20, full.root()));
        assert_eq!(Nodes::len(bare.nodes()), node_count(20));
    }

    #[test]
    fn nodes_are_appended_in_post_order_and_a_tree_reopens_at_any_size() {
        let all = leaves(70);
        let mut accumulator = Accumulator::new();
        for (i, leaf) in all.iter().enumerate() {
            accumulator.push(*leaf);
            let n = i as u64 + 1;
            assert_eq!(Nodes::len(accumulator.nodes()), node_count(n));
            // The last node is the root of the largest subtree the leaf
            // completed.
            let level = n.trailing_zeros();
            let start = n - (1 << level);
            assert_eq!(position(start, level), node_count(n) - 1);
        }
        for size in 0..=70u64 {
            // Only the nodes (and the count) come back, as from disk.
            let nodes: Vec<Hash> = accumulator.nodes().clone();
            let reopened = Accumulator::open(nodes, size);
            assert_eq!(reopened.len(), size);
            assert_eq!(reopened.root(), naive_root(&all[..size as usize]), "size {size}");
            if size > 0 {
                assert_eq!(reopened.leaf(size - 1), all[size as usize - 1]);
                let path = reopened.inclusion_proof(0, size).unwrap();
                assert!(verify_inclusion(0, size, &all[0], &path, &reopened.root()));
            }
            let mut grown = reopened;
            all[size as usize..].iter().for_each(|l| grown.push(*l));
            assert_eq!(grown.root(), naive_root(&all));
            assert_eq!(grown.nodes(), accumulator.nodes());
        }
    }
}
