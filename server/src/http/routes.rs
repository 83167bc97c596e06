//! The route table and the one dispatch step every request goes through:
//! match, shed, authorize and meter (the gate), handle.
//!
//! Each service adds its routes at start (`crate::service::Service::routes`);
//! every shard builds the same table, in registry order, so a route's slot
//! (its metrics label) is the same everywhere.

use crate::core::Core;
use crate::http::reply::{CorrId, Handled, Reply};
use crate::limits::ROUTE_PARAMS_MAX;
use ron_proto::ErrorCode;
use ron_proto::error::ErrorStyle;
use ron_proto::http::{Head, Method, query_param};
use serde::Deserialize;
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
    /// and amount the request is about.
    ScopeWithFacts(&'static str),
}

/// Whether a route is refused with 429 while the shard is over
/// `inflight_per_shard_max`. Ops routes are not, so an overloaded node can
/// still be watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    Yes,
    No,
}

pub type Handler = Rc<dyn Fn(&Request<'_>, &Params<'_>) -> Handled>;

pub struct Route {
    pub method: Method,
    /// Literal segments and `{name}` parameters.
    pub pattern: &'static str,
    pub access: Access,
    pub shed: Shed,
    /// How its errors are written (gate refusals included).
    pub errors: ErrorStyle,
    pub handler: Handler,
}

impl Route {
    /// Writes the route's errors in `style` (an original's clients expect
    /// its envelope).
    pub fn errors(&mut self, style: ErrorStyle) -> &mut Route {
        self.errors = style;
        self
    }
}

/// What stands between a protected route and its handler: the passport's
/// token check and its counting caveats.
pub trait Gate {
    /// Checks the request's token for `access` (a `ScopeWithFacts` route's
    /// handler checks it itself), counts it, and runs `handler` if both
    /// allow it.
    fn admit(
        &self,
        request: &Request<'_>,
        path: &str,
        params: &Params<'_>,
        access: Access,
        handler: &Handler,
    ) -> Handled;
}

/// Every route of a shard.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    gate: Option<Rc<dyn Gate>>,
}

impl RouteTable {
    /// Adds a route answered by `handler` on `service`; its errors are in
    /// the standard envelope unless `Route::errors` says otherwise.
    pub fn add<S: 'static>(
        &mut self,
        service: &Rc<S>,
        method: Method,
        pattern: &'static str,
        access: Access,
        shed: Shed,
        handler: fn(&Rc<S>, &Request<'_>, &Params<'_>) -> Handled,
    ) -> &mut Route {
        assert!(
            !self.routes.iter().any(|r| r.method == method && r.pattern == pattern),
            "{} {pattern} is routed twice",
            method.as_str()
        );
        let params = pattern.split('/').filter(|segment| segment.starts_with('{')).count();
        assert!(
            params <= ROUTE_PARAMS_MAX,
            "{pattern} has more than {ROUTE_PARAMS_MAX} parameters"
        );
        let service = service.clone();
        let handler: Handler = Rc::new(move |request, params| handler(&service, request, params));
        let errors = ErrorStyle::Standard;
        self.routes.push(Route { method, pattern, access, shed, errors, handler });
        self.routes.last_mut().expect("just pushed")
    }

    /// Sets who checks protected routes.
    pub fn set_gate(&mut self, gate: Rc<dyn Gate>) {
        assert!(self.gate.is_none(), "one gate per node");
        self.gate = Some(gate);
    }

    /// Checks the table is complete: a protected route needs a gate.
    pub fn check(&self) {
        if let Some(route) = self.routes.iter().find(|r| r.access != Access::Public) {
            assert!(
                self.gate.is_some(),
                "{} needs a token but no service checks tokens",
                route.pattern
            );
        }
    }

    /// The routes' patterns, in slot order.
    pub fn labels(&self) -> Vec<&'static str> {
        self.routes.iter().map(|r| r.pattern).collect()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Finds the route of `method path`. HEAD is served by GET routes.
    pub fn lookup<'a>(&self, method: Method, path: &'a str) -> Result<(usize, Params<'a>), Miss> {
        let wanted = if method == Method::Head { Method::Get } else { method };
        let mut allow = None;
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(params) = match_pattern(route.pattern, path) {
                if route.method == wanted {
                    return Ok((i, params));
                }
                allow.get_or_insert(match route.method {
                    Method::Get => "GET, HEAD",
                    other => other.as_str(),
                });
            }
        }
        Err(allow.map_or(Miss::NotFound, Miss::MethodNotAllowed))
    }

    /// Matches, sheds, authorizes and hands the request to its handler.
    /// Returns the route's metrics slot (the table's length for a request
    /// that matched none) with the answer.
    pub fn dispatch(&self, core: &Core, request: &Request<'_>) -> (usize, Handled) {
        let unmatched = self.routes.len();
        let Ok(path) = std::str::from_utf8(request.head.path.of(request.raw)) else {
            return (
                unmatched,
                Handled::Now(Reply::error(ErrorCode::BadRequest, "the path is not UTF-8")),
            );
        };
        let (index, params) = match self.lookup(request.head.method, path) {
            Ok(found) => found,
            Err(Miss::NotFound) => {
                return (
                    unmatched,
                    Handled::Now(Reply::error(ErrorCode::NotFound, "no such route")),
                );
            }
            Err(Miss::MethodNotAllowed(allow)) => {
                let mut reply =
                    Reply::error(ErrorCode::MethodNotAllowed, "method not allowed on this route");
                reply.allow = Some(allow);
                return (unmatched, Handled::Now(reply));
            }
        };
        let route = &self.routes[index];
        let handled = if route.shed == Shed::Yes && !core.admit() {
            core.metrics.borrow_mut().busy_rejections[index] += 1;
            Handled::Now(Reply::error(ErrorCode::Busy, "the shard is over its in-flight limit"))
        } else if route.access == Access::Public {
            (route.handler)(request, &params)
        } else {
            let gate = self.gate.as_ref().expect("checked at start");
            gate.admit(request, path, &params, route.access, &route.handler)
        };
        (index, styled(handled, route.errors))
    }
}

/// The answer with its errors written in `style`.
fn styled(handled: Handled, style: ErrorStyle) -> Handled {
    match (handled, style) {
        (handled, ErrorStyle::Standard) => handled,
        (Handled::Now(reply), style) => Handled::Now(reply.styled(style)),
        (Handled::Later(answer), style) => {
            Handled::Later(Box::pin(async move { answer.await.styled(style) }))
        }
    }
}

/// Path parameters of a matched route, in pattern order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Params<'a> {
    values: [&'a str; ROUTE_PARAMS_MAX],
    count: usize,
}

impl<'a> Params<'a> {
    /// The parameter as it came on the wire.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        self.values[..self.count].get(i).copied()
    }

    /// The parameter percent-decoded, as axum's `Path` gives it (`name%3Ax`
    /// is `name:x`); a decoding that is not UTF-8 stays as it came, for the
    /// route's own validation to refuse.
    pub fn decoded(&self, i: usize) -> Option<Cow<'a, str>> {
        let raw = self.get(i)?;
        if !raw.contains('%') {
            return Some(Cow::Borrowed(raw));
        }
        Some(percent_encoding::percent_decode_str(raw).decode_utf8().unwrap_or(Cow::Borrowed(raw)))
    }

    /// Parameters kept as owned strings (a request answered later).
    pub fn from_values(values: &'a [String]) -> Params<'a> {
        let mut params = Params::default();
        for value in values.iter().take(ROUTE_PARAMS_MAX) {
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
                    if actual.is_empty() || params.count == ROUTE_PARAMS_MAX {
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

/// One complete request, borrowed from the connection's buffers.
pub struct Request<'a> {
    pub head: &'a Head,
    /// The buffer `head`'s spans index into.
    pub raw: &'a [u8],
    pub body: &'a [u8],
    /// `raw` as shared bytes, when the front handed over the connection's
    /// buffer (a large body that is all the buffer holds): see
    /// [`Request::body_bytes`].
    pub shared: Option<&'a bytes::Bytes>,
    pub corr_id: CorrId,
    pub socket: RawFd,
    pub received_at: Instant,
}

impl Request<'_> {
    /// The body, owned: shared with the connection's buffer when the front
    /// handed it over (no copy: a 26 MB body copied on the shard's thread
    /// holds up every other request for milliseconds), else copied.
    pub fn body_bytes(&self) -> bytes::Bytes {
        match self.shared {
            Some(shared) => shared.slice_ref(self.body),
            None => bytes::Bytes::copy_from_slice(self.body),
        }
    }

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

    /// Whether `If-None-Match` names `etag` (as sent in `ETag`, quotes
    /// included), or is `*`: the client's copy is current.
    pub fn if_none_match(&self, etag: &[u8]) -> bool {
        etag_current(self.head.if_none_match.map(|span| span.of(self.raw)), etag)
    }

    /// The JSON body as `T`: 415 unless it says JSON, 400 if it does not parse.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Reply> {
        self.json_in(&mut Vec::new())
    }

    /// `json`, with `T`'s strings borrowed from `copy`: the body is copied
    /// there and simd-json unescapes its strings in place.
    pub fn json_in<'b, T: serde::Deserialize<'b>>(
        &self,
        copy: &'b mut Vec<u8>,
    ) -> Result<T, Reply> {
        if self.head.media_type != ron_proto::http::MediaType::Json {
            return Err(Reply::error(
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            ));
        }
        copy.clear();
        copy.extend_from_slice(self.body);
        simd_json::serde::from_slice(copy)
            .map_err(|e| Reply::error(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
    }

    /// The JSON body as `T`, refused as axum's `Json` refuses it: 415
    /// unless it says JSON, 400 if it is not JSON, 422 if it is JSON of
    /// another shape (an unknown or missing field, a wrong type).
    pub fn json_shaped<T: serde::de::DeserializeOwned>(&self) -> Result<T, Reply> {
        self.says_json()?;
        shaped_json(self.body)
    }

    /// 415 unless the body says it is JSON.
    pub fn says_json(&self) -> Result<(), Reply> {
        if self.head.media_type != ron_proto::http::MediaType::Json {
            return Err(Reply::error(
                ErrorCode::UnsupportedMediaType,
                "the body must be application/json",
            ));
        }
        Ok(())
    }
}

/// `bytes` as `T`: 400 if they are not JSON, 422 if they are JSON of
/// another shape (serde_json tells them apart in one pass); callable off
/// the shard (a large body parsed on a worker).
pub fn shaped_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Reply> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            Reply::error(ErrorCode::Unprocessable, format!("the JSON body does not fit: {e}"))
        }
        _ => Reply::error(ErrorCode::BadRequest, format!("invalid JSON body: {e}")),
    })
}

/// Whether an `If-None-Match` value names `etag` (quotes included) or is
/// `*`.
pub fn etag_current(if_none_match: Option<&[u8]>, etag: &[u8]) -> bool {
    if_none_match.is_some_and(|value| {
        value == b"*"
            || value.split(|b| *b == b',').any(|tag| {
                let tag = tag.trim_ascii();
                tag.strip_prefix(b"W/").unwrap_or(tag) == etag
            })
    })
}

/// An amount: a u128 as a decimal string, or a JSON integer. A string is
/// read where it lies (no copy, no buffering as an untagged enum would);
/// one that is not a decimal u128 is refused by `value`, with the others'
/// checks.
pub enum Amount {
    /// A decimal string's value (`None`: not a decimal u128).
    Text(Option<u128>),
    Number(u64),
}

impl Amount {
    /// The amount, which must be positive.
    pub fn value(self) -> Result<u128, String> {
        let amount = match self {
            Amount::Number(n) => u128::from(n),
            Amount::Text(parsed) => {
                parsed.ok_or_else(|| "amount must be a decimal u128".to_owned())?
            }
        };
        if amount == 0 {
            return Err("amount must be positive".to_owned());
        }
        Ok(amount)
    }

    /// `text` as an amount: 1..=39 decimal digits that fit a u128.
    fn of_text(text: &str) -> Amount {
        let decimal = (1..=39).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
        Amount::Text(decimal.then(|| text.parse::<u128>().ok()).flatten())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Amount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal string or a non-negative integer")
            }
            fn visit_u64<E>(self, n: u64) -> Result<Amount, E> {
                Ok(Amount::Number(n))
            }
            // simd-json hands integers that fit an i64 as one.
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Amount, E> {
                let n = u64::try_from(n)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))?;
                Ok(Amount::Number(n))
            }
            fn visit_str<E>(self, text: &str) -> Result<Amount, E> {
                Ok(Amount::of_text(text))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An amount as either parser reads it: a decimal string or a
    /// non-negative integer; anything else is a bad body or a bad amount.
    #[test]
    fn amounts_are_decimal_strings_or_non_negative_integers() {
        #[derive(Deserialize)]
        struct Body {
            a: Amount,
        }
        let max = u128::MAX.to_string();
        let over = "340282366920938463463374607431768211456"; // u128::MAX + 1
        let forty_digits = format!("1{}", "0".repeat(39));
        let cases: [(String, Option<Result<u128, &str>>); 11] = [
            (r#"{"a":"12"}"#.into(), Some(Ok(12))),
            (format!(r#"{{"a":"{forty_digits}"}}"#), Some(Err("amount must be a decimal u128"))),
            (r#"{"a":""}"#.into(), Some(Err("amount must be a decimal u128"))),
            (r#"{"a":12}"#.into(), Some(Ok(12))),
            (format!(r#"{{"a":"{max}"}}"#), Some(Ok(u128::MAX))),
            (format!(r#"{{"a":"{over}"}}"#), Some(Err("amount must be a decimal u128"))),
            (r#"{"a":"1x"}"#.into(), Some(Err("amount must be a decimal u128"))),
            (r#"{"a":"0"}"#.into(), Some(Err("amount must be positive"))),
            (r#"{"a":-1}"#.into(), None),
            (r#"{"a":1.5}"#.into(), None),
            (r#"{"a":null}"#.into(), None),
        ];
        for (json, expected) in cases {
            let simd = simd_json::serde::from_slice::<Body>(&mut json.clone().into_bytes());
            let serde = serde_json::from_str::<Body>(&json);
            for parsed in [simd.map_err(|e| e.to_string()), serde.map_err(|e| e.to_string())] {
                let got = parsed.ok().map(|body| body.a.value());
                let expected = expected.map(|e| e.map_err(str::to_owned));
                assert_eq!(got, expected, "{json}");
            }
        }
    }

    fn table() -> RouteTable {
        let mut table = RouteTable::default();
        let service = Rc::new(());
        let handler = |_: &Rc<()>, _: &Request<'_>, _: &Params<'_>| {
            Handled::Now(Reply::json_static(200, b"{}"))
        };
        table.add(&service, Method::Get, "/healthz", Access::Public, Shed::No, handler);
        table.add(&service, Method::Get, "/v1/tx/{txid}", Access::Public, Shed::Yes, handler);
        table
    }

    #[test]
    fn lookup_matches_literals_params_and_methods() {
        let table = table();
        let (i, _) = table.lookup(Method::Get, "/healthz").unwrap();
        assert_eq!(table.labels()[i], "/healthz");
        let (i, _) = table.lookup(Method::Head, "/healthz").unwrap();
        assert_eq!(table.labels()[i], "/healthz");
        assert_eq!(
            table.lookup(Method::Post, "/healthz").unwrap_err(),
            Miss::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(table.lookup(Method::Get, "/healthz/x").unwrap_err(), Miss::NotFound);
        assert_eq!(table.lookup(Method::Get, "/nope").unwrap_err(), Miss::NotFound);
        let (_, params) = table.lookup(Method::Get, "/v1/tx/tx_abc").unwrap();
        assert_eq!(params.get(0), Some("tx_abc"));
        assert!(match_pattern("/v1/tx/{txid}", "/v1/tx/").is_none());
        assert!(match_pattern("/v1/tx/{txid}", "/v1/tx/a/b").is_none());
    }

    #[test]
    #[should_panic(expected = "routed twice")]
    fn a_route_is_added_once() {
        let mut table = table();
        let service = Rc::new(());
        table.add(&service, Method::Get, "/healthz", Access::Public, Shed::No, |_, _, _| {
            Handled::Now(Reply::json_static(200, b"{}"))
        });
    }
}
