//! Ops routes (no token) and node introspection.

use crate::committer::{LedgerAnswer, LedgerCall};
use crate::limits::ROUTING_KEY_BYTES_MAX;
use crate::mesh::{MeshError, ShardAnswer, ShardCall};
use crate::metrics::{self, ProcessGauges};
use crate::reply::{Body, ContentType, Handled, Reply};
use crate::routes::{Params, Request};
use crate::shard::Shard;
use ron_proto::ErrorCode;
use serde::Serialize;
use std::rc::Rc;

pub fn healthz(_: &Rc<Shard>, _: &Request<'_>, _: &Params<'_>) -> Handled {
    Handled::Now(Reply::json_static(200, br#"{"status":"ok"}"#))
}

pub fn readyz(shard: &Rc<Shard>, _: &Request<'_>, _: &Params<'_>) -> Handled {
    let missing = shard.node.not_ready();
    if missing.is_empty() {
        // Verification needs only the root keys: the node stays ready when
        // it cannot mint, and says so.
        if let Some(why) = &shard.keys.borrow().issuance_unavailable {
            #[derive(Serialize)]
            struct Partly<'a> {
                ready: bool,
                issuance: &'a str,
                reason: &'a str,
            }
            let body = Partly { ready: true, issuance: "unavailable", reason: why };
            let body = simd_json::to_vec(&body).expect("serializing");
            return Handled::Now(Reply::json_owned(200, body));
        }
        return Handled::Now(Reply::json_static(200, br#"{"ready":true}"#));
    }
    let mut reply = Reply::error(ErrorCode::Unavailable, "not ready");
    if let Body::Error { missing: list, .. } = &mut reply.body {
        *list = missing;
    }
    Handled::Now(reply)
}

pub fn version(shard: &Rc<Shard>, _: &Request<'_>, _: &Params<'_>) -> Handled {
    Handled::Now(Reply::json_static(200, shard.node.version_json))
}

pub fn topology(shard: &Rc<Shard>, _: &Request<'_>, _: &Params<'_>) -> Handled {
    Handled::Now(Reply::json_static(200, shard.node.topology_json))
}

/// Gathers every shard's metrics over the mesh and renders them.
pub fn metrics(shard: &Rc<Shard>, _: &Request<'_>, _: &Params<'_>) -> Handled {
    let shard = shard.clone();
    Handled::Later(Box::pin(async move {
        let mut total = shard.metrics_snapshot();
        for target in (0..shard.count).filter(|t| *t != shard.id) {
            match shard.mesh.call(&shard, target, ShardCall::Metrics).await {
                Ok(ShardAnswer::Metrics(theirs)) => total.add(&theirs),
                Ok(other) => panic!("metrics call answered with {other:?}"),
                Err(error) => return mesh_failure(error),
            }
        }
        let mut text = metrics::render(&total, ProcessGauges::read(), shard.count);
        match shard.ledger.call(LedgerCall::Metrics).await {
            Ok(LedgerAnswer::Metrics(committer)) => {
                metrics::render_committer(&mut text, &committer)
            }
            Ok(other) => panic!("metrics call answered with {other:?}"),
            Err(error) => tracing::warn!(?error, "the committer did not give its metrics"),
        }
        Reply::new(200, ContentType::Prometheus, Body::Owned(text.into_bytes()))
    }))
}

#[derive(Serialize)]
struct OwnerAnswer<'a> {
    key: &'a str,
    owner: usize,
    answered_by: usize,
    received_by: usize,
}

/// `GET /v1/node/owner?key=K`: which shard owns K, answered by that shard.
/// A client that sends here without knowing the owner pays one mesh hop; the
/// answer tells it which port to use next time.
pub fn owner(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let key = match request.query("key") {
        Ok(Some(key)) if !key.is_empty() && key.len() <= ROUTING_KEY_BYTES_MAX => key,
        Ok(_) => {
            return Handled::Now(Reply::error(
                ErrorCode::BadRequest,
                format!("key must be 1..={ROUTING_KEY_BYTES_MAX} bytes"),
            ));
        }
        Err(reply) => return Handled::Now(reply),
    };
    let owner = ron_proto::routing::owner(key.as_bytes(), shard.count);
    if owner == shard.id {
        let answer = OwnerAnswer { key: &key, owner, answered_by: shard.id, received_by: shard.id };
        let mut scratch = shard.scratch.borrow_mut();
        scratch.clear();
        simd_json::to_writer(&mut *scratch, &answer).expect("writing into a Vec");
        return Handled::Now(Reply::json_scratch(200));
    }
    let shard = shard.clone();
    let key = key.into_owned();
    Handled::Later(Box::pin(async move {
        match shard.mesh.call(&shard, owner, ShardCall::Owner { key: key.clone() }).await {
            Ok(ShardAnswer::Owner { shard: answered_by }) => {
                let answer = OwnerAnswer { key: &key, owner, answered_by, received_by: shard.id };
                Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
            }
            Ok(other) => panic!("owner call answered with {other:?}"),
            Err(error) => mesh_failure(error),
        }
    }))
}

pub fn mesh_failure(error: MeshError) -> Reply {
    match error {
        MeshError::Busy => Reply::error(ErrorCode::Busy, "too many calls to the owner shard"),
        MeshError::Closed => Reply::error(ErrorCode::Unavailable, "the owner shard has stopped"),
        MeshError::TimedOut => {
            Reply::error(ErrorCode::Unavailable, "the owner shard did not answer in time")
        }
    }
}
