//! A shard's cache of index answers (`/resolve`, `/providers`): bounded in
//! entries (least recently used out first), each entry until its TTL (the
//! negative TTL for a miss; never past its first provider's expiry), and
//! stale as soon as a write touches a key it read (`Generations`: every
//! index write reaches every shard). Answers found through the DHT have
//! no local writes to watch and live by their TTL alone.

use lru::LruCache;
use ron_proto::index::{Cid, Key, Route};
use ron_shards::index::Generations;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A provider as answers list it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Listed {
    pub id: String,
    pub region: Option<String>,
    /// 0..=1, written with three decimals.
    #[serde(serialize_with = "three_decimals")]
    pub score: f32,
}

fn three_decimals<S: serde::Serializer>(score: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((f64::from(*score) * 1000.0).round() / 1000.0)
}

/// What an index answer says.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub manifest: Option<Cid>,
    /// Best first.
    pub providers: Vec<Listed>,
    pub etag: Cid,
}

impl Answer {
    pub fn new(manifest: Option<Cid>, providers: Vec<Listed>) -> Answer {
        let etag = ron_proto::index::etag(manifest.as_ref(), providers.iter().map(|p| p.id.as_str()));
        Answer { manifest, providers, etag }
    }

    /// Nothing known: answered 404, remembered for the negative TTL.
    pub fn is_miss(&self) -> bool {
        self.manifest.is_none() && self.providers.is_empty()
    }
}

/// What an entry is cached under: 16 bytes of BLAKE3 over what was asked
/// (fixed size, so a lookup allocates nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 16]);

impl CacheKey {
    pub fn resolve(key: &Key) -> CacheKey {
        let mut hasher = blake3::Hasher::new();
        match key {
            Key::Name(name) => hasher.update(b"rn").update(name.as_bytes()),
            Key::Cid(cid) => hasher.update(b"rc").update(&cid.0),
        };
        CacheKey(hasher.finalize().as_bytes()[..16].try_into().expect("16 bytes"))
    }

    pub fn providers(cid: &Cid) -> CacheKey {
        let digest = blake3::Hasher::new().update(b"pc").update(&cid.0).finalize();
        CacheKey(digest.as_bytes()[..16].try_into().expect("16 bytes"))
    }
}

/// The generation stamps of the keys an answer read (at most two: the key
/// and its manifest's providers).
pub type Stamps = [Option<(u16, u32)>; 2];

/// Stamps `routes` with their current generations.
pub fn stamp(generations: &Generations, routes: [Option<Route<'_>>; 2]) -> Stamps {
    routes.map(|route| route.map(|route| generations.stamp(route)))
}

struct Entry {
    answer: Rc<Answer>,
    expires: Instant,
    stamps: Stamps,
    bytes: usize,
}

/// What an entry costs besides its providers: the LRU node, key, stamps,
/// the answer's fixed part.
pub const ENTRY_BYTES: usize = 192;
/// What a listed provider costs besides its text.
const LISTED_BYTES: usize = 64;

impl Answer {
    /// Its bytes as the cache counts them.
    fn bytes(&self) -> usize {
        let providers: usize = self
            .providers
            .iter()
            .map(|p| LISTED_BYTES + p.id.len() + p.region.as_ref().map_or(0, String::len))
            .sum();
        ENTRY_BYTES + providers
    }
}

pub struct AnswerCache {
    entries: LruCache<CacheKey, Entry>,
    /// Bytes of the entries kept, and the most it keeps.
    bytes: usize,
    bytes_max: usize,
    ttl: Duration,
    negative_ttl: Duration,
    pub hits: u64,
    pub misses: u64,
}

impl AnswerCache {
    pub fn new(
        entries_max: usize,
        bytes_max: usize,
        ttl: Duration,
        negative_ttl: Duration,
    ) -> AnswerCache {
        let capacity = NonZeroUsize::new(entries_max).expect("index.cache_entries_max >= 1");
        AnswerCache {
            entries: LruCache::new(capacity),
            bytes: 0,
            bytes_max,
            ttl,
            negative_ttl,
            hits: 0,
            misses: 0,
        }
    }

    /// A live, current answer, counted as a hit or a miss.
    pub fn get(&mut self, key: &CacheKey, generations: &Generations, now: Instant) -> Option<Rc<Answer>> {
        let fresh = self.entries.get(key).filter(|entry| {
            entry.expires > now && entry.stamps.iter().flatten().all(|s| generations.current(*s))
        });
        match fresh {
            Some(entry) => {
                self.hits += 1;
                Some(entry.answer.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Keeps `answer`, made from reads stamped `stamps` (taken before the
    /// reads, so a write that lands meanwhile makes it stale at once), for
    /// its TTL but not past `until`.
    pub fn put(
        &mut self,
        key: CacheKey,
        answer: Rc<Answer>,
        stamps: Stamps,
        now: Instant,
        until: Option<Instant>,
    ) {
        let ttl = if answer.is_miss() { self.negative_ttl } else { self.ttl };
        let expires = until.map_or(now + ttl, |until| until.min(now + ttl));
        let bytes = answer.bytes();
        if expires <= now || bytes > self.bytes_max {
            return;
        }
        if let Some(old) = self.entries.pop(&key) {
            self.bytes -= old.bytes;
        }
        while self.bytes + bytes > self.bytes_max {
            let (_, evicted) = self.entries.pop_lru().expect("bytes are counted in entries");
            self.bytes -= evicted.bytes;
        }
        self.bytes += bytes;
        if let Some((_, evicted)) = self.entries.push(key, Entry { answer, expires, stamps, bytes }) {
            self.bytes -= evicted.bytes;
        }
    }

    /// Bytes of the answers kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets everything (amnesia, at stop).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(manifest: Option<u8>, ids: &[&str]) -> Rc<Answer> {
        let providers =
            ids.iter().map(|id| Listed { id: (*id).into(), region: None, score: 1.0 }).collect();
        Rc::new(Answer::new(manifest.map(|n| Cid([n; 32])), providers))
    }

    #[test]
    fn entries_live_by_ttl_negative_ttl_bound_and_generations() {
        let mut generations = Generations::default();
        let mut cache =
            AnswerCache::new(2, 1 << 20, Duration::from_secs(5), Duration::from_secs(1));
        let now = Instant::now();
        let name = Key::Name("example.com".into());
        let key = CacheKey::resolve(&name);
        let stamps = stamp(&generations, [Some(name.route()), None]);
        cache.put(key, answer(Some(1), &["http://a"]), stamps, now, None);
        assert!(cache.get(&key, &generations, now + Duration::from_secs(4)).is_some());
        assert!(cache.get(&key, &generations, now + Duration::from_secs(5)).is_none());
        // A write to the key makes it stale at once.
        cache.put(key, answer(Some(1), &["http://a"]), stamps, now, None);
        generations.bump(name.route());
        assert!(cache.get(&key, &generations, now).is_none());
        assert_eq!((cache.hits, cache.misses), (1, 2));
        // A miss lives for the negative TTL; `until` caps an entry.
        let miss = CacheKey::resolve(&Key::Name("nothing".into()));
        cache.put(miss, answer(None, &[]), [None, None], now, None);
        assert!(cache.get(&miss, &generations, now + Duration::from_millis(999)).is_some());
        assert!(cache.get(&miss, &generations, now + Duration::from_secs(1)).is_none());
        let capped = CacheKey::providers(&Cid([7; 32]));
        let until = now + Duration::from_millis(10);
        cache.put(capped, answer(Some(7), &["http://b"]), [None, None], now, Some(until));
        assert!(cache.get(&capped, &generations, until).is_none());
        // Bounded: the least recently used goes first.
        for n in 0..5u8 {
            cache.put(CacheKey::providers(&Cid([n; 32])), answer(Some(n), &[]), [None, None], now, None);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.bytes(), 2 * ENTRY_BYTES);
    }

    #[test]
    fn the_cache_keeps_to_its_bytes() {
        let generations = Generations::default();
        let long = "http://10.0.0.1:80/".to_owned() + &"p".repeat(100);
        let one = answer(Some(0), &[long.as_str()]).bytes();
        let max = 3 * one + one / 2;
        let ttl = Duration::from_secs(5);
        let mut cache = AnswerCache::new(1000, max, ttl, Duration::from_secs(1));
        let now = Instant::now();
        for n in 0..10u8 {
            let found = answer(Some(n), &[long.as_str()]);
            cache.put(CacheKey::providers(&Cid([n; 32])), found, [None, None], now, None);
            assert!(cache.bytes() <= max, "{}", cache.bytes());
        }
        assert_eq!(cache.len(), 3);
        // The newest are kept; the oldest went first.
        assert!(cache.get(&CacheKey::providers(&Cid([9; 32])), &generations, now).is_some());
        assert!(cache.get(&CacheKey::providers(&Cid([0; 32])), &generations, now).is_none());
        // Replacing an entry counts it once.
        let again = answer(Some(9), &[long.as_str()]);
        cache.put(CacheKey::providers(&Cid([9; 32])), again, [None, None], now, None);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn the_etag_is_the_manifest_and_provider_set() {
        let a = answer(Some(1), &["http://a", "http://b"]);
        let b = answer(Some(1), &["http://b", "http://a"]);
        assert_eq!(a.etag, b.etag);
        assert_ne!(a.etag, answer(Some(2), &["http://a", "http://b"]).etag);
        assert!(answer(None, &[]).is_miss());
    }
}
