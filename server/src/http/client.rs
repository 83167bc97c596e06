//! Outbound HTTP/1.1 on the shard's socket ring: a per-shard [`Client`] that
//! services use to call peers (the content index's DHT lookups first).
//!
//! Tasks never touch the ring, which has a single issuer (the front). A task
//! that calls [`Client::request`] takes or opens a connection, writes its
//! request into it and marks the connection as queued; the front, every turn,
//! hands the client's queued operations to the ring ([`Client::submit`]) and
//! routes completions of client operations back ([`Client::on_completion`]),
//! which decodes answers and wakes the waiting tasks. A task that queues an
//! operation while the front is parked wakes it through the client's own
//! doorbell, which the front polls beside its mailbox.
//!
//! A connection is one slot: its socket, the request being sent, the answer
//! being received (into the shard's provided buffers, like the server side)
//! and the flags of its operations in flight. A slot is freed, and its socket
//! closed, only once no operation of the ring refers to it: a connection
//! given up (deadline passed, request future dropped, bad answer) is marked
//! dead, its operations are cancelled, and the completions come back first.
//!
//! Limits: at most `connections_max` connections live, at most
//! `idle_per_peer_max` idle ones per peer and `peers_max` peers with idle
//! ones; dead connections awaiting their last completions take at most as
//! many slots again. Per connection, worst case: the request it sends, and
//! while an answer arrives `header_bytes_max + body_bytes_max +
//! CHUNK_FRAMING_BYTES_MAX + TRAILER_BYTES_MAX` of input plus one receive
//! buffer, and up to `body_bytes_max` of decoded body. [Defaults: 128
//! connections × ~3 MiB if every one is mid-answer at the body limit at
//! once = 384 MiB per shard; idle ones keep 8 KiB each.]

use super::socket_ring::{self, Completion, Op, SocketRing};
use crate::config::Config;
use crate::limits::{
    CLIENT_CONNECT_TIMEOUT, CLIENT_CONNECTIONS_MAX, CLIENT_IDLE_PER_PEER_MAX, CLIENT_IDLE_TIMEOUT,
    CLIENT_PEERS_MAX, CLIENT_SLOTS_PER_CONNECTION, CLIENT_STALE_RETRIES_MAX,
    CONNECTION_BUFFER_BYTES,
};
use io_uring::types::Timespec;
use ron_proto::http::{
    self, BodyError, CHUNK_FRAMING_BYTES_MAX, ChunkedDecoder, HEADERS_COUNT_MAX, HeadError, Limits,
    Method, ResponseFraming, ResponseHead, Span, TRAILER_BYTES_MAX,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The client's bounds.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    pub header_bytes_max: usize,
    pub body_bytes_max: usize,
    pub connect_timeout: Duration,
    pub idle_per_peer_max: usize,
    pub peers_max: usize,
    pub connections_max: usize,
    /// An idle connection unused this long is closed.
    pub idle_timeout: Duration,
}

impl ClientLimits {
    /// Answers are held to the limits of requests (`limits.header_max_bytes`,
    /// `limits.body_max_bytes`); connects to the shorter of
    /// [`CLIENT_CONNECT_TIMEOUT`] and `limits.request_timeout_ms`.
    pub fn from_config(config: &Config) -> ClientLimits {
        let request_timeout = Duration::from_millis(config.limits.request_timeout_ms);
        ClientLimits {
            header_bytes_max: config.limits.header_max_bytes,
            body_bytes_max: config.limits.body_max_bytes,
            connect_timeout: CLIENT_CONNECT_TIMEOUT.min(request_timeout),
            idle_per_peer_max: CLIENT_IDLE_PER_PEER_MAX,
            peers_max: CLIENT_PEERS_MAX,
            connections_max: CLIENT_CONNECTIONS_MAX,
            idle_timeout: CLIENT_IDLE_TIMEOUT,
        }
    }

    fn check(&self) {
        assert!(self.header_bytes_max > 0 && self.body_bytes_max > 0);
        assert!(!self.connect_timeout.is_zero() && !self.idle_timeout.is_zero());
        assert!(self.connections_max > 0);
        assert!(self.connections_max * CLIENT_SLOTS_PER_CONNECTION <= u32::MAX as usize);
        assert!(self.idle_per_peer_max <= self.connections_max);
    }

    /// Input one answer may buffer: its head, its body with the most
    /// chunked framing the decoder accepts, and the receive that crossed it.
    fn input_bytes_max(&self) -> usize {
        self.header_bytes_max + self.body_bytes_max + CHUNK_FRAMING_BYTES_MAX + TRAILER_BYTES_MAX
    }
}

/// One request. The client adds `Host` (unless given), `Content-Length` and
/// the request line; framing headers of its own are refused.
#[derive(Clone, Copy, Debug)]
pub struct ClientRequest<'a> {
    pub method: Method,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    pub status: u16,
    /// In the order received; values with surrounding whitespace trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connect failed or timed out (kind `TimedOut`); also the
    /// shard's ring refusing an operation of the connection.
    #[error("connecting to the peer: {0}")]
    Connect(io::Error),
    #[error("no answer before the deadline")]
    TimedOut,
    #[error("the peer closed before a whole response")]
    Closed,
    #[error("response head or body over the limits")]
    TooLarge,
    /// A request refused before connecting, or a malformed answer.
    #[error("invalid: {0}")]
    Invalid(&'static str),
    #[error("too many outbound connections")]
    PoolFull,
    #[error("the client has stopped")]
    Stopped,
}

/// Counters since start, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections established.
    pub connects: u64,
    /// Requests sent on an idle connection.
    pub reuses: u64,
    /// Requests that ended with `TimedOut`.
    pub timeouts: u64,
    /// Requests that ended with any other error.
    pub errors: u64,
}

impl crate::metrics::MetricsPart for ClientStats {
    fn merge(&mut self, other: &dyn crate::metrics::MetricsPart) {
        let other: &ClientStats = other.as_any().downcast_ref().expect("the client's metrics");
        self.connects += other.connects;
        self.reuses += other.reuses;
        self.timeouts += other.timeouts;
        self.errors += other.errors;
    }

    fn render(&self, out: &mut String) {
        crate::metrics::simple_lines(
            out,
            &[
                (
                    "outbound_connects_total",
                    "counter",
                    "Outbound connections established.",
                    self.connects as f64,
                ),
                (
                    "outbound_reuses_total",
                    "counter",
                    "Outbound requests sent on a kept connection.",
                    self.reuses as f64,
                ),
                (
                    "outbound_timeouts_total",
                    "counter",
                    "Outbound requests past their deadline.",
                    self.timeouts as f64,
                ),
                (
                    "outbound_errors_total",
                    "counter",
                    "Outbound requests that failed otherwise.",
                    self.errors as f64,
                ),
            ],
        );
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl crate::metrics::MetricsSource for Client {
    fn snapshot(&self, out: &mut Vec<Box<dyn crate::metrics::MetricsPart>>) {
        out.push(Box::new(self.stats()));
    }
}

/// How far a connection has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Its connect is in flight.
    Connecting,
    /// It carries a request and waits for the answer.
    Busy,
    /// Kept in its peer's idle pool, its receive armed so that a close by
    /// the peer is noticed at once.
    Idle,
    /// Given up: freed once no operation of the ring refers to it.
    Dead,
}

/// The operations of the ring that refer to a connection. A slot is freed
/// only when none is left, so the kernel never reads or writes freed memory.
#[derive(Clone, Copy, Debug, Default)]
struct InFlight {
    connect: bool,
    connect_timeout: bool,
    recv: bool,
    send: bool,
    cancel: bool,
}

impl InFlight {
    fn any(&self) -> bool {
        self.connect || self.connect_timeout || self.recv || self.send || self.cancel
    }
}

/// Operations asked for outside the front (by tasks, the sweep, a stop),
/// pushed to the ring at the front's next submit.
#[derive(Clone, Copy, Debug, Default)]
struct Wanted {
    connect: bool,
    send: bool,
    cancel: bool,
}

/// Where a request's outcome meets the task waiting for it. It outlives the
/// exchange, so an outcome that arrives while the task is not being polled
/// is kept, whatever happens to the connection afterwards.
#[derive(Default)]
struct Waiter {
    outcome: RefCell<Option<Result<ClientResponse, ClientError>>>,
    waker: RefCell<Option<Waker>>,
    /// A byte of the answer arrived: a failure after that is not a stale
    /// connection, so the request is not sent again.
    answered: Cell<bool>,
}

impl Waiter {
    fn finish(&self, outcome: Result<ClientResponse, ClientError>) {
        let mut kept = self.outcome.borrow_mut();
        assert!(kept.is_none(), "a request has one outcome");
        *kept = Some(outcome);
        drop(kept);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The answer being received for one request.
struct Exchange {
    waiter: Rc<Waiter>,
    /// An answer to HEAD has no body whatever its head says.
    head_request: bool,
    /// The final head, once decoded (interim ones are skipped).
    head: Option<ResponseHead>,
    headers: Vec<(String, String)>,
    chunked: Option<ChunkedDecoder>,
    /// A chunked body, decoded so far.
    body: Vec<u8>,
}

impl Exchange {
    fn new(waiter: Rc<Waiter>, head_request: bool) -> Exchange {
        Exchange {
            waiter,
            head_request,
            head: None,
            headers: Vec::new(),
            chunked: None,
            body: Vec::new(),
        }
    }
}

/// One outbound connection: its socket, the request being sent, the answer
/// being received, and its operations in the ring.
struct Conn {
    socket: OwnedFd,
    peer: SocketAddr,
    generation: u32,
    phase: Phase,
    /// Read by the kernel while the connect is in flight; boxed so that it
    /// stays put when the slot table grows.
    address: Box<socket2::SockAddr>,
    connect_timeout: Box<Timespec>,
    inflight: InFlight,
    wanted: Wanted,
    /// Listed in the pool's `queued`.
    queued: bool,
    /// The request. Its heap buffer is read by the kernel while a send is
    /// in flight, so it is neither written nor reallocated until then; it
    /// is cleared once wholly sent.
    output: Vec<u8>,
    sent: usize,
    input: Vec<u8>,
    peer_closed: bool,
    exchange: Option<Exchange>,
    last_used: Instant,
}

/// What the decoder made of a connection's input.
enum Step {
    /// More bytes are needed.
    Wait,
    /// A whole answer, and whether the connection may carry another request.
    Done(ClientResponse, bool),
    Fail(ClientError),
}

/// Every connection of the shard, and the idle pools.
struct Pool {
    limits: ClientLimits,
    http: Limits,
    /// `connections_max × CLIENT_SLOTS_PER_CONNECTION`.
    slots_max: usize,
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    next_generation: u32,
    /// Connections not dead: connecting, busy or idle.
    live: usize,
    /// Slots holding a connection, dead ones included.
    used: usize,
    /// Idle connections by peer, the most recently used last.
    idle: HashMap<SocketAddr, Vec<u32>>,
    idle_count: usize,
    /// Connections with `wanted` operations, each once.
    queued: Vec<u32>,
    /// Header spans of the head being decoded.
    spans: Vec<(Span, Span)>,
    stats: ClientStats,
    stopped: bool,
}

/// The shard's outbound HTTP/1.1 client. See the module documentation.
pub struct Client {
    limits: ClientLimits,
    pool: RefCell<Pool>,
    /// Tasks queued operations since the front's last submit.
    rung: Cell<bool>,
    /// The parked front, woken when a task queues an operation.
    front: RefCell<Option<Waker>>,
}

impl Client {
    pub fn new(limits: ClientLimits) -> Client {
        limits.check();
        let slots_max = limits.connections_max * CLIENT_SLOTS_PER_CONNECTION;
        Client {
            limits,
            pool: RefCell::new(Pool {
                limits,
                http: Limits {
                    header_bytes_max: limits.header_bytes_max,
                    body_bytes_max: limits.body_bytes_max,
                    // Answers are never inflated.
                    decompress_ratio_max: 1,
                },
                slots_max,
                slots: Vec::new(),
                free: Vec::new(),
                next_generation: 0,
                live: 0,
                used: 0,
                idle: HashMap::with_capacity(limits.peers_max),
                idle_count: 0,
                queued: Vec::new(),
                spans: Vec::with_capacity(HEADERS_COUNT_MAX),
                stats: ClientStats::default(),
                stopped: false,
            }),
            rung: Cell::new(false),
            front: RefCell::new(None),
        }
    }

    pub fn stats(&self) -> ClientStats {
        self.pool.borrow().stats
    }

    /// Sends `request` to `peer` and returns its answer, all within
    /// `deadline` (connecting included). Dropping the future gives the
    /// request up and closes its connection.
    pub async fn request(
        &self,
        peer: SocketAddr,
        request: ClientRequest<'_>,
        deadline: Duration,
    ) -> Result<ClientResponse, ClientError> {
        let outcome = self.exchange(peer, &request, Instant::now() + deadline).await;
        let stats = &mut self.pool.borrow_mut().stats;
        match &outcome {
            Ok(_) => {}
            Err(ClientError::TimedOut) => stats.timeouts += 1,
            Err(_) => stats.errors += 1,
        }
        outcome
    }

    async fn exchange(
        &self,
        peer: SocketAddr,
        request: &ClientRequest<'_>,
        deadline: Instant,
    ) -> Result<ClientResponse, ClientError> {
        check_request(request, &self.limits)?;
        let bytes = encode_request(request, peer);
        let head_request = request.method == Method::Head;
        let mut stale_retries = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::TimedOut);
            }
            let started =
                self.pool.borrow_mut().start(peer, &bytes, head_request, stale_retries > 0);
            // Also after a failure: making room may have closed an idle connection.
            self.notify();
            let started = started?;
            let wait = Wait {
                client: self,
                slot: started.slot,
                generation: started.generation,
                waiter: started.waiter.clone(),
                timer: glommio::timer::Timer::new(
                    deadline.saturating_duration_since(Instant::now()),
                ),
                finished: false,
            };
            match wait.await {
                // Most likely the peer closed the kept connection as the
                // request went out on it (nothing of an answer came), so
                // an idempotent request may go again.
                Err(ClientError::Closed)
                    if started.reused
                        && !started.waiter.answered.get()
                        && idempotent(request.method)
                        && stale_retries < CLIENT_STALE_RETRIES_MAX =>
                {
                    stale_retries += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Wakes the front if operations are queued for it.
    fn notify(&self) {
        if self.pool.borrow().queued.is_empty() {
            return;
        }
        self.rung.set(true);
        let waker = self.front.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Gives up the request waiting on `waiter`, if its connection still
    /// carries it: the connection is closed, never reused.
    fn abandon(&self, slot: u32, generation: u32, waiter: &Rc<Waiter>) {
        let mut pool = self.pool.borrow_mut();
        let carries = pool.slots[slot as usize].as_ref().is_some_and(|conn| {
            conn.generation == generation
                && conn.exchange.as_ref().is_some_and(|e| Rc::ptr_eq(&e.waiter, waiter))
        });
        if carries {
            pool.kill(slot);
        }
        drop(pool);
        self.notify();
    }

    // ---- What the front calls ----

    /// Whether tasks queued operations since the last submit; if not, the
    /// front's waker is kept and woken when one does.
    pub fn poll_queued(&self, cx: &mut Context<'_>) -> bool {
        if self.rung.get() {
            return true;
        }
        let mut front = self.front.borrow_mut();
        if !front.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *front = Some(cx.waker().clone());
        }
        false
    }

    /// Requests in flight or connections being closed: the ring has work
    /// that a task waits for.
    pub fn busy(&self) -> bool {
        let pool = self.pool.borrow();
        pool.used > pool.idle_count || !pool.queued.is_empty()
    }

    /// Pushes the queued operations to the ring. True if there were any.
    pub fn submit(&self, ring: &mut SocketRing) -> bool {
        self.rung.set(false);
        let mut pool = self.pool.borrow_mut();
        if pool.queued.is_empty() {
            return false;
        }
        let mut queued = std::mem::take(&mut pool.queued);
        for slot in queued.drain(..) {
            pool.push_wanted(ring, slot);
        }
        // Failures may have queued cancels; they go at the next turn.
        if pool.queued.is_empty() {
            pool.queued = queued;
        }
        true
    }

    /// Takes a completion of one of the client's operations.
    pub fn on_completion(&self, ring: &mut SocketRing, completion: Completion) {
        let mut pool = self.pool.borrow_mut();
        match completion.op {
            Op::Connect(slot) => pool.on_connect(ring, slot, completion.result),
            Op::ConnectTimeout(slot) => {
                pool.conn(slot).inflight.connect_timeout = false;
                pool.release(slot);
            }
            Op::ClientRecv(slot) => pool.on_recv(ring, slot, completion),
            Op::ClientSend(slot) => pool.on_send(ring, slot, completion.result),
            Op::ClientCancel(slot) => {
                pool.conn(slot).inflight.cancel = false;
                pool.release(slot);
            }
            other => panic!("{other:?} is not an operation of the client"),
        }
        drop(pool);
        self.notify();
    }

    /// Closes idle connections unused for `idle_timeout`.
    pub fn sweep(&self, now: Instant) {
        let mut pool = self.pool.borrow_mut();
        if pool.idle_count > 0 {
            let idle_timeout = pool.limits.idle_timeout;
            for slot in 0..pool.slots.len() as u32 {
                let expired = pool.slots[slot as usize].as_ref().is_some_and(|conn| {
                    conn.phase == Phase::Idle && now.duration_since(conn.last_used) >= idle_timeout
                });
                if expired {
                    pool.kill(slot);
                }
            }
        }
        drop(pool);
        self.notify();
    }

    /// Refuses new requests (`Stopped`) and closes the idle connections;
    /// requests under way finish, and their connections close after them.
    pub fn stop(&self) {
        let mut pool = self.pool.borrow_mut();
        pool.stopped = true;
        for slot in 0..pool.slots.len() as u32 {
            if pool.slots[slot as usize].as_ref().is_some_and(|conn| conn.phase == Phase::Idle) {
                pool.kill(slot);
            }
        }
        assert_eq!(pool.idle_count, 0);
        drop(pool);
        self.notify();
    }

    /// Every slot is free: nothing of the ring refers to the client's memory.
    pub fn is_quiet(&self) -> bool {
        let pool = self.pool.borrow();
        pool.used == 0 && pool.queued.is_empty()
    }
}

/// A request given to a connection.
struct Started {
    slot: u32,
    generation: u32,
    waiter: Rc<Waiter>,
    reused: bool,
}

impl Pool {
    fn conn(&mut self, slot: u32) -> &mut Conn {
        self.slots[slot as usize].as_mut().expect("an operation's slot holds a connection")
    }

    /// Gives the encoded request to an idle connection of `peer` (unless
    /// `fresh`) or to a new one, and queues its first operation.
    fn start(
        &mut self,
        peer: SocketAddr,
        bytes: &[u8],
        head_request: bool,
        fresh: bool,
    ) -> Result<Started, ClientError> {
        if self.stopped {
            return Err(ClientError::Stopped);
        }
        let kept = if fresh { None } else { self.take_idle(peer) };
        let reused = kept.is_some();
        let slot = match kept {
            Some(slot) => slot,
            None => self.open(peer)?,
        };
        let waiter = Rc::new(Waiter::default());
        let conn = self.conn(slot);
        assert!(conn.output.is_empty() && conn.input.is_empty() && conn.exchange.is_none());
        assert!(!conn.inflight.send && !conn.peer_closed);
        conn.output.extend_from_slice(bytes);
        conn.sent = 0;
        conn.exchange = Some(Exchange::new(waiter.clone(), head_request));
        if reused {
            conn.phase = Phase::Busy;
            conn.wanted.send = true;
        } else {
            assert_eq!(conn.phase, Phase::Connecting);
            conn.wanted.connect = true;
        }
        let generation = conn.generation;
        self.queue(slot);
        if reused {
            self.stats.reuses += 1;
        }
        Ok(Started { slot, generation, waiter, reused })
    }

    /// The idle connection of `peer` used last.
    fn take_idle(&mut self, peer: SocketAddr) -> Option<u32> {
        let list = self.idle.get_mut(&peer)?;
        let slot = list.pop().expect("a peer is listed while it has idle connections");
        if list.is_empty() {
            self.idle.remove(&peer);
        }
        self.idle_count -= 1;
        let conn = self.conn(slot);
        assert_eq!(conn.phase, Phase::Idle);
        conn.phase = Phase::Busy;
        Some(slot)
    }

    /// A new connection to `peer`, its connect not yet queued.
    fn open(&mut self, peer: SocketAddr) -> Result<u32, ClientError> {
        if self.live >= self.limits.connections_max && !self.evict_oldest_idle() {
            return Err(ClientError::PoolFull);
        }
        // Closed connections hold their slots until the ring is done.
        if self.used >= self.slots_max {
            return Err(ClientError::PoolFull);
        }
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(peer),
            socket2::Type::STREAM.nonblocking(),
            Some(socket2::Protocol::TCP),
        )
        .map_err(ClientError::Connect)?;
        // Requests are written whole; Nagle would only delay them.
        socket.set_nodelay(true).map_err(ClientError::Connect)?;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        assert!(self.slots[slot as usize].is_none() && self.slots.len() <= self.slots_max);
        self.next_generation = self.next_generation.wrapping_add(1);
        self.slots[slot as usize] = Some(Conn {
            socket: OwnedFd::from(socket),
            peer,
            generation: self.next_generation,
            phase: Phase::Connecting,
            address: Box::new(socket2::SockAddr::from(peer)),
            connect_timeout: Box::new(Timespec::from(self.limits.connect_timeout)),
            inflight: InFlight::default(),
            wanted: Wanted::default(),
            queued: false,
            output: Vec::with_capacity(CONNECTION_BUFFER_BYTES),
            sent: 0,
            input: Vec::with_capacity(CONNECTION_BUFFER_BYTES),
            peer_closed: false,
            exchange: None,
            last_used: Instant::now(),
        });
        self.used += 1;
        self.live += 1;
        Ok(slot)
    }

    /// Closes the idle connection unused the longest, if there is one.
    fn evict_oldest_idle(&mut self) -> bool {
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, conn)| {
                let conn = conn.as_ref().filter(|conn| conn.phase == Phase::Idle)?;
                Some((conn.last_used, slot as u32))
            })
            .min();
        let Some((_, slot)) = oldest else { return false };
        self.kill(slot);
        true
    }

    /// Puts a connection whose answer is complete in its peer's idle pool,
    /// or closes it when the pool is full.
    fn keep_idle(&mut self, slot: u32) {
        let (idle_per_peer_max, peers_max) = (self.limits.idle_per_peer_max, self.limits.peers_max);
        let conn = self.conn(slot);
        assert!(conn.phase == Phase::Busy && conn.exchange.is_none());
        assert!(!conn.inflight.send && conn.output.is_empty() && !conn.peer_closed);
        let peer = conn.peer;
        let room = match self.idle.get(&peer) {
            _ if self.stopped => false,
            Some(list) => list.len() < idle_per_peer_max,
            None => self.idle.len() < peers_max && idle_per_peer_max > 0,
        };
        if !room {
            self.kill(slot);
            return;
        }
        let conn = self.conn(slot);
        conn.phase = Phase::Idle;
        conn.last_used = Instant::now();
        conn.input.clear();
        // An idle connection keeps only its resting buffers.
        if conn.input.capacity() > CONNECTION_BUFFER_BYTES {
            conn.input = Vec::with_capacity(CONNECTION_BUFFER_BYTES);
        }
        if conn.output.capacity() > CONNECTION_BUFFER_BYTES {
            conn.output = Vec::with_capacity(CONNECTION_BUFFER_BYTES);
        }
        self.idle.entry(peer).or_insert_with(|| Vec::with_capacity(idle_per_peer_max)).push(slot);
        self.idle_count += 1;
    }

    fn queue(&mut self, slot: u32) {
        let conn = self.conn(slot);
        if !conn.queued {
            conn.queued = true;
            self.queued.push(slot);
        }
        assert!(self.queued.len() <= self.used);
    }

    /// Ends the request the connection carries with `error`, and closes it.
    fn fail(&mut self, slot: u32, error: ClientError) {
        if let Some(exchange) = self.conn(slot).exchange.take() {
            exchange.waiter.finish(Err(error));
        }
        self.kill(slot);
    }

    /// Closes a connection: it is shut down at once, its operations are
    /// cancelled, and its slot is freed when they have all completed.
    fn kill(&mut self, slot: u32) {
        let conn = self.conn(slot);
        let (phase, peer) = (conn.phase, conn.peer);
        if phase == Phase::Dead {
            return;
        }
        conn.phase = Phase::Dead;
        // A waiter still attached is being given up (deadline, drop).
        conn.exchange = None;
        conn.wanted.connect = false;
        conn.wanted.send = false;
        // Ends a receive or send in flight, and tells the peer now rather
        // than when the slot is freed.
        socket_ring::shutdown(conn.socket.as_raw_fd(), libc::SHUT_RDWR);
        let cancel = conn.inflight.any();
        conn.wanted.cancel = cancel;
        self.live -= 1;
        if phase == Phase::Idle {
            let list = self.idle.get_mut(&peer).expect("an idle connection is listed");
            let at = list.iter().position(|s| *s == slot).expect("listed under its peer");
            list.remove(at);
            if list.is_empty() {
                self.idle.remove(&peer);
            }
            self.idle_count -= 1;
        }
        if cancel {
            self.queue(slot);
        }
        self.release(slot);
    }

    /// Frees a dead connection's slot, closing its socket, once no
    /// operation of the ring refers to it.
    fn release(&mut self, slot: u32) {
        let conn = self.conn(slot);
        if conn.phase != Phase::Dead || conn.inflight.any() {
            return;
        }
        // A cancel not yet pushed has nothing left to cancel.
        if conn.queued {
            self.queued.retain(|queued| *queued != slot);
        }
        self.slots[slot as usize] = None;
        self.free.push(slot);
        self.used -= 1;
        assert!(self.live <= self.used);
    }

    fn push_wanted(&mut self, ring: &mut SocketRing, slot: u32) {
        let conn = self.conn(slot);
        conn.queued = false;
        let wanted = std::mem::take(&mut conn.wanted);
        let socket = conn.socket.as_raw_fd();
        if conn.phase == Phase::Dead {
            if wanted.cancel && conn.inflight.any() {
                match ring.cancel_socket(socket, slot) {
                    Ok(()) => conn.inflight.cancel = true,
                    // The shutdown and the connect's own timeout end them.
                    Err(error) => tracing::error!(%error, "cancelling an outbound connection"),
                }
            }
            self.release(slot);
            return;
        }
        if wanted.connect {
            // SAFETY: the address and the timeout are boxed in the
            // connection, which is freed only once both completions are
            // reaped (`inflight.connect`, `inflight.connect_timeout`).
            let pushed =
                unsafe { ring.connect(socket, &conn.address, &conn.connect_timeout, slot) };
            match pushed {
                Ok(()) => {
                    conn.inflight.connect = true;
                    conn.inflight.connect_timeout = true;
                }
                Err(error) => {
                    self.fail(slot, ClientError::Connect(error));
                    return;
                }
            }
        }
        if wanted.send {
            self.push_send(ring, slot);
        }
    }

    fn push_send(&mut self, ring: &mut SocketRing, slot: u32) {
        let conn = self.conn(slot);
        assert!(!conn.inflight.send && conn.sent < conn.output.len());
        let socket = conn.socket.as_raw_fd();
        // SAFETY: `output` is neither written nor reallocated while the send
        // is in flight (a request is written only into a connection with its
        // output empty, which it is once the send completes), and the
        // connection is freed only after the completion (`inflight.send`).
        let pushed = unsafe { ring.client_send(socket, &conn.output[conn.sent..], slot) };
        match pushed {
            Ok(()) => conn.inflight.send = true,
            Err(error) => self.fail(slot, ClientError::Connect(error)),
        }
    }

    fn arm_recv(&mut self, ring: &mut SocketRing, slot: u32) {
        let conn = self.conn(slot);
        assert!(!conn.inflight.recv);
        match ring.client_recv(conn.socket.as_raw_fd(), slot) {
            Ok(()) => conn.inflight.recv = true,
            Err(error) => self.fail(slot, ClientError::Connect(error)),
        }
    }

    fn on_connect(&mut self, ring: &mut SocketRing, slot: u32, result: i32) {
        let conn = self.conn(slot);
        conn.inflight.connect = false;
        match conn.phase {
            Phase::Dead => self.release(slot),
            Phase::Connecting if result == 0 => {
                conn.phase = Phase::Busy;
                self.stats.connects += 1;
                self.arm_recv(ring, slot);
                // The linked timeout's completion keeps the slot.
                if self.conn(slot).phase == Phase::Busy {
                    self.push_send(ring, slot);
                }
            }
            Phase::Connecting => {
                // The linked timeout fired first.
                let errno = if result == -libc::ECANCELED { libc::ETIMEDOUT } else { -result };
                self.fail(slot, ClientError::Connect(io::Error::from_raw_os_error(errno)));
            }
            phase => panic!("a connect completed on a {phase:?} connection"),
        }
    }

    fn on_send(&mut self, ring: &mut SocketRing, slot: u32, result: i32) {
        let conn = self.conn(slot);
        conn.inflight.send = false;
        if conn.phase == Phase::Dead {
            self.release(slot);
            return;
        }
        assert_eq!(conn.phase, Phase::Busy);
        if result <= 0 {
            // Reset or shut by the peer: it will not answer.
            self.fail(slot, ClientError::Closed);
            return;
        }
        conn.sent += result as usize;
        assert!(conn.sent <= conn.output.len());
        if conn.sent < conn.output.len() {
            self.push_send(ring, slot);
        } else {
            conn.output.clear();
            conn.sent = 0;
        }
    }

    fn on_recv(&mut self, ring: &mut SocketRing, slot: u32, completion: Completion) {
        let conn = self.conn(slot);
        if !completion.more {
            conn.inflight.recv = false;
        }
        if let Some(buffer) = completion.buffer {
            // Only an answer being received keeps its bytes.
            if conn.phase == Phase::Busy {
                let received = completion.result.max(0) as usize;
                conn.input.extend_from_slice(ring.received(buffer, received));
            }
            ring.recycle(buffer);
        }
        let phase = conn.phase;
        match completion.result {
            _ if phase == Phase::Dead => {}
            result if result >= 0 => {
                conn.peer_closed |= result == 0;
                match phase {
                    Phase::Busy => self.advance(slot),
                    // An idle peer closed, or spoke unasked.
                    _ => self.kill(slot),
                }
            }
            // Every provided buffer was in use: receive again below.
            error if error == -libc::ENOBUFS => {}
            _ => self.fail(slot, ClientError::Closed),
        }
        // A connection closed above may be freed already.
        let Some(conn) = self.slots[slot as usize].as_ref() else { return };
        let open = matches!(conn.phase, Phase::Busy | Phase::Idle) && !conn.peer_closed;
        if open && !conn.inflight.recv {
            self.arm_recv(ring, slot);
        }
        self.release(slot);
    }

    /// Decodes what the connection received; hands a whole answer (or a
    /// failure) to the waiting task.
    fn advance(&mut self, slot: u32) {
        let input_bytes_max = self.limits.input_bytes_max();
        let conn = self.slots[slot as usize].as_mut().expect("a busy slot");
        match decode_answer(conn, &self.http, input_bytes_max, &mut self.spans) {
            Step::Wait => {}
            Step::Done(response, reusable) => {
                let exchange = conn.exchange.take().expect("a busy connection has an exchange");
                exchange.waiter.finish(Ok(response));
                if reusable {
                    self.keep_idle(slot);
                } else {
                    self.kill(slot);
                }
            }
            Step::Fail(error) => self.fail(slot, error),
        }
    }
}

/// Decodes the answer in a busy connection's input, as far as it goes.
fn decode_answer(
    conn: &mut Conn,
    http: &Limits,
    input_bytes_max: usize,
    spans: &mut Vec<(Span, Span)>,
) -> Step {
    let Conn { input, exchange, peer_closed, output, .. } = conn;
    let peer_closed = *peer_closed;
    let exchange = exchange.as_mut().expect("a busy connection has an exchange");
    loop {
        if !input.is_empty() {
            exchange.waiter.answered.set(true);
        }
        // A backstop: the decoders below refuse a head, body, framing or
        // trailer over its own limit first.
        if input.len() > input_bytes_max {
            return Step::Fail(ClientError::TooLarge);
        }
        let head = match exchange.head {
            Some(head) => head,
            None => match http::decode_response_head(input, http, exchange.head_request, spans) {
                Ok(None) if peer_closed => return Step::Fail(ClientError::Closed),
                Ok(None) => return Step::Wait,
                Ok(Some(head)) if head.interim() => {
                    // `100 Continue` and the like: the answer follows.
                    input.drain(..head.head_bytes);
                    continue;
                }
                Ok(Some(head)) => {
                    exchange.headers = spans
                        .iter()
                        .map(|(name, value)| (text(name.of(input)), text(value.of(input))))
                        .collect();
                    exchange.head = Some(head);
                    head
                }
                Err(HeadError::TooLarge | HeadError::BodyTooLarge) => {
                    return Step::Fail(ClientError::TooLarge);
                }
                Err(HeadError::Invalid(why)) => return Step::Fail(ClientError::Invalid(why)),
                Err(HeadError::UnsupportedEncoding) => {
                    return Step::Fail(ClientError::Invalid("unsupported content-encoding"));
                }
            },
        };
        let after_head = &input[head.head_bytes..];
        let (body, used) = match head.framing {
            ResponseFraming::Empty => (Vec::new(), head.head_bytes),
            ResponseFraming::Length(length) if after_head.len() >= length => {
                (after_head[..length].to_vec(), head.head_bytes + length)
            }
            ResponseFraming::Length(_) if peer_closed => return Step::Fail(ClientError::Closed),
            ResponseFraming::Length(_) => return Step::Wait,
            ResponseFraming::Chunked => {
                let decoder = exchange
                    .chunked
                    .get_or_insert_with(|| ChunkedDecoder::new(http.body_bytes_max));
                match decoder.decode(after_head, &mut exchange.body) {
                    Ok(Some(used)) => (std::mem::take(&mut exchange.body), head.head_bytes + used),
                    Ok(None) if peer_closed => return Step::Fail(ClientError::Closed),
                    Ok(None) => return Step::Wait,
                    Err(BodyError::TooLarge) => return Step::Fail(ClientError::TooLarge),
                    Err(BodyError::Invalid(why)) => return Step::Fail(ClientError::Invalid(why)),
                }
            }
            ResponseFraming::UntilClose if after_head.len() > http.body_bytes_max => {
                return Step::Fail(ClientError::TooLarge);
            }
            ResponseFraming::UntilClose if peer_closed => (after_head.to_vec(), input.len()),
            ResponseFraming::UntilClose => return Step::Wait,
        };
        assert!(body.len() <= http.body_bytes_max && used <= input.len());
        // Bytes past the answer were never asked for, and a request not
        // wholly sent would run into the next one: either way the
        // connection is out of step.
        let reusable = head.keep_alive && !peer_closed && used == input.len() && output.is_empty();
        let headers = std::mem::take(&mut exchange.headers);
        return Step::Done(ClientResponse { status: head.status, headers, body }, reusable);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Methods whose request may be sent twice without harm (RFC 9110 §9.2.2).
fn idempotent(method: Method) -> bool {
    matches!(method, Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options)
}

/// Refuses what would not encode to one well-formed request.
fn check_request(request: &ClientRequest<'_>, limits: &ClientLimits) -> Result<(), ClientError> {
    if request.method == Method::Other {
        return Err(ClientError::Invalid("unsupported method"));
    }
    let path = request.path.as_bytes();
    if path.first() != Some(&b'/') || path.iter().any(|b| *b <= b' ' || *b == 0x7f) {
        return Err(ClientError::Invalid(
            "the path must start with / and hold no space or control",
        ));
    }
    if request.headers.len() > HEADERS_COUNT_MAX {
        return Err(ClientError::Invalid("too many headers"));
    }
    for (name, value) in request.headers {
        if name.is_empty() || !name.bytes().all(token_byte) {
            return Err(ClientError::Invalid("invalid header name"));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ClientError::Invalid("CR, LF or NUL in a header value"));
        }
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Err(ClientError::Invalid("the client frames the body itself"));
        }
    }
    if request.body.len() > limits.body_bytes_max {
        return Err(ClientError::Invalid("request body over the body limit"));
    }
    Ok(())
}

/// A byte of a header name (RFC 9110 §5.6.2 `tchar`).
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn encode_request(request: &ClientRequest<'_>, peer: SocketAddr) -> Vec<u8> {
    let headers_bytes: usize = request.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(128 + request.path.len() + headers_bytes + request.body.len());
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !request.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(peer.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(request.body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in request.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(request.body);
    out
}

/// A request's wait for its outcome, bounded by its deadline. Dropped
/// before the outcome (the caller gave up), it closes the connection.
struct Wait<'a> {
    client: &'a Client,
    slot: u32,
    generation: u32,
    waiter: Rc<Waiter>,
    timer: glommio::timer::Timer,
    finished: bool,
}

impl Future for Wait<'_> {
    type Output = Result<ClientResponse, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.finished, "polled after its outcome");
        let outcome = self.waiter.outcome.borrow_mut().take();
        if let Some(outcome) = outcome {
            self.finished = true;
            return Poll::Ready(outcome);
        }
        if Pin::new(&mut self.timer).poll(cx).is_ready() {
            self.finished = true;
            self.client.abandon(self.slot, self.generation, &self.waiter);
            return Poll::Ready(Err(ClientError::TimedOut));
        }
        *self.waiter.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.client.abandon(self.slot, self.generation, &self.waiter);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The client against std-thread peers on loopback, driven by a real
    //! front on a real socket ring. Each test ends by draining the front,
    //! which stops the client and returns only once the client is quiet.

    use super::*;
    use crate::config::Config;
    use crate::core::mesh::{self, Mesh};
    use crate::core::{Core, CoreParts, NodeShared, REQUEST_QUEUE_LATENCY, ShardStatus};
    use crate::http::RouteTable;
    use crate::http::front::Front;
    use crate::log::committer::LogRequest;
    use crate::log::view::{ShardView, ViewSchedule};
    use crate::log::{Applied, LogLink, LogShared};
    use crate::workers::{Inbox, Returns, Workers, WorkersLayout};
    use glommio::channels::shared_channel::{self, ConnectedReceiver};
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::thread::{self, JoinHandle};

    /// What a test body may take, the front's drain after it, and a peer's
    /// wait for anything.
    const BODY_TIME_MAX: Duration = Duration::from_secs(20);
    const DRAIN_TIME_MAX: Duration = Duration::from_secs(5);
    const PEER_WAIT_MAX: Duration = Duration::from_secs(5);
    /// The production default (`executor.park_timeout_us`).
    const PARK_TIMEOUT: Duration = Duration::from_millis(2);
    const DEADLINE: Duration = Duration::from_secs(5);

    fn limits() -> ClientLimits {
        ClientLimits {
            header_bytes_max: 1024,
            body_bytes_max: 4096,
            connect_timeout: Duration::from_millis(500),
            idle_per_peer_max: 2,
            peers_max: 4,
            connections_max: 4,
            idle_timeout: CLIENT_IDLE_TIMEOUT,
        }
    }

    fn get(path: &str) -> ClientRequest<'_> {
        ClientRequest { method: Method::Get, path, headers: &[], body: b"" }
    }

    fn post<'a>(path: &'a str, body: &'a [u8]) -> ClientRequest<'a> {
        ClientRequest { method: Method::Post, path, headers: &[], body }
    }

    /// A core of one shard with no service, enough for a front.
    async fn test_core(workers: Workers, park_timeout: Duration) -> (Rc<Core>, Keep) {
        let mut config = Config::default();
        config.executor.park_timeout_us = park_timeout.as_micros() as u64;
        let log = Arc::new(LogShared::new(0));
        let node = Arc::new(NodeShared {
            draining: AtomicBool::new(false),
            log: log.clone(),
            shards: vec![ShardStatus::default()],
            topology_json: b"{}",
            version_json: b"{}",
            probes: Vec::new(),
            reload: crate::reload::Reloadable::of(&config),
        });
        let (senders, receivers) = mesh::builder(1, 1).join().await.expect("a mesh of one");
        let mesh = Rc::new(Mesh::new(senders, 1, 1, Duration::from_secs(1)));
        let (calls, requests) = shared_channel::new_bounded::<LogRequest>(1);
        let (calls, requests) =
            futures_lite::future::zip(calls.connect(), requests.connect()).await;
        let link = Rc::new(LogLink::new(log, Applied::new(0, [0; 32]), calls, 1));
        let schedule = ViewSchedule {
            shard: 0,
            shard_count: 1,
            items_max: 1,
            interval: Duration::from_secs(1),
        };
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(1000),
            glommio::Latency::Matters(REQUEST_QUEUE_LATENCY),
            "requests",
        );
        let core = Rc::new(Core::new(CoreParts {
            id: 0,
            count: 1,
            config: Arc::new(config),
            node,
            mesh,
            log: link,
            view: Rc::new(ShardView::new(None, None, 0, schedule)),
            workers,
            returns: Returns::new(Arc::new(Inbox::default())),
            queue,
        }));
        (core, Keep { _requests: requests, _receivers: receivers })
    }

    /// The other ends of the core's channels, kept open for the test.
    struct Keep {
        _requests: ConnectedReceiver<LogRequest>,
        _receivers: glommio::channels::channel_mesh::Receivers<mesh::Envelope>,
    }

    /// Runs `body` with a client that a real front drives, on an executor of
    /// its own; then drains the front, which stops the client and ends only
    /// once the client is quiet.
    fn with_front<T, F>(
        limits: ClientLimits,
        park_timeout: Duration,
        body: impl FnOnce(Rc<Client>) -> F + Send + 'static,
    ) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + 'static,
    {
        let layout = WorkersLayout {
            normal_threads: 1,
            idle_threads: 1,
            batch_threads: 1,
            queue_max: 4,
            cores: vec![],
            normal_nice: 0,
        };
        let threads = Workers::start(&layout).expect("starting the workers");
        let workers = threads.workers().clone();
        let outcome = glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .spawn(move || async move {
                let (core, _keep) = test_core(workers, park_timeout).await;
                let ring = SocketRing::new(256, 64, 4096).expect("a socket ring");
                let client = Rc::new(Client::new(limits));
                let routes = RouteTable::default();
                core.set_routes(routes.labels());
                let front = Front::new(core.clone(), Rc::new(routes), ring, client.clone(), vec![])
                    .expect("a front");
                let front = glommio::spawn_local_into(front.run(), core.queue).expect("a queue");
                let body = body(client.clone());
                let outcome = glommio::timer::timeout(BODY_TIME_MAX, async { Ok(body.await) })
                    .await
                    .expect("the test's body finished in time");
                core.node.draining.store(true, Ordering::Relaxed);
                glommio::timer::timeout(DRAIN_TIME_MAX, async {
                    front.await;
                    Ok(())
                })
                .await
                .expect("the front drained, so the client became quiet");
                assert!(client.is_quiet());
                let after = client.request(loopback(1), get("/"), DEADLINE).await;
                assert!(matches!(after, Err(ClientError::Stopped)), "{after:?}");
                outcome
            })
            .expect("starting an executor")
            .join();
        threads.stop();
        outcome.expect("the test's executor")
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A peer thread on its own loopback listener.
    fn peer<T: Send + 'static>(
        script: impl FnOnce(TcpListener) -> T + Send + 'static,
    ) -> (SocketAddr, JoinHandle<T>) {
        let listener = TcpListener::bind(loopback(0)).expect("binding a peer");
        let address = listener.local_addr().expect("a bound address");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        (address, thread::spawn(move || script(listener)))
    }

    /// The next connection within `within`, if one comes.
    fn accept(listener: &TcpListener, within: Duration) -> Option<TcpStream> {
        let until = Instant::now() + within;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("a blocking stream");
                    stream.set_read_timeout(Some(PEER_WAIT_MAX)).expect("a read timeout");
                    stream.set_write_timeout(Some(PEER_WAIT_MAX)).expect("a write timeout");
                    return Some(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < until => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) => panic!("accepting: {e}"),
            }
        }
    }

    fn accept_one(listener: &TcpListener) -> TcpStream {
        accept(listener, PEER_WAIT_MAX).expect("the client connected")
    }

    /// Reads one request (head and `Content-Length` body) as text.
    fn read_request(stream: &mut TcpStream) -> String {
        let mut bytes = Vec::new();
        let mut byte = [0u8; 1];
        while !bytes.ends_with(b"\r\n\r\n") {
            let n = match stream.read(&mut byte) {
                // A timed read is interrupted when the process is stopped
                // and resumed (signal(7)); read again.
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                read => read.expect("reading a request head"),
            };
            assert_eq!(n, 1, "the client closed mid-request: {:?}", text(&bytes));
            bytes.push(byte[0]);
        }
        let head = text(&bytes);
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .expect("the client sends Content-Length")
            .parse::<usize>()
            .expect("a length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).expect("reading a request body");
        head + &text(&body)
    }

    fn answer(stream: &mut TcpStream, body: &str) {
        let bytes = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        stream.write_all(bytes.as_bytes()).expect("writing an answer");
    }

    /// Whether the client closes the connection within `within`; what it
    /// still sends is dropped.
    fn sees_close(stream: &mut TcpStream, within: Duration) -> bool {
        stream.set_read_timeout(Some(within)).expect("a read timeout");
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits in the executor for a peer's message.
    async fn message<T>(from: &mpsc::Receiver<T>) -> T {
        let until = Instant::now() + PEER_WAIT_MAX;
        loop {
            match from.try_recv() {
                Ok(message) => return message,
                Err(mpsc::TryRecvError::Empty) if Instant::now() < until => {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => panic!("no message from the peer: {e}"),
            }
        }
    }

    fn stats(connects: u64, reuses: u64, timeouts: u64, errors: u64) -> ClientStats {
        ClientStats { connects, reuses, timeouts, errors }
    }

    #[test]
    fn keep_alive_requests_share_one_connection() {
        let (address, peer) = peer(|listener| {
            let mut stream = accept_one(&listener);
            for seq in 1..=2 {
                let request = read_request(&mut stream);
                assert!(request.starts_with(&format!("GET /a{seq} HTTP/1.1\r\n")), "{request}");
                let host = format!("Host: {}\r\n", listener.local_addr().expect("an address"));
                assert!(request.contains(&host) && request.contains("X-Test: yes\r\n"));
                answer(&mut stream, &format!("answer {seq}"));
            }
            let second = accept(&listener, Duration::from_millis(200)).is_some();
            (second, sees_close(&mut stream, PEER_WAIT_MAX))
        });
        let stats_seen = with_front(limits(), PARK_TIMEOUT, move |client| async move {
            for seq in 1..=2 {
                let path = format!("/a{seq}");
                let headers = [("X-Test", "yes")];
                let request = ClientRequest { headers: &headers, ..get(&path) };
                let response = client.request(address, request, DEADLINE).await.expect("an answer");
                assert_eq!(response.status, 200);
                assert_eq!(response.body, format!("answer {seq}").as_bytes());
                assert_eq!(response.header("content-length"), Some("8"));
            }
            let stats = client.stats();
            // Stopping closes the idle connection and refuses what follows.
            client.stop();
            let refused = client.request(address, get("/a3"), DEADLINE).await;
            assert!(matches!(refused, Err(ClientError::Stopped)), "{refused:?}");
            stats
        });
        assert_eq!(stats_seen, stats(1, 1, 0, 0));
        let (second, closed) = peer.join().expect("the peer");
        assert!(!second, "a second connection");
        assert!(closed, "stopping closes the idle connection");
    }

    #[test]
    fn chunked_answer_after_continue_and_read_to_close_answers() {
        let (chunked, chunked_peer) = peer(|listener| {
            let mut stream = accept_one(&listener);
            let request = read_request(&mut stream);
            assert!(request.starts_with("POST /up HTTP/1.1\r\n") && request.ends_with("ping"));
            let pieces: [&[u8]; 4] = [
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5\r\nhel",
                b"lo\r\n6\r\n world\r\n0\r\n\r\n",
            ];
            for piece in pieces {
                stream.write_all(piece).expect("writing a piece");
                thread::sleep(Duration::from_millis(20));
            }
            // A chunked answer leaves the connection usable.
            read_request(&mut stream);
            answer(&mut stream, "again");
            accept(&listener, Duration::from_millis(100)).is_none()
        });
        let (old, old_peer) = peer(|listener| {
            for _ in 0..2 {
                let mut stream = accept_one(&listener);
                read_request(&mut stream);
                let answer = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nuntil the close";
                stream.write_all(answer).expect("writing an answer");
            }
        });
        let stats_seen = with_front(limits(), PARK_TIMEOUT, move |client| async move {
            let response =
                client.request(chunked, post("/up", b"ping"), DEADLINE).await.expect("an answer");
            assert_eq!((response.status, response.body.as_slice()), (200, &b"hello world"[..]));
            let response = client.request(chunked, get("/again"), DEADLINE).await.expect("again");
            assert_eq!(response.body, b"again");
            for _ in 0..2 {
                let response = client.request(old, get("/old"), DEADLINE).await.expect("an answer");
                assert_eq!(response.status, 200);
                assert_eq!(response.header("server"), Some("old"));
                assert_eq!(response.body, b"until the close");
            }
            client.stats()
        });
        // One connection to the chunked peer, reused once; two to the old one.
        assert_eq!(stats_seen, stats(3, 1, 0, 0));
        assert!(chunked_peer.join().expect("the chunked peer"));
        old_peer.join().expect("the old peer");
    }

    #[test]
    fn a_silent_peer_times_out_and_sees_the_close() {
        let (address, peer) = peer(|listener| {
            let mut stream = accept_one(&listener);
            read_request(&mut stream);
            sees_close(&mut stream, Duration::from_secs(3))
        });
        let deadline = Duration::from_millis(300);
        let (outcome, elapsed, stats_seen) =
            with_front(limits(), PARK_TIMEOUT, move |client| async move {
                let start = Instant::now();
                let outcome = client.request(address, get("/"), deadline).await;
                (format!("{outcome:?}"), start.elapsed(), client.stats())
            });
        assert_eq!(outcome, "Err(TimedOut)");
        assert!(elapsed >= deadline && elapsed < deadline + Duration::from_secs(1), "{elapsed:?}");
        assert_eq!(stats_seen, stats(1, 0, 1, 0));
        assert!(peer.join().expect("the peer"), "the timed-out connection is closed");
    }

    #[test]
    fn answers_cut_short_are_closed() {
        let cuts: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ];
        let (address, peer) = peer(move |listener| {
            for cut in cuts {
                let mut stream = accept_one(&listener);
                read_request(&mut stream);
                stream.write_all(cut).expect("writing part of an answer");
            }
        });
        let outcomes = with_front(limits(), PARK_TIMEOUT, move |client| async move {
            let mut outcomes = Vec::new();
            for _ in cuts {
                outcomes.push(format!("{:?}", client.request(address, get("/"), DEADLINE).await));
            }
            (outcomes, client.stats())
        });
        assert_eq!(outcomes.0, ["Err(Closed)"; 3]);
        assert_eq!(outcomes.1, stats(3, 0, 0, 3));
        peer.join().expect("the peer");
    }

    #[test]
    fn a_head_answer_has_no_body_and_a_malformed_answer_is_invalid() {
        let (address, peer) = peer(|listener| {
            let mut stream = accept_one(&listener);
            assert!(read_request(&mut stream).starts_with("HEAD /h HTTP/1.1\r\n"));
            // The length of the body a GET would get, and no body.
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").expect("writing");
            read_request(&mut stream);
            stream.write_all(b"HTTP/1.1 2xx Bad\r\n\r\n").expect("writing");
            sees_close(&mut stream, PEER_WAIT_MAX)
        });
        let (malformed, stats_seen) =
            with_front(limits(), PARK_TIMEOUT, move |client| async move {
                let head = ClientRequest { method: Method::Head, ..get("/h") };
                let response = client.request(address, head, DEADLINE).await.expect("an answer");
                assert_eq!((response.status, response.header("Content-Length")), (200, Some("5")));
                assert!(response.body.is_empty());
                let malformed = client.request(address, get("/"), DEADLINE).await;
                (format!("{malformed:?}"), client.stats())
            });
        assert!(malformed.starts_with("Err(Invalid("), "{malformed}");
        assert_eq!(stats_seen, stats(1, 1, 0, 1));
        assert!(peer.join().expect("the peer"), "the malformed answer's connection is closed");
    }

    #[test]
    fn answers_over_the_limits_are_too_large_and_closed() {
        let padding = format!("X-Pad: {}\r\n", "p".repeat(100)).repeat(12);
        let chunk = format!("800\r\n{}\r\n", "c".repeat(0x800));
        let answers = [
            format!("HTTP/1.1 200 OK\r\n{padding}"),
            "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_owned(),
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunk.repeat(3)),
            format!("HTTP/1.0 200 OK\r\n\r\n{}", "b".repeat(5000)),
        ];
        let count = answers.len();
        let (address, peer) = peer(move |listener| {
            let mut closed = Vec::new();
            for answer in answers {
                let mut stream = accept_one(&listener);
                read_request(&mut stream);
                // The client may close before it has all of it.
                let _ = stream.write_all(answer.as_bytes());
                closed.push(sees_close(&mut stream, PEER_WAIT_MAX));
            }
            closed
        });
        let outcomes = with_front(limits(), PARK_TIMEOUT, move |client| async move {
            let mut outcomes = Vec::new();
            for _ in 0..count {
                outcomes.push(format!("{:?}", client.request(address, get("/"), DEADLINE).await));
            }
            outcomes
        });
        assert_eq!(outcomes, ["Err(TooLarge)"; 4]);
        assert_eq!(peer.join().expect("the peer"), [true; 4]);
    }

    #[test]
    fn nothing_listening_is_refused() {
        let address = {
            let listener = TcpListener::bind(loopback(0)).expect("binding");
            listener.local_addr().expect("an address")
        };
        let (kind, stats_seen) = with_front(limits(), PARK_TIMEOUT, move |client| async move {
            let outcome = client.request(address, get("/"), DEADLINE).await;
            let kind = match outcome {
                Err(ClientError::Connect(error)) => error.kind(),
                other => panic!("{other:?}"),
            };
            (kind, client.stats())
        });
        assert_eq!(kind, ErrorKind::ConnectionRefused);
        assert_eq!(stats_seen, stats(0, 0, 0, 1));
    }

    #[test]
    fn a_full_backlog_times_the_connect_out() {
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        listener.bind(&loopback(0).into()).expect("binding");
        listener.listen(0).expect("listening");
        let address =
            listener.local_addr().expect("an address").as_socket().expect("an inet address");
        // Fill the accept queue, which then drops SYNs.
        let mut fillers = Vec::new();
        while let Ok(stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            fillers.push(stream);
            assert!(fillers.len() < 16, "the backlog never filled");
        }
        let connect_timeout = Duration::from_millis(300);
        let limits = ClientLimits { connect_timeout, ..limits() };
        let (kind, elapsed) = with_front(limits, PARK_TIMEOUT, move |client| async move {
            let start = Instant::now();
            let outcome = client.request(address, get("/"), DEADLINE).await;
            let kind = match outcome {
                Err(ClientError::Connect(error)) => error.kind(),
                other => panic!("{other:?}"),
            };
            (kind, start.elapsed())
        });
        assert_eq!(kind, ErrorKind::TimedOut);
        assert!(elapsed >= connect_timeout && elapsed < Duration::from_secs(2), "{elapsed:?}");
        drop((fillers, listener));
    }

    #[test]
    fn requests_dropped_mid_flight_close_their_connections() {
        const DROPPED: usize = 5;
        let (got, got_rx) = mpsc::channel();
        let (address, peer) = peer(move |listener| {
            let mut closed = Vec::new();
            for _ in 0..DROPPED {
                let mut stream = accept_one(&listener);
                read_request(&mut stream);
                got.send(()).expect("the test listens");
                closed.push(sees_close(&mut stream, PEER_WAIT_MAX));
            }
            let mut stream = accept_one(&listener);
            read_request(&mut stream);
            answer(&mut stream, "at last");
            closed
        });
        let limits = ClientLimits { connections_max: 1, idle_per_peer_max: 1, ..limits() };
        let (body, stats_seen) = with_front(limits, PARK_TIMEOUT, move |client| async move {
            for _ in 0..DROPPED {
                let mut request = Box::pin(client.request(address, get("/slow"), DEADLINE));
                let sent = std::pin::pin!(message(&got_rx));
                match futures_lite::future::or(async { Err(request.as_mut().await) }, async {
                    sent.await;
                    Ok(())
                })
                .await
                {
                    Ok(()) => drop(request),
                    Err(outcome) => panic!("the slow request ended: {outcome:?}"),
                }
            }
            let response = client.request(address, get("/"), DEADLINE).await.expect("an answer");
            (response.body, client.stats())
        });
        assert_eq!(body, b"at last");
        // Dropped requests count as nothing but their connections.
        assert_eq!(stats_seen, stats(DROPPED as u64 + 1, 0, 0, 0));
        assert_eq!(peer.join().expect("the peer"), [true; DROPPED]);
    }

    #[test]
    fn pool_full_only_when_every_connection_is_busy_and_idle_ones_make_room() {
        let (got, got_rx) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let (first, first_peer) = peer(move |listener| {
            let mut stream = accept_one(&listener);
            read_request(&mut stream);
            got.send(()).expect("the test listens");
            go_rx.recv_timeout(PEER_WAIT_MAX).expect("told to answer");
            answer(&mut stream, "first");
            sees_close(&mut stream, PEER_WAIT_MAX)
        });
        let (second, second_peer) = peer(|listener| {
            let mut stream = accept_one(&listener);
            read_request(&mut stream);
            answer(&mut stream, "second");
        });
        let limits = ClientLimits { connections_max: 1, idle_per_peer_max: 1, ..limits() };
        let stats_seen = with_front(limits, PARK_TIMEOUT, move |client| async move {
            let busy = {
                let client = client.clone();
                glommio::spawn_local(async move {
                    client.request(first, get("/"), DEADLINE).await.map(|r| r.body)
                })
            };
            message(&got_rx).await;
            let refused = client.request(second, get("/"), DEADLINE).await;
            assert!(matches!(refused, Err(ClientError::PoolFull)), "{refused:?}");
            go.send(()).expect("the peer listens");
            assert_eq!(busy.await.expect("the first answer"), b"first");
            // The first connection is idle now: it makes room for the second peer.
            let response = client.request(second, get("/"), DEADLINE).await.expect("an answer");
            assert_eq!(response.body, b"second");
            client.stats()
        });
        assert_eq!(stats_seen, stats(2, 0, 0, 1));
        assert!(first_peer.join().expect("the first peer"), "the idle connection was evicted");
        second_peer.join().expect("the second peer");
    }

    #[test]
    fn a_stale_connection_is_retried_for_get_but_not_for_post() {
        let (address, peer) = peer(|listener| {
            let mut stream = accept_one(&listener);
            read_request(&mut stream);
            answer(&mut stream, "one");
            // Closed as the next request arrives, as a peer timing the
            // idle connection out would.
            assert!(read_request(&mut stream).starts_with("GET /two "));
            drop(stream);
            let mut stream = accept_one(&listener);
            assert!(read_request(&mut stream).starts_with("GET /two "));
            answer(&mut stream, "two");
            assert!(read_request(&mut stream).starts_with("POST /three "));
            drop(stream);
            accept(&listener, Duration::from_millis(300)).is_none()
        });
        let stats_seen = with_front(limits(), PARK_TIMEOUT, move |client| async move {
            let one = client.request(address, get("/one"), DEADLINE).await.expect("one");
            assert_eq!(one.body, b"one");
            let two = client.request(address, get("/two"), DEADLINE).await.expect("two, again");
            assert_eq!(two.body, b"two");
            let three = client.request(address, post("/three", b"x"), DEADLINE).await;
            assert!(matches!(three, Err(ClientError::Closed)), "{three:?}");
            client.stats()
        });
        assert_eq!(stats_seen, stats(2, 2, 0, 1));
        assert!(peer.join().expect("the peer"), "the POST was sent again");
    }

    #[test]
    fn invalid_requests_are_refused_without_connecting() {
        let listener = TcpListener::bind(loopback(0)).expect("binding");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("an address");
        let outcomes = with_front(limits(), PARK_TIMEOUT, move |client| async move {
            let big = vec![0u8; limits().body_bytes_max + 1];
            let requests = [
                ClientRequest { method: Method::Other, ..get("/") },
                get("relative"),
                get("/a b"),
                get("/a\tb"),
                ClientRequest { headers: &[("X-Split", "a\r\nX-Evil: 1")], ..get("/") },
                ClientRequest { headers: &[("Bad Name", "1")], ..get("/") },
                ClientRequest { headers: &[("content-length", "0")], ..get("/") },
                ClientRequest { headers: &[("Transfer-Encoding", "chunked")], ..get("/") },
                post("/", &big),
            ];
            let mut outcomes = Vec::new();
            for request in requests {
                let outcome = client.request(address, request, DEADLINE).await;
                outcomes.push(matches!(outcome, Err(ClientError::Invalid(_))));
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
            assert_eq!(client.stats(), stats(0, 0, 0, outcomes.len() as u64));
            outcomes
        });
        assert!(outcomes.iter().all(|invalid| *invalid), "{outcomes:?}");
        assert!(accept(&listener, Duration::ZERO).is_none(), "an invalid request connected");
    }

    #[test]
    fn a_request_wakes_a_parked_front() {
        const REQUESTS: usize = 3;
        let (address, peer) = peer(|listener| {
            let mut stream = accept_one(&listener);
            for _ in 0..REQUESTS {
                read_request(&mut stream);
                answer(&mut stream, "awake");
            }
        });
        // The front parks with a long guard: only the client's doorbell can
        // wake it soon.
        let park_timeout = Duration::from_secs(2);
        let latencies = with_front(limits(), park_timeout, move |client| async move {
            let mut latencies = Vec::new();
            for _ in 0..REQUESTS {
                glommio::timer::sleep(Duration::from_millis(300)).await;
                let start = Instant::now();
                client.request(address, get("/"), DEADLINE).await.expect("an answer");
                latencies.push(start.elapsed());
            }
            latencies
        });
        assert!(latencies.iter().all(|l| *l < Duration::from_millis(200)), "{latencies:?}");
        peer.join().expect("the peer");
    }

    #[test]
    fn idle_connections_are_closed_after_the_idle_timeout() {
        let (address, peer) = peer(|listener| {
            let mut stream = accept_one(&listener);
            read_request(&mut stream);
            answer(&mut stream, "idle");
            let answered = Instant::now();
            let closed = sees_close(&mut stream, PEER_WAIT_MAX);
            (closed, answered.elapsed())
        });
        let idle_timeout = Duration::from_millis(200);
        let limits = ClientLimits { idle_timeout, ..limits() };
        with_front(limits, PARK_TIMEOUT, move |client| async move {
            client.request(address, get("/"), DEADLINE).await.expect("an answer");
            // Long enough for the sweep; the drain would close it too.
            glommio::timer::sleep(Duration::from_secs(1)).await;
        });
        let (closed, after) = peer.join().expect("the peer");
        assert!(closed && after >= idle_timeout && after < Duration::from_secs(1), "{after:?}");
    }
}
