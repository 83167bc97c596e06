//! The counting caveats (`rate.rps`, `budget.bytes`, `tenant`), kept where
//! the token id (or tenant) is owned, so that a token's rate is one rate
//! whichever port its requests arrive on (SPEC §1.1, §6).
//!
//! The gate (`Passport::admit`) meters a request before its handler: when every count
//! it touches lives on this shard the check is a map lookup here; otherwise
//! the request is copied out of the connection's buffers and the handler
//! runs once the owners have agreed (one mesh call per owner). Tokens
//! without counting caveats cost one verify-cache lookup. Rate buckets live
//! in RAM (a restart refills them); spent budgets are also written to disk
//! and kept across restarts (`budgets`).

use super::{Answer, Call, Passport};
use crate::clock::unix_now_ms;
use crate::http::reply::{Body, mesh_failure};
use crate::http::routes::Handler;
use crate::http::{Handled, Params, Reply, Request};
use crate::service::Service;
use ron_proto::ErrorCode;
use ron_shards::passport::{MeterKey, MeterSpec};
use std::rc::Rc;

/// What one owner shard is asked to count.
#[derive(Clone, Debug)]
pub struct MeterCall {
    pub key: MeterKey,
    pub rps: Option<u32>,
    /// (spec, budget, bytes): spend this request's body bytes.
    pub spend: Option<(MeterSpec, u64, u64)>,
    /// A tenant's count, not the token's own: the limit's name.
    pub tenant: Option<&'static str>,
}

/// Why the owner refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Rate { retry_ms: u64 },
    TenantRate { retry_ms: u64, limit: &'static str },
    Budget,
}

impl Refused {
    fn reason(self) -> &'static str {
        match self {
            Refused::Rate { .. } => "rate",
            Refused::TenantRate { .. } => "tenant_rate",
            Refused::Budget => "budget",
        }
    }

    fn reply(self) -> Reply {
        let (mut reply, retry_ms) = match self {
            Refused::Rate { retry_ms } => {
                (Reply::error(ErrorCode::Busy, "the token is over its rate.rps"), retry_ms)
            }
            Refused::TenantRate { retry_ms, limit } => {
                (Reply::error(ErrorCode::Busy, format!("the tenant is over {limit}")), retry_ms)
            }
            Refused::Budget => {
                return Reply::error(ErrorCode::Forbidden, "token refused: budget.bytes spent");
            }
        };
        reply.retry_after_s = Some(retry_ms.div_ceil(1000).max(1) as u32);
        reply
    }
}

/// Counts `call` here (this shard owns its key).
pub fn count(passport: &Passport, call: &MeterCall) -> Result<(), Refused> {
    let now_ms = unix_now_ms();
    let mut meters = passport.meters.borrow_mut();
    if let Some(rps) = call.rps {
        if let Err(retry_ms) = meters.take(call.key.clone(), rps, now_ms) {
            return Err(match call.tenant {
                Some(limit) => Refused::TenantRate { retry_ms, limit },
                None => Refused::Rate { retry_ms },
            });
        }
    }
    if let Some((spec, budget, bytes)) = &call.spend {
        if !meters.spend(spec, *budget, *bytes, now_ms) {
            return Err(Refused::Budget);
        }
    }
    Ok(())
}

/// A service's own clamp on each tenant's requests to it (read at every
/// request: reloadable on SIGHUP).
#[derive(Clone, Copy, Debug)]
pub struct ServiceClamp {
    pub service: &'static str,
    pub limit: &'static str,
    pub rps: u32,
}

/// The counts a request with a token of `spec` touches, by owner shard.
fn plan(
    passport: &Passport,
    spec: MeterSpec,
    body_bytes: u64,
    clamp: Option<ServiceClamp>,
) -> Vec<(usize, MeterCall)> {
    let core = &passport.core;
    let mut calls = Vec::with_capacity(3);
    if let Some(tenant) = &spec.tenant {
        // The node's clamp on every request of the tenant, and the
        // service's own on its requests to it; both counted by its owner.
        let rps = crate::reload::Reloadable::get(&core.node.reload.tenant_rps_max);
        let node_wide = (MeterKey::Tenant(tenant.clone()), "tenant_rps_max", rps);
        let service = clamp.map(|c| (MeterKey::ServiceTenant(c.service, tenant.clone()), c.limit, c.rps));
        let owner = core.owner(tenant.as_bytes());
        for (key, limit, rps) in std::iter::once(node_wide).chain(service) {
            if rps > 0 {
                let call = MeterCall { key, rps: Some(rps), spend: None, tenant: Some(limit) };
                calls.push((owner, call));
            }
        }
    }
    if spec.rps.is_some() || spec.budget_bytes.is_some() {
        let owner = core.owner(&spec.token_id);
        let key = MeterKey::Token(spec.token_id);
        let spend = spec.budget_bytes.map(|budget| (spec.clone(), budget, body_bytes));
        calls.push((owner, MeterCall { key, rps: spec.rps, spend, tenant: None }));
    }
    calls
}

/// Meters `request` and runs `handler` if its counts allow it.
pub fn meter_then(
    passport: &Rc<Passport>,
    request: &Request<'_>,
    params: &Params<'_>,
    handler: &Handler,
    clamp: Option<ServiceClamp>,
) -> Handled {
    let spec = super::access::bearer(request).and_then(|text| {
        let cached = {
            let state = passport.state.borrow();
            let epoch = state.revocations.current_epoch();
            state.cache.meter(text, epoch, std::time::Instant::now()).map(|m| m.cloned())
        };
        // Not cached: verify it now (which caches it for the handler).
        cached.unwrap_or_else(|| {
            passport.with_verified(text, ron_shards::passport::meter_spec).ok().flatten()
        })
    });
    let Some(spec) = spec else { return handler(request, params) };
    let calls = plan(passport, spec, request.body.len() as u64, clamp);
    let me = passport.core.id;
    if calls.iter().all(|(owner, _)| *owner == me) {
        for (_, call) in &calls {
            if let Err(refused) = count(passport, call) {
                return Handled::Now(refuse(passport, refused));
            }
        }
        return handler(request, params);
    }
    // Some count lives elsewhere: keep the request until the owners answer.
    let passport = passport.clone();
    let handler = handler.clone();
    let head = *request.head;
    let raw = request.raw.to_vec();
    let body = request.body.to_vec();
    let (corr_id, socket, received_at) = (request.corr_id, request.socket, request.received_at);
    let values: Vec<String> = (0..).map_while(|i| params.get(i)).map(str::to_owned).collect();
    Handled::Later(Box::pin(async move {
        for (owner, call) in calls {
            let refused = match passport.call(owner, Call::Meter(call)).await {
                Ok(Answer::Metered(result)) => result.err(),
                Ok(other) => panic!("a meter call answered with {other:?}"),
                Err(error) => return mesh_failure(error),
            };
            if let Some(refused) = refused {
                return refuse(&passport, refused);
            }
        }
        let request =
            Request { head: &head, raw: &raw, body: &body, shared: None, corr_id, socket, received_at };
        let params = Params::from_values(&values);
        match handler(&request, &params) {
            // A synchronous answer may be in the shard's scratch buffer,
            // which only answers given at once may use.
            Handled::Now(mut reply) => {
                if matches!(reply.body, Body::Scratch) {
                    reply.body = Body::Owned(passport.core.scratch.borrow().clone());
                }
                reply
            }
            Handled::Later(future) => future.await,
        }
    }))
}

fn refuse(passport: &Passport, refused: Refused) -> Reply {
    passport.metrics.borrow_mut().reject(refused.reason());
    refused.reply()
}
