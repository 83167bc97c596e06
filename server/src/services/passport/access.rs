//! Root keys, the admin token, and the one authorization step every protected
//! route uses (SPEC §6): 401 when the token is missing or not valid, 403 when it
//! is valid but its scope or caveats do not allow the request.

use super::Passport;
use super::keys::{KeyStore, Keyring};
use crate::clock::unix_now_s;
use crate::config::{Config, PqMode, Profile};
use crate::http::{Reply, Request};
use ron_proto::ErrorCode;
use ron_proto::token::{self, Claims, Token};
use ron_shards::passport::{self as rules, Audiences, Clock, Denial};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The admin token made at first start, if one was made.
pub enum AdminToken {
    /// Written to this file (macronode).
    Written(PathBuf),
    /// Already there from an earlier start.
    Existing(PathBuf),
    /// Amnesia: to be printed once, never logged.
    Print(String),
}

/// Where keys live for this configuration (none with amnesia).
pub fn key_store(config: &Config) -> KeyStore {
    let dir = (config.profile != Profile::Micronode).then(|| config.data_dir.join("keys"));
    KeyStore::new(dir)
}

/// Loads the keys (creating them at first start) and makes the admin token
/// when there is none.
pub fn prepare(config: &Config) -> anyhow::Result<(Keyring, AdminToken)> {
    let keys = key_store(config).load(unix_now_s())?;
    if config.profile == Profile::Micronode {
        let token = mint_admin_token(&keys, 0, &config.passport)?;
        return Ok((keys, AdminToken::Print(token)));
    }
    let token_path = config.data_dir.join("admin.token");
    if token_path.exists() {
        return Ok((keys, AdminToken::Existing(token_path)));
    }
    write_admin_token(&config.data_dir, &mint_admin_token(&keys, 0, &config.passport)?)?;
    Ok((keys, AdminToken::Written(token_path)))
}

/// Writes `data_dir/admin.token` (0600) in place of any earlier one, durably.
pub fn write_admin_token(data_dir: &Path, token: &str) -> anyhow::Result<()> {
    super::keys::replace_file(data_dir, "admin.token", token.as_bytes())
}

/// A token with every scope under the current key, in `epoch`, for the
/// operator, the tests and the load generator. It does not expire; it ends
/// with its key (rotation) or by revocation. Its audience is the first of
/// `passport.audiences`.
pub fn mint_admin_token(
    keys: &Keyring,
    epoch: u64,
    config: &crate::config::Passport,
) -> anyhow::Result<String> {
    let key = keys.current();
    let mut token_id = [0u8; token::TOKEN_ID_BYTES];
    getrandom::getrandom(&mut token_id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let claims = Claims {
        kid: key.kid,
        token_id,
        epoch,
        issued_at: unix_now_s(),
        subject: "admin".to_owned(),
        audience: config.audiences[0].clone(),
    };
    let scopes = format!("scope={}", token::scope::ALL.join(","));
    let mut token =
        Token::mint(key.root(), claims, &[&scopes]).expect("the admin token is well-formed");
    if matches!(config.pq_mode, PqMode::Require | PqMode::Enforce) {
        // Signed like every token these modes issue, so `enforce` takes it.
        key.attach_ed25519(&mut token);
        super::pq::attest_alone(key, &token.signed_message())?.attach(&mut token);
    }
    Ok(token.encode())
}

/// What a request does, for the `account`, `asset` and `amount_max`
/// caveats; `None` where the route does not say (such caveats then refuse).
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    pub account: Option<&'a str>,
    pub asset: Option<&'a str>,
    pub amount: Option<u128>,
}

impl<'a> Presented<'a> {
    /// What `request` presents, for a request to `path`.
    pub fn of(request: &Request<'a>, path: &'a str) -> Presented<'a> {
        Presented {
            authorization: request.head.authorization.map(|span| span.of(request.raw)),
            method: request.head.method.as_str(),
            path,
            socket: request.socket,
        }
    }
}

/// What a request presents to authorization, apart from its facts: kept
/// by a handler that can only name the facts later.
#[derive(Clone, Copy, Debug)]
pub struct Presented<'a> {
    pub authorization: Option<&'a [u8]>,
    pub method: &'static str,
    pub path: &'a str,
    pub socket: std::os::fd::RawFd,
}

/// Checks what a request presents: its bearer token's tag under its root
/// key, then its caveats. `scope` is the scope the route needs, or `None`
/// when any valid token will do.
pub fn authorize(
    passport: &Passport,
    presented: &Presented<'_>,
    scope: Option<&str>,
    facts: Facts<'_>,
) -> Result<(), Reply> {
    let mut decided = Ok(());
    authorize_each(passport, presented, scope, std::iter::once(facts), |_, d| decided = d)?;
    decided
}

/// Verifies the token once, then decides each of `facts` with it (a batch
/// of writes), handing each decision to `each` in order. A token that is
/// missing or does not verify is `Err` (401), and nothing is decided.
pub fn authorize_each<'f>(
    passport: &Passport,
    presented: &Presented<'_>,
    scope: Option<&str>,
    facts: impl IntoIterator<Item = Facts<'f>>,
    mut each: impl FnMut(usize, Result<(), Reply>),
) -> Result<(), Reply> {
    let Some(header) = presented.authorization else {
        return Err(Reply::error(ErrorCode::Unauthorized, "missing bearer token"));
    };
    let Some(text) = strip_bearer(header) else {
        return Err(Reply::error(ErrorCode::Unauthorized, "authorization is not a bearer token"));
    };
    let started = Instant::now();
    let verified = passport.with_verified(text, |view| {
        let peer_ip = if view.caveats().any(|c| c.starts_with("ip=")) {
            crate::http::socket_ring::peer_address(presented.socket).map(|a| a.ip())
        } else {
            None
        };
        let clock =
            Clock { now_s: unix_now_s(), clock_skew_s: passport.config().clock_skew_s };
        let mut parsed = None;
        for (i, facts) in facts.into_iter().enumerate() {
            let asked = rules::Request {
                method: presented.method,
                path: presented.path,
                scope,
                audiences: Audiences::Names(&passport.config().audiences),
                peer_ip,
                account: facts.account,
                asset: facts.asset,
                amount: facts.amount,
            };
            // The first request parses the caveats as it decides (a single
            // request allocates nothing); a batch's later ones reuse them.
            let decided = if i == 0 {
                rules::authorize(view, &asked, clock)
            } else {
                parsed.get_or_insert_with(|| rules::Caveats::of(view)).authorize(&asked, clock)
            };
            let decided = decided.map_err(|denial| {
                passport.metrics.borrow_mut().reject(denial.reason());
                denied(denial)
            });
            each(i, decided);
        }
    });
    let mut metrics = passport.metrics.borrow_mut();
    metrics.verify_latency.record(started.elapsed());
    verified.map_err(|refusal| {
        metrics.reject(refusal.reason());
        Reply::error(ErrorCode::Unauthorized, refusal.message())
    })
}

/// The answer to a denied request.
pub fn denied(denial: Denial) -> Reply {
    let code =
        if denial.is_unauthenticated() { ErrorCode::Unauthorized } else { ErrorCode::Forbidden };
    Reply::error(code, format!("token refused: {}", denial.reason()))
}

/// The bearer token of `request`, if it presents one.
pub fn bearer<'a>(request: &Request<'a>) -> Option<&'a [u8]> {
    strip_bearer(request.head.authorization?.of(request.raw))
}

fn strip_bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}
