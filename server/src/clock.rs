//! Wall-clock time, read in one place: token validity, log items and
//! counts take it as an input (STYLE: time comes in as an input).

use std::time::SystemTime;

/// Seconds since the Unix epoch.
pub fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
