//! The error codes of SPEC §3 and the JSON error envelope every non-2xx
//! response carries.

use serde::Serialize;

/// Every error a client can see. The set is closed: metrics label values
/// (`rejected_total{reason}`) are drawn from it, so they stay bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    Conflict,
    /// A reward run broke an invariant or overflowed: kept out of emission.
    Quarantined,
    InsufficientFunds,
    NonceConflict,
    IdempotencyConflict,
    TooLarge,
    UnsupportedMediaType,
    LimitsExceeded,
    /// Well-formed JSON that does not fit the body's shape (unknown or
    /// missing fields, wrong types) on routes that keep axum's `Json`
    /// answer for it (the index's).
    Unprocessable,
    Busy,
    HeadersTooLarge,
    Internal,
    Unavailable,
    Degraded,
    /// Something the request waited for (a peer, a lookup) did not answer
    /// by its deadline.
    Timeout,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::Conflict,
        ErrorCode::Quarantined,
        ErrorCode::InsufficientFunds,
        ErrorCode::NonceConflict,
        ErrorCode::IdempotencyConflict,
        ErrorCode::TooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::LimitsExceeded,
        ErrorCode::Unprocessable,
        ErrorCode::Busy,
        ErrorCode::HeadersTooLarge,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Degraded,
        ErrorCode::Timeout,
    ];

    /// The code as it appears in the envelope's `code` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Quarantined => "QUARANTINED",
            ErrorCode::InsufficientFunds => "INSUFFICIENT_FUNDS",
            ErrorCode::NonceConflict => "NONCE_CONFLICT",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::LimitsExceeded => "LIMITS_EXCEEDED",
            ErrorCode::Unprocessable => "UNPROCESSABLE",
            ErrorCode::Busy => "BUSY",
            ErrorCode::HeadersTooLarge => "HEADERS_TOO_LARGE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Degraded => "DEGRADED",
            ErrorCode::Timeout => "TIMEOUT",
        }
    }

    /// The code as a metrics label value (`rejected_total{reason="too_large"}`).
    pub const fn label(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Quarantined => "quarantined",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::NonceConflict => "nonce_conflict",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::LimitsExceeded => "limits_exceeded",
            ErrorCode::Unprocessable => "unprocessable",
            ErrorCode::Busy => "busy",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Degraded => "degraded",
            ErrorCode::Timeout => "timeout",
        }
    }

    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::Conflict
            | ErrorCode::Quarantined
            | ErrorCode::InsufficientFunds
            | ErrorCode::NonceConflict
            | ErrorCode::IdempotencyConflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::LimitsExceeded | ErrorCode::Unprocessable => 422,
            ErrorCode::Busy => 429,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::Degraded => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// Whether a client may retry the same request unchanged later.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RequestTimeout
                | ErrorCode::Busy
                | ErrorCode::Unavailable
                | ErrorCode::Degraded
                | ErrorCode::Timeout
        )
    }

    /// The index of the code in [`ErrorCode::ALL`], for per-code counters.
    pub fn index(self) -> usize {
        ErrorCode::ALL.iter().position(|c| *c == self).expect("ALL lists every code")
    }
}

/// The reason phrase of the status codes this server emits.
pub const fn status_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    code: &'a str,
    http: u16,
    message: &'a str,
    retryable: bool,
    corr_id: &'a str,
    /// What is missing for readiness (`/readyz` only).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    missing: &'a [String],
    /// Why items of a batch were refused (`/ingest`).
    #[serde(skip_serializing_if = "<[Reason]>::is_empty")]
    reasons: &'a [Reason],
}

/// Why item `idx` of a request's batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub idx: u32,
    pub reason: String,
}

/// How a family of routes writes its errors: the envelope of SPEC §3, or
/// the original's where its clients expect that one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorStyle {
    #[default]
    Standard,
    /// svc-index's `{"code": "<lowercase>", "message"}`.
    Index,
    /// svc-dht's `{"error": "<message>"}`.
    Dht,
    /// svc-rewarder's `{"error": {code, message, corr_id, details: {reason}}}`.
    Rewarder,
}

impl ErrorCode {
    /// The code in svc-index's vocabulary.
    pub const fn index_code(self) -> &'static str {
        match self {
            ErrorCode::Busy => "over_capacity",
            ErrorCode::Unavailable | ErrorCode::Degraded => "upstream_unready",
            ErrorCode::Timeout | ErrorCode::RequestTimeout => "timeout",
            other => other.label(),
        }
    }
}

impl ErrorCode {
    /// The code, the `details.reason` and the message's prefix in
    /// svc-rewarder's vocabulary (its 401 is `UNAUTHENTICATED`, its 403
    /// `UNAUTHORIZED`).
    pub const fn rewarder_code(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ErrorCode::BadRequest => ("BAD_REQUEST", "bad_request", "bad request: "),
            ErrorCode::Unauthorized => ("UNAUTHENTICATED", "unauthenticated", "unauthenticated: "),
            ErrorCode::Forbidden => ("UNAUTHORIZED", "unauthorized", "unauthorized: "),
            ErrorCode::Conflict => ("CONFLICT", "conflict", "conflict: "),
            ErrorCode::Quarantined => ("QUARANTINED", "invariant", "quarantined: "),
            ErrorCode::NotFound => ("NOT_FOUND", "not_found", "not found: "),
            ErrorCode::Busy => ("TOO_MANY_REQUESTS", "busy", "busy: "),
            ErrorCode::Unavailable | ErrorCode::Degraded => {
                ("DEPENDENCY_UNAVAILABLE", "dependency", "dependency unavailable: ")
            }
            ErrorCode::Timeout => ("TIMEOUT", "timeout", "timeout: "),
            ErrorCode::Internal => ("INTERNAL", "internal", "internal: "),
            other => (other.as_str(), other.label(), ""),
        }
    }
}

/// Appends an error body in `style` to `out`.
pub fn write_error(
    out: &mut Vec<u8>,
    style: ErrorStyle,
    code: ErrorCode,
    message: &str,
    corr_id: &str,
    missing: &[String],
    reasons: &[Reason],
) {
    #[derive(Serialize)]
    struct Index<'a> {
        code: &'a str,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Dht<'a> {
        error: &'a str,
    }
    #[derive(Serialize)]
    struct Rewarder<'a> {
        error: RewarderError<'a>,
    }
    #[derive(Serialize)]
    struct RewarderError<'a> {
        code: &'a str,
        message: &'a str,
        corr_id: &'a str,
        details: Details<'a>,
    }
    #[derive(Serialize)]
    struct Details<'a> {
        reason: &'a str,
    }
    let written = match style {
        ErrorStyle::Standard => {
            return write_envelope(out, code, message, corr_id, missing, reasons);
        }
        ErrorStyle::Index => {
            simd_json::to_writer(&mut *out, &Index { code: code.index_code(), message })
        }
        ErrorStyle::Dht => simd_json::to_writer(&mut *out, &Dht { error: message }),
        ErrorStyle::Rewarder => {
            let (code, reason, prefix) = code.rewarder_code();
            let message = format!("{prefix}{message}");
            let body = Rewarder {
                error: RewarderError {
                    code,
                    message: &message,
                    corr_id,
                    details: Details { reason },
                },
            };
            simd_json::to_writer(&mut *out, &body)
        }
    };
    written.expect("writing into a Vec cannot fail");
}

/// Appends the JSON error envelope of SPEC §3 to `out`.
pub fn write_envelope(
    out: &mut Vec<u8>,
    code: ErrorCode,
    message: &str,
    corr_id: &str,
    missing: &[String],
    reasons: &[Reason],
) {
    let envelope = Envelope {
        code: code.as_str(),
        http: code.http_status(),
        message,
        retryable: code.retryable(),
        corr_id,
        missing,
        reasons,
    };
    simd_json::to_writer(&mut *out, &envelope).expect("writing into a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes the original svc-rewarder answered.
    #[test]
    fn the_rewarders_envelope_is_the_originals() {
        let written = |code, message: &str, corr_id: &str| {
            let mut out = Vec::new();
            write_error(&mut out, ErrorStyle::Rewarder, code, message, corr_id, &[], &[]);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            written(
                ErrorCode::Conflict,
                "epoch already computed with different policy_hash or inputs_cid",
                "corr-test"
            ),
            r#"{"error":{"code":"CONFLICT","message":"conflict: epoch already computed with different policy_hash or inputs_cid","corr_id":"corr-test","details":{"reason":"conflict"}}}"#
        );
        assert_eq!(
            written(ErrorCode::Quarantined, "mul/div overflow", "q-1"),
            r#"{"error":{"code":"QUARANTINED","message":"quarantined: mul/div overflow","corr_id":"q-1","details":{"reason":"invariant"}}}"#
        );
    }

    #[test]
    fn envelope_is_the_documented_shape() {
        let mut out = Vec::new();
        write_envelope(&mut out, ErrorCode::InsufficientFunds, "needs \"5\"", "c-1", &[], &[]);
        expect_test::expect![[r#"{"code":"INSUFFICIENT_FUNDS","http":409,"message":"needs \"5\"","retryable":false,"corr_id":"c-1"}"#]]
            .assert_eq(std::str::from_utf8(&out).unwrap());
    }

    #[test]
    fn the_originals_styles_are_their_shapes() {
        let mut out = Vec::new();
        write_error(&mut out, ErrorStyle::Index, ErrorCode::Busy, "Over capacity", "c", &[], &[]);
        assert_eq!(out, br#"{"code":"over_capacity","message":"Over capacity"}"#);
        out.clear();
        write_error(
            &mut out,
            ErrorStyle::Dht,
            ErrorCode::BadRequest,
            "invalid node URI",
            "c",
            &[],
            &[],
        );
        assert_eq!(out, br#"{"error":"invalid node URI"}"#);
        assert_eq!(ErrorCode::Timeout.http_status(), 504);
        assert_eq!(ErrorCode::Unavailable.index_code(), "upstream_unready");
    }

    #[test]
    fn every_code_has_a_distinct_label_and_index() {
        let mut labels: Vec<_> = ErrorCode::ALL.iter().map(|c| c.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ErrorCode::ALL.len());
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
            assert!(code.http_status() >= 400);
        }
    }
}
