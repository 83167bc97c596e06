//! Echo's routes.

use super::{Answer, Call, Echo, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::http::client::{ClientError, ClientRequest};
use crate::http::reply::{degraded, link_failure, mesh_failure};
use crate::limits::{ECHO_HASH_ROUNDS_MAX, ECHO_PEER_DEADLINE};
use crate::workers::Lane;
use crate::http::{Access, Handled, Params, Reply, Request, RouteTable, Shed};
use crate::log::{Append, LogAnswer, LogCall};
use crate::service::Service;
use ron_proto::ErrorCode;
use ron_proto::http::Method;
use std::rc::Rc;

/// Adds echo's routes.
pub fn add(echo: &Rc<Echo>, table: &mut RouteTable) {
    let any_token = Access::Authenticated;
    table.add(echo, Method::Put, "/v1/echo/{key}", any_token, Shed::Yes, put);
    table.add(echo, Method::Get, "/v1/echo/{key}", any_token, Shed::Yes, get);
    // Reaching any address is an operator's tool (no open relay).
    let admin = Access::Scope(ron_proto::token::scope::PASSPORT_ADMIN);
    table.add(echo, Method::Get, "/v1/echo-peer", admin, Shed::Yes, peer);
    table.add(echo, Method::Post, "/v1/echo-hash", any_token, Shed::Yes, hash);
}

fn key<'a>(params: &Params<'a>) -> Result<&'a str, Reply> {
    match params.get(0) {
        Some(key) if key.len() <= KEY_BYTES_MAX => Ok(key),
        _ => Err(Reply::error(ErrorCode::BadRequest, format!("keys are 1..={KEY_BYTES_MAX} bytes"))),
    }
}

/// `PUT /v1/echo/{key}`: stores the body; answers `{"key","seq"}` once it
/// is durable and applied by the key's owner.
fn put(echo: &Rc<Echo>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let key = match key(params) {
        Ok(key) => key.to_owned(),
        Err(reply) => return Handled::Now(reply),
    };
    if request.body.len() > VALUE_BYTES_MAX {
        let why = format!("values are at most {VALUE_BYTES_MAX} bytes");
        return Handled::Now(Reply::error(ErrorCode::TooLarge, why));
    }
    let owner = echo.core.owner(key.as_bytes());
    let append = Append::item(|out| super::encode(&key, request.body, out), [owner]);
    let echo = echo.clone();
    Handled::Later(Box::pin(async move {
        match echo.core.log.call(LogCall::Append(append)).await {
            Ok(LogAnswer::Appended { seq_start, .. }) => {
                #[derive(serde::Serialize)]
                struct Stored<'a> {
                    key: &'a str,
                    seq: u64,
                }
                let stored = Stored { key: &key, seq: seq_start };
                Reply::json_owned(200, simd_json::to_vec(&stored).expect("serializing"))
            }
            Ok(LogAnswer::Degraded { reason }) => degraded(Some(&reason)),
            Ok(other) => panic!("an echo append answered with {other:?}"),
            Err(error) => link_failure(error),
        }
    }))
}

/// `GET /v1/echo/{key}`: the stored bytes, from the key's owner.
fn get(echo: &Rc<Echo>, _: &Request<'_>, params: &Params<'_>) -> Handled {
    let key = match key(params) {
        Ok(key) => key.to_owned(),
        Err(reply) => return Handled::Now(reply),
    };
    let owner = echo.core.owner(key.as_bytes());
    let echo = echo.clone();
    Handled::Later(Box::pin(async move {
        match echo.call(owner, Call::Get { key }).await {
            Ok(Answer::Value(Some(value))) => {
                let body = crate::http::reply::Body::Owned(value);
                Reply::new(200, crate::http::reply::ContentType::Text, body)
            }
            Ok(Answer::Value(None)) => Reply::error(ErrorCode::NotFound, "no such key"),
            Err(error) => mesh_failure(error),
        }
    }))
}

/// `GET /v1/echo-peer?addr=HOST:PORT&path=/p`: a GET of `path` on another
/// node, through the shard's outbound connections; answers
/// `{"status", "body"}` of the peer's answer, or 503 naming why there was
/// none.
fn peer(echo: &Rc<Echo>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (addr, path) = match (request.query("addr"), request.query("path")) {
        (Ok(Some(addr)), Ok(path)) => (addr, path.map(|p| p.into_owned())),
        (Err(reply), _) | (_, Err(reply)) => return Handled::Now(reply),
        _ => return Handled::Now(Reply::error(ErrorCode::BadRequest, "addr is required")),
    };
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
        return Handled::Now(Reply::error(ErrorCode::BadRequest, "addr must be HOST:PORT"));
    };
    let path = path.unwrap_or_else(|| "/healthz".to_owned());
    let client = echo.client.clone();
    Handled::Later(Box::pin(async move {
        let asked = ClientRequest { method: Method::Get, path: &path, headers: &[], body: &[] };
        match client.request(addr, asked, ECHO_PEER_DEADLINE).await {
            Ok(answer) => {
                #[derive(serde::Serialize)]
                struct Peer<'a> {
                    status: u16,
                    body: &'a str,
                }
                let body = String::from_utf8_lossy(&answer.body);
                let peer = Peer { status: answer.status, body: &body };
                Reply::json_owned(200, simd_json::to_vec(&peer).expect("serializing"))
            }
            Err(error) => {
                let why = match &error {
                    ClientError::TimedOut => "timed_out",
                    ClientError::Closed => "closed",
                    ClientError::TooLarge => "too_large",
                    ClientError::Connect(_) => "connect",
                    _ => "failed",
                };
                Reply::error(ErrorCode::Unavailable, format!("peer {why}: {error}"))
            }
        }
    }))
}

/// `POST /v1/echo-hash?rounds=N`: the body hashed N times over (BLAKE3),
/// on the workers' idle lane; 429 when the lane is full.
fn hash(echo: &Rc<Echo>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let rounds = match request.query("rounds").map(|r| r.map(|r| r.parse::<u32>())) {
        Ok(None) => 1,
        Ok(Some(Ok(rounds))) if (1..=ECHO_HASH_ROUNDS_MAX).contains(&rounds) => rounds,
        Ok(Some(_)) => {
            let why = format!("rounds must be 1..={ECHO_HASH_ROUNDS_MAX}");
            return Handled::Now(Reply::error(ErrorCode::BadRequest, why));
        }
        Err(reply) => return Handled::Now(reply),
    };
    let body = request.body.to_vec();
    let core = &echo.core;
    let work = move || {
        let mut digest = *blake3::hash(&body).as_bytes();
        for _ in 1..rounds {
            digest = *blake3::hash(&digest).as_bytes();
        }
        digest
    };
    let Ok(result) = core.returns.run(&core.workers, Lane::Idle, work) else {
        let mut reply = Reply::error(ErrorCode::Busy, "the workers are full");
        reply.retry_after_s = Some(1);
        return Handled::Now(reply);
    };
    Handled::Later(Box::pin(async move {
        match result.await {
            Some(digest) => {
                let body = format!("{{\"digest\":\"{}\"}}", ron_proto::merkle::to_hex(&digest));
                Reply::json_owned(200, body.into_bytes())
            }
            None => Reply::error(ErrorCode::Unavailable, "the shard stopped"),
        }
    }))
}
