//! ron-load: the open-loop load generator of SPEC §10, its workloads, sweeps
//! and reports.

pub mod baselines;
pub mod compare;
pub mod engine;
pub mod html;
pub mod index_workload;
pub mod passport_workload;
pub mod plot;
pub mod report;
pub mod reward_vectors;
pub mod reward_workload;
pub mod soak;
pub mod suite;
pub mod sweep;
pub mod transport_workload;
pub mod wallet_workload;
pub mod workload;

use std::net::SocketAddr;
use std::time::Duration;

/// One blocking HTTP/1.1 exchange (`Connection: close`), for setting a run
/// up or reading the node after it: the body of a 2xx answer.
pub fn fetch(
    target: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(target)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: ron-load\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
    }
    if let Some(body) = json {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(json.unwrap_or(""));
    stream.write_all(head.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no answer from {target}{path}"))?;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.1 2"),
        "{path}: {}",
        String::from_utf8_lossy(&response[..at.min(200)])
    );
    Ok(response[at + 4..].to_vec())
}

/// Parses `10s`, `500ms`, `2m` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("not a duration: {text}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {text} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("10s").unwrap().as_millis(), 10_000);
        assert_eq!(super::parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(super::parse_duration("3").unwrap().as_millis(), 3000);
        assert!(super::parse_duration("3h").is_err());
    }
}
