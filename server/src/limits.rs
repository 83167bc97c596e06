//! Internal bounds that are not configuration, and the memory budget.
//!
//! Per shard, worst case (defaults in brackets):
//! * provided receive buffers: `executor.recv_buffers × recv_buffer_bytes` [1024 × 4 KiB = 4 MiB]
//! * socket ring: `socket_ring_entries` SQEs (64 B) + 4× CQEs (16 B) [1024: 128 KiB]
//! * per connection: input up to `header_max_bytes + body_max_bytes + CHUNK_FRAMING_BYTES_MAX`
//!   while a request is being received, output up to [`OUTPUT_BYTES_MAX`] plus one more
//!   response, and `pipeline_depth_max` parked responses; idle connections keep
//!   [`CONNECTION_BUFFER_BYTES`] each for input and output.
//!   [4096 connections × 8 KiB idle = 32 MiB; the worst case of every connection mid-body at
//!   once is 4096 × ~2 MiB, which is why `connections_per_shard_max` is a config knob.]
//! * metrics: one latency histogram per route (~30 KiB each) [~12 routes: 360 KiB].
//! * glommio: `executor.io_memory_kib` of locked memory [512 KiB].

use std::time::Duration;

/// Initial and resting capacity of a connection's input and output buffers.
pub const CONNECTION_BUFFER_BYTES: usize = 4096;
/// Responses queued on one connection before the front stops reading its
/// requests (a client that pipelines without reading).
pub const OUTPUT_BYTES_MAX: usize = 1 << 20;
/// A closing connection reads and drops what the peer still sends for at most
/// this long, so the peer sees our last response instead of a reset.
pub const LINGER: Duration = Duration::from_millis(1000);
/// Timers (header, body, idle, linger) are checked at least this often...
pub const SWEEP_INTERVAL_MAX: Duration = Duration::from_millis(250);
/// ...and at most this often.
pub const SWEEP_INTERVAL_MIN: Duration = Duration::from_millis(5);
/// Keys given to `/v1/node/owner`, in bytes.
pub const ROUTING_KEY_BYTES_MAX: usize = 256;
/// Accepted `X-Corr-ID` values, in bytes; longer ones are replaced.
pub const CORR_ID_BYTES_MAX: usize = 64;

/// Giving back a reservation whose request did not commit (ledger and
/// wallet): a busy owner is asked again, at most this often. Worst case
/// about 1.5 s of waiting; one that still refuses is logged, and its
/// reservation stays until a restart (issue 15 gives reservations a
/// deadline).
pub const RELEASE_RETRY: crate::retry::Retry = crate::retry::Retry {
    attempts_max: 40,
    backoff_first: std::time::Duration::from_micros(200),
    backoff_max: std::time::Duration::from_millis(50),
};
