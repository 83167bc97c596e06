//! Passport routes that need nothing beyond the token format and verifier:
//! issue, verify and attenuate. Revocation, rotation, signatures and the
//! verify cache build on these.

use crate::access::AUDIENCES;
use crate::reply::{Handled, Reply};
use crate::routes::{Params, Request};
use crate::shard::Shard;
use ron_proto::ErrorCode;
use ron_proto::token::{self, Caveat, Claims, Token, TokenError, TokenView};
use ron_shards::passport::{self as decide, Clock};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::rc::Rc;

/// Subjects and audiences, in bytes.
const NAME_BYTES_MAX: usize = token::NAME_BYTES_MAX;
/// The MAC of every token this build mints.
pub const MAC_ALGORITHM: &str = "blake3-keyed";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    subject_ref: String,
    audience: String,
    ttl_s: Option<u64>,
    scopes: Vec<String>,
    #[serde(default)]
    caveats: Vec<String>,
    accept_algs: Option<Vec<String>>,
}

#[derive(Serialize)]
struct IssueAnswer<'a> {
    token: &'a str,
    token_id: String,
    kid: u32,
    alg: &'a str,
    exp: u64,
    caveats: &'a [String],
}

fn bad(reason: &str, detail: impl std::fmt::Display) -> Handled {
    Handled::Now(Reply::error(ErrorCode::BadRequest, format!("{reason}: {detail}")))
}

/// `POST /v1/passport/issue`: mints a token with an expiry, its scopes and
/// caveats under the current root key.
pub fn issue(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let body: IssueBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let passport = &shard.config.passport;
    let ttl_s = body.ttl_s.unwrap_or(passport.ttl_default_s);
    if ttl_s == 0 || ttl_s > passport.ttl_max_s {
        return bad("ttl_too_long", format_args!("ttl_s must be 1..={}", passport.ttl_max_s));
    }
    if let Some(algs) = &body.accept_algs
        && !algs.iter().any(|a| a == MAC_ALGORITHM)
    {
        return bad("no_acceptable_alg", format_args!("this node issues {MAC_ALGORITHM} tokens"));
    }
    for (field, value) in [("subject_ref", &body.subject_ref), ("audience", &body.audience)] {
        if value.is_empty() || value.len() > NAME_BYTES_MAX {
            return bad(
                "invalid_field",
                format_args!("{field} must be 1..={NAME_BYTES_MAX} bytes"),
            );
        }
    }
    if body.scopes.is_empty() {
        return bad("invalid_scope", "scopes must not be empty");
    }
    if let Some(unknown) = body.scopes.iter().find(|s| !token::scope::ALL.contains(&s.as_str())) {
        return bad("invalid_scope", format_args!("unknown scope {unknown}"));
    }
    let now = Shard::unix_now_s();
    let exp = now + ttl_s;
    let mut caveats = vec![format!("scope={}", body.scopes.join(",")), format!("exp={exp}")];
    caveats.extend(body.caveats);
    if caveats.len() > passport.caveats_max {
        return bad("too_many_caveats", format_args!("at most {} caveats", passport.caveats_max));
    }
    for caveat in &caveats {
        match Caveat::parse(caveat) {
            Ok(_) => {}
            Err(TokenError::UnknownCaveat) => return bad("unknown_caveat", caveat),
            Err(_) => return bad("invalid_caveat", caveat),
        }
    }
    let (kid, key) = shard.keys.current();
    let mut token_id = [0u8; token::TOKEN_ID_BYTES];
    if getrandom::getrandom(&mut token_id).is_err() {
        return Handled::Now(Reply::error(ErrorCode::Internal, "no randomness for a token id"));
    }
    let claims = Claims {
        kid,
        token_id,
        epoch: 0,
        issued_at: now,
        subject: body.subject_ref,
        audience: body.audience,
    };
    let refs: Vec<&str> = caveats.iter().map(String::as_str).collect();
    let token = match Token::mint(key, claims, &refs) {
        Ok(token) => token.encode(),
        Err(error) => return bad("invalid_caveat", format_args!("{error:?}")),
    };
    let answer = IssueAnswer {
        token: &token,
        token_id: hex(&token_id),
        kid,
        alg: MAC_ALGORITHM,
        exp,
        caveats: &caveats,
    };
    Handled::Now(Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    token: String,
    context: Option<VerifyContext>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyContext {
    method: Option<String>,
    route: Option<String>,
    account: Option<String>,
    asset: Option<String>,
    amount: Option<String>,
    ip: Option<String>,
}

#[derive(Serialize)]
struct Parsed<'a> {
    kid: u32,
    epoch: u64,
    sub: &'a str,
    aud: &'a str,
    exp: Option<u64>,
    scopes: Vec<&'a str>,
    caveats: Vec<&'a str>,
}

#[derive(Serialize)]
struct VerifyAnswer<'a> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parsed: Option<Parsed<'a>>,
}

fn parsed<'a>(view: &TokenView<'a>) -> Parsed<'a> {
    let mut exp = None;
    let mut scopes: Option<Vec<&str>> = None;
    for caveat in view.caveats() {
        match Caveat::parse(caveat) {
            Ok(Caveat::Exp(e)) => exp = Some(exp.map_or(e, |x: u64| x.min(e))),
            Ok(Caveat::Scope(list)) => {
                let listed: Vec<&str> = list.split(',').collect();
                scopes = Some(match scopes {
                    None => listed,
                    Some(kept) => kept.into_iter().filter(|s| listed.contains(s)).collect(),
                });
            }
            _ => {}
        }
    }
    Parsed {
        kid: view.kid,
        epoch: view.epoch,
        sub: view.subject,
        aud: view.audience,
        exp,
        scopes: scopes.unwrap_or_default(),
        caveats: view.caveats().collect(),
    }
}

/// `POST /v1/passport/verify`: would this token be accepted, in this context?
/// Answers 200 with `ok` and a reason; 400 only for a malformed request.
pub fn verify(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let body: VerifyBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let context = body.context.unwrap_or_default();
    let amount = match context.amount.as_deref().map(str::parse::<u128>) {
        None => None,
        Some(Ok(amount)) => Some(amount),
        Some(Err(_)) => {
            return bad("invalid_field", "context.amount must be a u128 decimal string");
        }
    };
    let ip = match context.ip.as_deref().map(str::parse::<IpAddr>) {
        None => None,
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => return bad("invalid_field", "context.ip must be an IP address"),
    };
    let mut scratch = Vec::new();
    let answer =
        match token::decode(body.token.as_bytes(), shard.config.passport.caveats_max, &mut scratch)
        {
            Err(error) => {
                let reason = match error {
                    TokenError::TooLarge => "too_large",
                    TokenError::UnknownCaveat => "unknown_caveat",
                    TokenError::Malformed(_) => "malformed",
                };
                VerifyAnswer { ok: false, reason: Some(reason), parsed: None }
            }
            Ok(view) => {
                let reason = match shard.keys.root(view.kid) {
                    None => Some("unknown_kid"),
                    Some(root) if !view.verify_tag(root) => Some("bad_tag"),
                    Some(_) => {
                        let asked = decide::Request {
                            method: context.method.as_deref().unwrap_or("GET"),
                            path: context.route.as_deref().unwrap_or("/"),
                            scope: None,
                            audiences: &AUDIENCES,
                            peer_ip: ip,
                            account: context.account.as_deref(),
                            asset: context.asset.as_deref(),
                            amount,
                        };
                        let clock = Clock {
                            now_s: Shard::unix_now_s(),
                            clock_skew_s: shard.config.passport.clock_skew_s,
                        };
                        decide::authorize(&view, &asked, clock).err().map(|d| d.reason())
                    }
                };
                let json = simd_json::to_vec(&VerifyAnswer {
                    ok: reason.is_none(),
                    reason,
                    parsed: Some(parsed(&view)),
                })
                .expect("serializing");
                return Handled::Now(Reply::json_owned(200, json));
            }
        };
    Handled::Now(Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttenuateBody {
    token: String,
    caveats: Vec<String>,
}

#[derive(Serialize)]
struct AttenuateAnswer<'a> {
    token: &'a str,
}

/// `POST /v1/passport/attenuate`: appends caveats. The node checks the token
/// is one of its own first, so a typo fails here rather than at first use.
pub fn attenuate(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let body: AttenuateBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let caveats_max = shard.config.passport.caveats_max;
    let mut scratch = Vec::new();
    let view = match token::decode(body.token.as_bytes(), caveats_max, &mut scratch) {
        Ok(view) => view,
        Err(TokenError::TooLarge) => {
            return bad("too_many_caveats", "the token is already at its limit");
        }
        Err(_) => return bad("invalid_token", "the token does not decode"),
    };
    if !shard.keys.root(view.kid).is_some_and(|root| view.verify_tag(root)) {
        return bad("invalid_token", "the token does not verify");
    }
    if view.caveat_count() + body.caveats.len() > caveats_max {
        return bad("too_many_caveats", format_args!("at most {caveats_max} caveats"));
    }
    let mut token = view.to_token();
    for caveat in &body.caveats {
        match token.attenuate(caveat) {
            Ok(()) => {}
            Err(TokenError::UnknownCaveat) => return bad("unknown_caveat", caveat),
            Err(_) => return bad("invalid_caveat", caveat),
        }
    }
    let text = token.encode();
    Handled::Now(Reply::json_owned(
        200,
        simd_json::to_vec(&AttenuateAnswer { token: &text }).expect("serializing"),
    ))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
