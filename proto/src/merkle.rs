//! The ledger's Merkle tree hashes and proof verifiers (SPEC §4.2), in the
//! style of RFC 9162 with BLAKE3: leaf = H(0x00 ‖ entry), node =
//! H(0x01 ‖ left ‖ right), and the tree over n leaves splits at the largest
//! power of two below n. A client needs only this module and BLAKE3 to check
//! an inclusion or consistency proof against published roots.

pub type Hash = [u8; 32];

/// The root of the empty tree: H() of nothing.
pub fn empty_root() -> Hash {
    *blake3::hash(&[]).as_bytes()
}

pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x00]);
    hasher.update(entry);
    *hasher.finalize().as_bytes()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x01]);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

/// Checks that `leaf` is leaf number `index` (from 0) of the tree of
/// `tree_size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    tree_size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> bool {
    root_from_path(index, tree_size, leaf, path).is_some_and(|r| r == *root)
}

/// The root an inclusion path leads to from `leaf` at `index` of a tree of
/// `tree_size` leaves; `None` if the path cannot belong to such a tree.
pub fn root_from_path(index: u64, tree_size: u64, leaf: &Hash, path: &[Hash]) -> Option<Hash> {
    if index >= tree_size {
        return None;
    }
    let (mut fn_, mut sn) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

/// Checks that the tree of `second_size` leaves with root `second_root`
/// extends the tree of `first_size` leaves with root `first_root`
/// (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first_size: u64,
    second_size: u64,
    first_root: &Hash,
    second_root: &Hash,
    path: &[Hash],
) -> bool {
    if first_size == 0 || first_size > second_size {
        return false;
    }
    if first_size == second_size {
        return path.is_empty() && first_root == second_root;
    }
    let mut nodes: Vec<Hash> = Vec::with_capacity(path.len() + 1);
    if first_size.is_power_of_two() {
        nodes.push(*first_root);
    }
    nodes.extend_from_slice(path);
    let Some((first, rest)) = nodes.split_first() else { return false };
    let (mut fn_, mut sn) = (first_size - 1, second_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *first_root && sr == *second_root && sn == 0
}

/// Lower-case hex, the form roots and proofs take in JSON.
pub fn to_hex(hash: &Hash) -> String {
    hex(hash)
}

/// Lowercase hex of any bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    hex_into(&mut out, bytes);
    out
}

/// `bytes` in lowercase hex, after what `out` holds.
pub fn hex_into(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
}

pub fn from_hex(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let hash = leaf_hash(b"x");
        assert_eq!(from_hex(&to_hex(&hash)), Some(hash));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(to_hex(&[0xab; 32]).len(), 64);
    }

    /// Three leaves, worked out by hand: the tree splits 2 + 1.
    #[test]
    fn a_three_leaf_tree_by_hand() {
        let [a, b, c] = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")];
        let root = node_hash(&node_hash(&a, &b), &c);
        assert!(verify_inclusion(0, 3, &a, &[b, c], &root));
        assert!(verify_inclusion(2, 3, &c, &[node_hash(&a, &b)], &root));
        assert!(!verify_inclusion(1, 3, &a, &[b, c], &root));
        assert!(!verify_inclusion(0, 3, &a, &[c, b], &root));
        // 2 → 3: the first tree is a power of two, so its root starts the path.
        let first = node_hash(&a, &b);
        assert!(verify_consistency(2, 3, &first, &root, &[c]));
        assert!(!verify_consistency(2, 3, &first, &root, &[a]));
        // 1 → 3.
        assert!(verify_consistency(1, 3, &a, &root, &[b, c]));
    }
}
