//! Which shard owns a key (SPEC §1.1). Clients use the same function, published
//! at `GET /v1/node/topology`, to pick the owner's port.

/// The domain-separation prefix of the routing hash.
pub const ROUTING_DOMAIN: &[u8] = b"ron-shard-v1";

/// The published name of [`owner`], so clients can check they agree.
pub const ROUTING_FUNCTION: &str =
    "u64::from_le_bytes(BLAKE3(\"ron-shard-v1\" || key)[0..8]) % shard_count";

/// `owner(key) = u64::from_le_bytes(BLAKE3("ron-shard-v1" ‖ key)[0..8]) % shard_count`.
/// With one shard that is 0 for every key, and nothing is hashed (a
/// batched transfer asks for the owners of its accounts several times).
#[inline]
pub fn owner(key: &[u8], shard_count: usize) -> usize {
    if shard_count == 1 {
        return 0;
    }
    owner_of_route(route_hash(key), shard_count)
}

/// The 64-bit hash that `owner` reduces modulo the shard count. Ids that
/// carry it (wallet hold ids) find their shard under any shard count.
pub fn route_hash(key: &[u8]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(ROUTING_DOMAIN);
    hasher.update(key);
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

pub fn owner_of_route(route: u64, shard_count: usize) -> usize {
    assert!(shard_count > 0, "a node has at least one shard");
    let shard = (route % shard_count as u64) as usize;
    assert!(shard < shard_count);
    shard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_matches_the_spec_formula_computed_independently() {
        // BLAKE3 over the concatenation, computed in one call.
        let hash = blake3::hash(b"ron-shard-v1alice");
        let value = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap());
        for shards in 1..9 {
            assert_eq!(owner(b"alice", shards), (value % shards as u64) as usize);
        }
    }

    #[test]
    fn keys_spread_over_shards() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner(format!("acct:{i}").as_bytes(), 4)] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
    }
}
