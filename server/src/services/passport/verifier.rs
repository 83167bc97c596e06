//! What a shard knows about tokens beyond their format (SPEC §6): the
//! revocations committed so far, and a cache of tokens it has verified.
//!
//! Every shard applies every revocation from the committed stream, so a
//! revoked token is refused on every port; a restart finds them in the log.
//! The cache keeps the decoded bytes of tokens whose tag (and, with
//! signatures, whose signature) checked out, so a hit skips base64 and the
//! MAC chain: keyed by a hash of the token text under this process's random
//! key and the policy epoch, compared whole on a hit, bounded, and each
//! entry lives `verify_cache_ttl_ms`. Caveats are evaluated on every
//! request, hit or miss: they depend on the request.

use crate::limits::REVOCATION_LAGS_KEPT;
use ron_proto::revocation::{Revocation, Revoked};
use ron_proto::token::{self, CAVEATS_COUNT_MAX, TokenError, TokenView};
use ron_shards::passport::{MeterSpec, Revocations, meter_spec};
use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// One shard's passport state.
pub struct PassportState {
    pub revocations: Revocations,
    pub cache: VerifyCache,
    /// (seq, durable → applied here) of recent revocations.
    lags: VecDeque<(u64, Duration)>,
}

impl PassportState {
    pub fn new(revocations: Revocations, cache: VerifyCache) -> PassportState {
        PassportState { revocations, cache, lags: VecDeque::new() }
    }

    /// Applies a committed revocation at `seq`, `lag` after it was durable.
    pub fn apply(&mut self, revocation: &Revocation, seq: u64, lag: Duration) {
        self.revocations.apply(&revocation.revoked);
        self.cache.drop_matching(&revocation.revoked, self.revocations.current_epoch());
        if self.lags.len() == REVOCATION_LAGS_KEPT {
            self.lags.pop_front();
        }
        self.lags.push_back((seq, lag));
    }

    /// The apply lag of the revocation at `seq`, if remembered.
    pub fn lag(&self, seq: u64) -> Option<Duration> {
        self.lags.iter().rev().find(|(s, _)| *s == seq).map(|(_, lag)| *lag)
    }

    /// Whether `view`'s claims are revoked.
    pub fn refuses(&self, view: &TokenView<'_>) -> bool {
        self.revocations.refuses(&view.token_id, view.subject, view.kid, view.epoch)
    }
}

struct Entry {
    text: Box<[u8]>,
    binary: Box<[u8]>,
    policy_epoch: u64,
    expires: Instant,
    /// Its counting caveats, read once.
    meter: Option<Box<MeterSpec>>,
}

/// Verified tokens by hash of their text.
pub struct VerifyCache {
    hasher: RandomState,
    entries: HashMap<u64, Entry>,
    /// Keys in insertion order, for the bounds (oldest go first).
    order: VecDeque<u64>,
    max: usize,
    /// Bytes of token text and binary kept, and their bound.
    bytes: usize,
    bytes_max: usize,
    ttl: Duration,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl VerifyCache {
    /// A cache of at most `max` tokens and `bytes_max` bytes of them.
    pub fn new(max: usize, bytes_max: usize, ttl: Duration) -> VerifyCache {
        VerifyCache {
            hasher: RandomState::new(),
            entries: HashMap::new(),
            order: VecDeque::new(),
            max,
            bytes: 0,
            bytes_max,
            ttl,
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    fn key(&self, text: &[u8]) -> u64 {
        self.hasher.hash_one(text)
    }

    /// The live entry of `text` for `policy_epoch`.
    fn find(&self, text: &[u8], policy_epoch: u64, now: Instant) -> Option<&Entry> {
        self.entries
            .get(&self.key(text))
            .filter(|e| *e.text == *text && e.policy_epoch == policy_epoch && now < e.expires)
    }

    /// The verified binary form of `text`, if cached for `policy_epoch` and
    /// not expired. Counts a hit or a miss.
    pub fn get(&self, text: &[u8], policy_epoch: u64, now: Instant) -> Option<&[u8]> {
        let found = self.find(text, policy_epoch, now);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.set(counter.get() + 1);
        found.map(|e| &*e.binary)
    }

    /// The counting caveats of a cached `text` (not counted as a lookup):
    /// `None` if not cached, `Some(None)` if it has none.
    pub fn meter(
        &self,
        text: &[u8],
        policy_epoch: u64,
        now: Instant,
    ) -> Option<Option<&MeterSpec>> {
        self.find(text, policy_epoch, now).map(|e| e.meter.as_deref())
    }

    /// Keeps a token whose tag (and signature) verified.
    pub fn insert(&mut self, text: &[u8], view: &TokenView<'_>, binary: &[u8], policy_epoch: u64) {
        if self.max == 0 || self.ttl.is_zero() {
            return;
        }
        let key = self.key(text);
        let size = text.len() + binary.len();
        while self.entries.len() >= self.max || self.bytes + size > self.bytes_max {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(gone) = self.entries.remove(&oldest) {
                self.bytes -= gone.text.len() + gone.binary.len();
            }
        }
        if size > self.bytes_max {
            return;
        }
        let entry = Entry {
            text: text.into(),
            binary: binary.into(),
            policy_epoch,
            expires: Instant::now() + self.ttl,
            meter: meter_spec(view).map(Box::new),
        };
        self.bytes += size;
        if let Some(replaced) = self.entries.insert(key, entry) {
            self.bytes -= replaced.text.len() + replaced.binary.len();
        } else {
            self.order.push_back(key);
        }
    }

    /// Drops the entries a revocation covers (and any of another policy
    /// epoch than `policy_epoch`).
    pub fn drop_matching(&mut self, revoked: &Revoked, policy_epoch: u64) {
        self.entries.retain(|_, e| {
            let view = cached_view(&e.binary, CAVEATS_COUNT_MAX).expect("cached tokens decode");
            e.policy_epoch == policy_epoch
                && !match revoked {
                    Revoked::TokenId(id) => view.token_id == *id,
                    Revoked::Subject(subject) => view.subject == subject,
                    Revoked::Kid(kid) => view.kid == *kid,
                    Revoked::Epoch(epoch) => view.epoch <= *epoch,
                }
        });
        let entries = &self.entries;
        self.order.retain(|key| entries.contains_key(key));
        self.bytes = entries.values().map(|e| e.text.len() + e.binary.len()).sum();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (hits, misses) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }
}

/// Decodes a cached binary token (verified when it was cached).
pub fn cached_view(binary: &[u8], caveats_max: usize) -> Result<TokenView<'_>, TokenError> {
    token::decode_decoded(binary, caveats_max)
}

/// Why a presented token is not a valid credential here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    TooLarge,
    UnknownCaveat,
    Malformed(&'static str),
    UnknownKid,
    BadTag,
    Revoked,
    /// `pq_mode = "enforce"` and the token has no valid ML-DSA batch caveat.
    PqRequired,
}

impl Refusal {
    /// The `reason` of `/v1/passport/verify` and `svc_passport_rejects_total`.
    pub const fn reason(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::UnknownCaveat => "unknown_caveat",
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownKid => "unknown_kid",
            Refusal::BadTag => "bad_tag",
            Refusal::Revoked => "revoked",
            Refusal::PqRequired => "pq_required",
        }
    }

    /// For a 401 envelope.
    pub const fn message(self) -> &'static str {
        match self {
            Refusal::TooLarge => "token too large",
            Refusal::UnknownCaveat => "token has an unknown caveat",
            Refusal::Malformed(why) => why,
            Refusal::UnknownKid => "token signed with an unknown key",
            Refusal::BadTag => "token tag does not verify",
            Refusal::Revoked => "token revoked",
            Refusal::PqRequired => "token lacks the ML-DSA signature pq_mode enforce requires",
        }
    }
}

impl From<TokenError> for Refusal {
    fn from(error: TokenError) -> Refusal {
        match error {
            TokenError::TooLarge => Refusal::TooLarge,
            TokenError::UnknownCaveat => Refusal::UnknownCaveat,
            TokenError::Malformed(why) => Refusal::Malformed(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ron_proto::token::{Claims, Token};

    fn token(id: u8, subject: &str) -> String {
        let claims = Claims {
            kid: 1,
            token_id: [id; 16],
            epoch: 0,
            issued_at: 0,
            subject: subject.into(),
            audience: "ron-node".into(),
        };
        Token::mint(&[3; 32], claims, &["scope=wallet.read"]).unwrap().encode()
    }

    fn put(cache: &mut VerifyCache, text: &str) {
        let mut scratch = Vec::new();
        token::decode(text.as_bytes(), 64, &mut scratch).unwrap();
        let view = token::decode_binary(&scratch, 64).unwrap();
        cache.insert(text.as_bytes(), &view, &scratch, 0);
    }

    #[test]
    fn revocations_apply_and_recent_lags_are_kept() {
        let mut state =
            PassportState::new(
                Revocations::default(),
                VerifyCache::new(8, 1 << 20, Duration::from_secs(1)),
            );
        for seq in 1..=REVOCATION_LAGS_KEPT as u64 + 1 {
            let revocation =
                Revocation { revoked: Revoked::Kid(seq as u32), reason: String::new(), ts_ms: 0 };
            state.apply(&revocation, seq, Duration::from_micros(seq));
        }
        assert_eq!(state.lag(1), None, "the oldest lag is forgotten");
        assert_eq!(state.lag(2), Some(Duration::from_micros(2)));
        assert_eq!(
            state.lag(REVOCATION_LAGS_KEPT as u64 + 1),
            Some(Duration::from_micros(REVOCATION_LAGS_KEPT as u64 + 1))
        );
        assert!(state.revocations.refuses(&[0; 16], "s", 1, 0), "every revocation still holds");
    }

    #[test]
    fn hits_misses_bound_ttl_epoch_and_revocation() {
        let now = Instant::now();
        let mut cache = VerifyCache::new(2, 1 << 20, Duration::from_secs(60));
        let (a, b, c) = (token(1, "alice"), token(2, "bob"), token(3, "carol"));
        assert!(cache.get(a.as_bytes(), 0, now).is_none());
        put(&mut cache, &a);
        let binary = cache.get(a.as_bytes(), 0, now).expect("a hit");
        assert_eq!(cached_view(binary, 64).unwrap().subject, "alice");
        assert!(cache.get(a.as_bytes(), 1, now).is_none(), "another policy epoch misses");
        // The same hash slot with other text would not match: compare whole.
        let mut forged = a.clone().into_bytes();
        forged.pop();
        assert!(cache.get(&forged, 0, now).is_none());
        assert!(cache.get(a.as_bytes(), 0, now + Duration::from_secs(61)).is_none(), "expired");
        put(&mut cache, &b);
        put(&mut cache, &c);
        assert_eq!(cache.len(), 2, "bounded: the oldest went");
        assert!(cache.get(a.as_bytes(), 0, now).is_none());
        cache.drop_matching(&Revoked::Subject("bob".into()), 0);
        assert!(cache.get(b.as_bytes(), 0, now).is_none());
        assert!(cache.get(c.as_bytes(), 0, now).is_some());
        cache.drop_matching(&Revoked::Epoch(0), 1);
        assert!(cache.is_empty());
        assert_eq!(cache.counts(), (2, 6));
    }

    #[test]
    fn the_cache_keeps_at_most_its_bytes() {
        let now = Instant::now();
        let (a, b, c) = (token(1, "alice"), token(2, "bob"), token(3, "carol"));
        let one = a.len() + {
            let mut scratch = Vec::new();
            token::decode(a.as_bytes(), 64, &mut scratch).unwrap();
            scratch.len()
        };
        // Room for two tokens' bytes, however many entries.
        let mut cache = VerifyCache::new(100, 2 * one + one / 2, Duration::from_secs(60));
        put(&mut cache, &a);
        put(&mut cache, &b);
        put(&mut cache, &c);
        assert_eq!(cache.len(), 2, "the oldest went to make room");
        assert!(cache.get(a.as_bytes(), 0, now).is_none());
        assert!(cache.get(c.as_bytes(), 0, now).is_some());
        cache.drop_matching(&Revoked::Subject("carol".into()), 0);
        put(&mut cache, &a);
        assert_eq!(cache.len(), 2, "a dropped entry frees its bytes");
        // A token larger than the whole bound is not kept.
        let mut tiny = VerifyCache::new(100, one / 2, Duration::from_secs(60));
        put(&mut tiny, &a);
        assert!(tiny.is_empty());
    }
}
