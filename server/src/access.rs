//! Root keys, the admin token, and the one authorization step every protected
//! route uses (SPEC §6): 401 when the token is missing or not valid, 403 when it
//! is valid but its scope or caveats do not allow the request.

use crate::config::{Config, Profile};
use crate::reply::Reply;
use crate::routes::Request;
use crate::shard::Shard;
use crate::verifier;
use ron_proto::ErrorCode;
use ron_proto::token::{self, Claims, Token, TokenView};
use ron_shards::passport::{self, Clock, Denial};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;
use zeroize::Zeroizing;

/// Names this node answers to in `aud` caveats and token audiences.
pub const AUDIENCES: [&str; 1] = ["ron-node"];
/// The audience of tokens this node mints.
pub const AUDIENCE: &str = AUDIENCES[0];

/// Root MAC keys by key id. Key bytes are wiped when dropped.
pub struct Keyring {
    keys: Vec<(u32, Zeroizing<[u8; 32]>)>,
}

impl Keyring {
    pub fn root(&self, kid: u32) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| *k == kid).map(|(_, key)| &**key)
    }

    /// The key new tokens are minted under: the newest.
    pub fn current(&self) -> (u32, &[u8; 32]) {
        let (kid, key) = self.keys.iter().max_by_key(|(k, _)| *k).expect("a keyring has a key");
        (*kid, key)
    }

    fn generate(kid: u32) -> Result<Keyring, AccessError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut *key).map_err(|e| AccessError::Random(e.to_string()))?;
        Ok(Keyring { keys: vec![(kid, key)] })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("key store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {0} is not a 32-byte key")]
    BadKey(PathBuf),
    #[error("no randomness: {0}")]
    Random(String),
}

/// The admin token made at first start, if one was made.
pub enum AdminToken {
    /// Written to this file (macronode).
    Written(PathBuf),
    /// Already there from an earlier start.
    Existing(PathBuf),
    /// Amnesia: to be printed once, never logged.
    Print(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AccessError + '_ {
    move |source| AccessError::Io { path: path.to_owned(), source }
}

/// Loads the root keys (creating them at first start) and makes the admin
/// token when there is none.
pub fn prepare(config: &Config) -> Result<(Keyring, AdminToken), AccessError> {
    if config.profile == Profile::Micronode {
        let keys = Keyring::generate(1)?;
        let token = mint_admin_token(&keys)?;
        return Ok((keys, AdminToken::Print(token)));
    }
    let key_dir = config.data_dir.join("keys");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&key_dir)
        .map_err(io_error(&key_dir))?;
    let mut keys = Vec::new();
    for entry in fs::read_dir(&key_dir).map_err(io_error(&key_dir))? {
        let path = entry.map_err(io_error(&key_dir))?.path();
        let Some(kid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("root-"))
            .and_then(|n| n.strip_suffix(".key"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let bytes = Zeroizing::new(fs::read(&path).map_err(io_error(&path))?);
        let key: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| AccessError::BadKey(path.clone()))?;
        keys.push((kid, Zeroizing::new(key)));
    }
    let keys = if keys.is_empty() {
        let keys = Keyring::generate(1)?;
        let (kid, key) = keys.current();
        write_secret(&key_dir.join(format!("root-{kid}.key")), key)?;
        sync_dir(&key_dir)?;
        tracing::info!(kid, dir = %key_dir.display(), "created root key");
        keys
    } else {
        Keyring { keys }
    };
    let token_path = config.data_dir.join("admin.token");
    if token_path.exists() {
        return Ok((keys, AdminToken::Existing(token_path)));
    }
    let token = mint_admin_token(&keys)?;
    write_secret(&token_path, token.as_bytes())?;
    sync_dir(&config.data_dir)?;
    Ok((keys, AdminToken::Written(token_path)))
}

/// A token with every scope, for the operator, the tests and the load
/// generator. It does not expire; revoke it by epoch or key rotation.
pub fn mint_admin_token(keys: &Keyring) -> Result<String, AccessError> {
    let (kid, key) = keys.current();
    let mut token_id = [0u8; token::TOKEN_ID_BYTES];
    getrandom::getrandom(&mut token_id).map_err(|e| AccessError::Random(e.to_string()))?;
    let claims = Claims {
        kid,
        token_id,
        epoch: 0,
        issued_at: Shard::unix_now_s(),
        subject: "admin".to_owned(),
        audience: AUDIENCE.to_owned(),
    };
    let scopes = format!("scope={}", token::scope::ALL.join(","));
    let token = Token::mint(key, claims, &[&scopes]).expect("the admin token is well-formed");
    Ok(token.encode())
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), AccessError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), AccessError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// What a request does, for the `account`, `asset` and `amount_max`
/// caveats; `None` where the route does not say (such caveats then refuse).
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    pub account: Option<&'a str>,
    pub asset: Option<&'a str>,
    pub amount: Option<u128>,
}

/// Checks the request's bearer token: its tag under its root key, then its
/// caveats. `scope` is the scope the route needs, or `None` when any valid
/// token will do.
pub fn authorize(
    shard: &Shard,
    request: &Request<'_>,
    path: &str,
    scope: Option<&str>,
    facts: Facts<'_>,
) -> Result<(), Reply> {
    let presented = Presented {
        authorization: request.head.authorization.map(|span| span.of(request.raw)),
        method: request.head.method.as_str(),
        path,
        socket: request.socket,
    };
    presented.authorize(shard, scope, facts)
}

/// What a request presents to authorization, apart from its facts: kept
/// by a handler that can only name the facts later (`Presented::owned`).
#[derive(Clone, Copy, Debug)]
pub struct Presented<'a> {
    pub authorization: Option<&'a [u8]>,
    pub method: &'static str,
    pub path: &'a str,
    pub socket: std::os::fd::RawFd,
}

impl Presented<'_> {
    pub fn authorize(
        &self,
        shard: &Shard,
        scope: Option<&str>,
        facts: Facts<'_>,
    ) -> Result<(), Reply> {
        authorize_presented(shard, self, scope, facts)
    }
}

fn authorize_presented(
    shard: &Shard,
    presented: &Presented<'_>,
    scope: Option<&str>,
    facts: Facts<'_>,
) -> Result<(), Reply> {
    let Some(header) = presented.authorization else {
        return Err(Reply::error(ErrorCode::Unauthorized, "missing bearer token"));
    };
    let Some(text) = strip_bearer(header) else {
        return Err(Reply::error(ErrorCode::Unauthorized, "authorization is not a bearer token"));
    };
    let started = Instant::now();
    let decided =
        verifier::with_verified(shard, text, |view| decide(shard, view, presented, scope, facts));
    let mut metrics = shard.metrics.borrow_mut();
    metrics.passport.verify_latency.record(started.elapsed());
    match decided {
        Ok(Ok(())) => Ok(()),
        Ok(Err(denial)) => {
            metrics.passport.reject(denial.reason());
            Err(denied(denial))
        }
        Err(refusal) => {
            metrics.passport.reject(refusal.reason());
            Err(Reply::error(ErrorCode::Unauthorized, refusal.message()))
        }
    }
}

/// The caveats of a verified token against the request.
fn decide(
    shard: &Shard,
    view: &TokenView<'_>,
    presented: &Presented<'_>,
    scope: Option<&str>,
    facts: Facts<'_>,
) -> Result<(), Denial> {
    let peer_ip = if view.caveats().any(|c| c.starts_with("ip=")) {
        crate::socket_ring::peer_address(presented.socket).map(|a| a.ip())
    } else {
        None
    };
    let asked = passport::Request {
        method: presented.method,
        path: presented.path,
        scope,
        audiences: &AUDIENCES,
        peer_ip,
        account: facts.account,
        asset: facts.asset,
        amount: facts.amount,
    };
    let clock =
        Clock { now_s: Shard::unix_now_s(), clock_skew_s: shard.config.passport.clock_skew_s };
    passport::authorize(view, &asked, clock)
}

/// The answer to a denied request.
pub fn denied(denial: Denial) -> Reply {
    let code =
        if denial.is_unauthenticated() { ErrorCode::Unauthorized } else { ErrorCode::Forbidden };
    Reply::error(code, format!("token refused: {}", denial.reason()))
}

fn strip_bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}
