//! Every internal bound of the node (the operator's are in `config`), and
//! the memory budget: one line per consumer, its worst case in bytes,
//! computed from the config ([`memory_budget`]; `ron-node check-host`
//! prints it).
//!
//! Wire-format limits (token, entry, operation sizes) live with their
//! formats in `ron_proto`, which checks every length against them before
//! allocating.

use crate::config::Config;
use crate::retry::Retry;
use std::time::Duration;

// ---- The node ----

/// A payout issue the ledger refused for now (429, 503): backoff between
/// the `rewarder.ledger_retries_max` retries (the attempts are the config's).
pub const LEDGER_RETRY: Retry = Retry {
    attempts_max: 3,
    backoff_first: Duration::from_millis(10),
    backoff_max: Duration::from_millis(200),
};
/// Binding a port that is still in use at start: a node that just died may
/// hold its ports for a moment (io_uring releases the files of pending
/// requests after the process exits). About 3 s in all.
pub const BIND_RETRY: Retry = Retry {
    attempts_max: 40,
    backoff_first: Duration::from_millis(20),
    backoff_max: Duration::from_millis(100),
};
/// Pending connections per listening socket.
pub const LISTEN_BACKLOG: i32 = 4096;
/// How long `node::start` waits for every shard to serve (after the log's
/// recovery): a guard against a start that hangs, not a bound on a slow
/// one. Shards load their views here (millions of accounts take seconds),
/// and a 2-shard debug build under a full test run once took over 10 s.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

// ---- HTTP ----

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
const _: () = assert!(SWEEP_INTERVAL_MIN.as_millis() < SWEEP_INTERVAL_MAX.as_millis());
/// How long an idle shard with no open connection parks between guard
/// wake-ups (`http::front::Park`): an idle node wakes ten times a second.
pub const IDLE_PARK_TIMEOUT: Duration = Duration::from_millis(100);
/// Path parameters of one route pattern.
pub const ROUTE_PARAMS_MAX: usize = 4;
/// Keys given to `/v1/node/owner`, in bytes.
pub const ROUTING_KEY_BYTES_MAX: usize = 256;
/// Accepted `X-Corr-ID` values, in bytes; longer ones are replaced.
pub const CORR_ID_BYTES_MAX: usize = 64;

// ---- Outbound HTTP (`http::client`) ----

/// A connect that takes longer fails with `ClientError::Connect` (kind
/// `TimedOut`), whatever the request's deadline: a peer that does not
/// answer a SYN in this long is down or unreachable.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle keep-alive connections kept per peer: enough for the few calls a
/// lookup has in flight to one peer (`index.alpha` plus a hedge).
pub const CLIENT_IDLE_PER_PEER_MAX: usize = 4;
/// Peers whose idle connections are kept.
pub const CLIENT_PEERS_MAX: usize = 64;
/// Outbound connections open at once per shard, idle ones included. An
/// idle connection is closed to make room for a new one when all are open.
pub const CLIENT_CONNECTIONS_MAX: usize = 128;
/// An idle connection is closed after this long. Shorter than the server's
/// default `idle_timeout_ms` (60 s), so that between two ron-nodes the
/// client normally closes first and seldom sends on a connection the peer
/// is closing.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// A request that fails on a reused connection before any byte of its
/// answer arrived (the peer closed the idle connection as we sent on it) is
/// sent again on a new connection this many times, if its method is
/// idempotent.
pub const CLIENT_STALE_RETRIES_MAX: u32 = 1;
/// Slots per allowed connection: a closed connection holds its slot until
/// the ring is done with it, so the slots of `connections_max` live ones
/// and as many dying ones are bounded together.
pub const CLIENT_SLOTS_PER_CONNECTION: usize = 2;

const _: () = assert!(CLIENT_IDLE_PER_PEER_MAX <= CLIENT_CONNECTIONS_MAX);
const _: () = assert!(CLIENT_CONNECTIONS_MAX * CLIENT_SLOTS_PER_CONNECTION <= u32::MAX as usize);

// ---- The log ----

/// Calls one shard may have in flight to the committer, at least (the rest
/// of `ledger.queue_capacity` is shared out between the shards).
pub const LOG_INFLIGHT_PER_SHARD_MIN: usize = 64;
/// Roots in one `/roots` page.
pub const ROOTS_PAGE_MAX: usize = 1000;
/// Address space reserved per shard view; the file grows only with what it
/// holds.
pub const VIEW_MAP_BYTES: usize = 32 << 30;
/// The log index's LMDB map: address space, not memory (about 110 bytes
/// an entry: its id, two tree nodes and their keys).
pub const INDEX_MAP_BYTES: usize = 256 << 30;
/// How often the log index is checkpointed while entries commit.
pub const INDEX_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Entry ids go to the log index in batches of at least this many (and an
/// eighth of those there), or once that many entries have passed since the
/// last batch: a crash replays up to that much of the log.
pub const INDEX_IDS_BATCH_MIN: u64 = 1 << 18;
/// The block cache of a view's LSM tree (fjall may keep some filter and
/// index blocks outside it, by its pinning policy; not measured).
pub const VIEW_LSM_CACHE_BYTES: u64 = 16 << 20;
/// Sorted runs (one per view write) an LSM table keeps before one merge
/// takes them all: more runs merge less often (less CPU and fewer bytes
/// rewritten) and make a read look in more of them (`bench/RESULTS.md`,
/// "Receipts' txids in an LSM tree").
pub const VIEW_LSM_L0_RUNS: u8 = 16;
/// Tables in one view (LMDB's named databases, the meta included).
pub const VIEW_TABLES_MAX: usize = 64;
/// How often a shard looks at whether its view is due.
pub const VIEW_TICK: Duration = Duration::from_millis(100);
/// How often a shard unmaps the pages of its view that reads mapped.
pub const VIEW_DROP_PAGES_EVERY: Duration = Duration::from_secs(1);
/// A view write's emptied buffers (chunks of keys and values and of change
/// records) are kept for the next write up to this size; the chunks past
/// it, left by a write that carried a backlog, are freed. A transfer's five
/// puts take about 480 bytes of keys and values and five 20-byte change
/// records: 580 bytes. Writes come about once a second under load (each
/// waits for the last); one that waited two seconds at 186 000
/// transfers/s would carry some 216 MB (write sizes were not logged; the
/// profile showed buffers regrown late in a minute). Kept, the chunks are
/// filled again without a page fault. Buffers grown by doubling and freed past the limit
/// were copied at each doubling and faulted in anew: a quarter of a shard's
/// time late in a minute (bench/RESULTS.md).
pub const VIEW_SPARE_BYTES_MAX: usize = 256 << 20;
const _: () = assert!(VIEW_TICK.as_millis() <= VIEW_DROP_PAGES_EVERY.as_millis());

/// Giving back a reservation whose request did not commit (ledger and
/// wallet): while this shard has as many calls in flight to the owner as
/// `limits.mesh_inflight_per_target_max` allows, it asks again, at most
/// this often. Worst case about 1.5 s of waiting; one that still cannot be
/// sent is logged, and its reservation stays until a restart. (A release
/// that is sent is always served: it does not time out.)
pub const RELEASE_RETRY: Retry = Retry {
    attempts_max: 40,
    backoff_first: Duration::from_micros(200),
    backoff_max: Duration::from_millis(50),
};

// ---- The passport ----

/// Tokens in one `/v1/passport/verify_batch`.
pub const VERIFY_BATCH_MAX: usize = 512;
/// Recent revocations a shard remembers its apply lag for.
pub const REVOCATION_LAGS_KEPT: usize = 1024;
/// How long an ML-DSA batch stays open after its first leaf.
pub const PQ_BATCH_WINDOW: Duration = Duration::from_millis(1);
/// Signed batches a shard keeps for `/v1/passport/pq`.
pub const PQ_BATCHES_KEPT: usize = 4096;
/// Closed batches a shard keeps while the workers have no room for them;
/// signed issuance answers 429 while it is full.
pub const PQ_BACKLOG_MAX: usize = 64;
/// A shard sweeps idle rate buckets and spent budgets once it counts this
/// many, at most once a second (`ron_shards::passport::Meters`).
pub const METERS_SWEEP_AFTER: usize = 1 << 20;
/// How often a shard writes its spent `budget.bytes` when one was spent:
/// what a crash may forget (`services::passport::budgets`).
pub const BUDGETS_SAVE_EVERY: Duration = Duration::from_secs(1);

// ---- The wallet ----

/// The longest a hold may wait for its capture or release.
pub const HOLD_TIMEOUT_S_MAX: u32 = 365 * 24 * 3600;
/// The longest id `GET /v1/tx/{txid}` looks up (the original svc-wallet's).
pub const TXID_TEXT_BYTES_MAX: usize = 80;
/// How often a shard looks for holds past their timeout...
pub const HOLD_EXPIRY_TICK: Duration = Duration::from_millis(100);
/// ... and how many it expires per look.
pub const EXPIRIES_PER_TICK_MAX: usize = 256;

// ---- The index ----

/// How often a shard drops dead provider records...
pub const INDEX_PURGE_TICK: Duration = Duration::from_secs(1);
/// ... and how many cids' records it looks through per tick.
pub const INDEX_PURGE_PER_TICK: usize = 1024;
/// `/providers` lists at most this many (the original's clamp).
pub const INDEX_PROVIDERS_LIMIT_MAX: usize = 32;
/// Providers Kademlia keeps per key (its k).
pub const DHT_PROVIDERS_PER_KEY: usize = 20;
/// Commands queued for the DHT thread, at most (a shard's lookup past it
/// answers 429).
pub const DHT_COMMANDS_MAX: usize = 4096;
/// Peers' HTTP addresses the DHT thread remembers (from identify).
pub const DHT_PEER_URLS_MAX: usize = 4096;
/// How long other nodes keep this node's Kademlia provider records...
pub const DHT_PROVIDER_RECORD_TTL: Duration = Duration::from_secs(20 * 60);
/// ... and how often it republishes them, well before they expire.
pub const DHT_REPUBLISH: Duration = Duration::from_secs(10 * 60);
/// How often a node refreshes its routing table (Kademlia's bootstrap;
/// libp2p's default).
pub const DHT_BOOTSTRAP_EVERY: Duration = Duration::from_secs(5 * 60);
/// How long clients may keep an index answer (`Cache-Control`).
pub const INDEX_ANSWER_MAX_AGE: &str = "public, max-age=5";

// ---- Rewarder ----

/// How often each shard looks for emissions owed (quarantine-only mode).
pub const REWARDER_PENDING_TICK: Duration = Duration::from_secs(1);

// ---- Echo ----

/// `/v1/echo-peer` waits this long for the peer's answer.
pub const ECHO_PEER_DEADLINE: Duration = Duration::from_millis(500);
/// `/v1/echo-hash` hashes at most this many times (a job of about a
/// second here).
pub const ECHO_HASH_ROUNDS_MAX: u32 = 1_000_000;

// ---- The ledger ----

/// `idem_id`s of `/ingest`, in bytes.
pub const INGEST_IDEM_ID_BYTES_MAX: usize = 128;

// ---- The memory budget ----

/// One consumer of memory and its worst case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetLine {
    pub consumer: &'static str,
    /// Bytes, per shard or for the whole node (`per_node`).
    pub bytes: u64,
    pub per_node: bool,
    /// How the worst case comes about.
    pub why: &'static str,
}

/// Sizes of things the budget counts that are not bounds themselves.
mod sizes {
    /// A latency histogram (hdrhistogram, 1 ns to 60 s, 2 significant
    /// figures): its counts array (checked by a test).
    pub const LATENCY_HISTOGRAM_BYTES: u64 = 3_840 * 8;
    /// A mesh envelope (type id, call id, a boxed call) in a channel.
    pub const MESH_ENVELOPE_BYTES: u64 = 48;
    /// A signed ML-DSA-65 batch at its largest: 1024 leaves and a signature.
    pub const PQ_BATCH_BYTES: u64 = 1024 * 32 + 3309 + 64;
    /// A verify-cache entry beside its token's text and binary form.
    pub const VERIFY_CACHE_ENTRY_BYTES: u64 = 96;
    /// A rate bucket or budget (`ron_shards::passport::Meters`).
    pub const METER_BYTES: u64 = 64;
    /// A wallet idempotency record (the map's slot and txid; the expiry
    /// order's expiry, slot and txid): 149 B at the maps' worst point,
    /// measured by `testing/tests/memory.rs`.
    pub const IDEM_RECORD_BYTES: u64 = 160;
    /// A Kademlia provider record kept for another node: key, peer id,
    /// expiry, a few addresses, the list and map around it.
    pub const DHT_PROVIDER_RECORD_BYTES: u64 = 320;
}

/// The worst case of every bounded consumer, for `config` on `shards`
/// shards. What grows with the data itself (accounts, holds, log entries)
/// is not here: ARCHITECTURE.md gives its cost per item.
pub fn memory_budget(config: &Config, shards: usize) -> Vec<BudgetLine> {
    let e = &config.executor;
    let l = &config.limits;
    let connections = u64::from(l.connections_per_shard_max);
    let request_bytes =
        (l.header_max_bytes + l.body_max_bytes + ron_proto::http::CHUNK_FRAMING_BYTES_MAX) as u64;
    let routes = 40;
    let line = |consumer, bytes: u64, per_node, why| BudgetLine { consumer, bytes, per_node, why };
    let workers = config.workers_layout(shards);
    let pq_on = config.passport.pq_mode != crate::config::PqMode::Off;
    vec![
        line(
            "socket ring: provided receive buffers",
            u64::from(e.recv_buffers) * e.recv_buffer_bytes as u64,
            false,
            "executor.recv_buffers × recv_buffer_bytes",
        ),
        line(
            "socket ring: submission and completion queues",
            u64::from(e.socket_ring_entries) * (64 + 4 * 16),
            false,
            "socket_ring_entries × (64 B SQE + 4 × 16 B CQE)",
        ),
        line(
            "glommio: registered I/O memory",
            e.io_memory_kib as u64 * 1024,
            false,
            "executor.io_memory_kib (locked; the committer's executor has as much)",
        ),
        line(
            "connections at rest",
            connections * 2 * CONNECTION_BUFFER_BYTES as u64,
            false,
            "connections_per_shard_max × input and output buffers",
        ),
        line(
            "requests being received",
            connections * request_bytes,
            false,
            "connections_per_shard_max × (head + body + chunk framing): every connection \
             mid-body at once; no shard-wide bound yet",
        ),
        line(
            "a gzip body being inflated",
            (l.body_max_bytes * l.decompress_ratio_max) as u64,
            false,
            "body_max_bytes × decompress_ratio_max, one request at a time",
        ),
        line(
            "answers queued on connections",
            connections * (OUTPUT_BYTES_MAX + l.body_max_bytes) as u64,
            false,
            "connections_per_shard_max × (output cap + one more answer): clients that pipeline \
             without reading; no shard-wide bound yet",
        ),
        line(
            "requests answered by tasks",
            u64::from(l.inflight_per_shard_max) * request_bytes,
            false,
            "inflight_per_shard_max × a request copied for a later answer (metering)",
        ),
        line(
            "mesh channels",
            shards as u64
                * 2
                * 2
                * u64::from(l.mesh_inflight_per_target_max)
                * sizes::MESH_ENVELOPE_BYTES,
            false,
            "to and from each shard, twice mesh_inflight_per_target_max envelopes",
        ),
        line(
            "appends waiting for the committer",
            u64::from(l.inflight_per_shard_max) * l.body_max_bytes as u64,
            false,
            "inflight_per_shard_max × an append as large as a body",
        ),
        line(
            "the committer's record buffers",
            2 * u64::from(config.ledger.batch_entries_max)
                * (2 + ron_proto::log::ITEM_BYTES_MAX as u64),
            true,
            "the record being sealed and its aligned copy: batch_entries_max × (2 + ITEM_BYTES_MAX)",
        ),
        line(
            "outbound connections",
            (CLIENT_CONNECTIONS_MAX * CLIENT_SLOTS_PER_CONNECTION) as u64
                * 2
                * CONNECTION_BUFFER_BYTES as u64
                + CLIENT_CONNECTIONS_MAX as u64 * (request_bytes + l.body_max_bytes as u64),
            false,
            "CLIENT_CONNECTIONS_MAX × (an answer's head, body and framing + its decoded body), \
             and every slot's resting buffers",
        ),
        line(
            "metrics histograms",
            (routes + 8) * sizes::LATENCY_HISTOGRAM_BYTES,
            false,
            "one latency histogram per route (~40) and per series (~8)",
        ),
        line(
            "verify cache",
            config.passport.verify_cache_bytes_max
                + u64::from(config.passport.verify_cache_entries_max)
                    * sizes::VERIFY_CACHE_ENTRY_BYTES,
            false,
            "verify_cache_bytes_max of tokens + verify_cache_entries_max entries",
        ),
        line(
            "rate buckets and budgets",
            METERS_SWEEP_AFTER as u64 * sizes::METER_BYTES,
            false,
            "METERS_SWEEP_AFTER entries before a sweep (idle ones go within a second)",
        ),
        line(
            "ML-DSA signed batches",
            if pq_on {
                (PQ_BATCHES_KEPT + PQ_BACKLOG_MAX) as u64 * sizes::PQ_BATCH_BYTES
            } else {
                0
            },
            false,
            "PQ_BATCHES_KEPT + PQ_BACKLOG_MAX batches of 1024 leaves (none with pq_mode off)",
        ),
        line(
            "revocation lags",
            REVOCATION_LAGS_KEPT as u64 * 16,
            false,
            "REVOCATION_LAGS_KEPT × (seq, lag)",
        ),
        line(
            "wallet idempotency records",
            u64::from(config.wallet.idempotency_keys_max) * sizes::IDEM_RECORD_BYTES,
            false,
            "wallet.idempotency_keys_max records",
        ),
        line(
            "view LSM tree: block cache",
            if config.amnesia() { 0 } else { VIEW_LSM_CACHE_BYTES },
            false,
            "VIEW_LSM_CACHE_BYTES per shard view with LSM tables (wallet receipts' txids; none \
             in amnesia); blocks fjall pins outside it grow with the table (not measured)",
        ),
        line(
            "view write buffers, kept between writes",
            if config.amnesia() { 0 } else { VIEW_SPARE_BYTES_MAX as u64 },
            false,
            "VIEW_SPARE_BYTES_MAX per shard view (none in amnesia); a write carrying more \
             (a backlog) holds more while it runs, then frees it",
        ),
        line(
            "index answer cache",
            config.index.cache_bytes_max,
            false,
            "index.cache_bytes_max (entries and what they list; cache_entries_max bounds the count)",
        ),
        line(
            "index DHT: provider records",
            u64::from(config.index.dht_keys_max)
                * DHT_PROVIDERS_PER_KEY as u64
                * sizes::DHT_PROVIDER_RECORD_BYTES,
            true,
            "index.dht_keys_max keys × 20 providers × a record with its addresses",
        ),
        line(
            "index objects in RAM",
            if config.amnesia() { config.index.objects_bytes_max } else { 0 },
            true,
            "index.objects_bytes_max in amnesia (on disk otherwise)",
        ),
        line(
            "worker queues",
            workers.queue_max as u64 * (3 * 128 + if pq_on { sizes::PQ_BATCH_BYTES } else { 0 }),
            true,
            "three lanes × workers.queue_max jobs, and on the idle lane a closed ML-DSA batch \
             each (view writes hold their shard's changes, one per shard; echo-hash, a test \
             route, and reward runs hold a request body, counted with their connections)",
        ),
    ]
}

/// The whole node's worst case for `shards` shards.
pub fn memory_budget_total(config: &Config, shards: usize) -> u64 {
    memory_budget(config, shards)
        .iter()
        .map(|line| if line.per_node { line.bytes } else { line.bytes * shards as u64 })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget of the embedded defaults on one shard, and the ceiling it
    /// must stay under. The two lines without a shard-wide bound
    /// (connections mid-body, unread answers) dominate it: see
    /// ARCHITECTURE.md.
    const DEFAULTS_CEILING_BYTES: u64 = 24 << 30;

    #[test]
    fn the_defaults_stay_under_their_ceiling() {
        let config = Config::default();
        let total = memory_budget_total(&config, 1);
        assert!(total <= DEFAULTS_CEILING_BYTES, "{total} bytes");
        // Without the two unbounded connection lines, the rest is small.
        let bounded: u64 = memory_budget(&config, 1)
            .iter()
            .filter(|l| !l.why.contains("no shard-wide bound"))
            .map(|l| l.bytes)
            .sum();
        assert!(bounded <= 4 << 30, "{bounded} bytes");
    }

    #[test]
    fn the_histogram_size_is_what_the_budget_says() {
        let histogram =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).unwrap();
        assert_eq!(histogram.distinct_values() as u64 * 8, sizes::LATENCY_HISTOGRAM_BYTES);
    }

    #[test]
    fn every_line_grows_with_its_knob() {
        let mut config = Config::default();
        let before = memory_budget(&config, 1);
        config.limits.connections_per_shard_max *= 2;
        config.passport.verify_cache_bytes_max *= 2;
        let after = memory_budget(&config, 1);
        for (b, a) in before.iter().zip(&after) {
            if b.why.starts_with("connections_per_shard_max") || b.consumer == "verify cache" {
                assert!(a.bytes > b.bytes, "{}", b.consumer);
            }
        }
    }
}
