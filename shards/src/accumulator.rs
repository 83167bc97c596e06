//! The ledger's Merkle accumulator (SPEC §4.2): append leaves in sequence
//! order, the root after any prefix, and inclusion and consistency proofs
//! that `ron_proto::merkle` verifies.
//!
//! It keeps every complete subtree's hash, level by level: level 0 holds the
//! leaf hashes, level k the roots of aligned subtrees of 2^k leaves. The root
//! of a tree of n leaves is then a fold over at most log2(n) stored hashes,
//! and any proof takes O(log² n) lookups. Memory: about 64 bytes per entry
//! (twice the leaf hashes); the current root comes from the O(log n)
//! frontier, the last hash of each level with an odd count.

use ron_proto::merkle::{self, Hash};

#[derive(Clone, Debug, Default)]
pub struct Accumulator {
    levels: Vec<Vec<Hash>>,
}

impl Accumulator {
    pub fn new() -> Accumulator {
        Accumulator::default()
    }

    /// Leaves appended so far.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one leaf hash (`merkle::leaf_hash` of the encoded entry).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(node);
            let count = self.levels[level].len();
            if count % 2 == 1 {
                break;
            }
            node =
                merkle::node_hash(&self.levels[level][count - 2], &self.levels[level][count - 1]);
            level += 1;
        }
    }

    /// The hash of leaf `index` (from 0).
    pub fn leaf(&self, index: u64) -> Hash {
        self.levels[0][index as usize]
    }

    /// Forgets every leaf from `len` on (a batch that was not made durable).
    pub fn truncate(&mut self, len: u64) {
        assert!(len <= self.len());
        for (level, hashes) in self.levels.iter_mut().enumerate() {
            hashes.truncate((len >> level) as usize);
        }
        while self.levels.last().is_some_and(Vec::is_empty) {
            self.levels.pop();
        }
        assert_eq!(self.len(), len);
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.len())
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Hash {
        assert!(size <= self.len());
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
            let level = size.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let split = 1u64 << (63 - (size - 1).leading_zeros());
        merkle::node_hash(&self.range(start, start + split), &self.range(start + split, end))
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.len() {
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
        if first == 0 || first > second || second > self.len() {
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
}
