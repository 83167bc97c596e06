//! Ops: health, readiness, version, topology, `/metrics` and owner lookups.
//! Routes need no token, except `/v1/node/owner`.

use super::passport::Passport;
use crate::config::Config;
use crate::core::Core;
use crate::core::metrics::Snapshot;
use crate::http::reply::{Body, ContentType, mesh_failure};
use crate::http::{Access, Handled, Params, Reply, Request, RouteTable, Shed};
use crate::limits::ROUTING_KEY_BYTES_MAX;
use crate::log::{LogAnswer, LogCall};
use crate::metrics::ProcessGauges;
use crate::service::{Service, ShardAt, Starting};
use ron_proto::ErrorCode;
use ron_proto::http::Method;
use serde::Serialize;
use std::rc::Rc;

pub struct Ops {
    core: Rc<Core>,
    passport: Rc<Passport>,
}

#[derive(Debug)]
pub enum Call {
    /// Which shard owns this key? Answered by the owner itself.
    Owner { key: String },
    /// A copy of the shard's metrics.
    Metrics,
}

#[derive(Debug)]
pub enum Answer {
    Owner { shard: usize },
    Metrics(Box<Snapshot>),
}

impl Service for Ops {
    const NAME: &'static str = "ops";
    type Shared = ();
    type State = ();
    type Call = Call;
    type Answer = Answer;

    fn prepare(_: &Config) -> anyhow::Result<()> {
        Ok(())
    }

    fn state(_: &(), _: ShardAt<'_>) {}

    fn start(start: Starting<'_, Ops>) -> Rc<Ops> {
        Rc::new(Ops { core: start.core.clone(), passport: start.started.get::<Passport>() })
    }

    fn core(&self) -> &Rc<Core> {
        &self.core
    }

    fn routes(self: &Rc<Self>, routes: &mut RouteTable) {
        use Access::Public;
        routes.add(self, Method::Get, "/healthz", Public, Shed::No, Ops::healthz);
        routes.add(self, Method::Get, "/readyz", Public, Shed::No, Ops::readyz);
        routes.add(self, Method::Get, "/version", Public, Shed::No, Ops::version);
        routes.add(self, Method::Get, "/metrics", Public, Shed::No, Ops::metrics);
        routes.add(self, Method::Get, "/v1/node/topology", Public, Shed::No, Ops::topology);
        let owner = Access::Authenticated;
        routes.add(self, Method::Get, "/v1/node/owner", owner, Shed::Yes, Ops::owner);
    }

    async fn serve(self: Rc<Self>, call: Call) -> Answer {
        match call {
            Call::Owner { key } => {
                let owner = self.core.owner(key.as_bytes());
                // Only the owner answers for its keys; anything else is a routing bug.
                assert_eq!(owner, self.core.id, "owner call for key {key} reached another shard");
                Answer::Owner { shard: self.core.id }
            }
            Call::Metrics => Answer::Metrics(Box::new(self.core.snapshot())),
        }
    }
}

#[derive(Serialize)]
struct OwnerAnswer<'a> {
    key: &'a str,
    owner: usize,
    answered_by: usize,
    received_by: usize,
}

impl Ops {
    fn healthz(_: &Rc<Ops>, _: &Request<'_>, _: &Params<'_>) -> Handled {
        Handled::Now(Reply::json_static(200, br#"{"status":"ok"}"#))
    }

    fn readyz(ops: &Rc<Ops>, _: &Request<'_>, _: &Params<'_>) -> Handled {
        let missing = ops.core.node.not_ready();
        if missing.is_empty() {
            // Verification needs only the root keys: the node stays ready
            // when it cannot mint, and says so.
            if let Some(why) = ops.passport.issuance_unavailable() {
                #[derive(Serialize)]
                struct Partly<'a> {
                    ready: bool,
                    issuance: &'a str,
                    reason: &'a str,
                }
                let body = Partly { ready: true, issuance: "unavailable", reason: &why };
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

    fn version(ops: &Rc<Ops>, _: &Request<'_>, _: &Params<'_>) -> Handled {
        Handled::Now(Reply::json_static(200, ops.core.node.version_json))
    }

    fn topology(ops: &Rc<Ops>, _: &Request<'_>, _: &Params<'_>) -> Handled {
        Handled::Now(Reply::json_static(200, ops.core.node.topology_json))
    }

    /// Gathers every shard's metrics over the mesh and renders them.
    fn metrics(ops: &Rc<Ops>, _: &Request<'_>, _: &Params<'_>) -> Handled {
        let ops = ops.clone();
        Handled::Later(Box::pin(async move {
            let core = &ops.core;
            let mut total = core.snapshot();
            for target in (0..core.count).filter(|t| *t != core.id) {
                match ops.call(target, Call::Metrics).await {
                    Ok(Answer::Metrics(theirs)) => total.add(&theirs),
                    Ok(other) => panic!("metrics call answered with {other:?}"),
                    Err(error) => return mesh_failure(error),
                }
            }
            let mut text = total.render(ProcessGauges::read(), &core.workers, core.count);
            let mut depths = total.queue_depths();
            match core.log.call(LogCall::Metrics).await {
                Ok(LogAnswer::Metrics(committer)) => {
                    committer.render(&mut text);
                    depths.insert(0, ("committer", committer.queued_entries));
                }
                Ok(other) => panic!("metrics call answered with {other:?}"),
                Err(error) => tracing::warn!(?error, "the committer did not give its metrics"),
            }
            crate::metrics::queue_depth_lines(&mut text, &depths);
            Reply::new(200, ContentType::Prometheus, Body::Owned(text.into_bytes()))
        }))
    }

    /// `GET /v1/node/owner?key=K`: which shard owns K, answered by that
    /// shard. A client that sends here without knowing the owner pays one
    /// mesh hop; the answer tells it which port to use next time.
    fn owner(ops: &Rc<Ops>, request: &Request<'_>, _: &Params<'_>) -> Handled {
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
        let core = &ops.core;
        let owner = core.owner(key.as_bytes());
        if owner == core.id {
            let answer =
                OwnerAnswer { key: &key, owner, answered_by: core.id, received_by: core.id };
            let mut scratch = core.scratch.borrow_mut();
            scratch.clear();
            simd_json::to_writer(&mut *scratch, &answer).expect("writing into a Vec");
            return Handled::Now(Reply::json_scratch(200));
        }
        let ops = ops.clone();
        let key = key.into_owned();
        Handled::Later(Box::pin(async move {
            match ops.call(owner, Call::Owner { key: key.clone() }).await {
                Ok(Answer::Owner { shard: answered_by }) => {
                    let received_by = ops.core.id;
                    let answer = OwnerAnswer { key: &key, owner, answered_by, received_by };
                    Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
                }
                Ok(other) => panic!("owner call answered with {other:?}"),
                Err(error) => mesh_failure(error),
            }
        }))
    }
}
