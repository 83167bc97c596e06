//! What a handler answers, and how an answer becomes HTTP/1.1 bytes.

use crate::core::mesh::MeshError;
use crate::limits::CORR_ID_BYTES_MAX;
use crate::log::LinkError;
use ron_proto::ErrorCode;
use ron_proto::error::{ErrorStyle, Reason, status_reason, write_error};
use std::borrow::Cow;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    Json,
    Text,
    Prometheus,
    Binary,
}

impl ContentType {
    const fn header(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Text => "text/plain; charset=utf-8",
            ContentType::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            ContentType::Binary => "application/octet-stream",
        }
    }
}

#[derive(Debug)]
pub enum Body {
    Empty,
    Static(&'static [u8]),
    /// The bytes the handler left in its shard's scratch buffer (synchronous
    /// answers only).
    Scratch,
    Owned(Vec<u8>),
    /// The JSON error envelope, written with the request's correlation id
    /// in its route's style.
    Error {
        style: ErrorStyle,
        code: ErrorCode,
        message: Cow<'static, str>,
        missing: Vec<String>,
        reasons: Vec<Reason>,
    },
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: ContentType,
    pub body: Body,
    pub retry_after_s: Option<u32>,
    pub allow: Option<&'static str>,
    /// Close the connection after this answer.
    pub close: bool,
    /// Further headers (`ETag`, `Cache-Control`, ...); boxed, as few
    /// answers have any and every answer moves a `Reply`.
    pub headers: Option<Box<Vec<(&'static str, String)>>>,
}

impl Reply {
    pub fn new(status: u16, content_type: ContentType, body: Body) -> Reply {
        Reply {
            status,
            content_type,
            body,
            retry_after_s: None,
            allow: None,
            close: false,
            headers: None,
        }
    }

    pub fn json_static(status: u16, body: &'static [u8]) -> Reply {
        Reply::new(status, ContentType::Json, Body::Static(body))
    }

    pub fn json_scratch(status: u16) -> Reply {
        Reply::new(status, ContentType::Json, Body::Scratch)
    }

    pub fn json_owned(status: u16, body: Vec<u8>) -> Reply {
        Reply::new(status, ContentType::Json, Body::Owned(body))
    }

    pub fn error(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Reply {
        let mut reply = Reply::new(
            code.http_status(),
            ContentType::Json,
            Body::Error {
                style: ErrorStyle::Standard,
                code,
                message: message.into(),
                missing: Vec::new(),
                reasons: Vec::new(),
            },
        );
        if code.retryable() && code != ErrorCode::RequestTimeout {
            reply.retry_after_s = Some(1);
        }
        reply
    }

    /// An error that says why items of a batch were refused.
    pub fn rejected(
        code: ErrorCode,
        message: impl Into<Cow<'static, str>>,
        why: Vec<Reason>,
    ) -> Reply {
        let mut reply = Reply::error(code, message);
        if let Body::Error { reasons, .. } = &mut reply.body {
            *reasons = why;
        }
        reply
    }

    /// An error after which the connection cannot be trusted to stay in sync.
    pub fn fatal(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Reply {
        Reply { close: true, ..Reply::error(code, message) }
    }

    pub fn add_header(&mut self, name: &'static str, value: String) {
        self.headers.get_or_insert_default().push((name, value));
    }

    /// Writes an error body in `style` (a route's: see `Route::errors`).
    pub fn styled(mut self, errors: ErrorStyle) -> Reply {
        if let Body::Error { style, .. } = &mut self.body {
            *style = errors;
        }
        self
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        match &self.body {
            Body::Error { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The answer to a cross-shard call that failed.
pub fn mesh_failure(error: MeshError) -> Reply {
    match error {
        MeshError::Busy => Reply::error(ErrorCode::Busy, "too many calls to the owner shard"),
        MeshError::Closed => Reply::error(ErrorCode::Unavailable, "the owner shard has stopped"),
        MeshError::TimedOut => {
            Reply::error(ErrorCode::Unavailable, "the owner shard did not answer in time")
        }
    }
}

/// The answer to a call to the committer that failed.
pub fn link_failure(error: LinkError) -> Reply {
    match error {
        LinkError::Busy => Reply::error(ErrorCode::Busy, "too many ledger calls in flight"),
        LinkError::Closed => {
            Reply::error(ErrorCode::Unavailable, "the ledger committer has stopped")
        }
    }
}

/// The answer to a write while the log is in safe mode.
pub fn degraded(reason: Option<&str>) -> Reply {
    match reason {
        Some(reason) => {
            Reply::error(ErrorCode::Degraded, format!("the ledger is in safe mode: {reason}"))
        }
        None => Reply::error(ErrorCode::Degraded, "the ledger is in safe mode"),
    }
}

/// A handler's answer: now, or later from a task on the shard.
pub enum Handled {
    Now(Reply),
    Later(Pin<Box<dyn Future<Output = Reply>>>),
}

/// The request's correlation id: the client's `X-Corr-ID`/`X-Request-Id` when
/// it is safe to echo, else one made up from the shard and a counter.
#[derive(Clone, Copy)]
pub struct CorrId {
    bytes: [u8; CORR_ID_BYTES_MAX],
    len: u8,
}

impl CorrId {
    pub fn from_client(value: &[u8]) -> Option<CorrId> {
        let safe = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:".contains(b);
        if value.is_empty() || value.len() > CORR_ID_BYTES_MAX || !value.iter().all(safe) {
            return None;
        }
        let mut id = CorrId { bytes: [0; CORR_ID_BYTES_MAX], len: value.len() as u8 };
        id.bytes[..value.len()].copy_from_slice(value);
        Some(id)
    }

    pub fn generate(shard: usize, counter: u64) -> CorrId {
        let mut id = CorrId { bytes: [0; CORR_ID_BYTES_MAX], len: 0 };
        let mut cursor = std::io::Cursor::new(&mut id.bytes[..]);
        write!(cursor, "s{shard}-{counter:x}").expect("fits in 64 bytes");
        id.len = cursor.position() as u8;
        id
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("ASCII by construction")
    }
}

impl std::fmt::Debug for CorrId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the connection carries on after this answer.
#[derive(Clone, Copy, Debug)]
pub struct Framing {
    pub keep_alive: bool,
    pub http10: bool,
    /// A HEAD request: headers only.
    pub head_only: bool,
}

/// Appends the whole response to `out`. `scratch` holds the body of
/// [`Body::Scratch`] answers; `error_body` is reused for error envelopes.
pub fn write_response(
    out: &mut Vec<u8>,
    reply: &Reply,
    scratch: &[u8],
    error_body: &mut Vec<u8>,
    corr_id: &CorrId,
    framing: Framing,
    date: &[u8],
) {
    let body: &[u8] = match &reply.body {
        Body::Empty => &[],
        Body::Static(bytes) => bytes,
        Body::Scratch => scratch,
        Body::Owned(bytes) => bytes,
        Body::Error { style, code, message, missing, reasons } => {
            error_body.clear();
            write_error(error_body, *style, *code, message, corr_id.as_str(), missing, reasons);
            error_body
        }
    };
    let keep_alive = framing.keep_alive && !reply.close;
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(number.format(reply.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(status_reason(reply.status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    // A 304 describes the representation the client has: no body fields.
    if reply.status != 304 {
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(reply.content_type.header().as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(number.format(body.len()).as_bytes());
    }
    for (name, value) in reply.headers.iter().flat_map(|h| h.iter()) {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"\r\nX-Corr-ID: ");
    out.extend_from_slice(corr_id.as_str().as_bytes());
    if let Some(seconds) = reply.retry_after_s {
        out.extend_from_slice(b"\r\nRetry-After: ");
        out.extend_from_slice(number.format(seconds).as_bytes());
    }
    if let Some(allow) = reply.allow {
        out.extend_from_slice(b"\r\nAllow: ");
        out.extend_from_slice(allow.as_bytes());
    }
    if reply.status == 401 {
        out.extend_from_slice(b"\r\nWWW-Authenticate: Bearer");
    }
    if !keep_alive {
        out.extend_from_slice(b"\r\nConnection: close");
    } else if framing.http10 {
        out.extend_from_slice(b"\r\nConnection: keep-alive");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !framing.head_only {
        out.extend_from_slice(body);
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
