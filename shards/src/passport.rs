//! The authorization decision: may this token make this request now?
//!
//! Every caveat must hold (fail closed). A caveat about a dimension the
//! request does not have (an `account` caveat on a route without an account)
//! does not hold. `rate.rps`, `budget.bytes` and `tenant` count requests
//! rather than look at one: [`meter_spec`] reads them and [`Meters`], on the
//! owner shard of the token id (or tenant), keeps the counts.

use crate::{Map, Set};
use ron_proto::revocation::Revoked;
use ron_proto::token::{Caveat, TOKEN_ID_BYTES, TokenView};
use std::net::IpAddr;

/// What is being asked, in the terms caveats speak.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The scope the route requires; `None` when any valid token will do
    /// (scope caveats are then not consulted).
    pub scope: Option<&'a str>,
    /// Names the token must be for: `aud` caveats and the token's audience
    /// must be one of them.
    pub audiences: Audiences<'a>,
    pub peer_ip: Option<IpAddr>,
    pub account: Option<&'a str>,
    pub asset: Option<&'a str>,
    pub amount: Option<u128>,
}

/// The audiences a request accepts: the node's own (`passport.audiences`),
/// or the one a `/verify` caller asks about.
#[derive(Clone, Copy, Debug)]
pub enum Audiences<'a> {
    Names(&'a [String]),
    One(&'a str),
}

impl Audiences<'_> {
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Audiences::Names(names) => names.iter().any(|n| n == name),
            Audiences::One(one) => *one == name,
        }
    }
}

/// The clock, as an input.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now_s: u64,
    pub clock_skew_s: u64,
}

/// Why a token may not make a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    Expired,
    NotYetValid,
    Audience,
    /// The token has no scope caveat at all.
    NoScope,
    Scope,
    Route,
    Method,
    Account,
    Asset,
    Amount,
    Ip,
    /// Its id, subject, key or epoch was revoked.
    Revoked,
    /// Over its `rate.rps` (429).
    Rate,
    /// Its tenant over `tenant_rps_max` (429).
    TenantRate,
    /// Its `budget.bytes` spent (403).
    Budget,
}

impl Denial {
    /// A short reason for logs, envelopes and `svc_passport_rejects_total`.
    pub const fn reason(self) -> &'static str {
        match self {
            Denial::Expired => "expired",
            Denial::NotYetValid => "not_yet_valid",
            Denial::Audience => "audience",
            Denial::NoScope => "no_scope",
            Denial::Scope => "scope",
            Denial::Route => "route",
            Denial::Method => "method",
            Denial::Account => "account",
            Denial::Asset => "asset",
            Denial::Amount => "amount",
            Denial::Ip => "ip",
            Denial::Revoked => "revoked",
            Denial::Rate => "rate",
            Denial::TenantRate => "tenant_rate",
            Denial::Budget => "budget",
        }
    }

    /// A token outside its validity window, or revoked, is not a valid
    /// credential (401); every other denial is a valid token that may not do
    /// this (403).
    pub const fn is_unauthenticated(self) -> bool {
        matches!(self, Denial::Expired | Denial::NotYetValid | Denial::Revoked)
    }
}

/// Every revocation committed so far (SPEC §6), as one shard holds them: by
/// token id, subject and key id, and the highest revoked epoch. Each shard
/// applies the same revocations from the committed stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    token_ids: Set<[u8; TOKEN_ID_BYTES]>,
    subjects: Set<String>,
    kids: Set<u32>,
    /// Tokens of this epoch and earlier are refused.
    epoch_revoked: Option<u64>,
}

impl Revocations {
    /// Adds a revocation; false if it revokes nothing new.
    pub fn apply(&mut self, revoked: &Revoked) -> bool {
        match revoked {
            Revoked::TokenId(id) => self.token_ids.insert(*id),
            Revoked::Subject(subject) => self.subjects.insert(subject.clone()),
            Revoked::Kid(kid) => self.kids.insert(*kid),
            Revoked::Epoch(epoch) => {
                let new = self.epoch_revoked.is_none_or(|e| *epoch > e);
                if new {
                    self.epoch_revoked = Some(*epoch);
                }
                new
            }
        }
    }

    /// The epoch new tokens are minted in: after every revoked one.
    pub fn current_epoch(&self) -> u64 {
        self.epoch_revoked.map_or(0, |e| e.saturating_add(1))
    }

    /// Whether a token with these claims is revoked.
    pub fn refuses(
        &self,
        token_id: &[u8; TOKEN_ID_BYTES],
        subject: &str,
        kid: u32,
        epoch: u64,
    ) -> bool {
        self.epoch_revoked.is_some_and(|e| epoch <= e)
            || self.token_ids.contains(token_id)
            || self.kids.contains(&kid)
            || self.subjects.contains(subject)
    }

    /// How many revocations are held (an epoch counts once).
    pub fn len(&self) -> usize {
        self.token_ids.len()
            + self.subjects.len()
            + self.kids.len()
            + usize::from(self.epoch_revoked.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decides whether `token` (whose tag the caller has verified) may make
/// `request`, parsing its caveats as it goes (nothing is allocated).
pub fn authorize(token: &TokenView<'_>, request: &Request<'_>, clock: Clock) -> Result<(), Denial> {
    decide(token.audience, parsed(token), request, clock)
}

/// A verified token's caveats, parsed one by one.
fn parsed<'a>(token: &TokenView<'a>) -> impl Iterator<Item = Caveat<'a>> {
    token.caveats().map(|text| Caveat::parse(text).expect("decoded tokens hold parsed caveats"))
}

/// A verified token's audience and caveats, parsed once for the many
/// requests of a batch of writes.
#[derive(Clone, Debug)]
pub struct Caveats<'a> {
    audience: &'a str,
    list: Vec<Caveat<'a>>,
}

impl<'a> Caveats<'a> {
    pub fn of(token: &TokenView<'a>) -> Caveats<'a> {
        Caveats { audience: token.audience, list: parsed(token).collect() }
    }

    /// Decides whether the token may make `request`.
    pub fn authorize(&self, request: &Request<'_>, clock: Clock) -> Result<(), Denial> {
        decide(self.audience, self.list.iter().copied(), request, clock)
    }
}

/// The audience and then each caveat against `request`.
fn decide<'c>(
    audience: &str,
    caveats: impl Iterator<Item = Caveat<'c>>,
    request: &Request<'_>,
    clock: Clock,
) -> Result<(), Denial> {
    if !request.audiences.contains(audience) {
        return Err(Denial::Audience);
    }
    let mut scoped = false;
    for caveat in caveats {
        match caveat {
            Caveat::Exp(exp) => {
                if clock.now_s >= exp.saturating_add(clock.clock_skew_s) {
                    return Err(Denial::Expired);
                }
            }
            Caveat::Nbf(nbf) => {
                if clock.now_s.saturating_add(clock.clock_skew_s) < nbf {
                    return Err(Denial::NotYetValid);
                }
            }
            Caveat::Aud(aud) => {
                if !request.audiences.contains(aud) {
                    return Err(Denial::Audience);
                }
            }
            Caveat::Scope(list) => {
                scoped = true;
                if let Some(wanted) = request.scope
                    && !list.split(',').any(|s| s == wanted)
                {
                    return Err(Denial::Scope);
                }
            }
            Caveat::Route(prefix) => {
                if !path_has_prefix(request.path, prefix) {
                    return Err(Denial::Route);
                }
            }
            Caveat::Method(method) => {
                if !method.eq_ignore_ascii_case(request.method) {
                    return Err(Denial::Method);
                }
            }
            Caveat::Account(account) => {
                if request.account != Some(account) {
                    return Err(Denial::Account);
                }
            }
            Caveat::AccountPrefix(prefix) => {
                if !request.account.is_some_and(|a| a.starts_with(prefix)) {
                    return Err(Denial::Account);
                }
            }
            Caveat::Asset(asset) => {
                if request.asset != Some(asset) {
                    return Err(Denial::Asset);
                }
            }
            Caveat::AmountMax(max) => {
                // Bounds what a request moves; a request that moves nothing
                // (a read) is not bounded by it. Writes always say.
                if request.amount.is_some_and(|a| a > max) {
                    return Err(Denial::Amount);
                }
            }
            Caveat::Ip(cidr) => {
                if !request.peer_ip.is_some_and(|ip| cidr_contains(cidr, ip)) {
                    return Err(Denial::Ip);
                }
            }
            // Signatures are for third parties; the tag already proves the
            // token to this node.
            Caveat::Signature { .. } => {}
            // Metered on the owner shard before the request gets here.
            Caveat::RateRps(_) | Caveat::Tenant(_) | Caveat::BudgetBytes(_) => {}
        }
    }
    if !scoped {
        return Err(Denial::NoScope);
    }
    Ok(())
}

/// What a token's counting caveats ask for; the tightest of each kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterSpec {
    pub token_id: [u8; TOKEN_ID_BYTES],
    pub rps: Option<u32>,
    pub budget_bytes: Option<u64>,
    /// Several `tenant` caveats must name the same tenant; a token naming
    /// two belongs to neither and is refused every request (`rps` 0).
    pub tenant: Option<String>,
    /// Until when the token's counts matter (its earliest `exp`).
    pub exp: Option<u64>,
}

/// The counting caveats of `token`, if it has any.
pub fn meter_spec(token: &TokenView<'_>) -> Option<MeterSpec> {
    let mut spec = MeterSpec { token_id: token.token_id, ..MeterSpec::default() };
    let mut counted = false;
    let mut tenants_differ = false;
    for text in token.caveats() {
        match Caveat::parse(text).expect("decoded tokens hold parsed caveats") {
            Caveat::RateRps(rps) => {
                counted = true;
                spec.rps = Some(spec.rps.map_or(rps, |r| r.min(rps)));
            }
            Caveat::BudgetBytes(bytes) => {
                counted = true;
                spec.budget_bytes = Some(spec.budget_bytes.map_or(bytes, |b| b.min(bytes)));
            }
            Caveat::Tenant(tenant) => {
                counted = true;
                match &spec.tenant {
                    Some(named) if named != tenant => tenants_differ = true,
                    _ => spec.tenant = Some(tenant.to_owned()),
                }
            }
            Caveat::Exp(exp) => spec.exp = Some(spec.exp.map_or(exp, |e| e.min(exp))),
            _ => {}
        }
    }
    if tenants_differ {
        // Two tenants: no tenant's limit could count it; refuse every request.
        spec.rps = Some(0);
    }
    counted.then_some(spec)
}

/// A token bucket: `rate` per second, bursts up to one second's worth.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens in thousandths.
    milli: u64,
    last_ms: u64,
}

/// Where metered counts are kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MeterKey {
    Token([u8; TOKEN_ID_BYTES]),
    Tenant(String),
    /// A tenant's requests to one service, under that service's clamp
    /// (`rewarder.tenant_rps_max`).
    ServiceTenant(&'static str, String),
}

/// Request counts of the token ids and tenants a shard owns.
#[derive(Debug)]
pub struct Meters {
    buckets: Map<MeterKey, Bucket>,
    /// Body bytes spent by token id, and until when it matters.
    spent: Map<[u8; TOKEN_ID_BYTES], (u64, u64)>,
    /// Past this many buckets (or budgets), idle buckets and budgets of
    /// expired tokens are swept, at most once a second: a soft bound, so
    /// that a full table costs one scan a second, not one per request.
    max: usize,
    swept_ms: u64,
    /// A budget was spent since the last `take_changed_budgets`.
    budgets_changed: bool,
}

/// A token's spent budget as kept across restarts: its id, the bytes
/// spent, and until when it matters (the token's `exp`, in seconds).
pub type SpentBudget = ([u8; TOKEN_ID_BYTES], u64, u64);

/// Buckets and budgets kept before idle ones are swept.
const METERS_MAX: usize = 1 << 20;

impl Default for Meters {
    fn default() -> Meters {
        Meters::with_max(METERS_MAX)
    }
}

impl Meters {
    pub fn with_max(max: usize) -> Meters {
        Meters {
            buckets: Default::default(),
            spent: Default::default(),
            max,
            swept_ms: 0,
            budgets_changed: false,
        }
    }

    fn sweep_due(&mut self, len: usize, now_ms: u64) -> bool {
        let due = len >= self.max && now_ms.saturating_sub(self.swept_ms) >= 1000;
        if due {
            self.swept_ms = now_ms;
        }
        due
    }

    pub fn len(&self) -> usize {
        self.buckets.len() + self.spent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one request from `key`'s bucket of `rps`; refuses with the
    /// milliseconds until one is there.
    pub fn take(&mut self, key: MeterKey, rps: u32, now_ms: u64) -> Result<(), u64> {
        if rps == 0 {
            return Err(1000);
        }
        if self.sweep_due(self.buckets.len(), now_ms) {
            // A bucket idle for a second is full again: forget it.
            self.buckets.retain(|_, b| now_ms.saturating_sub(b.last_ms) < 1000);
        }
        let full = u64::from(rps) * 1000;
        let bucket = self.buckets.entry(key).or_insert(Bucket { milli: full, last_ms: now_ms });
        let refill = now_ms.saturating_sub(bucket.last_ms) * u64::from(rps);
        bucket.milli = (bucket.milli + refill).min(full);
        bucket.last_ms = now_ms.max(bucket.last_ms);
        if bucket.milli >= 1000 {
            bucket.milli -= 1000;
            Ok(())
        } else {
            Err((1000 - bucket.milli).div_ceil(u64::from(rps)).max(1))
        }
    }

    /// Spends `bytes` of `token_id`'s budget; false (and nothing spent) if
    /// that would go past it.
    pub fn spend(&mut self, spec: &MeterSpec, budget: u64, bytes: u64, now_ms: u64) -> bool {
        if self.sweep_due(self.spent.len(), now_ms) {
            let now_s = now_ms / 1000;
            self.spent.retain(|_, (_, until)| *until > now_s);
        }
        let until = spec.exp.unwrap_or(u64::MAX);
        let (spent, _) = self.spent.entry(spec.token_id).or_insert((0, until));
        match spent.checked_add(bytes) {
            Some(total) if total <= budget => {
                self.budgets_changed |= bytes > 0;
                *spent = total;
                true
            }
            _ => false,
        }
    }

    /// Every budget still of use at `now_s`, if any was spent since the
    /// last call (to keep them across restarts).
    pub fn take_changed_budgets(&mut self, now_s: u64) -> Option<Vec<SpentBudget>> {
        if !std::mem::take(&mut self.budgets_changed) {
            return None;
        }
        let live = self.spent.iter().filter(|(_, (_, until))| *until > now_s);
        Some(live.map(|(id, (spent, until))| (*id, *spent, *until)).collect())
    }

    /// The budgets taken by `take_changed_budgets` were not kept: the next
    /// call takes them again.
    pub fn budgets_unsaved(&mut self) {
        self.budgets_changed = true;
    }

    /// A budget kept from before a restart: spending only grows, so the
    /// larger of two records of one token wins.
    pub fn load_budget(&mut self, (id, spent, until): SpentBudget) {
        let kept = self.spent.entry(id).or_insert((spent, until));
        kept.0 = kept.0.max(spent);
        // Written again by this shard: the file it came from may be
        // another shard's, which keeps it no more.
        self.budgets_changed = true;
    }
}

/// `/v1/wallet` covers `/v1/wallet` and `/v1/wallet/x`, not `/v1/walletx`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Whether `ip` lies in `cidr` (`10.0.0.0/8`, `::1/128`, or a bare address).
/// A malformed block contains nothing.
fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let (address, bits) = match cidr.split_once('/') {
        Some((address, bits)) => (address, bits.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(network) = address.parse::<IpAddr>() else { return false };
    // An IPv4 peer and an IPv4-mapped IPv6 one are the same peer.
    let ip = match (network, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => ip,
    };
    match (network, ip) {
        (IpAddr::V4(network), IpAddr::V4(ip)) => {
            let bits = bits.unwrap_or(32);
            bits <= 32
                && (u32::from(network) ^ u32::from(ip)).checked_shr(32 - bits).unwrap_or(0) == 0
        }
        (IpAddr::V6(network), IpAddr::V6(ip)) => {
            let bits = bits.unwrap_or(128);
            bits <= 128
                && (u128::from(network) ^ u128::from(ip)).checked_shr(128 - bits).unwrap_or(0) == 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ron_proto::token::{self, Claims, Token};

    const KEY: [u8; 32] = [1; 32];
    static AUDIENCES: std::sync::LazyLock<[String; 2]> =
        std::sync::LazyLock::new(|| ["ron-node".to_owned(), "wallet".to_owned()]);

    fn request() -> Request<'static> {
        Request {
            method: "POST",
            path: "/v1/transfer",
            scope: Some("wallet.transfer"),
            audiences: Audiences::Names(&*AUDIENCES),
            peer_ip: Some("10.1.2.3".parse().unwrap()),
            account: Some("acct:alice"),
            asset: Some("roc"),
            amount: Some(50),
        }
    }

    const CLOCK: Clock = Clock { now_s: 1_000_000, clock_skew_s: 60 };

    /// Mints a token of `caveats` and hands its decoded view to `then`.
    fn with_view<R>(caveats: &[&str], then: impl FnOnce(&TokenView<'_>) -> R) -> R {
        let claims = Claims {
            kid: 1,
            token_id: [4; 16],
            epoch: 0,
            issued_at: 0,
            subject: "s".into(),
            audience: "ron-node".into(),
        };
        let text = Token::mint(&KEY, claims, caveats).unwrap().encode();
        let mut scratch = Vec::new();
        then(&token::decode(text.as_bytes(), 64, &mut scratch).unwrap())
    }

    fn decide(caveats: &[&str], request: &Request<'_>) -> Result<(), Denial> {
        with_view(caveats, |view| authorize(view, request, CLOCK))
    }

    #[test]
    fn every_caveat_allows_and_denies() {
        let r = request();
        let scope = "scope=wallet.transfer,wallet.read";
        let cases: [(&str, &str, Denial); 11] = [
            ("exp=1000001", "exp=999900", Denial::Expired),
            ("nbf=1000050", "nbf=1000100", Denial::NotYetValid),
            ("aud=wallet", "aud=index", Denial::Audience),
            ("scope=wallet.transfer", "scope=wallet.read", Denial::Scope),
            ("route=/v1/", "route=/v1/trans", Denial::Route),
            ("method=post", "method=GET", Denial::Method),
            ("account=acct:alice", "account=acct:bob", Denial::Account),
            ("account_prefix=acct:", "account_prefix=user:", Denial::Account),
            ("asset=roc", "asset=xyz", Denial::Asset),
            ("amount_max=50", "amount_max=49", Denial::Amount),
            ("ip=10.0.0.0/8", "ip=192.168.0.0/16", Denial::Ip),
        ];
        for (allow, deny, denial) in cases {
            assert_eq!(decide(&[scope, allow], &r), Ok(()), "{allow}");
            assert_eq!(decide(&[scope, deny], &r), Err(denial), "{deny}");
        }
        // Counting caveats are metered before the decision, not by it.
        assert_eq!(decide(&[scope, "rate.rps=5", "budget.bytes=9", "tenant=t"], &r), Ok(()));
        let without_account = Request { account: None, ..r };
        assert_eq!(decide(&[scope, "account=acct:alice"], &without_account), Err(Denial::Account));
        // A request that moves no amount (a read) is not bounded by amount_max.
        let without_amount = Request { amount: None, ..r };
        assert_eq!(decide(&[scope, "amount_max=1"], &without_amount), Ok(()));
    }

    #[test]
    fn clock_skew_edges() {
        let r = request();
        let scope = "scope=wallet.transfer";
        // exp is exclusive, widened by the skew.
        assert_eq!(decide(&[scope, "exp=999941"], &r), Ok(()));
        assert_eq!(decide(&[scope, "exp=999940"], &r), Err(Denial::Expired));
        // nbf is inclusive, brought forward by the skew.
        assert_eq!(decide(&[scope, "nbf=1000060"], &r), Ok(()));
        assert_eq!(decide(&[scope, "nbf=1000061"], &r), Err(Denial::NotYetValid));
    }

    #[test]
    fn cidr_forms() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(cidr_contains("192.0.2.0/24", v4));
        assert!(cidr_contains("0.0.0.0/0", v4));
        assert!(cidr_contains("192.0.2.7", v4));
        assert!(!cidr_contains("192.0.2.8/32", v4));
        assert!(!cidr_contains("192.0.2.0/33", v4));
        assert!(!cidr_contains("nonsense/8", v4));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(cidr_contains("192.0.2.0/24", mapped));
        assert!(cidr_contains("::1/128", "::1".parse().unwrap()));
        assert!(!cidr_contains("::1/128", "::2".parse().unwrap()));
    }

    fn view_spec(caveats: &[&str]) -> Option<MeterSpec> {
        with_view(caveats, meter_spec)
    }

    #[test]
    fn meter_specs_take_the_tightest() {
        assert_eq!(view_spec(&["scope=wallet.read", "exp=9"]), None);
        let spec = view_spec(&[
            "scope=wallet.read",
            "rate.rps=10",
            "rate.rps=3",
            "budget.bytes=500",
            "budget.bytes=900",
            "exp=50",
            "tenant=acme",
        ])
        .unwrap();
        assert_eq!(spec.rps, Some(3));
        assert_eq!(spec.budget_bytes, Some(500));
        assert_eq!(spec.exp, Some(50));
        assert_eq!(spec.tenant.as_deref(), Some("acme"));
        let two = view_spec(&["scope=wallet.read", "tenant=a", "tenant=b"]).unwrap();
        assert_eq!(two.rps, Some(0));
    }

    #[test]
    fn buckets_refill_at_their_rate_and_budgets_run_out() {
        let mut meters = Meters::default();
        let key = MeterKey::Token([1; 16]);
        // A burst of one second's worth, then one per 1000/rps ms.
        for _ in 0..4 {
            assert_eq!(meters.take(key.clone(), 4, 10_000), Ok(()));
        }
        assert_eq!(meters.take(key.clone(), 4, 10_000), Err(250));
        assert_eq!(meters.take(key.clone(), 4, 10_100), Err(150));
        assert_eq!(meters.take(key.clone(), 4, 10_250), Ok(()));
        assert_eq!(meters.take(key.clone(), 4, 10_250), Err(250));
        // Other keys have their own buckets; rps 0 never passes.
        assert_eq!(meters.take(MeterKey::Tenant("t".into()), 1, 10_250), Ok(()));
        assert_eq!(meters.take(MeterKey::Tenant("t".into()), 1, 10_250), Err(1000));
        assert!(meters.take(MeterKey::Token([2; 16]), 0, 0).is_err());
        let spec = MeterSpec { token_id: [3; 16], ..MeterSpec::default() };
        assert!(meters.spend(&spec, 100, 60, 0));
        assert!(!meters.spend(&spec, 100, 41, 0), "past the budget: nothing spent");
        assert!(meters.spend(&spec, 100, 40, 0));
        assert!(!meters.spend(&spec, 100, 1, 0));
    }

    #[test]
    fn full_meters_sweep_idle_buckets_and_expired_budgets_once_a_second() {
        let mut meters = Meters::with_max(2);
        let token = |i: u8| MeterKey::Token([i; 16]);
        assert!(meters.take(token(1), 5, 1_000).is_ok());
        assert!(meters.take(token(2), 5, 1_000).is_ok());
        // At the bound, but the first sweep may run: both are busy (taken
        // 0.5 s ago), so both stay, and the third joins them.
        assert!(meters.take(token(3), 5, 1_500).is_ok());
        assert_eq!(meters.len(), 3);
        // Within the second after a sweep, none runs.
        assert!(meters.take(token(4), 5, 2_400).is_ok());
        assert_eq!(meters.len(), 4);
        // A second later the idle ones go (1 and 2 idle 1.6 s, 3 idle 1.1 s).
        assert!(meters.take(token(5), 5, 2_600).is_ok());
        assert_eq!(meters.len(), 2, "4 (0.2 s) and 5 stay");
        let spec = |i: u8, exp: u64| MeterSpec {
            token_id: [i; 16],
            exp: Some(exp),
            ..MeterSpec::default()
        };
        let mut budgets = Meters::with_max(1);
        assert!(budgets.spend(&spec(1, 5), 10, 1, 1_000));
        assert!(budgets.spend(&spec(2, 50), 10, 1, 6_000), "sweeps the expired first");
        assert_eq!(budgets.len(), 1);
    }

    #[test]
    fn revocations_by_id_subject_kid_and_epoch() {
        let mut revocations = Revocations::default();
        let id = [5; 16];
        assert!(!revocations.refuses(&id, "alice", 1, 0));
        assert_eq!(revocations.current_epoch(), 0);
        assert!(revocations.apply(&Revoked::TokenId(id)));
        assert!(!revocations.apply(&Revoked::TokenId(id)), "nothing new");
        assert!(revocations.refuses(&id, "alice", 1, 0));
        assert!(!revocations.refuses(&[6; 16], "alice", 1, 0));
        assert!(revocations.apply(&Revoked::Subject("alice".into())));
        assert!(revocations.refuses(&[6; 16], "alice", 1, 0));
        assert!(!revocations.refuses(&[6; 16], "bob", 1, 0));
        assert!(revocations.apply(&Revoked::Kid(2)));
        assert!(revocations.refuses(&[6; 16], "bob", 2, 0));
        assert!(!revocations.refuses(&[6; 16], "bob", 3, 0));
        assert!(revocations.apply(&Revoked::Epoch(4)));
        assert!(!revocations.apply(&Revoked::Epoch(3)), "an earlier epoch is already covered");
        assert_eq!(revocations.current_epoch(), 5);
        assert!(revocations.refuses(&[6; 16], "bob", 3, 4));
        assert!(!revocations.refuses(&[6; 16], "bob", 3, 5));
        assert_eq!(revocations.len(), 4);
    }

    /// A plain reference of the caveat rules, written apart from
    /// `authorize`: `None` if allowed, else the first caveat's denial.
    fn reference(caveats: &[String], r: &Request<'_>, clock: Clock) -> Option<Denial> {
        fn in_block(cidr: &str, ip: IpAddr) -> bool {
            let (network, bits) = match cidr.split_once('/') {
                Some((n, b)) => (n, b.parse::<usize>().ok()),
                None => (cidr, None),
            };
            // Everything as IPv6: an IPv4 address is ::ffff:a.b.c.d and its
            // prefix 96 bits longer.
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            let Ok(network) = network.parse::<IpAddr>() else { return false };
            let bits = match (network, bits) {
                (IpAddr::V4(_), Some(b)) if b <= 32 => b + 96,
                (IpAddr::V6(_), Some(b)) if b <= 128 => b,
                (_, Some(_)) => return false,
                (_, None) => 128,
            };
            let (net, addr) = (v6(network), v6(ip));
            (0..bits).all(|i| (net[i / 8] >> (7 - i % 8)) & 1 == (addr[i / 8] >> (7 - i % 8)) & 1)
        }
        if !r.audiences.contains("ron-node") {
            return Some(Denial::Audience);
        }
        let mut scoped = false;
        for caveat in caveats {
            let (key, value) = caveat.split_once('=').unwrap();
            let number = || value.parse::<u64>().unwrap();
            let denial = match key {
                "exp" => (clock.now_s >= number() + clock.clock_skew_s).then_some(Denial::Expired),
                "nbf" => {
                    (clock.now_s + clock.clock_skew_s < number()).then_some(Denial::NotYetValid)
                }
                "aud" => (!r.audiences.contains(value)).then_some(Denial::Audience),
                "scope" => {
                    scoped = true;
                    r.scope.filter(|s| !value.split(',').any(|v| v == *s)).map(|_| Denial::Scope)
                }
                "route" => {
                    let inside = r.path == value
                        || r.path.starts_with(&format!("{}/", value.trim_end_matches('/')));
                    (!inside).then_some(Denial::Route)
                }
                "method" => {
                    let upper =
                        |t: &str| t.bytes().map(|b| b.to_ascii_uppercase()).collect::<Vec<u8>>();
                    (upper(value) != upper(r.method)).then_some(Denial::Method)
                }
                "account" => (r.account != Some(value)).then_some(Denial::Account),
                "account_prefix" => {
                    (!r.account.is_some_and(|a| a.starts_with(value))).then_some(Denial::Account)
                }
                "asset" => (r.asset != Some(value)).then_some(Denial::Asset),
                "amount_max" => {
                    let max: u128 = value.parse().unwrap();
                    r.amount.is_some_and(|a| a > max).then_some(Denial::Amount)
                }
                "ip" => (!r.peer_ip.is_some_and(|ip| in_block(value, ip))).then_some(Denial::Ip),
                other => panic!("the generator made {other}"),
            };
            if denial.is_some() {
                return denial;
            }
        }
        (!scoped).then_some(Denial::NoScope)
    }

    fn caveat() -> impl Strategy<Value = String> {
        let now = CLOCK.now_s;
        prop_oneof![
            // Around the skew's edges (the clock's skew is 60 s).
            (now - 62..now - 58).prop_map(|v| format!("exp={v}")),
            (now + 58..now + 62).prop_map(|v| format!("nbf={v}")),
            (now - 100..now + 100).prop_map(|v| format!("exp={v}")),
            prop::sample::select(vec!["ron-node", "wallet", "index"])
                .prop_map(|v| format!("aud={v}")),
            prop::sample::subsequence(
                vec!["wallet.read", "wallet.transfer", "ledger.ingest"],
                1..3
            )
            .prop_map(|v| format!("scope={}", v.join(","))),
            prop::sample::select(vec!["/v1", "/v1/", "/v1/transfer", "/ingest", "/v1/trans"])
                .prop_map(|v| format!("route={v}")),
            prop::sample::select(vec!["GET", "post", "POST"]).prop_map(|v| format!("method={v}")),
            prop::sample::select(vec!["acct:alice", "acct:bob"])
                .prop_map(|v| format!("account={v}")),
            prop::sample::select(vec!["acct:", "acct:a", "user:"])
                .prop_map(|v| format!("account_prefix={v}")),
            prop::sample::select(vec!["roc", "xyz"]).prop_map(|v| format!("asset={v}")),
            prop::sample::select(vec![0u128, 49, 50, 100]).prop_map(|v| format!("amount_max={v}")),
            prop::sample::select(vec![
                "10.0.0.0/8",
                "10.1.2.3",
                "10.1.2.0/24",
                "192.168.0.0/16",
                "0.0.0.0/0",
                "::1/128",
                "::ffff:10.1.0.0/112",
                "10.1.2.3/33",
            ])
            .prop_map(|v| format!("ip={v}")),
        ]
    }

    proptest! {
        /// For random caveat sets and requests, the decision is the plain
        /// reference's.
        #[test]
        fn decisions_equal_the_reference(
            caveats in prop::collection::vec(caveat(), 0..8),
            method in prop::sample::select(vec!["GET", "POST"]),
            path in prop::sample::select(vec!["/v1/transfer", "/v1/balance", "/ingest", "/v1"]),
            scope in prop::option::of(prop::sample::select(vec!["wallet.read", "wallet.transfer", "ledger.ingest"])),
            account in prop::option::of(prop::sample::select(vec!["acct:alice", "acct:bob", "user:x"])),
            asset in prop::option::of(prop::sample::select(vec!["roc", "xyz"])),
            amount in prop::option::of(prop::sample::select(vec![0u128, 49, 50, 51, 100, 101])),
            ip in prop::option::of(prop::sample::select(vec!["10.1.2.3", "192.168.7.7", "::1", "::ffff:10.1.9.9"])),
        ) {
            let r = Request {
                method,
                path,
                scope,
                audiences: Audiences::Names(&*AUDIENCES),
                peer_ip: ip.map(|ip| ip.parse().unwrap()),
                account,
                asset,
                amount,
            };
            // Minting needs a scope caveat: the token starts with one that
            // allows every scope the requests ask for.
            let mut all = vec!["scope=wallet.read,wallet.transfer,ledger.ingest".to_owned()];
            all.extend(caveats);
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            prop_assert_eq!(decide(&refs, &r).err(), reference(&all, &r, CLOCK));
        }

        /// Adding any caveat to an allowed token never allows a request the
        /// shorter token denied (attenuation never widens).
        #[test]
        fn attenuation_never_widens(extra in prop::sample::select(vec![
            "exp=1", "exp=5000000", "nbf=0", "nbf=9999999", "aud=wallet", "aud=index",
            "scope=wallet.read", "scope=wallet.transfer", "route=/v1/", "route=/x",
            "method=GET", "method=POST", "account=acct:alice", "asset=roc", "amount_max=10",
            "ip=10.0.0.0/8", "ip=::1",
        ]), base in prop::sample::subsequence(vec![
            "scope=wallet.transfer,wallet.read", "exp=1000500", "method=POST", "route=/v1/",
        ], 0..4)) {
            // Minting needs a scope caveat; see `Token::mint`.
            let mut base = base;
            base.insert(0, "scope=wallet.transfer,wallet.read,index.read");
            let r = request();
            let shorter = decide(&base, &r);
            let mut longer = base.clone();
            longer.push(extra);
            let longer = decide(&longer, &r);
            if shorter.is_err() {
                prop_assert!(longer.is_err());
            }
        }
    }
}
