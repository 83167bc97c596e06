//! The passport's routes: issue, verify (one or a batch), attenuate,
//! revoke, rotate, the JWKS and the ML-DSA batches.

use super::{Answer, Call, Passport, verifier};
use crate::clock::{unix_now_ms, unix_now_s};
use crate::config::PqMode;
use crate::http::reply::{degraded, link_failure, mesh_failure};
use crate::http::{Access, Handled, Params, Reply, Request, RouteTable, Shed};
use crate::limits::VERIFY_BATCH_MAX;
use crate::log::{Append, LogAnswer, LogCall};
use crate::service::Service;
use ron_proto::ErrorCode;
use ron_proto::http::Method;
use ron_proto::merkle;
use ron_proto::revocation::{self, REASON_BYTES_MAX, Revocation};
use ron_proto::token::{self, Caveat, Claims, Token, TokenError, TokenView};
use ron_shards::passport::{self as decide, Audiences, Clock};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::rc::Rc;

/// Subjects and audiences, in bytes.
const NAME_BYTES_MAX: usize = token::NAME_BYTES_MAX;
const _: () = assert!(NAME_BYTES_MAX == 256, "the context.audience message says 256");
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
    /// The Ed25519 signature (base64url) of the token as issued, also in its
    /// `sig.ed25519` caveat.
    #[serde(skip_serializing_if = "Option::is_none")]
    sig: Option<&'a str>,
}

fn bad(reason: &str, detail: impl std::fmt::Display) -> Handled {
    Handled::Now(Reply::error(ErrorCode::BadRequest, format!("{reason}: {detail}")))
}

/// Token ids: BLAKE3 keyed with 32 random bytes drawn at start, over a
/// counter — unpredictable without the key, and no system call per token.
pub struct TokenIds {
    key: zeroize::Zeroizing<[u8; 32]>,
    counter: std::cell::Cell<u64>,
}

impl TokenIds {
    pub fn new() -> anyhow::Result<TokenIds> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut *key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(TokenIds { key, counter: std::cell::Cell::new(0) })
    }

    pub fn next(&self) -> [u8; token::TOKEN_ID_BYTES] {
        let n = self.counter.get();
        self.counter.set(n + 1);
        let hash = blake3::keyed_hash(&self.key, &n.to_le_bytes());
        hash.as_bytes()[..token::TOKEN_ID_BYTES].try_into().expect("16 bytes")
    }
}

/// Adds the passport's routes.
pub fn add(passport: &Rc<Passport>, table: &mut RouteTable) {
    use Access::{Authenticated, Public, Scope};
    use ron_proto::token::scope::{PASSPORT_ADMIN, PASSPORT_ISSUE};
    let p = passport;
    table.add(p, Method::Post, "/v1/passport/verify", Authenticated, Shed::Yes, verify);
    table.add(p, Method::Post, "/v1/passport/verify_batch", Authenticated, Shed::Yes, verify_batch);
    table.add(p, Method::Post, "/v1/passport/revoke", Scope(PASSPORT_ADMIN), Shed::Yes, revoke);
    table.add(p, Method::Get, "/v1/passport/pq/{id}", Public, Shed::Yes, pq_batch);
    table.add(p, Method::Get, "/v1/keys", Public, Shed::No, keys);
    table.add(p, Method::Post, "/admin/rotate", Scope(PASSPORT_ADMIN), Shed::Yes, rotate);
    table.add(p, Method::Post, "/v1/passport/attenuate", Authenticated, Shed::Yes, attenuate);
    table.add(p, Method::Post, "/v1/passport/issue", Scope(PASSPORT_ISSUE), Shed::Yes, issue);
}

/// Signatures a token may carry, as `accept_algs` names them.
pub const ALG_ED25519: &str = "ed25519";
pub const ALG_HYBRID: &str = "ed25519+ml-dsa-65";

/// What an issued token carries besides its MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signing {
    None,
    Ed25519,
    /// Ed25519 and a place in an ML-DSA-65 signed batch.
    Hybrid,
}

impl Signing {
    fn alg(self) -> &'static str {
        match self {
            Signing::None => MAC_ALGORITHM,
            Signing::Ed25519 => ALG_ED25519,
            Signing::Hybrid => ALG_HYBRID,
        }
    }

    /// Caveats it adds.
    fn caveats(self) -> usize {
        match self {
            Signing::None => 0,
            Signing::Ed25519 => 1,
            Signing::Hybrid => 2,
        }
    }

    /// The signing `pq_mode` and the client's `accept_algs` agree on:
    /// `require` and `enforce` sign every token with the hybrid; otherwise
    /// Ed25519 when asked for, else the MAC alone.
    fn choose(pq_mode: PqMode, accept: Option<&[String]>) -> Option<Signing> {
        let accepts = |alg: &str| accept.is_none_or(|algs| algs.iter().any(|a| a == alg));
        match pq_mode {
            PqMode::Require | PqMode::Enforce => accepts(ALG_HYBRID).then_some(Signing::Hybrid),
            PqMode::Off | PqMode::Mirror => match accept {
                None => Some(Signing::None),
                Some(_) if accepts(ALG_ED25519) => Some(Signing::Ed25519),
                Some(_) if accepts(MAC_ALGORITHM) => Some(Signing::None),
                Some(_) => None,
            },
        }
    }
}

/// `POST /v1/passport/issue`: mints a token with an expiry, its scopes and
/// caveats under the current key, signed as `accept_algs` and `pq_mode` say.
pub fn issue(passport: &Rc<Passport>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let started = std::time::Instant::now();
    let body: IssueBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let now = unix_now_s();
    let (asked, caveats) = match check_issue(passport.config(), body, now) {
        Ok(checked) => checked,
        Err(refused) => return refused,
    };
    if let Some(why) = passport.issuance_unavailable() {
        let why = format!("issuance is unavailable: {why}");
        return Handled::Now(Reply::error(ErrorCode::Unavailable, why));
    }
    let reply = match mint(passport, asked, &caveats, now) {
        Ok(reply) => reply,
        Err(refused) => return Handled::Now(refused),
    };
    passport.metrics.borrow_mut().issue_latency.record(started.elapsed());
    Handled::Now(reply)
}

/// What an issue request asks for, checked.
struct Asked {
    subject: String,
    audience: String,
    exp: u64,
    signing: Signing,
}

/// The stateless checks of an issue request; its caveats, the scope and
/// expiry first.
fn check_issue(
    config: &crate::config::Passport,
    body: IssueBody,
    now: u64,
) -> Result<(Asked, Vec<String>), Handled> {
    let ttl_s = body.ttl_s.unwrap_or(config.ttl_default_s);
    if ttl_s == 0 || ttl_s > config.ttl_max_s {
        return Err(bad("ttl_too_long", format_args!("ttl_s must be 1..={}", config.ttl_max_s)));
    }
    let Some(signing) = Signing::choose(config.pq_mode, body.accept_algs.as_deref()) else {
        let why = format_args!("pq_mode {:?} signs none of the accepted algorithms", config.pq_mode);
        return Err(bad("no_acceptable_alg", why));
    };
    for (field, value) in [("subject_ref", &body.subject_ref), ("audience", &body.audience)] {
        if value.is_empty() || value.len() > NAME_BYTES_MAX {
            let why = format_args!("{field} must be 1..={NAME_BYTES_MAX} bytes");
            return Err(bad("invalid_field", why));
        }
    }
    if body.scopes.is_empty() {
        return Err(bad("invalid_scope", "scopes must not be empty"));
    }
    if let Some(unknown) = body.scopes.iter().find(|s| !token::scope::ALL.contains(&s.as_str())) {
        return Err(bad("invalid_scope", format_args!("unknown scope {unknown}")));
    }
    let exp = now + ttl_s;
    let mut caveats = vec![format!("scope={}", body.scopes.join(",")), format!("exp={exp}")];
    caveats.extend(body.caveats);
    if caveats.len() + signing.caveats() > config.caveats_max {
        let why = format_args!("at most {} caveats", config.caveats_max);
        return Err(bad("too_many_caveats", why));
    }
    for caveat in &caveats {
        match Caveat::parse(caveat) {
            Ok(Caveat::Signature { .. }) => return Err(bad("invalid_caveat", caveat)),
            Ok(_) => {}
            Err(TokenError::UnknownCaveat) => return Err(bad("unknown_caveat", caveat)),
            Err(_) => return Err(bad("invalid_caveat", caveat)),
        }
    }
    let asked = Asked { subject: body.subject_ref, audience: body.audience, exp, signing };
    Ok((asked, caveats))
}

/// Mints the token under the current key, signs it as asked, and answers.
fn mint(passport: &Rc<Passport>, asked: Asked, caveats: &[String], now: u64) -> Result<Reply, Reply> {
    let token_id = passport.token_ids.next();
    let keys = passport.keys();
    let key = keys.current();
    let claims = Claims {
        kid: key.kid,
        token_id,
        epoch: passport.state.borrow().revocations.current_epoch(),
        issued_at: now,
        subject: asked.subject,
        audience: asked.audience,
    };
    let refs: Vec<&str> = caveats.iter().map(String::as_str).collect();
    let mut token = Token::mint(key.root(), claims, &refs).map_err(|error| {
        Reply::error(ErrorCode::BadRequest, format!("invalid_caveat: {error:?}"))
    })?;
    let signing = asked.signing;
    let sig = (signing != Signing::None).then(|| key.attach_ed25519(&mut token));
    // The ML-DSA batch: attached with `require`/`enforce`; with `mirror`
    // signed and measured, not attached.
    if signing == Signing::Hybrid || passport.config().pq_mode == PqMode::Mirror {
        let leaf = ron_proto::attestation::leaf(&token.signed_message());
        let Ok(attestation) = passport.attest(leaf) else {
            let mut reply =
                Reply::error(ErrorCode::Busy, "the ML-DSA signers are behind; retry shortly");
            reply.retry_after_s = Some(1);
            return Err(reply);
        };
        if signing == Signing::Hybrid {
            attestation.attach(&mut token);
        }
    }
    let text = token.encode();
    let answer = IssueAnswer {
        token: &text,
        token_id: merkle::hex(&token_id),
        kid: key.kid,
        alg: signing.alg(),
        exp: asked.exp,
        caveats,
        sig: sig.as_deref(),
    };
    Ok(Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing")))
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
    /// The service the token must be for; the node's own audiences when
    /// absent.
    audience: Option<String>,
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

/// The context a verification is asked about, parsed.
struct Context<'a> {
    method: &'a str,
    route: &'a str,
    account: Option<&'a str>,
    asset: Option<&'a str>,
    amount: Option<u128>,
    ip: Option<IpAddr>,
    audience: Option<&'a str>,
}

impl VerifyContext {
    fn parse(&self) -> Result<Context<'_>, &'static str> {
        let amount = match self.amount.as_deref().map(str::parse::<u128>) {
            None => None,
            Some(Ok(amount)) => Some(amount),
            Some(Err(_)) => return Err("context.amount must be a u128 decimal string"),
        };
        let ip = match self.ip.as_deref().map(str::parse::<IpAddr>) {
            None => None,
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => return Err("context.ip must be an IP address"),
        };
        if self.audience.as_deref().is_some_and(|a| a.is_empty() || a.len() > NAME_BYTES_MAX) {
            return Err("context.audience must be 1..=256 bytes");
        }
        Ok(Context {
            method: self.method.as_deref().unwrap_or("GET"),
            route: self.route.as_deref().unwrap_or("/"),
            account: self.account.as_deref(),
            asset: self.asset.as_deref(),
            amount,
            ip,
            audience: self.audience.as_deref(),
        })
    }
}

/// Verifies one token in a context and appends its answer (JSON) to `out`.
fn verify_one(passport: &Passport, text: &str, context: &Context<'_>, out: &mut Vec<u8>) {
    let started = std::time::Instant::now();
    let clock =
        Clock { now_s: unix_now_s(), clock_skew_s: passport.config().clock_skew_s };
    let asked = decide::Request {
        method: context.method,
        path: context.route,
        scope: None,
        audiences: match context.audience {
            Some(audience) => Audiences::One(audience),
            None => Audiences::Names(&passport.config().audiences),
        },
        peer_ip: context.ip,
        account: context.account,
        asset: context.asset,
        amount: context.amount,
    };
    let verified = passport.with_verified(text.as_bytes(), |view| {
        let reason = decide::authorize(view, &asked, clock).err().map(|d| d.reason());
        let answer = VerifyAnswer { ok: reason.is_none(), reason, parsed: Some(parsed(view)) };
        simd_json::to_writer(&mut *out, &answer).expect("serializing");
        reason
    });
    let reason = match verified {
        Ok(reason) => reason,
        Err(refusal) => {
            // Say what the token claims when it decodes at all.
            let mut scratch = Vec::new();
            let caveats_max = passport.config().caveats_max;
            let parsed = token::decode(text.as_bytes(), caveats_max, &mut scratch)
                .ok()
                .map(|view| parsed(&view));
            let answer = VerifyAnswer { ok: false, reason: Some(refusal.reason()), parsed };
            simd_json::to_writer(&mut *out, &answer).expect("serializing");
            Some(refusal.reason())
        }
    };
    let mut metrics = passport.metrics.borrow_mut();
    metrics.verify_latency.record(started.elapsed());
    if let Some(reason) = reason {
        metrics.reject(reason);
    }
}

/// `POST /v1/passport/verify`: would this token be accepted, in this context?
/// Answers 200 with `ok` and a reason; 400 only for a malformed request.
pub fn verify(passport: &Rc<Passport>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let body: VerifyBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let context = body.context.unwrap_or_default();
    let context = match context.parse() {
        Ok(context) => context,
        Err(why) => return bad("invalid_field", why),
    };
    let mut out = Vec::with_capacity(512);
    verify_one(passport, &body.token, &context, &mut out);
    Handled::Now(Reply::json_owned(200, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBatchBody {
    tokens: Vec<String>,
    context: Option<VerifyContext>,
}

/// `POST /v1/passport/verify_batch`: `{tokens[], context?}` → `{results[]}`,
/// one `/verify` answer per token, in order.
pub fn verify_batch(passport: &Rc<Passport>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let body: VerifyBatchBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    if body.tokens.len() > VERIFY_BATCH_MAX {
        return Handled::Now(Reply::error(
            ErrorCode::LimitsExceeded,
            format!("at most {VERIFY_BATCH_MAX} tokens per batch"),
        ));
    }
    let context = body.context.unwrap_or_default();
    let context = match context.parse() {
        Ok(context) => context,
        Err(why) => return bad("invalid_field", why),
    };
    let mut out = Vec::with_capacity(16 + body.tokens.len() * 256);
    out.extend_from_slice(b"{\"results\":[");
    for (i, text) in body.tokens.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        verify_one(passport, text, &context, &mut out);
    }
    out.extend_from_slice(b"]}");
    Handled::Now(Reply::json_owned(200, out))
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
pub fn attenuate(passport: &Rc<Passport>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let body: AttenuateBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let caveats_max = passport.config().caveats_max;
    let mut token = match passport.with_verified(body.token.as_bytes(), |v| v.to_token()) {
        Ok(token) => token,
        Err(verifier::Refusal::TooLarge) => {
            return bad("too_many_caveats", "the token is already at its limit");
        }
        Err(refusal) => {
            return bad(
                "invalid_token",
                format_args!("the token is refused: {}", refusal.reason()),
            );
        }
    };
    if token.caveats().len() + body.caveats.len() > caveats_max {
        return bad("too_many_caveats", format_args!("at most {caveats_max} caveats"));
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    token_id: Option<String>,
    subject_ref: Option<String>,
    kid: Option<u32>,
    epoch: Option<u64>,
    #[serde(default)]
    reason: String,
}

#[derive(Serialize)]
struct RevokeAnswer<'a> {
    current_epoch: u64,
    revoked: Revoked<'a>,
    /// The revocation's log entry.
    seq: u64,
}

/// What was revoked, as the request named it.
#[derive(Serialize)]
struct Revoked<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject_ref: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
}

/// `POST /v1/passport/revoke` `{token_id | subject_ref | kid | epoch, reason}`:
/// commits a revocation to the log; every shard applies it from the
/// committed stream. Answers once every shard refuses what it revokes, with
/// `{current_epoch, revoked, seq}`.
pub fn revoke(passport: &Rc<Passport>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let body: RevokeBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let revoked = match revoked(&body) {
        Ok(revoked) => revoked,
        Err(refused) => return refused,
    };
    if passport.core.log.in_safe_mode() {
        return Handled::Now(degraded(None));
    }
    let revocation = Revocation { revoked, reason: body.reason, ts_ms: unix_now_ms() };
    let passport = passport.clone();
    Handled::Later(Box::pin(async move {
        let count = passport.core.count;
        // Every shard applies every revocation.
        let append = Append::item(|out| revocation.encode(out), 0..count);
        let seq = match passport.core.log.call(LogCall::Append(append)).await {
            Ok(LogAnswer::Appended { seq_start, .. }) => seq_start,
            Ok(LogAnswer::Degraded { reason }) => return degraded(Some(&reason)),
            Ok(other) => panic!("a revocation append answered with {other:?}"),
            Err(error) => return link_failure(error),
        };
        // Durable: answer once every shard has applied it.
        let mut slowest = std::time::Duration::ZERO;
        for target in 0..count {
            match passport.call(target, Call::RevocationApplied { seq }).await {
                Ok(Answer::RevocationApplied { lag }) => {
                    slowest = slowest.max(lag.unwrap_or_default());
                }
                Ok(other) => panic!("a revocation check answered with {other:?}"),
                Err(error) => {
                    tracing::warn!(target, ?error, seq, "a shard did not confirm a revocation");
                    return mesh_failure(error);
                }
            }
        }
        passport.metrics.borrow_mut().revocation_propagation.record(slowest);
        let current_epoch = passport.state.borrow().revocations.current_epoch();
        // Exactly one was named (checked above): echo the request's.
        let named = Revoked {
            token_id: body.token_id.as_deref(),
            subject_ref: body.subject_ref.as_deref(),
            kid: body.kid,
            epoch: body.epoch,
        };
        let answer = RevokeAnswer { current_epoch, revoked: named, seq };
        Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
    }))
}

/// What a revoke request names: exactly one of token id, subject, kid or
/// epoch, with a reason of at most `REASON_BYTES_MAX` bytes.
fn revoked(body: &RevokeBody) -> Result<revocation::Revoked, Handled> {
    let named = [
        body.token_id.is_some(),
        body.subject_ref.is_some(),
        body.kid.is_some(),
        body.epoch.is_some(),
    ];
    if named.iter().filter(|n| **n).count() != 1 {
        return Err(bad("invalid_field", "name exactly one of token_id, subject_ref, kid, epoch"));
    }
    if body.reason.len() > REASON_BYTES_MAX {
        let why = format_args!("reason is at most {REASON_BYTES_MAX} bytes");
        return Err(bad("invalid_field", why));
    }
    if let Some(text) = &body.token_id {
        let id = ron_proto::wallet::from_hex16(text)
            .ok_or_else(|| bad("invalid_field", "token_id must be 32 hex digits"))?;
        return Ok(revocation::Revoked::TokenId(id));
    }
    if let Some(subject) = &body.subject_ref {
        if subject.is_empty() || subject.len() > NAME_BYTES_MAX {
            let why = format_args!("subject_ref must be 1..={NAME_BYTES_MAX} bytes");
            return Err(bad("invalid_field", why));
        }
        return Ok(revocation::Revoked::Subject(subject.clone()));
    }
    Ok(match body.kid {
        Some(kid) => revocation::Revoked::Kid(kid),
        None => revocation::Revoked::Epoch(body.epoch.expect("one was named")),
    })
}

/// How long clients may keep `/v1/keys` (a rotation changes its ETag).
const KEYS_MAX_AGE: &str = "public, max-age=300";

/// `GET /v1/keys`: the JWKS of the public signing keys of every key id that
/// still verifies, with an ETag; `If-None-Match` with it answers 304.
pub fn keys(passport: &Rc<Passport>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let keys = passport.keys.borrow();
    let (jwks, etag) = keys.jwks();
    let mut reply = if request.if_none_match(etag.as_bytes()) {
        Reply::new(304, crate::http::reply::ContentType::Json, crate::http::reply::Body::Empty)
    } else {
        Reply::json_owned(200, jwks.to_vec())
    };
    reply.add_header("ETag", etag.to_owned());
    reply.add_header("Cache-Control", KEYS_MAX_AGE.to_owned());
    Handled::Now(reply)
}

#[derive(Serialize)]
struct RotateAnswer {
    kid: u32,
    /// Older key ids and the unix second each stops verifying.
    retiring: Vec<Retiring>,
    /// Where the new admin token was written, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token_file: Option<String>,
}

#[derive(Serialize)]
struct Retiring {
    kid: u32,
    retire_at: u64,
}

/// `POST /admin/rotate`: a new key id for everything minted from now on;
/// older ids verify until every token they minted has expired
/// (`ttl_max_s` + `clock_skew_s`). A new admin token under the new id
/// replaces `data_dir/admin.token`. Answers once every shard has the keys.
pub fn rotate(passport: &Rc<Passport>, _: &Request<'_>, _: &Params<'_>) -> Handled {
    let config = &passport.core.config;
    let now = unix_now_s();
    let retire_at = now + config.passport.ttl_max_s + config.passport.clock_skew_s;
    // Key files are small and rotations rare: written here, on the shard.
    let rotated = {
        let mut canonical = passport.shared.keys.lock().expect("not poisoned");
        match super::access::key_store(config).rotate(&canonical, retire_at) {
            Ok(ring) => {
                *canonical = std::sync::Arc::new(ring);
                canonical.clone()
            }
            Err(error) => {
                tracing::error!(%error, "key rotation failed; the old keys stay");
                return Handled::Now(Reply::error(
                    ErrorCode::Internal,
                    format!("rotation failed: {error:#}"),
                ));
            }
        }
    };
    let kid = rotated.current().kid;
    tracing::info!(kid, "rotated the passport keys");
    let admin_token_file = if config.amnesia() {
        None
    } else {
        let epoch = passport.state.borrow().revocations.current_epoch();
        let written = super::access::mint_admin_token(&rotated, epoch, &config.passport)
            .and_then(|token| super::access::write_admin_token(&config.data_dir, &token));
        match written {
            Ok(()) => Some(config.data_dir.join("admin.token").display().to_string()),
            Err(error) => {
                tracing::error!(%error, "writing the new admin token failed");
                None
            }
        }
    };
    let retiring = rotated
        .kids()
        .filter_map(|set| set.retire_at_s.map(|at| Retiring { kid: set.kid, retire_at: at }))
        .collect();
    let passport = passport.clone();
    Handled::Later(Box::pin(async move {
        for target in 0..passport.core.count {
            match passport.call(target, Call::SetKeys(rotated.clone())).await {
                Ok(Answer::Done) => {}
                Ok(other) => panic!("a key update answered with {other:?}"),
                Err(error) => return mesh_failure(error),
            }
        }
        let answer = RotateAnswer { kid, retiring, admin_token_file };
        Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
    }))
}

#[derive(Serialize)]
struct BatchAnswer {
    alg: &'static str,
    kid: u32,
    shard: usize,
    batch: u64,
    size: usize,
    /// The batch's leaves (32 bytes each, concatenated), its Merkle root and
    /// the ML-DSA-65 signature of `attestation::batch_message`, base64url.
    leaves: String,
    root: String,
    sig: String,
}

/// `GET /v1/passport/pq/{shard}.{batch}`: a signed batch, for a third party
/// checking a token's `sig.ml-dsa-65` caveat.
pub fn pq_batch(passport: &Rc<Passport>, _: &Request<'_>, params: &Params<'_>) -> Handled {
    let id = params.get(0).unwrap_or("");
    let parsed = id
        .split_once('.')
        .and_then(|(s, b)| Some((s.parse::<usize>().ok()?, b.parse::<u64>().ok()?)));
    let Some((owner, batch)) = parsed else {
        return Handled::Now(Reply::error(ErrorCode::NotFound, "no such batch"));
    };
    let passport = passport.clone();
    Handled::Later(Box::pin(async move {
        // The shard that signed it (memory, then its segments); a shard of
        // an earlier layout has only its segments left.
        let found = if owner < passport.core.count {
            match passport.call(owner, Call::PqBatch { batch }).await {
                Ok(Answer::PqBatch(found)) => found,
                Ok(other) => panic!("a batch lookup answered with {other:?}"),
                Err(error) => return mesh_failure(error),
            }
        } else {
            let dir = passport.pq.store_dir().cloned();
            super::pq_store::find_later(&passport.core, dir, owner, batch).await
        };
        let Some(signed) = found else {
            return Reply::error(ErrorCode::NotFound, "no such batch (or no longer kept)");
        };
        let answer = BatchAnswer {
            alg: "ML-DSA-65",
            kid: signed.kid,
            shard: owner,
            batch: signed.batch,
            size: signed.leaves.len(),
            leaves: token::to_base64url(&signed.leaves.concat()),
            root: token::to_base64url(&signed.root),
            sig: token::to_base64url(&signed.signature),
        };
        Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
    }))
}
