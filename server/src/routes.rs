//! The route table and the one dispatch step every request goes through:
//! match, shed, authorize, handle.

use crate::access;
use crate::reply::{CorrId, Handled, Reply};
use crate::shard::Shard;
use crate::{ledger, ops, passport, wallet};
use ron_proto::ErrorCode;
use ron_proto::http::{Head, Method, query_param};
use ron_proto::token::scope;
use std::borrow::Cow;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Ops routes: no token.
    Public,
    /// Any valid token; scope caveats are not consulted.
    Authenticated,
    /// A valid token whose caveats allow this scope.
    Scope(&'static str),
    /// The same, checked by the handler once it knows the account, asset
    /// and amount the request is about (`access::Facts`).
    ScopeWithFacts(&'static str),
}

pub type Handler = fn(&Rc<Shard>, &Request<'_>, &Params<'_>) -> Handled;

pub struct RouteSpec {
    pub method: Method,
    /// Literal segments and `{name}` parameters.
    pub pattern: &'static str,
    pub access: Access,
    /// Refused with 429 while the shard is over `inflight_per_shard_max`.
    /// Ops routes are not, so an overloaded node can still be watched.
    pub shed: bool,
    pub handler: Handler,
}

pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: Method::Get,
        pattern: "/healthz",
        access: Access::Public,
        shed: false,
        handler: ops::healthz,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/readyz",
        access: Access::Public,
        shed: false,
        handler: ops::readyz,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/version",
        access: Access::Public,
        shed: false,
        handler: ops::version,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/metrics",
        access: Access::Public,
        shed: false,
        handler: ops::metrics,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/node/topology",
        access: Access::Public,
        shed: false,
        handler: ops::topology,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/node/owner",
        access: Access::Authenticated,
        shed: true,
        handler: ops::owner,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/passport/verify",
        access: Access::Authenticated,
        shed: true,
        handler: passport::verify,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/passport/verify_batch",
        access: Access::Authenticated,
        shed: true,
        handler: passport::verify_batch,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/passport/revoke",
        access: Access::Scope(scope::PASSPORT_ADMIN),
        shed: true,
        handler: passport::revoke,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/passport/pq/{id}",
        access: Access::Public,
        shed: true,
        handler: passport::pq_batch,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/keys",
        access: Access::Public,
        shed: false,
        handler: passport::keys,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/admin/rotate",
        access: Access::Scope(scope::PASSPORT_ADMIN),
        shed: true,
        handler: passport::rotate,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/passport/attenuate",
        access: Access::Authenticated,
        shed: true,
        handler: passport::attenuate,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/passport/issue",
        access: Access::Scope(scope::PASSPORT_ISSUE),
        shed: true,
        handler: passport::issue,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/ingest",
        access: Access::Scope(scope::LEDGER_INGEST),
        shed: true,
        handler: ledger::ingest,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/roots",
        access: Access::Public,
        shed: true,
        handler: ledger::roots,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/ledger/balance",
        access: Access::Authenticated,
        shed: true,
        handler: ledger::balance,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/ledger/proof/inclusion",
        access: Access::Authenticated,
        shed: true,
        handler: ledger::inclusion,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/ledger/proof/consistency",
        access: Access::Authenticated,
        shed: true,
        handler: ledger::consistency,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/balance",
        access: Access::ScopeWithFacts(scope::WALLET_READ),
        shed: true,
        handler: wallet::balance,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/issue",
        access: Access::ScopeWithFacts(scope::WALLET_ISSUE),
        shed: true,
        handler: wallet::issue,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/transfer",
        access: Access::ScopeWithFacts(scope::WALLET_TRANSFER),
        shed: true,
        handler: wallet::transfer,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/burn",
        access: Access::ScopeWithFacts(scope::WALLET_BURN),
        shed: true,
        handler: wallet::burn,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/hold",
        access: Access::ScopeWithFacts(scope::WALLET_TRANSFER),
        shed: true,
        handler: wallet::hold,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/capture",
        access: Access::ScopeWithFacts(scope::WALLET_TRANSFER),
        shed: true,
        handler: wallet::capture,
    },
    RouteSpec {
        method: Method::Post,
        pattern: "/v1/release",
        access: Access::ScopeWithFacts(scope::WALLET_TRANSFER),
        shed: true,
        handler: wallet::release_hold,
    },
    RouteSpec {
        method: Method::Get,
        pattern: "/v1/tx/{txid}",
        access: Access::ScopeWithFacts(scope::WALLET_READ),
        shed: true,
        handler: wallet::tx,
    },
];

/// Metrics label slots: one per route, and one for requests that matched none.
pub const ROUTE_LABEL_COUNT: usize = ROUTES.len() + 1;
pub const UNMATCHED: usize = ROUTES.len();

pub fn route_label(index: usize) -> &'static str {
    ROUTES.get(index).map_or("unmatched", |spec| spec.pattern)
}

const PARAMS_MAX: usize = 4;

/// Path parameters of a matched route, in pattern order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Params<'a> {
    values: [&'a str; PARAMS_MAX],
    count: usize,
}

impl<'a> Params<'a> {
    pub fn get(&self, i: usize) -> Option<&'a str> {
        self.values[..self.count].get(i).copied()
    }

    /// Parameters kept as owned strings (a request answered later).
    pub fn from_values(values: &'a [String]) -> Params<'a> {
        let mut params = Params::default();
        for value in values.iter().take(PARAMS_MAX) {
            params.values[params.count] = value;
            params.count += 1;
        }
        params
    }
}

fn match_pattern<'a>(pattern: &str, path: &'a str) -> Option<Params<'a>> {
    let mut params = Params::default();
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(params),
            (Some(expected), Some(actual)) => {
                if expected.starts_with('{') {
                    if actual.is_empty() || params.count == PARAMS_MAX {
                        return None;
                    }
                    params.values[params.count] = actual;
                    params.count += 1;
                } else if expected != actual {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    MethodNotAllowed(&'static str),
}

/// Finds the route of `method path`. HEAD is served by GET routes.
pub fn lookup<'a>(method: Method, path: &'a str) -> Result<(usize, Params<'a>), Miss> {
    let wanted = if method == Method::Head { Method::Get } else { method };
    let mut allow = None;
    for (i, spec) in ROUTES.iter().enumerate() {
        if let Some(params) = match_pattern(spec.pattern, path) {
            if spec.method == wanted {
                return Ok((i, params));
            }
            allow.get_or_insert(match spec.method {
                Method::Get => "GET, HEAD",
                other => other.as_str(),
            });
        }
    }
    Err(allow.map_or(Miss::NotFound, Miss::MethodNotAllowed))
}

/// One complete request, borrowed from the connection's buffers.
pub struct Request<'a> {
    pub head: &'a Head,
    /// The buffer `head`'s spans index into.
    pub raw: &'a [u8],
    pub body: &'a [u8],
    pub corr_id: CorrId,
    pub socket: RawFd,
    pub received_at: Instant,
}

impl Request<'_> {
    pub fn path(&self) -> &str {
        // Checked by `dispatch` before any handler runs.
        std::str::from_utf8(self.head.path.of(self.raw)).expect("dispatch checked the path")
    }

    /// A query parameter, percent-decoded; a bad encoding is a 400.
    pub fn query(&self, name: &str) -> Result<Option<Cow<'_, str>>, Reply> {
        let Some(query) = self.head.query else { return Ok(None) };
        query_param(query.of(self.raw), name).map_err(|_| {
            Reply::error(
                ErrorCode::BadRequest,
                format!("query parameter {name} is not valid UTF-8"),
            )
        })
    }

    /// The JSON body as `T`: 415 unless it says JSON, 400 if it does not parse.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Reply> {
        if self.head.media_type != ron_proto::http::MediaType::Json {
            return Err(Reply::error(
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            ));
        }
        let mut bytes = self.body.to_vec();
        simd_json::serde::from_slice(&mut bytes)
            .map_err(|e| Reply::error(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
    }
}

/// Matches, sheds, authorizes and hands the request to its handler.
/// Returns the route's metrics slot with the answer.
pub fn dispatch(shard: &Rc<Shard>, request: &Request<'_>) -> (usize, Handled) {
    let Ok(path) = std::str::from_utf8(request.head.path.of(request.raw)) else {
        return (
            UNMATCHED,
            Handled::Now(Reply::error(ErrorCode::BadRequest, "the path is not UTF-8")),
        );
    };
    let (index, params) = match lookup(request.head.method, path) {
        Ok(found) => found,
        Err(Miss::NotFound) => {
            return (UNMATCHED, Handled::Now(Reply::error(ErrorCode::NotFound, "no such route")));
        }
        Err(Miss::MethodNotAllowed(allow)) => {
            let mut reply =
                Reply::error(ErrorCode::MethodNotAllowed, "method not allowed on this route");
            reply.allow = Some(allow);
            return (UNMATCHED, Handled::Now(reply));
        }
    };
    let spec = &ROUTES[index];
    if spec.shed && !shard.admit() {
        shard.metrics.borrow_mut().busy_rejections[index] += 1;
        return (
            index,
            Handled::Now(Reply::error(ErrorCode::Busy, "the shard is over its in-flight limit")),
        );
    }
    let scope = match spec.access {
        Access::Public | Access::ScopeWithFacts(_) => None,
        Access::Authenticated => Some(None),
        Access::Scope(scope) => Some(Some(scope)),
    };
    if let Some(scope) = scope
        && let Err(reply) = access::authorize(shard, request, path, scope, Default::default())
    {
        return (index, Handled::Now(reply));
    }
    if spec.access == Access::Public {
        return (index, (spec.handler)(shard, request, &params));
    }
    (index, crate::metering::meter_then(shard, request, &params, spec.handler))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_matches_literals_params_and_methods() {
        let (i, _) = lookup(Method::Get, "/healthz").unwrap();
        assert_eq!(ROUTES[i].pattern, "/healthz");
        let (i, _) = lookup(Method::Head, "/healthz").unwrap();
        assert_eq!(ROUTES[i].pattern, "/healthz");
        assert_eq!(
            lookup(Method::Post, "/healthz").unwrap_err(),
            Miss::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(lookup(Method::Get, "/healthz/x").unwrap_err(), Miss::NotFound);
        assert_eq!(lookup(Method::Get, "/nope").unwrap_err(), Miss::NotFound);
        let params = match_pattern("/v1/tx/{txid}", "/v1/tx/tx_abc").unwrap();
        assert_eq!(params.get(0), Some("tx_abc"));
        assert!(match_pattern("/v1/tx/{txid}", "/v1/tx/").is_none());
        assert!(match_pattern("/v1/tx/{txid}", "/v1/tx/a/b").is_none());
    }

    #[test]
    fn labels_are_unique() {
        let mut labels: Vec<_> = (0..ROUTE_LABEL_COUNT).map(route_label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ROUTE_LABEL_COUNT);
    }
}
