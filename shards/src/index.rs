//! The index state one shard owns (SPEC §7): the site and asset pointers
//! and provider records whose keys route to it, and the generations that
//! tell every shard's answer cache what a write made stale.
//!
//! Pointers are replaced by each write (the last in log order wins).
//! Provider records are kept per cid, one per node (a node providing again
//! replaces its record), at most `providers_per_cid_max`: a new node past
//! the bound replaces the record that expires first, if it outlives it.
//! Expired records are left out of every read and dropped by
//! [`Index::purge`]. Time comes in as an argument.

use crate::Map;
use ron_proto::index::{AssetPointer, Cid, IndexItem, ProviderRecord, Route, SitePointer};
use std::collections::BTreeSet;

/// A provider as the index keeps it under its cid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    pub node: String,
    pub ttl_s: u32,
    pub expires_ms: u64,
}

impl Provider {
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }

    /// The part of its TTL left at `now_ms`, in 0..=1: its ranking score.
    pub fn score(&self, now_ms: u64) -> f32 {
        let ttl_ms = u64::from(self.ttl_s).max(1) * 1000;
        let left = self.expires_ms.saturating_sub(now_ms).min(ttl_ms);
        // Rounded to 1/1000 so answers read cleanly.
        ((left as f64 / ttl_ms as f64) * 1000.0).round() as f32 / 1000.0
    }
}

/// What changed since the last view write, by key (`None`: deleted).
#[derive(Debug, Default)]
pub struct Changes {
    pub sites: BTreeSet<String>,
    pub assets: BTreeSet<Cid>,
    pub providers: BTreeSet<Cid>,
}

/// The index state of one shard.
#[derive(Debug)]
pub struct Index {
    sites: Map<String, SitePointer>,
    assets: Map<Cid, AssetPointer>,
    providers: Map<Cid, Vec<Provider>>,
    providers_per_cid_max: usize,
    changes: Changes,
    /// Times a cid's set of provider nodes changed (a node added, or one
    /// gone by expiry or replacement).
    provider_set_changes: u64,
}

impl Index {
    pub fn new(providers_per_cid_max: usize) -> Index {
        assert!(providers_per_cid_max > 0);
        Index {
            sites: Map::default(),
            assets: Map::default(),
            providers: Map::default(),
            providers_per_cid_max,
            changes: Changes::default(),
            provider_set_changes: 0,
        }
    }

    /// Applies a committed item this shard owns. `now_ms` only decides
    /// which records are dead already (they are dropped on the way).
    pub fn apply(&mut self, item: IndexItem, now_ms: u64) {
        match item {
            IndexItem::Site(site) => {
                self.changes.sites.insert(site.name.clone());
                self.sites.insert(site.name.clone(), site);
            }
            IndexItem::Asset(asset) => {
                self.changes.assets.insert(asset.asset);
                self.assets.insert(asset.asset, asset);
            }
            IndexItem::Provider(record) => self.provide(record, now_ms),
        }
    }

    fn provide(&mut self, record: ProviderRecord, now_ms: u64) {
        let ProviderRecord { cid, node, ttl_s, expires_ms } = record;
        let max = self.providers_per_cid_max;
        let list = self.providers.entry(cid).or_default();
        let before = list.len();
        list.retain(|p| p.live(now_ms));
        let mut set_changed = list.len() != before;
        let provider = Provider { node, ttl_s, expires_ms };
        if let Some(kept) = list.iter_mut().find(|p| p.node == provider.node) {
            *kept = provider;
        } else if list.len() < max {
            list.push(provider);
            set_changed = true;
        } else {
            let first = list.iter_mut().min_by_key(|p| (p.expires_ms, p.node.clone()));
            let first = first.expect("the list is full, so not empty");
            if first.expires_ms < provider.expires_ms {
                *first = provider;
                set_changed = true;
            }
        }
        if list.is_empty() {
            self.providers.remove(&cid);
        }
        self.provider_set_changes += u64::from(set_changed);
        self.changes.providers.insert(cid);
    }

    pub fn site(&self, name: &str) -> Option<&SitePointer> {
        self.sites.get(name)
    }

    pub fn asset(&self, cid: &Cid) -> Option<&AssetPointer> {
        self.assets.get(cid)
    }

    /// The live providers of `cid`, best first (most TTL left, then node).
    pub fn providers(&self, cid: &Cid, now_ms: u64) -> Vec<Provider> {
        let mut live: Vec<Provider> = self
            .providers
            .get(cid)
            .map(|list| list.iter().filter(|p| p.live(now_ms)).cloned().collect())
            .unwrap_or_default();
        live.sort_by(|a, b| b.expires_ms.cmp(&a.expires_ms).then_with(|| a.node.cmp(&b.node)));
        live
    }

    /// Every record of `cid`, dead ones included (the view's copy).
    pub fn provider_records(&self, cid: &Cid) -> &[Provider] {
        self.providers.get(cid).map_or(&[], Vec::as_slice)
    }

    /// Every cid with a live record, and when its last one expires.
    pub fn live_cids(&self, now_ms: u64) -> Vec<(Cid, u64)> {
        self.providers
            .iter()
            .filter_map(|(cid, list)| {
                let last = list.iter().map(|p| p.expires_ms).max()?;
                (last > now_ms).then_some((*cid, last))
            })
            .collect()
    }

    /// Drops the records dead at `now_ms`, at most `max` cids' worth;
    /// returns the cids whose sets changed (their answers are stale).
    pub fn purge(&mut self, now_ms: u64, max: usize) -> Vec<Cid> {
        let mut purged = Vec::new();
        for (cid, list) in &mut self.providers {
            if purged.len() == max {
                break;
            }
            if list.iter().any(|p| !p.live(now_ms)) {
                list.retain(|p| p.live(now_ms));
                purged.push(*cid);
            }
        }
        for cid in &purged {
            if self.providers.get(cid).is_some_and(Vec::is_empty) {
                self.providers.remove(cid);
            }
            self.changes.providers.insert(*cid);
        }
        self.provider_set_changes += purged.len() as u64;
        purged
    }

    pub fn provider_set_changes(&self) -> u64 {
        self.provider_set_changes
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Counts of what the shard keeps: (sites, assets, cids with providers).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.sites.len(), self.assets.len(), self.providers.len())
    }

    /// Forgets everything, overwriting the text it held (amnesia: nothing
    /// outlives the process, not even in freed memory).
    pub fn zeroize(&mut self) {
        use zeroize::Zeroize as _;
        for (mut name, mut site) in self.sites.drain() {
            name.zeroize();
            site.name.zeroize();
            site.owners.passport_subject.zeroize();
            site.owners.wallet_account.zeroize();
        }
        for (_, mut asset) in self.assets.drain() {
            asset.owners.passport_subject.zeroize();
            asset.owners.wallet_account.zeroize();
        }
        for (_, list) in self.providers.drain() {
            for mut provider in list {
                provider.node.zeroize();
            }
        }
        self.changes = Changes::default();
    }

    pub fn load_site(&mut self, site: SitePointer) {
        self.sites.insert(site.name.clone(), site);
    }

    pub fn load_asset(&mut self, asset: AssetPointer) {
        self.assets.insert(asset.asset, asset);
    }

    pub fn load_providers(&mut self, cid: Cid, list: Vec<Provider>) {
        if !list.is_empty() {
            self.providers.insert(cid, list);
        }
    }
}

/// Buckets of [`Generations`].
pub const GENERATION_BUCKETS: usize = 4096;

/// What tells a cached answer it is stale: a counter per bucket of keys,
/// raised by every write to a key of the bucket. An answer keeps the
/// counters of the keys it read when it was made and is stale once one
/// moved. Fixed size (a write to another key of the same bucket makes an
/// answer stale for nothing, 1 in 4096).
#[derive(Debug)]
pub struct Generations {
    counters: Box<[u32; GENERATION_BUCKETS]>,
}

impl Default for Generations {
    fn default() -> Generations {
        Generations { counters: Box::new([0; GENERATION_BUCKETS]) }
    }
}

impl Generations {
    fn bucket(route: Route<'_>) -> usize {
        let mut hasher = blake3::Hasher::new();
        match route {
            Route::Name(name) => hasher.update(b"n").update(name.as_bytes()),
            Route::Cid(cid) => hasher.update(b"c").update(&cid.0),
        };
        let digest = hasher.finalize();
        u16::from_le_bytes([digest.as_bytes()[0], digest.as_bytes()[1]]) as usize
            % GENERATION_BUCKETS
    }

    /// A write to `route` happened.
    pub fn bump(&mut self, route: Route<'_>) {
        let counter = &mut self.counters[Generations::bucket(route)];
        *counter = counter.wrapping_add(1);
    }

    /// The counter an answer reading `route` keeps.
    pub fn stamp(&self, route: Route<'_>) -> (u16, u32) {
        let bucket = Generations::bucket(route);
        (bucket as u16, self.counters[bucket])
    }

    /// Whether nothing was written to the stamped bucket since.
    pub fn current(&self, (bucket, counter): (u16, u32)) -> bool {
        self.counters[usize::from(bucket)] == counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ron_proto::index::Owners;

    fn cid(n: u8) -> Cid {
        Cid([n; 32])
    }

    fn provider(n: u8, node: &str, ttl_s: u32, expires_ms: u64) -> IndexItem {
        IndexItem::Provider(ProviderRecord { cid: cid(n), node: node.into(), ttl_s, expires_ms })
    }

    #[test]
    fn pointers_are_replaced_by_each_write() {
        let mut index = Index::new(4);
        let site = |manifest: u8, at: u64| {
            IndexItem::Site(SitePointer {
                name: "example.com".into(),
                manifest: cid(manifest),
                owners: Owners::default(),
                updated_at_ms: at,
            })
        };
        index.apply(site(1, 10), 0);
        index.apply(site(2, 5), 0);
        assert_eq!(index.site("example.com").unwrap().manifest, cid(2));
        assert_eq!(index.take_changes().sites.len(), 1);
        assert!(index.take_changes().sites.is_empty());
    }

    #[test]
    fn providers_dedup_by_node_expire_and_stay_bounded() {
        let mut index = Index::new(2);
        index.apply(provider(1, "http://a", 10, 10_000), 0);
        index.apply(provider(1, "http://a", 20, 20_000), 0);
        assert_eq!(index.providers(&cid(1), 0).len(), 1, "one record per node");
        assert_eq!(index.provider_set_changes(), 1);
        index.apply(provider(1, "http://b", 10, 10_000), 0);
        // Full: c outlives b (the first to expire), so it takes its place...
        index.apply(provider(1, "http://c", 30, 30_000), 0);
        let nodes: Vec<_> = index.providers(&cid(1), 0).into_iter().map(|p| p.node).collect();
        assert_eq!(nodes, ["http://c", "http://a"]);
        // ...and d, which would expire first, does not.
        index.apply(provider(1, "http://d", 1, 1_000), 0);
        assert_eq!(index.providers(&cid(1), 0).len(), 2);
        // Reads leave dead records out; a purge drops them.
        assert_eq!(index.providers(&cid(1), 25_000).len(), 1);
        assert_eq!(index.purge(25_000, 10), vec![cid(1)]);
        assert_eq!(index.provider_records(&cid(1)).len(), 1);
        assert_eq!(index.purge(40_000, 10), vec![cid(1)]);
        assert_eq!(index.counts().2, 0);
        assert!(index.take_changes().providers.contains(&cid(1)));
    }

    #[test]
    fn scores_are_the_ttl_left() {
        let p = Provider { node: "http://a".into(), ttl_s: 10, expires_ms: 10_000 };
        assert_eq!(p.score(0), 1.0);
        assert_eq!(p.score(7_500), 0.25);
        assert_eq!(p.score(10_000), 0.0);
        assert!(!p.live(10_000));
    }

    #[test]
    fn generations_move_with_writes_to_their_bucket() {
        let mut generations = Generations::default();
        let name = Route::Name("example.com");
        let stamp = generations.stamp(name);
        assert!(generations.current(stamp));
        generations.bump(Route::Cid(&cid(9)));
        let other_bucket = Generations::bucket(Route::Cid(&cid(9))) != usize::from(stamp.0);
        assert_eq!(generations.current(stamp), other_bucket);
        generations.bump(name);
        assert!(!generations.current(stamp));
    }
}
