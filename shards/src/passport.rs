//! The authorization decision: may this token make this request now?
//!
//! Every caveat must hold (fail closed). A caveat about a dimension the
//! request does not have (an `account` caveat on a route without an account)
//! does not hold, and caveats this build does not enforce yet refuse the token
//! rather than being skipped.

use ron_proto::revocation::Revoked;
use ron_proto::token::{Caveat, TOKEN_ID_BYTES, TokenView};
use std::collections::HashSet;
use std::net::IpAddr;

/// What is being asked, in the terms caveats speak.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The scope the route requires; `None` when any valid token will do
    /// (scope caveats are then not consulted).
    pub scope: Option<&'a str>,
    /// Names this node answers to; `aud` caveats and the token's audience
    /// must be one of them.
    pub audiences: &'a [&'a str],
    pub peer_ip: Option<IpAddr>,
    pub account: Option<&'a str>,
    pub asset: Option<&'a str>,
    pub amount: Option<u128>,
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
    /// A caveat this build does not enforce yet.
    NotEnforced(&'static str),
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
            Denial::NotEnforced(_) => "caveat_not_enforced",
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
    token_ids: HashSet<[u8; TOKEN_ID_BYTES]>,
    subjects: HashSet<String>,
    kids: HashSet<u32>,
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

/// Decides whether `token` (whose tag the caller has verified) may make `request`.
pub fn authorize(token: &TokenView<'_>, request: &Request<'_>, clock: Clock) -> Result<(), Denial> {
    if !request.audiences.contains(&token.audience) {
        return Err(Denial::Audience);
    }
    let mut scoped = false;
    for text in token.caveats() {
        let caveat = Caveat::parse(text).expect("decoded tokens hold parsed caveats");
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
                if !request.audiences.contains(&aud) {
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
            Caveat::RateRps(_) => return Err(Denial::NotEnforced("rate.rps")),
            Caveat::Tenant(_) => return Err(Denial::NotEnforced("tenant")),
            Caveat::BudgetBytes(_) => return Err(Denial::NotEnforced("budget.bytes")),
        }
    }
    if !scoped {
        return Err(Denial::NoScope);
    }
    Ok(())
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
    let ip = match (network, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
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
    const AUDIENCES: [&str; 2] = ["ron-node", "wallet"];

    fn request() -> Request<'static> {
        Request {
            method: "POST",
            path: "/v1/transfer",
            scope: Some("wallet.transfer"),
            audiences: &AUDIENCES,
            peer_ip: Some("10.1.2.3".parse().unwrap()),
            account: Some("acct:alice"),
            asset: Some("roc"),
            amount: Some(50),
        }
    }

    const CLOCK: Clock = Clock { now_s: 1_000_000, clock_skew_s: 60 };

    fn decide(caveats: &[&str], request: &Request<'_>) -> Result<(), Denial> {
        let claims = Claims {
            kid: 1,
            token_id: [0; 16],
            epoch: 0,
            issued_at: 0,
            subject: "s".into(),
            audience: "ron-node".into(),
        };
        let text = Token::mint(&KEY, claims, caveats).unwrap().encode();
        let mut scratch = Vec::new();
        let view = token::decode(text.as_bytes(), 64, &mut scratch).unwrap();
        authorize(&view, request, CLOCK)
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
        assert_eq!(decide(&[scope, "rate.rps=5"], &r), Err(Denial::NotEnforced("rate.rps")));
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

    proptest! {
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
