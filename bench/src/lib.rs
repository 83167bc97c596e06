//! ron-load: the open-loop load generator of SPEC §10, its workloads, sweeps
//! and reports.

pub mod engine;
pub mod passport_workload;
pub mod report;
pub mod sweep;
pub mod wallet_workload;
pub mod workload;

use std::time::Duration;

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
