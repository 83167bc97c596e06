//! Workloads: what request number `i` of a run is. Each generator thread owns
//! its own instance, so a workload may keep state (counters, nonces, a
//! random key space) without locks.

/// One kind of traffic.
pub trait Workload: Send {
    /// Appends request `index` (counted per thread) to `out`.
    fn request(&mut self, index: u64, out: &mut Vec<u8>);
}

/// How to build a thread's workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadSpec {
    /// `GET path` with no token.
    Get { path: String },
    /// `GET path` with `Authorization: Bearer <token>`.
    AuthGet { path: String, token: String },
}

impl WorkloadSpec {
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadSpec::Get { .. } => "get",
            WorkloadSpec::AuthGet { .. } => "auth-get",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            WorkloadSpec::Get { path } => format!("GET {path}"),
            WorkloadSpec::AuthGet { path, .. } => format!("GET {path} (bearer token)"),
        }
    }

    pub fn build(&self) -> Box<dyn Workload> {
        match self {
            WorkloadSpec::Get { path } => Box::new(Fixed::new(path, None)),
            WorkloadSpec::AuthGet { path, token } => Box::new(Fixed::new(path, Some(token))),
        }
    }
}

/// The same request every time, prepared once.
struct Fixed {
    bytes: Vec<u8>,
}

impl Fixed {
    fn new(path: &str, token: Option<&str>) -> Fixed {
        let mut text = format!("GET {path} HTTP/1.1\r\nHost: ron-load\r\n");
        if let Some(token) = token {
            text.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
        }
        text.push_str("\r\n");
        Fixed { bytes: text.into_bytes() }
    }
}

impl Workload for Fixed {
    fn request(&mut self, _index: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_requests_are_complete_heads() {
        let mut workload =
            WorkloadSpec::AuthGet { path: "/v1/x".into(), token: "ron1.abc\n".into() }.build();
        let mut out = Vec::new();
        workload.request(0, &mut out);
        workload.request(1, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\r\n\r\n").count(), 2);
        assert!(text.starts_with(
            "GET /v1/x HTTP/1.1\r\nHost: ron-load\r\nAuthorization: Bearer ron1.abc\r\n\r\n"
        ));
    }
}
