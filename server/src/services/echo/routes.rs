//! Echo's routes.

use super::{Answer, Call, Echo, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::http::reply::{degraded, link_failure, mesh_failure};
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
                let body = format!("{{\"key\":\"{key}\",\"seq\":{seq_start}}}");
                Reply::json_owned(200, body.into_bytes())
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
