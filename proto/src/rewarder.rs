//! The rewarder's wire vocabulary (SPEC §8): the sealed accounting snapshot
//! and its `inputs_cid`, the policy and its dev default, the reward
//! computation, the manifest with its `run_key` and `commitment`, and the
//! settlement requests with their per-payout idempotency keys and memos —
//! all as the original svc-rewarder makes them, so that the same request
//! gives the same bytes.
//!
//! Byte identity rests on three rules of the original: JSON is compact and
//! serde_json's (struct fields in declaration order, its escaping, `u128`
//! scores as plain numbers); money is a `u128` written as a decimal string;
//! digests are `b3:` and lowercase BLAKE3 hex.
//!
//! Extensions the original lacks, none of which changes its outputs for its
//! inputs: `rounding: "largest_remainder"` (the pool paid exactly, ties by
//! account) and `max_per_payout_minor_units` in the policy.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// `run_key`'s salt unless `rewarder.idempotency_salt` says otherwise.
pub const DEFAULT_SALT: &str = "svc-rewarder|v1";
/// The manifest format.
pub const MANIFEST_VERSION: u32 = 1;
/// The asset payouts are issued in.
pub const ASSET: &str = "roc";
/// Epoch ids, in bytes.
pub const EPOCH_ID_BYTES_MAX: usize = 128;
/// The largest `weight_bps`.
pub const WEIGHT_BPS_MAX: u32 = 100_000;
const INTENT_KEY_DOMAIN: &str = "svc-rewarder|settlement-intent|v1";
/// Hex digits of BLAKE3 kept in a per-payout idempotency key (the wallet
/// takes keys of up to 64 bytes).
const INTENT_KEY_HEX: usize = 60;

/// Why a request is refused, with the original's texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400 `BAD_REQUEST`.
    BadRequest(String),
    /// 409 `QUARANTINED`: an overflow or a broken invariant; never emitted.
    Quarantined(String),
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::BadRequest(message.into())
}

fn quarantined(message: impl Into<String>) -> Refusal {
    Refusal::Quarantined(message.into())
}

/// An amount of minor units: a `u128`, on the wire a decimal string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub u128);

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        struct Decimal;
        impl Visitor<'_> for Decimal {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Amount, E> {
                // Rust's own u128 parsing, as the original's: "+7" and
                // "007" are 7; spaces, signs below zero and overflow are not.
                value
                    .parse::<u128>()
                    .map(Amount)
                    .map_err(|_| E::custom("amount must be a decimal u128 string"))
            }
        }
        deserializer.deserialize_str(Decimal)
    }
}

/// One account's activity in the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contribution<'a> {
    #[serde(borrow)]
    pub account: Cow<'a, str>,
    pub bytes_stored: u64,
    pub bytes_served: u64,
    pub uptime_seconds: u64,
}

impl Contribution<'_> {
    /// The original's score: stored + ⌊served / 4⌋ + uptime.
    pub fn score(&self) -> Option<u128> {
        u128::from(self.bytes_stored)
            .checked_add(u128::from(self.bytes_served / 4))?
            .checked_add(u128::from(self.uptime_seconds))
    }
}

/// Extension: activity as events, each `units` of a `kind` that the
/// policy's `kind_weights` turn into score.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event<'a> {
    #[serde(borrow)]
    pub actor: Cow<'a, str>,
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    pub units: u64,
}

/// The sealed input of a run, addressed by its `inputs_cid`. `events` is
/// an extension, left out of the canonical bytes when empty, so the
/// original's snapshots keep their cids.
///
/// Its strings borrow from the body they are parsed from where they can
/// (no escapes): an L snapshot (500 000 events) is a million strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot<'a> {
    pub produced_at_millis: u64,
    pub pool_minor_units: Amount,
    #[serde(default, borrow)]
    pub contributions: Vec<Contribution<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event<'a>>,
}

/// `text` without its leading and trailing Unicode white space.
fn trim(text: &mut Cow<'_, str>) {
    match text {
        Cow::Borrowed(borrowed) => *borrowed = borrowed.trim(),
        Cow::Owned(owned) if owned.trim().len() != owned.len() => {
            *owned = owned.trim().to_owned();
        }
        Cow::Owned(_) => {}
    }
}

impl Snapshot<'_> {
    /// The canonical form: accounts trimmed (Unicode white space), sorted
    /// by their bytes (a snapshot sent canonical is checked, not sorted).
    pub fn canonicalize(&mut self) {
        for contribution in &mut self.contributions {
            trim(&mut contribution.account);
        }
        let by_account = |a: &Contribution<'_>, b: &Contribution<'_>| {
            a.account.as_bytes().cmp(b.account.as_bytes())
        };
        if !self.contributions.is_sorted_by(|a, b| by_account(a, b).is_le()) {
            self.contributions.sort_by(by_account);
        }
        for event in &mut self.events {
            trim(&mut event.actor);
            trim(&mut event.kind);
        }
        if !self.events.is_sorted() {
            self.events.sort_unstable();
        }
    }

    /// Checks a canonical snapshot: no empty or repeated account, scores
    /// that add up without overflow.
    pub fn validate(&self) -> Result<(), Refusal> {
        let mut total: u128 = 0;
        let mut previous: Option<&str> = None;
        for contribution in &self.contributions {
            let account = contribution.account.as_ref();
            if account.is_empty() {
                return Err(bad("contribution account cannot be empty"));
            }
            if previous == Some(account) {
                return Err(bad(format!("duplicate contribution account: {account}")));
            }
            previous = Some(account);
            let score =
                contribution.score().ok_or_else(|| quarantined("contribution score overflow"))?;
            total = total.checked_add(score).ok_or_else(|| quarantined("total score overflow"))?;
        }
        for event in &self.events {
            if event.actor.is_empty() {
                return Err(bad("event actor cannot be empty"));
            }
            if event.kind.is_empty() {
                return Err(bad("event kind cannot be empty"));
            }
        }
        Ok(())
    }

    /// Every account's raw score, by account: the original's per
    /// contribution, plus Σ units × the kind's weight over its events.
    pub fn scores(&self, policy: &Policy) -> Result<Vec<(&str, u128)>, Refusal> {
        let mut from_events: Vec<(&str, u128)> = Vec::new();
        for event in &self.events {
            let Some(weight) = policy.kind_weights.get(event.kind.as_ref()) else {
                return Err(bad(format!(
                    "event kind {} has no weight in policy.kind_weights",
                    event.kind
                )));
            };
            let units = u128::from(event.units) * u128::from(*weight);
            match from_events.last_mut() {
                Some((actor, score)) if *actor == event.actor.as_ref() => {
                    *score = score
                        .checked_add(units)
                        .ok_or_else(|| quarantined("event score overflow"))?;
                }
                _ => from_events.push((event.actor.as_ref(), units)),
            }
        }
        // Canonical events come sorted by actor, so each actor is summed
        // once above; any other order is sorted and summed here.
        if !from_events.is_sorted_by(|a, b| a.0 < b.0) {
            from_events.sort_by(|a, b| a.0.cmp(b.0));
            let mut merged: Vec<(&str, u128)> = Vec::with_capacity(from_events.len());
            for (actor, units) in from_events {
                match merged.last_mut() {
                    Some((last, score)) if *last == actor => {
                        *score = score
                            .checked_add(units)
                            .ok_or_else(|| quarantined("event score overflow"))?;
                    }
                    _ => merged.push((actor, units)),
                }
            }
            from_events = merged;
        }
        let mut contributions: Vec<(&str, u128)> = Vec::with_capacity(self.contributions.len());
        for contribution in &self.contributions {
            let account = contribution.account.trim();
            if account.is_empty() {
                return Err(bad("contribution account cannot be empty"));
            }
            let raw =
                contribution.score().ok_or_else(|| quarantined("contribution score overflow"))?;
            contributions.push((account, raw));
        }
        if !contributions.is_sorted_by(|a, b| a.0 <= b.0) {
            contributions.sort_by(|a, b| a.0.cmp(b.0));
        }
        // Both sorted by account: merged, the scores of an account that
        // has both added.
        let mut scores = Vec::with_capacity(contributions.len() + from_events.len());
        let (mut c, mut e) =
            (contributions.into_iter().peekable(), from_events.into_iter().peekable());
        loop {
            let next = match (c.peek(), e.peek()) {
                (Some(a), Some(b)) if a.0 == b.0 => {
                    let (account, raw) = c.next().expect("peeked");
                    let (_, units) = e.next().expect("peeked");
                    (
                        account,
                        raw.checked_add(units)
                            .ok_or_else(|| quarantined("event score overflow"))?,
                    )
                }
                (Some(a), Some(b)) if a.0 < b.0 => c.next().expect("peeked"),
                (Some(_), Some(_)) | (None, Some(_)) => e.next().expect("peeked"),
                (Some(_), None) => c.next().expect("peeked"),
                (None, None) => break,
            };
            scores.push(next);
        }
        Ok(scores)
    }

    /// Its canonical bytes: compact JSON, fields in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a snapshot serializes")
    }

    /// `b3:` + BLAKE3 of the canonical bytes (call on a canonical
    /// snapshot), hashed as they are written: never all in memory.
    pub fn cid(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        let mut out = std::io::BufWriter::with_capacity(64 << 10, &mut hasher);
        serde_json::to_writer(&mut out, self).expect("a snapshot serializes");
        std::io::Write::flush(&mut out).expect("hashing does not fail");
        drop(out);
        format!("b3:{}", hasher.finalize().to_hex())
    }
}

/// `b3:` and the lowercase hex of BLAKE3 over `bytes`.
pub fn b3(bytes: &[u8]) -> String {
    format!("b3:{}", blake3::hash(bytes).to_hex())
}

/// An `inputs_cid` as the original takes it: trimmed, `b3:` (lowercase),
/// 64 hex digits of either case; answered in lowercase.
pub fn parse_inputs_cid(input: &str) -> Result<String, Refusal> {
    let trimmed = input.trim();
    let Some(hex) = trimmed.strip_prefix("b3:") else {
        return Err(bad("inputs_cid must start with b3:"));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("inputs_cid must be b3:<64 hex chars>"));
    }
    Ok(format!("b3:{}", hex.to_ascii_lowercase()))
}

/// Checks that `snapshot`, made canonical, is what `inputs_cid` names.
pub fn seal(snapshot: &mut Snapshot<'_>, inputs_cid: &str) -> Result<(), Refusal> {
    snapshot.canonicalize();
    snapshot.validate()?;
    let computed = snapshot.cid();
    if computed != inputs_cid {
        return Err(bad(format!("inputs_cid mismatch: expected {computed}, got {inputs_cid}")));
    }
    Ok(())
}

/// 1..=128 bytes of `[A-Za-z0-9-_:.]`.
pub fn validate_epoch_id(epoch_id: &str) -> Result<(), Refusal> {
    if epoch_id.is_empty() || epoch_id.len() > EPOCH_ID_BYTES_MAX {
        return Err(bad("epoch_id must be 1..=128 bytes"));
    }
    if !epoch_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b)) {
        return Err(bad("epoch_id contains unsupported characters"));
    }
    Ok(())
}

/// Who funds the payouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FundingSource {
    ProtocolPool,
    AdvertiserBudget,
    CreatorPool,
    SponsorBudget,
    GovernanceBudget,
}

impl FundingSource {
    pub fn label(self) -> &'static str {
        match self {
            FundingSource::ProtocolPool => "protocol_pool",
            FundingSource::AdvertiserBudget => "advertiser_budget",
            FundingSource::CreatorPool => "creator_pool",
            FundingSource::SponsorBudget => "sponsor_budget",
            FundingSource::GovernanceBudget => "governance_budget",
        }
    }

    /// The sources only a signed policy may spend.
    fn needs_signature(self) -> bool {
        matches!(self, FundingSource::ProtocolPool | FundingSource::GovernanceBudget)
    }
}

/// How a share of the pool becomes whole minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// The original's: each share floored on its own, what is left unpaid.
    Floor,
    /// Floors, then the units left over one each to the largest
    /// remainders (ties: the smaller account first), so the pool is paid
    /// exactly unless a minimum or cap holds some back.
    LargestRemainder,
}

/// The reward policy, the original's fields first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub id: String,
    pub hash: String,
    /// What the caller asserts; nothing verifies it (as in the original).
    pub signed: bool,
    pub funding_source: FundingSource,
    pub max_payout_minor_units: Amount,
    pub min_payout_minor_units: Amount,
    pub weight_bps: u32,
    pub rounding: String,
    /// Extension: no payout above this; the excess stays in the residual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_payout_minor_units: Option<Amount>,
    /// Extension: the score one unit of each event kind is worth.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub kind_weights: std::collections::BTreeMap<String, u64>,
}

impl Policy {
    /// The original's dev default, used when a request carries no policy.
    pub fn dev_default(policy_id: &str, policy_hash: &str) -> Policy {
        Policy {
            id: policy_id.to_owned(),
            hash: policy_hash.to_owned(),
            signed: true,
            funding_source: FundingSource::ProtocolPool,
            max_payout_minor_units: Amount(u128::MAX),
            min_payout_minor_units: Amount(1),
            weight_bps: 10_000,
            rounding: "floor".to_owned(),
            max_per_payout_minor_units: None,
            kind_weights: std::collections::BTreeMap::new(),
        }
    }

    /// The policy a request runs with (`policy`, or the dev default), the
    /// original's checks in its order.
    pub fn resolve(
        policy: Option<Policy>,
        policy_id: &str,
        policy_hash: &str,
    ) -> Result<Policy, Refusal> {
        let policy = policy.unwrap_or_else(|| Policy::dev_default(policy_id, policy_hash));
        if policy_id.trim().is_empty() {
            return Err(bad("policy_id cannot be empty"));
        }
        if policy.id != policy_id {
            return Err(bad("policy object must match policy_id"));
        }
        if policy.hash != policy_hash {
            return Err(bad("policy object must match policy_hash"));
        }
        let hex = policy.hash.strip_prefix("b3:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("policy_hash must be b3:<64 lowercase hex chars>"));
        }
        if policy.funding_source.needs_signature() && !policy.signed {
            let label = policy.funding_source.label();
            return Err(bad(format!("funding_source {label} requires signed policy")));
        }
        if policy.weight_bps == 0 {
            return Err(bad("policy weight_bps must be > 0"));
        }
        if policy.weight_bps > WEIGHT_BPS_MAX {
            return Err(bad("policy weight_bps must be <= 100000"));
        }
        if policy.max_payout_minor_units < policy.min_payout_minor_units {
            return Err(bad("policy max_payout_minor_units must be >= min_payout_minor_units"));
        }
        policy.rounding()?;
        Ok(policy)
    }

    pub fn rounding(&self) -> Result<Rounding, Refusal> {
        match self.rounding.as_str() {
            "floor" => Ok(Rounding::Floor),
            "largest_remainder" => Ok(Rounding::LargestRemainder),
            _ => Err(bad("batch 2 supports only rounding=floor")),
        }
    }
}

/// `run_key` = `b3:` + BLAKE3 of `salt|epoch_id|policy_hash|inputs_cid`.
pub fn run_key(salt: &str, epoch_id: &str, policy_hash: &str, inputs_cid: &str) -> String {
    b3(format!("{salt}|{epoch_id}|{policy_hash}|{inputs_cid}").as_bytes())
}

/// What happened to a run's emission when the manifest was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerResult {
    DryRun,
    Accepted,
    Dup,
    Error,
}

impl LedgerResult {
    pub fn from_label(label: &str) -> Option<LedgerResult> {
        [LedgerResult::DryRun, LedgerResult::Accepted, LedgerResult::Dup, LedgerResult::Error]
            .into_iter()
            .find(|result| result.label() == label)
    }

    pub fn label(self) -> &'static str {
        match self {
            LedgerResult::DryRun => "dry_run",
            LedgerResult::Accepted => "accepted",
            LedgerResult::Dup => "dup",
            LedgerResult::Error => "error",
        }
    }
}

/// The manifest's `ledger` object.
#[derive(Serialize, Deserialize)]
struct Ledger<'a> {
    emitted: bool,
    result: &'a str,
}

impl Serialize for LedgerResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Ledger { emitted: *self != LedgerResult::DryRun, result: self.label() }
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LedgerResult {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LedgerResult, D::Error> {
        let ledger = <Ledger<'_>>::deserialize(deserializer)?;
        LedgerResult::from_label(ledger.result)
            .ok_or_else(|| de::Error::custom(format!("unknown ledger result {}", ledger.result)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub pool_minor_units: Amount,
    pub payout_minor_units: Amount,
    pub residual_minor_units: Amount,
}

/// The part of the policy a manifest names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub id: String,
    pub hash: String,
    pub signed: bool,
    pub funding_source: FundingSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invariants {
    pub conservation: bool,
    pub overflow: bool,
    pub idempotent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    pub account: String,
    pub amount_minor_units: Amount,
    /// The weighted score (raw score × weight_bps), a JSON number that may
    /// pass 2⁶⁴.
    pub score: u128,
}

/// Signatures over the commitment (none in the original): base64url
/// Ed25519 and ML-DSA-65 signatures of `Manifest::attestation_message` by
/// the node's current passport keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub sig_ed25519: Option<String>,
    pub sig_pq: Option<String>,
    pub signed_at_millis: u64,
    /// The passport key id that signed (its public keys at `/v1/keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<u32>,
}

/// A run's result, fields in the original's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub epoch_id: String,
    pub run_key: String,
    /// Left out while the commitment is computed over the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commitment: Option<String>,
    pub status: String,
    pub inputs_cid: String,
    pub totals: Totals,
    pub policy: PolicyRef,
    pub invariants: Invariants,
    pub ledger: LedgerResult,
    pub payouts: Vec<Payout>,
    pub attestation: Option<Attestation>,
}

impl Manifest {
    /// `b3:` + BLAKE3 of the compact manifest without its commitment and
    /// with `attestation: null` (the attestation signs the commitment;
    /// the original's is always null).
    pub fn commitment_of(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.commitment = None;
        unsealed.attestation = None;
        b3(&unsealed.to_bytes())
    }

    /// What an attestation signs: the commitment's text, in a domain.
    pub fn attestation_message(&self) -> Vec<u8> {
        let commitment = self.commitment.as_deref().expect("a sealed manifest");
        format!("ron-node|rewarder-attestation|v1|{commitment}").into_bytes()
    }

    /// Sets the commitment (after anything it covers changed).
    pub fn seal(&mut self) {
        self.commitment = Some(self.commitment_of());
    }

    /// Compact JSON, as answered and as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serializes")
    }
}

/// What a run is computed from: a sealed (canonical, checked) snapshot and
/// a resolved policy.
pub struct Run<'a> {
    pub epoch_id: &'a str,
    pub run_key: &'a str,
    pub inputs_cid: &'a str,
    pub snapshot: &'a Snapshot<'a>,
    pub policy: &'a Policy,
    pub ledger: LedgerResult,
}

/// The original's calculus, integer only, checked: weighted scores
/// (raw × weight_bps; zero dropped), pool = min(snapshot pool, max_payout),
/// amount = ⌊pool · w / Σw⌋ (or largest remainders), amounts of 0 or
/// below the minimum dropped, capped at the per-payout maximum, residual =
/// pool − Σ amounts. An overflow or a broken invariant quarantines the run.
pub fn compute(run: &Run<'_>) -> Result<Manifest, Refusal> {
    let policy = run.policy;
    let rounding = policy.rounding()?;
    let weight = u128::from(policy.weight_bps);
    let pool = run.snapshot.pool_minor_units.0.min(policy.max_payout_minor_units.0);
    let raw_scores = run.snapshot.scores(policy)?;
    let mut scored: Vec<(&str, u128)> = Vec::with_capacity(raw_scores.len());
    let mut total: u128 = 0;
    for (account, raw) in raw_scores {
        let weighted =
            raw.checked_mul(weight).ok_or_else(|| quarantined("weighted score overflow"))?;
        if weighted > 0 {
            total =
                total.checked_add(weighted).ok_or_else(|| quarantined("total score overflow"))?;
            scored.push((account, weighted));
        }
    }
    let mut shares: Vec<(&str, u128, u128)> = Vec::with_capacity(scored.len());
    if total > 0 && pool > 0 {
        for (account, weighted) in &scored {
            let product =
                pool.checked_mul(*weighted).ok_or_else(|| quarantined("mul/div overflow"))?;
            shares.push((account, *weighted, product / total));
        }
        if rounding == Rounding::LargestRemainder {
            give_remainders(&mut shares, pool, total);
        }
    }
    let minimum = policy.min_payout_minor_units.0;
    let cap = policy.max_per_payout_minor_units.map_or(u128::MAX, |a| a.0);
    let mut payouts: Vec<Payout> = shares
        .into_iter()
        .filter(|(_, _, amount)| *amount > 0 && *amount >= minimum)
        .map(|(account, score, amount)| Payout {
            account: account.to_owned(),
            amount_minor_units: Amount(amount.min(cap)),
            score,
        })
        .collect();
    payouts.sort_by(|a, b| a.account.as_bytes().cmp(b.account.as_bytes()));
    let mut paid: u128 = 0;
    for payout in &payouts {
        paid = paid
            .checked_add(payout.amount_minor_units.0)
            .ok_or_else(|| quarantined("amount addition overflow"))?;
    }
    let residual =
        pool.checked_sub(paid).ok_or_else(|| quarantined("amount subtraction underflow"))?;
    let mut manifest = Manifest {
        version: MANIFEST_VERSION,
        epoch_id: run.epoch_id.to_owned(),
        run_key: run.run_key.to_owned(),
        commitment: None,
        status: "ok".to_owned(),
        inputs_cid: run.inputs_cid.to_owned(),
        totals: Totals {
            pool_minor_units: Amount(pool),
            payout_minor_units: Amount(pool - residual),
            residual_minor_units: Amount(residual),
        },
        policy: PolicyRef {
            id: policy.id.clone(),
            hash: policy.hash.clone(),
            signed: policy.signed,
            funding_source: policy.funding_source,
        },
        invariants: Invariants { conservation: true, overflow: false, idempotent: true },
        ledger: run.ledger,
        payouts,
        attestation: None,
    };
    check_invariants(&manifest, cap)?;
    manifest.seal();
    Ok(manifest)
}

/// Largest remainders: the units floors left unpaid go one each to the
/// shares with the largest `pool · w mod Σw`, the smaller account first on
/// a tie. Products were checked by the caller.
fn give_remainders(shares: &mut [(&str, u128, u128)], pool: u128, total: u128) {
    let floored: u128 = shares.iter().map(|(_, _, amount)| amount).sum();
    let left = pool - floored;
    let mut order: Vec<usize> = (0..shares.len()).collect();
    // Unchecked products are safe: each fit when the share was floored.
    order.sort_by(|a, b| {
        let (ra, rb) = ((pool * shares[*a].1) % total, (pool * shares[*b].1) % total);
        rb.cmp(&ra).then_with(|| shares[*a].0.as_bytes().cmp(shares[*b].0.as_bytes()))
    });
    // Σ remainders / Σw < number of shares, so `left` < shares.len().
    for at in order.into_iter().take(usize::try_from(left).unwrap_or(usize::MAX)) {
        shares[at].2 += 1;
    }
}

/// Σ payouts + residual = pool, every payout within (0, cap], accounts
/// named: the invariants a manifest must keep to be emitted.
pub fn check_invariants(manifest: &Manifest, cap: u128) -> Result<(), Refusal> {
    let totals = &manifest.totals;
    let mut paid: u128 = 0;
    for payout in &manifest.payouts {
        let amount = payout.amount_minor_units.0;
        if payout.account.is_empty() || amount == 0 || amount > cap {
            return Err(quarantined("invariant: payout out of bounds"));
        }
        paid = paid.checked_add(amount).ok_or_else(|| quarantined("amount addition overflow"))?;
    }
    let conserved = paid == totals.payout_minor_units.0
        && paid.checked_add(totals.residual_minor_units.0) == Some(totals.pool_minor_units.0);
    if !conserved {
        return Err(quarantined("invariant: payouts and residual do not make the pool"));
    }
    Ok(())
}

/// The per-payout idempotency key: `b3:` + the first 60 hex digits of
/// BLAKE3 over the domain, run key, commitment, account and amount.
pub fn intent_key(run_key: &str, commitment: &str, account: &str, amount: u128) -> String {
    let preimage = format!("{INTENT_KEY_DOMAIN}|{run_key}|{commitment}|{account}|{amount}");
    let hex = blake3::hash(preimage.as_bytes()).to_hex();
    format!("b3:{}", &hex[..INTENT_KEY_HEX])
}

/// The memo of a payout's wallet issue.
pub fn memo(epoch_id: &str, account: &str) -> String {
    format!("svc-rewarder:{epoch_id}:{account}")
}

/// One wallet issue of a settlement, as the preview lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IssueRequest {
    pub to: String,
    pub asset: &'static str,
    pub amount_minor: Amount,
    pub idempotency_key: Option<String>,
    pub memo: Option<String>,
}

/// `GET …/settlement`: the wallet issues a manifest plans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settlement {
    pub run_key: String,
    pub epoch_id: String,
    pub manifest_commitment: String,
    pub funding_source: FundingSource,
    pub wallet_path: String,
    pub total_minor_units: Amount,
    pub requests: Vec<IssueRequest>,
}

impl Settlement {
    /// The issues of a sealed manifest, one per payout, by account.
    pub fn of(manifest: &Manifest, wallet_path: &str) -> Settlement {
        let commitment = manifest.commitment.clone().expect("a sealed manifest");
        let mut requests: Vec<IssueRequest> = manifest
            .payouts
            .iter()
            .map(|payout| IssueRequest {
                to: payout.account.clone(),
                asset: ASSET,
                amount_minor: payout.amount_minor_units,
                idempotency_key: Some(intent_key(
                    &manifest.run_key,
                    &commitment,
                    &payout.account,
                    payout.amount_minor_units.0,
                )),
                memo: Some(memo(&manifest.epoch_id, &payout.account)),
            })
            .collect();
        requests.sort_by(|a, b| a.to.as_bytes().cmp(b.to.as_bytes()));
        Settlement {
            run_key: manifest.run_key.clone(),
            epoch_id: manifest.epoch_id.clone(),
            manifest_commitment: commitment,
            funding_source: manifest.policy.funding_source,
            wallet_path: wallet_path.to_owned(),
            total_minor_units: manifest.totals.payout_minor_units,
            requests,
        }
    }
}

/// `POST /rewarder/epochs/{epoch_id}/compute`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeRequest<'a> {
    pub inputs_cid: String,
    pub policy_id: String,
    pub policy_hash: String,
    #[serde(default)]
    pub dry_run: bool,
    /// Accepted and ignored, as by the original.
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default, borrow)]
    pub snapshot: Option<Snapshot<'a>>,
    #[serde(default)]
    pub policy: Option<Policy>,
}

/// The first byte of a run record item.
pub const RUN_CODE: u8 = 0x50;

/// A stored run: what the log keeps of a manifest (its bytes are kept by
/// their BLAKE3 in the rewarder's manifest store, written before this is
/// appended).
///
/// ```text
/// 0x50 | epoch_len u8 | epoch_id | run_key [32] | commitment [32] | manifest [32] | ledger u8 | manifest_bytes u32
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub epoch_id: String,
    pub run_key: [u8; 32],
    pub commitment: [u8; 32],
    /// BLAKE3 of the manifest's bytes.
    pub manifest: [u8; 32],
    pub ledger: LedgerResult,
    pub manifest_bytes: u32,
}

const RUN_BYTES_MAX: usize = 2 + EPOCH_ID_BYTES_MAX + 3 * 32 + 1 + 4;
const _: () = assert!(RUN_BYTES_MAX <= crate::log::ITEM_BYTES_MAX, "a run record is one log item");

/// The 32 bytes of a `b3:<64 lowercase hex>` digest.
pub fn digest_of(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("b3:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digit = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// `b3:` and the lowercase hex of `digest`.
pub fn digest_text(digest: &[u8; 32]) -> String {
    let mut text = String::with_capacity(67);
    text.push_str("b3:");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

impl LedgerResult {
    fn code(self) -> u8 {
        match self {
            LedgerResult::DryRun => 0,
            LedgerResult::Accepted => 1,
            LedgerResult::Dup => 2,
            LedgerResult::Error => 3,
        }
    }

    fn from_code(code: u8) -> Option<LedgerResult> {
        [LedgerResult::DryRun, LedgerResult::Accepted, LedgerResult::Dup, LedgerResult::Error]
            .into_iter()
            .find(|result| result.code() == code)
    }
}

impl RunRecord {
    /// The record of a sealed manifest whose bytes are `bytes`.
    pub fn of(manifest: &Manifest, bytes: &[u8]) -> RunRecord {
        let commitment = manifest.commitment.as_deref().expect("a sealed manifest");
        RunRecord {
            epoch_id: manifest.epoch_id.clone(),
            run_key: digest_of(&manifest.run_key).expect("run keys are b3 digests"),
            commitment: digest_of(commitment).expect("commitments are b3 digests"),
            manifest: *blake3::hash(bytes).as_bytes(),
            ledger: manifest.ledger,
            manifest_bytes: u32::try_from(bytes.len()).expect("manifests are under 4 GiB"),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(!self.epoch_id.is_empty() && self.epoch_id.len() <= EPOCH_ID_BYTES_MAX);
        out.push(RUN_CODE);
        out.push(self.epoch_id.len() as u8);
        out.extend_from_slice(self.epoch_id.as_bytes());
        out.extend_from_slice(&self.run_key);
        out.extend_from_slice(&self.commitment);
        out.extend_from_slice(&self.manifest);
        out.push(self.ledger.code());
        out.extend_from_slice(&self.manifest_bytes.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Result<RunRecord, crate::log::DecodeError> {
        use crate::log::{DecodeError, Reader};
        if bytes.len() > RUN_BYTES_MAX {
            return Err(DecodeError::Invalid("run record too large"));
        }
        let mut reader = Reader { bytes, at: 0 };
        if reader.u8()? != RUN_CODE {
            return Err(DecodeError::Invalid("not a run record"));
        }
        let epoch_id = reader.text(EPOCH_ID_BYTES_MAX, "epoch id")?;
        if validate_epoch_id(&epoch_id).is_err() {
            return Err(DecodeError::Invalid("epoch id"));
        }
        let record = RunRecord {
            epoch_id,
            run_key: reader.array()?,
            commitment: reader.array()?,
            manifest: reader.array()?,
            ledger: LedgerResult::from_code(reader.u8()?)
                .ok_or(DecodeError::Invalid("ledger result"))?,
            manifest_bytes: u32::from_le_bytes(reader.array()?),
        };
        if reader.at != bytes.len() {
            return Err(DecodeError::Invalid("bytes after the run record"));
        }
        Ok(record)
    }

    /// The shard that owns the epoch's runs.
    pub fn owner(epoch_id: &str, shard_count: usize) -> usize {
        let mut key = Vec::with_capacity(1 + epoch_id.len());
        key.push(b'r');
        key.extend_from_slice(epoch_id.as_bytes());
        crate::routing::owner(&key, shard_count)
    }
}

#[cfg(test)]
mod tests;
