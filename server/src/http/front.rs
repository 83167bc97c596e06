//! The HTTP/1.1 front of a shard: connections on the shard's socket ring,
//! request decoding with the limits of SPEC §3, dispatch, and responses in
//! request order.
//!
//! One task drives it. Each turn it submits what is queued, reaps completions
//! without waiting, decodes and dispatches complete requests, takes in answers
//! that tasks finished (the mailbox), checks timers, and queues one send per
//! connection with output. Busy, it yields after every turn so other tasks of
//! the queue run and glommio keeps polling its own rings; idle for a few turns,
//! it parks on the ring's eventfd through glommio.
//!
//! The front also drives the shard's outbound connections (`client`): each
//! turn it hands the operations that tasks queued on the client to the ring
//! and routes the completions of client operations back to it. Both count
//! as work, and a task that queues an operation wakes a parked front.
//!
//! A connection's answers leave in request order: synchronous answers go
//! straight into its output while nothing is waiting before them; otherwise
//! they queue behind the answers that tasks have not finished yet.

use super::client::Client;
use super::reply::{self, CorrId, Handled, Reply, write_response};
use super::routes::{Request, RouteTable};
use super::socket_ring::{self, Completion, Op, SocketRing};
use crate::core::Core;
use crate::limits::{
    CONNECTION_BUFFER_BYTES, IDLE_PARK_TIMEOUT, LINGER, OUTPUT_BYTES_MAX, SWEEP_INTERVAL_MAX,
    SWEEP_INTERVAL_MIN,
};
use glommio::io::BufferedFile;
use ron_proto::ErrorCode;
use ron_proto::http::{
    self, BodyError, ChunkedDecoder, ContentEncoding, Framing, Head, HeadError, Limits,
};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

/// Answers finished by tasks, waiting for the front to put them in order.
#[derive(Default)]
pub struct Mailbox {
    finished: RefCell<Vec<Finished>>,
    rung: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

pub struct Finished {
    slot: u32,
    generation: u32,
    seq: u64,
    bytes: Vec<u8>,
    close: bool,
}

impl Mailbox {
    fn post(&self, finished: Finished) {
        self.finished.borrow_mut().push(finished);
        self.rung.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// Answer what was asked, flush, then linger.
    Closing,
    /// Our side is shut; drop what the peer still sends until it closes or
    /// the deadline passes.
    Lingering(Instant),
    /// Shut down both ways; freed once no request of the ring refers to it.
    Dead,
}

/// A request being received.
#[derive(Default)]
struct Progress {
    /// When its first byte arrived (or the connection was accepted).
    started: Option<Instant>,
    head: Option<Head>,
    head_done: Option<Instant>,
    chunked: Option<ChunkedDecoder>,
    continue_sent: bool,
}

/// An answer that cannot be written yet because an earlier one is not done.
struct Waiting {
    seq: u64,
    bytes: Option<Vec<u8>>,
    close: bool,
}

struct Conn {
    socket: OwnedFd,
    generation: u32,
    phase: Phase,
    input: Vec<u8>,
    /// Bytes of `input` already decoded.
    consumed: usize,
    /// A decoded chunked body.
    body: Vec<u8>,
    output: Vec<u8>,
    /// The bytes of the send in flight; untouched until it completes.
    sending: Vec<u8>,
    sent: usize,
    send_inflight: bool,
    recv_armed: bool,
    peer_closed: bool,
    waiting: VecDeque<Waiting>,
    next_seq: u64,
    request: Progress,
    last_active: Instant,
    dirty: bool,
}

impl Conn {
    fn flushed(&self) -> bool {
        self.output.is_empty() && self.sending.is_empty() && self.waiting.is_empty()
    }
}

struct Listener {
    /// Closed once its accept is cancelled at drain, so the kernel stops
    /// queueing connections for it.
    socket: Option<OwnedFd>,
    armed: bool,
}

/// Limits the front checks, from the configuration.
struct FrontLimits {
    http: Limits,
    header_read_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
    drain_timeout: Duration,
    connections_max: u32,
    pipeline_depth_max: usize,
    idle_turns_before_park: u32,
    sweep_interval: Duration,
}

pub struct Front {
    core: Rc<Core>,
    routes: Rc<RouteTable>,
    mailbox: Rc<Mailbox>,
    date: Rc<RefCell<HttpDate>>,
    corr_counter: u64,
    ring: SocketRing,
    /// Outbound connections; their operations go through this ring too.
    client: Rc<Client>,
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    open: u32,
    dirty: Vec<u32>,
    completions: Vec<Completion>,
    /// Gzip bodies are inflated here.
    inflated: Vec<u8>,
    error_body: Vec<u8>,
    limits: FrontLimits,
    last_sweep: Instant,
    drain_started: Option<Instant>,
    park: Park,
    generation: u32,
}

/// What the front awaits when idle (the ring's eventfd, read through glommio,
/// the mailbox, or the client's queue), and the guard timer that keeps the
/// shard from sleeping while the front is runnable.
///
/// The guard works around a glommio 0.9 scheduler race, reproduced on this
/// machine with an instrumented copy of glommio: the executor's loop polls
/// its rings, then calls `run_task_queues`, which returns "nothing ran" when
/// `need_preempt` is already true on entry. That happens when the latency
/// ring's preempt timer (1 ms for a `Latency::Matters(1ms)` queue) completes
/// just after the poll consumed the ring. The loop takes "nothing ran" for
/// "nothing to run" and parks with the front's queue still active; with no
/// glommio timer pending it sleeps until some glommio I/O arrives, which for
/// a shard whose sockets live on its own ring means forever. The guard keeps
/// a glommio timer pending at most `park_timeout` ahead whenever the front
/// yields or parks with connections open, so a stranded front runs again
/// within `park_timeout`. Re-arming costs a timer-map update at most once per
/// `park_timeout / 2` while busy. With no connection open the park waits up
/// to `limits::IDLE_PARK_TIMEOUT`, so an idle node wakes rarely.
struct Park {
    eventfd: Rc<BufferedFile>,
    read: Option<Pin<Box<dyn Future<Output = ()>>>>,
    guard: glommio::timer::Timer,
    /// When the guard fires; it is re-armed once less than half remains.
    guard_deadline: Instant,
    guard_fired: bool,
    timeout: Duration,
}

/// Why a park ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woken {
    Ring,
    Mailbox,
    Client,
    Guard,
}

impl Park {
    /// Keeps the guard pending no later than `timeout` from now, registered
    /// with this task's waker.
    fn arm_guard(&mut self, cx: &mut Context<'_>, timeout: Duration) {
        let now = Instant::now();
        let left = self.guard_deadline.saturating_duration_since(now);
        if !self.guard_fired && left >= timeout / 2 && left <= timeout {
            return;
        }
        self.guard.reset(timeout);
        self.guard_deadline = now + timeout;
        self.guard_fired = Pin::new(&mut self.guard).poll(cx).is_ready();
    }

    /// Whether the guard fired since it was armed.
    fn guard_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.guard_fired && Instant::now() >= self.guard_deadline {
            self.guard_fired = Pin::new(&mut self.guard).poll(cx).is_ready();
        }
        self.guard_fired
    }

    /// Lets the other tasks of the queue run, with the guard armed.
    fn yield_now(&mut self) -> impl Future<Output = ()> + '_ {
        let mut yielded = false;
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if yielded {
                return Poll::Ready(());
            }
            yielded = true;
            let timeout = self.timeout;
            self.arm_guard(cx, timeout);
            cx.waker().wake_by_ref();
            Poll::Pending
        })
    }

    fn wait<'a>(
        &'a mut self,
        mailbox: &'a Mailbox,
        client: &'a Client,
        timeout: Duration,
    ) -> impl Future<Output = Woken> + 'a {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if mailbox.rung.replace(false) {
                return Poll::Ready(Woken::Mailbox);
            }
            *mailbox.waker.borrow_mut() = Some(cx.waker().clone());
            // Cleared by the turn that submits what was queued.
            if client.poll_queued(cx) {
                return Poll::Ready(Woken::Client);
            }
            let eventfd = self.eventfd.clone();
            let read = self.read.get_or_insert_with(|| {
                Box::pin(async move {
                    // The count itself does not matter; reading resets it.
                    let _ = eventfd.read_at(0, 8).await;
                })
            });
            if read.as_mut().poll(cx).is_ready() {
                self.read = None;
                return Poll::Ready(Woken::Ring);
            }
            if self.guard_fired(cx) {
                return Poll::Ready(Woken::Guard);
            }
            self.arm_guard(cx, timeout);
            if self.guard_fired {
                return Poll::Ready(Woken::Guard);
            }
            Poll::Pending
        })
    }
}

impl Front {
    pub fn new(
        core: Rc<Core>,
        routes: Rc<RouteTable>,
        mut ring: SocketRing,
        client: Rc<Client>,
        sockets: Vec<OwnedFd>,
    ) -> std::io::Result<Front> {
        let config = &core.config.limits;
        let timeouts =
            [config.header_read_timeout_ms, config.request_timeout_ms, config.idle_timeout_ms];
        let shortest = Duration::from_millis(*timeouts.iter().min().expect("three timeouts"));
        let limits = FrontLimits {
            http: Limits {
                header_bytes_max: config.header_max_bytes,
                body_bytes_max: config.body_max_bytes,
                decompress_ratio_max: config.decompress_ratio_max,
            },
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
            connections_max: config.connections_per_shard_max,
            pipeline_depth_max: config.pipeline_depth_max as usize,
            idle_turns_before_park: core.config.executor.idle_turns_before_park,
            sweep_interval: (shortest / 4).clamp(SWEEP_INTERVAL_MIN, SWEEP_INTERVAL_MAX),
        };
        let mut listeners = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            ring.accept(socket.as_raw_fd(), index as u32)?;
            listeners.push(Listener { socket: Some(socket), armed: true });
        }
        let park_timeout = Duration::from_micros(core.config.executor.park_timeout_us);
        // SAFETY: `dup` returns a new descriptor that the BufferedFile owns.
        let eventfd = unsafe { libc::dup(ring.eventfd()) };
        if eventfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let eventfd = Rc::new(unsafe { BufferedFile::from_raw_fd(eventfd) });
        Ok(Front {
            core,
            routes,
            mailbox: Rc::new(Mailbox::default()),
            date: Rc::new(RefCell::new(HttpDate::new())),
            corr_counter: 0,
            ring,
            client,
            listeners,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            dirty: Vec::new(),
            completions: Vec::with_capacity(1024),
            inflated: Vec::new(),
            error_body: Vec::new(),
            limits,
            last_sweep: Instant::now(),
            drain_started: None,
            park: Park {
                eventfd,
                read: None,
                guard: glommio::timer::Timer::new(park_timeout),
                guard_deadline: Instant::now(),
                guard_fired: true,
                timeout: park_timeout,
            },
            generation: 0,
        })
    }

    pub async fn run(mut self) {
        let mut idle_turns = 0;
        loop {
            let worked = self.turn();
            if self.drained() {
                return;
            }
            if worked {
                idle_turns = 0;
                self.park.yield_now().await;
                continue;
            }
            idle_turns += 1;
            if idle_turns < self.limits.idle_turns_before_park {
                self.park.yield_now().await;
                continue;
            }
            if self.open > 0 || self.drain_started.is_some() || self.client.busy() {
                if let Err(error) = self.ring.arm_timeout(self.limits.sweep_interval) {
                    tracing::error!(shard = self.core.id, %error, "arming the sweep timer");
                }
                if !self.ring_is_quiet() {
                    continue;
                }
            }
            if !self.ring.prepare_park() {
                continue;
            }
            self.core.metrics.borrow_mut().parks += 1;
            let timeout = if self.open > 0 || self.core.inflight.get() > 0 || self.client.busy() {
                self.park.timeout
            } else {
                IDLE_PARK_TIMEOUT.max(self.park.timeout)
            };
            if self.park.wait(&self.mailbox, &self.client, timeout).await == Woken::Guard {
                self.core.metrics.borrow_mut().park_timeouts += 1;
            }
            self.ring.after_park();
            idle_turns = 0;
        }
    }

    /// Submits queued entries; false if that already produced completions.
    fn ring_is_quiet(&mut self) -> bool {
        if let Err(error) = self.ring.submit_and_reap(&mut self.completions) {
            tracing::error!(shard = self.core.id, %error, "socket ring");
        }
        if self.completions.is_empty() {
            return true;
        }
        let now = Instant::now();
        self.take_completions(now);
        false
    }

    fn turn(&mut self) -> bool {
        if let Err(error) = self.ring.submit_and_reap(&mut self.completions) {
            tracing::error!(shard = self.core.id, %error, "socket ring");
        }
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= self.limits.sweep_interval {
            self.date.borrow_mut().refresh();
            self.sweep(now);
        }
        let mut worked = !self.completions.is_empty();
        self.take_completions(now);
        if self.core.returns.inbox().has_results() {
            // Worker results wake the tasks that wait for them.
            self.core.returns.deliver();
            worked = true;
        }
        worked |= self.take_mailbox(now);
        if self.core.node.draining.load(Ordering::Relaxed) && self.drain_started.is_none() {
            self.start_drain(now);
            worked = true;
        }
        // After the completions and the mailbox, which queue client work too.
        worked |= self.client.submit(&mut self.ring);
        worked |= self.flush();
        worked
    }

    /// Drained once every connection is closed, every task has answered,
    /// and then the client is stopped and the ring is done with its memory.
    fn drained(&self) -> bool {
        let served = self.drain_started.is_some()
            && self.open == 0
            && self.core.inflight.get() == 0
            && self.listeners.iter().all(|l| !l.armed);
        if !served {
            return false;
        }
        // Requests still being answered may call peers until here.
        self.client.stop();
        self.client.is_quiet()
    }

    fn take_completions(&mut self, now: Instant) {
        let mut completions = std::mem::take(&mut self.completions);
        for completion in completions.drain(..) {
            self.on_completion(completion, now);
        }
        self.completions = completions;
    }

    fn on_completion(&mut self, completion: Completion, now: Instant) {
        match completion.op {
            Op::Accept(index) => self.on_accept(index, completion, now),
            Op::Recv(slot) => self.on_recv(slot, completion, now),
            Op::Send(slot) => self.on_send(slot, completion.result, now),
            Op::Connect(_)
            | Op::ConnectTimeout(_)
            | Op::ClientRecv(_)
            | Op::ClientSend(_)
            | Op::ClientCancel(_) => self.client.on_completion(&mut self.ring, completion),
            Op::Timeout | Op::Cancel => {}
        }
    }

    fn on_accept(&mut self, index: u32, completion: Completion, now: Instant) {
        let listener = &mut self.listeners[index as usize];
        if !completion.more {
            listener.armed = false;
            let socket = listener.socket.as_ref().expect("an armed listener is open").as_raw_fd();
            if self.drain_started.is_some() {
                listener.socket = None;
            } else if let Err(error) = self.ring.accept(socket, index) {
                tracing::error!(shard = self.core.id, %error, "re-arming accept");
            } else {
                listener.armed = true;
            }
        }
        if completion.result < 0 {
            if completion.result != -libc::ECANCELED {
                tracing::warn!(shard = self.core.id, errno = -completion.result, "accept failed");
            }
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that we own.
        let socket = unsafe { OwnedFd::from_raw_fd(completion.result) };
        if self.drain_started.is_some() || self.open >= self.limits.connections_max {
            let mut metrics = self.core.metrics.borrow_mut();
            metrics.connections_refused += 1;
            metrics.rejected[ErrorCode::Busy.index()] += 1;
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        if let Err(error) = self.ring.recv(socket.as_raw_fd(), slot) {
            tracing::error!(shard = self.core.id, %error, "arming receive");
            self.free.push(slot);
            return;
        }
        self.generation = self.generation.wrapping_add(1);
        self.conns[slot as usize] = Some(Conn {
            socket,
            generation: self.generation,
            phase: Phase::Open,
            input: Vec::with_capacity(CONNECTION_BUFFER_BYTES),
            consumed: 0,
            body: Vec::new(),
            output: Vec::with_capacity(CONNECTION_BUFFER_BYTES),
            sending: Vec::with_capacity(CONNECTION_BUFFER_BYTES),
            sent: 0,
            send_inflight: false,
            recv_armed: true,
            peer_closed: false,
            waiting: VecDeque::new(),
            next_seq: 0,
            // Slow-loris: the first request's clock starts at accept.
            request: Progress { started: Some(now), ..Progress::default() },
            last_active: now,
            dirty: false,
        });
        self.open += 1;
        let mut metrics = self.core.metrics.borrow_mut();
        metrics.connections_accepted += 1;
        metrics.connections_open += 1;
    }

    fn on_recv(&mut self, slot: u32, completion: Completion, now: Instant) {
        let conn = self.conns[slot as usize].as_mut().expect("a receive belongs to a live slot");
        if !completion.more {
            conn.recv_armed = false;
        }
        if let Some(buffer) = completion.buffer {
            let received = completion.result.max(0) as usize;
            // Once closing, nothing more will be decoded; drop it.
            if conn.phase == Phase::Open {
                conn.input.extend_from_slice(self.ring.received(buffer, received));
            }
            self.ring.recycle(buffer);
        }
        match completion.result {
            n if n > 0 => {
                conn.last_active = now;
                if conn.phase == Phase::Open && conn.request.started.is_none() {
                    conn.request.started = Some(now);
                }
                if !conn.recv_armed && conn.phase != Phase::Dead {
                    self.rearm_recv(slot);
                }
                self.process(slot, now);
            }
            0 => {
                // The peer is done sending: answer what it asked, then close.
                conn.peer_closed = true;
                match conn.phase {
                    Phase::Open => {
                        self.process(slot, now);
                        self.begin_close(slot);
                    }
                    Phase::Closing => {}
                    Phase::Lingering(_) => self.kill(slot),
                    Phase::Dead => self.release(slot),
                }
            }
            error if error == -libc::ENOBUFS && conn.phase != Phase::Dead => {
                // Every provided buffer was in use; they are back now.
                if !conn.recv_armed {
                    self.rearm_recv(slot);
                }
            }
            _ => self.kill(slot),
        }
        if self.conns[slot as usize].as_ref().is_some_and(|c| c.phase == Phase::Dead) {
            self.release(slot);
        }
    }

    fn rearm_recv(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("a live slot");
        match self.ring.recv(conn.socket.as_raw_fd(), slot) {
            Ok(()) => conn.recv_armed = true,
            Err(error) => {
                tracing::error!(shard = self.core.id, %error, "re-arming receive");
                self.kill(slot);
            }
        }
    }

    fn on_send(&mut self, slot: u32, result: i32, now: Instant) {
        let conn = self.conns[slot as usize].as_mut().expect("a send belongs to a live slot");
        conn.send_inflight = false;
        if conn.phase == Phase::Dead {
            self.release(slot);
            return;
        }
        if result < 0 {
            self.kill(slot);
            return;
        }
        conn.last_active = now;
        conn.sent += result as usize;
        if conn.sent >= conn.sending.len() {
            conn.sending.clear();
            conn.sent = 0;
            // A large answer's buffer is not kept by an idle connection.
            if conn.sending.capacity() > 4 * CONNECTION_BUFFER_BYTES {
                conn.sending = Vec::with_capacity(CONNECTION_BUFFER_BYTES);
            }
        }
        mark_dirty(&mut self.dirty, conn, slot);
        // Output drained: requests held back by backpressure may go on.
        if conn.consumed < conn.input.len() {
            self.process(slot, now);
        }
    }

    /// Decodes and dispatches every complete request in the connection's input.
    fn process(&mut self, slot: u32, now: Instant) {
        loop {
            let conn = self.conns[slot as usize].as_mut().expect("a live slot");
            if conn.phase != Phase::Open {
                break;
            }
            if conn.waiting.len() >= self.limits.pipeline_depth_max
                || conn.output.len() >= OUTPUT_BYTES_MAX
            {
                // Backpressure: the client is not reading its answers.
                let input_max = OUTPUT_BYTES_MAX
                    + self.limits.http.header_bytes_max
                    + self.limits.http.body_bytes_max;
                if conn.input.len() - conn.consumed > input_max {
                    self.fail(
                        slot,
                        Reply::fatal(ErrorCode::Busy, "pipelined too far ahead of reading answers"),
                    );
                }
                break;
            }
            let input = &conn.input[conn.consumed..];
            if input.is_empty() {
                break;
            }
            let head = match conn.request.head {
                Some(head) => head,
                None => match http::decode_head(input, &self.limits.http) {
                    Ok(None) => break,
                    Ok(Some(head)) => {
                        conn.request.head = Some(head);
                        conn.request.head_done = Some(now);
                        head
                    }
                    Err(error) => {
                        self.fail(slot, head_error_reply(error));
                        break;
                    }
                },
            };
            let after_head = &input[head.head_bytes..];
            let (body_bytes, request_bytes) = match head.framing {
                Framing::Empty => (0, head.head_bytes),
                Framing::Length(length) if after_head.len() >= length => {
                    (length, head.head_bytes + length)
                }
                Framing::Length(length) => {
                    // Room for the whole request at once (the length is
                    // within the body limit): a large body then arrives
                    // without the buffer being copied each time it doubles.
                    let needed = conn.consumed + head.head_bytes + length;
                    conn.input.reserve(needed.saturating_sub(conn.input.len()));
                    send_continue(&mut self.dirty, conn, slot, &head);
                    break;
                }
                Framing::Chunked => {
                    let body_bytes_max = self.limits.http.body_bytes_max;
                    let decoder = conn
                        .request
                        .chunked
                        .get_or_insert_with(|| ChunkedDecoder::new(body_bytes_max));
                    match decoder.decode(after_head, &mut conn.body) {
                        Ok(Some(used)) => (usize::MAX, head.head_bytes + used),
                        Ok(None) => {
                            send_continue(&mut self.dirty, conn, slot, &head);
                            break;
                        }
                        Err(error) => {
                            self.fail(slot, body_error_reply(error));
                            break;
                        }
                    }
                }
            };
            // A large body that is all the buffer holds is handed over
            // whole (`Request::body_bytes`), not copied.
            let conn = self.conns[slot as usize].as_mut().expect("a live slot");
            let hand_over = body_bytes != usize::MAX
                && body_bytes >= HAND_OVER_BODY_BYTES_MIN
                && conn.consumed == 0
                && conn.input.len() == request_bytes
                && head.encoding != ContentEncoding::Gzip;
            let whole = hand_over.then(|| {
                bytes::Bytes::from(std::mem::replace(
                    &mut conn.input,
                    Vec::with_capacity(CONNECTION_BUFFER_BYTES),
                ))
            });
            self.handle(slot, head, body_bytes, whole.as_ref(), now);
            let conn = self.conns[slot as usize].as_mut().expect("a live slot");
            if whole.is_none() {
                conn.consumed += request_bytes;
            }
            conn.body.clear();
            if conn.body.capacity() > 4 * CONNECTION_BUFFER_BYTES {
                // A large chunked body's buffer is not kept either.
                conn.body = Vec::new();
            }
            conn.request = Progress::default();
            if conn.consumed < conn.input.len() {
                conn.request.started = Some(now);
            }
        }
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        if conn.consumed > 0 {
            conn.input.drain(..conn.consumed);
            conn.consumed = 0;
            if conn.input.is_empty() && conn.input.capacity() > 4 * CONNECTION_BUFFER_BYTES {
                conn.input = Vec::with_capacity(CONNECTION_BUFFER_BYTES);
            }
        }
    }

    /// Runs one complete request. `body_bytes` is `usize::MAX` for a chunked
    /// body (already decoded into the connection's body buffer).
    fn handle(
        &mut self,
        slot: u32,
        head: Head,
        body_bytes: usize,
        whole: Option<&bytes::Bytes>,
        now: Instant,
    ) {
        let conn = self.conns[slot as usize].as_mut().expect("a live slot");
        let input = match whole {
            Some(whole) => &whole[..],
            None => &conn.input[conn.consumed..],
        };
        let corr_id = head
            .corr_id
            .and_then(|span| CorrId::from_client(span.of(input)))
            .unwrap_or_else(|| next_corr_id(&mut self.corr_counter, self.core.id));
        let mut body: &[u8] = if body_bytes == usize::MAX {
            &conn.body
        } else {
            &input[head.head_bytes..head.head_bytes + body_bytes]
        };
        let mut keep_alive = head.keep_alive && self.drain_started.is_none();
        let framing = |keep_alive| reply::Framing {
            keep_alive,
            http10: head.http10,
            head_only: head.method == http::Method::Head,
        };
        if head.encoding == ContentEncoding::Gzip && !body.is_empty() {
            self.inflated.clear();
            let cap = http::gunzip_bytes_max(body.len(), &self.limits.http);
            if let Err(error) = http::gunzip(body, &mut self.inflated, cap) {
                let reply = body_error_reply(error);
                self.answer_now(slot, self.routes.len(), reply, &corr_id, framing(keep_alive), now);
                return;
            }
            body = &self.inflated;
        }
        let request = Request {
            head: &head,
            raw: input,
            body,
            shared: whole,
            corr_id,
            socket: conn.socket.as_raw_fd(),
            received_at: now,
        };
        let (route, handled) = self.routes.dispatch(&self.core, &request);
        match handled {
            Handled::Now(reply) => {
                keep_alive &= !reply.close;
                self.answer_now(slot, route, reply, &corr_id, framing(keep_alive), now);
            }
            Handled::Later(future) => {
                let conn = self.conns[slot as usize].as_mut().expect("a live slot");
                let seq = conn.next_seq;
                conn.next_seq += 1;
                conn.waiting.push_back(Waiting { seq, bytes: None, close: !keep_alive });
                if !keep_alive {
                    conn.phase = Phase::Closing;
                }
                spawn_later(
                    &self.core,
                    &self.mailbox,
                    &self.date,
                    future,
                    Later {
                        slot,
                        generation: conn.generation,
                        seq,
                        route,
                        corr_id,
                        framing: framing(keep_alive),
                        received_at: now,
                    },
                );
            }
        }
    }

    /// Writes a synchronous answer: straight to the output, or behind the
    /// answers still being worked on.
    fn answer_now(
        &mut self,
        slot: u32,
        route: usize,
        reply: Reply,
        corr_id: &CorrId,
        framing: reply::Framing,
        now: Instant,
    ) {
        let conn = self.conns[slot as usize].as_mut().expect("a live slot");
        let seq = conn.next_seq;
        conn.next_seq += 1;
        let scratch = self.core.scratch.borrow();
        let date = self.date.borrow();
        if conn.waiting.is_empty() {
            write_response(
                &mut conn.output,
                &reply,
                &scratch,
                &mut self.error_body,
                corr_id,
                framing,
                date.bytes(),
            );
        } else {
            let mut bytes = Vec::new();
            write_response(
                &mut bytes,
                &reply,
                &scratch,
                &mut self.error_body,
                corr_id,
                framing,
                date.bytes(),
            );
            conn.waiting.push_back(Waiting { seq, bytes: Some(bytes), close: !framing.keep_alive });
        }
        drop((scratch, date));
        record(&self.core, route, &reply, now);
        mark_dirty(&mut self.dirty, conn, slot);
        if !framing.keep_alive || reply.close {
            self.begin_close(slot);
        }
    }

    /// Answers an error that ends the connection (the stream is out of sync).
    fn fail(&mut self, slot: u32, reply: Reply) {
        let corr_id = next_corr_id(&mut self.corr_counter, self.core.id);
        let framing = reply::Framing { keep_alive: false, http10: false, head_only: false };
        let now = Instant::now();
        self.answer_now(slot, self.routes.len(), reply, &corr_id, framing, now);
    }

    fn take_mailbox(&mut self, now: Instant) -> bool {
        let mut finished = std::mem::take(&mut *self.mailbox.finished.borrow_mut());
        self.mailbox.rung.set(false);
        let any = !finished.is_empty();
        for done in finished.drain(..) {
            let Some(conn) = self.conns[done.slot as usize].as_mut() else { continue };
            if conn.generation != done.generation || conn.phase == Phase::Dead {
                continue;
            }
            if let Some(waiting) = conn.waiting.iter_mut().find(|w| w.seq == done.seq) {
                waiting.bytes = Some(done.bytes);
                waiting.close |= done.close;
            }
            let mut close = false;
            while conn.waiting.front().is_some_and(|w| w.bytes.is_some()) {
                let waiting = conn.waiting.pop_front().expect("checked");
                let bytes = waiting.bytes.expect("checked");
                if conn.output.is_empty() && bytes.len() > CONNECTION_BUFFER_BYTES {
                    // A large answer becomes the output as it is: no copy.
                    conn.output = bytes;
                } else {
                    conn.output.extend_from_slice(&bytes);
                }
                close |= waiting.close;
            }
            conn.last_active = now;
            mark_dirty(&mut self.dirty, conn, done.slot);
            if close {
                self.begin_close(done.slot);
            } else {
                // Requests held back behind the finished one may go on.
                self.process(done.slot, now);
            }
        }
        // Keep the allocation for the next turn.
        let mut slot = self.mailbox.finished.borrow_mut();
        if slot.is_empty() {
            *slot = finished;
        }
        any
    }

    /// Queues a send for every connection with output and none in flight,
    /// and moves closing connections along.
    fn flush(&mut self) -> bool {
        let mut dirty = std::mem::take(&mut self.dirty);
        let worked = !dirty.is_empty();
        for slot in dirty.drain(..) {
            let Some(conn) = self.conns[slot as usize].as_mut() else { continue };
            conn.dirty = false;
            if conn.phase == Phase::Dead || conn.send_inflight {
                continue;
            }
            if conn.sending.is_empty() && !conn.output.is_empty() {
                std::mem::swap(&mut conn.sending, &mut conn.output);
                conn.sent = 0;
            }
            if !conn.sending.is_empty() {
                let socket = conn.socket.as_raw_fd();
                // SAFETY: `sending` is neither touched nor reallocated until
                // this send completes (`send_inflight`), and the connection
                // is not freed while it is in flight.
                let queued = unsafe { self.ring.send(socket, &conn.sending[conn.sent..], slot) };
                match queued {
                    Ok(()) => conn.send_inflight = true,
                    Err(error) => {
                        tracing::error!(shard = self.core.id, %error, "queueing a send");
                        self.kill(slot);
                    }
                }
                continue;
            }
            if conn.phase == Phase::Closing && conn.flushed() {
                self.linger(slot);
            }
        }
        self.dirty = dirty;
        worked
    }

    /// Stops taking requests; the connection closes once its answers are out.
    fn begin_close(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("a live slot");
        if conn.phase == Phase::Open {
            conn.phase = Phase::Closing;
        }
        mark_dirty(&mut self.dirty, conn, slot);
    }

    fn linger(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("a live slot");
        if conn.peer_closed {
            self.kill(slot);
            return;
        }
        socket_ring::shutdown(conn.socket.as_raw_fd(), libc::SHUT_WR);
        conn.phase = Phase::Lingering(Instant::now() + LINGER);
        conn.input = Vec::new();
        conn.consumed = 0;
    }

    /// Shuts the socket down; the slot is freed when the ring is done with it.
    fn kill(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("a live slot");
        if conn.phase != Phase::Dead {
            conn.phase = Phase::Dead;
            socket_ring::shutdown(conn.socket.as_raw_fd(), libc::SHUT_RDWR);
        }
        self.release(slot);
    }

    fn release(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].as_ref().expect("a live slot");
        if conn.phase != Phase::Dead || conn.recv_armed || conn.send_inflight {
            return;
        }
        self.conns[slot as usize] = None;
        self.free.push(slot);
        self.open -= 1;
        self.core.metrics.borrow_mut().connections_open -= 1;
    }

    /// Header, body, idle and linger deadlines.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        self.client.sweep(now);
        let drain_over = self
            .drain_started
            .is_some_and(|at| now.duration_since(at) >= self.limits.drain_timeout);
        for slot in 0..self.conns.len() as u32 {
            let Some(conn) = self.conns[slot as usize].as_ref() else { continue };
            if drain_over {
                self.kill(slot);
                continue;
            }
            match conn.phase {
                Phase::Open => {
                    let request = &conn.request;
                    let receiving = conn.consumed < conn.input.len() || request.started.is_some();
                    if let Some(head_done) = request.head_done {
                        if now.duration_since(head_done) >= self.limits.request_timeout {
                            self.fail(
                                slot,
                                Reply::fatal(
                                    ErrorCode::RequestTimeout,
                                    "request body not received in time",
                                ),
                            );
                        }
                    } else if let Some(started) = request.started.filter(|_| receiving) {
                        if now.duration_since(started) >= self.limits.header_read_timeout {
                            self.fail(
                                slot,
                                Reply::fatal(
                                    ErrorCode::RequestTimeout,
                                    "request head not received in time",
                                ),
                            );
                        }
                    } else if conn.flushed()
                        && now.duration_since(conn.last_active) >= self.limits.idle_timeout
                    {
                        self.kill(slot);
                    }
                }
                Phase::Closing => {
                    if now.duration_since(conn.last_active) >= self.limits.idle_timeout {
                        self.kill(slot);
                    }
                }
                Phase::Lingering(until) => {
                    if now >= until {
                        self.kill(slot);
                    }
                }
                Phase::Dead => {}
            }
        }
    }

    fn start_drain(&mut self, now: Instant) {
        self.drain_started = Some(now);
        tracing::info!(shard = self.core.id, open = self.open, "draining");
        for (index, listener) in self.listeners.iter().enumerate() {
            if listener.armed
                && let Err(error) = self.ring.cancel(Op::Accept(index as u32))
            {
                tracing::error!(shard = self.core.id, %error, "cancelling accept");
            }
        }
        for slot in 0..self.conns.len() as u32 {
            let Some(conn) = self.conns[slot as usize].as_ref() else { continue };
            let receiving = conn.input.len() > conn.consumed || conn.request.head.is_some();
            if receiving {
                // The request being received is finished and answered with
                // `Connection: close` (see `handle`).
                continue;
            }
            if conn.flushed() {
                self.kill(slot);
            } else {
                // Answers already owed go out; the connection closes after them.
                self.begin_close(slot);
            }
        }
    }
}

fn mark_dirty(dirty: &mut Vec<u32>, conn: &mut Conn, slot: u32) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(slot);
    }
}

/// Bodies from this size on are handed to their handler with the
/// connection's buffer when it holds nothing else (below it a copy is
/// cheaper than a new buffer).
const HAND_OVER_BODY_BYTES_MIN: usize = 64 << 10;

/// Answers `Expect: 100-continue` once, when the body is still to come.
fn send_continue(dirty: &mut Vec<u32>, conn: &mut Conn, slot: u32, head: &Head) {
    if head.expect_continue && !conn.request.continue_sent && conn.waiting.is_empty() {
        conn.request.continue_sent = true;
        conn.output.extend_from_slice(reply::CONTINUE);
        mark_dirty(dirty, conn, slot);
    }
}

fn head_error_reply(error: HeadError) -> Reply {
    match error {
        HeadError::TooLarge => {
            Reply::fatal(ErrorCode::HeadersTooLarge, "request head over the header limit")
        }
        HeadError::BodyTooLarge => {
            Reply::fatal(ErrorCode::TooLarge, "request body over the body limit")
        }
        HeadError::UnsupportedEncoding => Reply::fatal(
            ErrorCode::UnsupportedMediaType,
            "content-encoding must be gzip or identity",
        ),
        HeadError::Invalid(why) => Reply::fatal(ErrorCode::BadRequest, why),
    }
}

fn body_error_reply(error: BodyError) -> Reply {
    match error {
        BodyError::TooLarge => {
            Reply::fatal(ErrorCode::TooLarge, "request body over the body limit")
        }
        BodyError::Invalid(why) => Reply::fatal(ErrorCode::BadRequest, why),
    }
}

/// A correlation id for a request that brought none.
fn next_corr_id(counter: &mut u64, shard: usize) -> CorrId {
    *counter += 1;
    CorrId::generate(shard, *counter - 1)
}

/// Counts an answer in the shard's metrics.
fn record(shard: &Core, route: usize, reply: &Reply, received_at: Instant) {
    let mut metrics = shard.metrics.borrow_mut();
    metrics.request_latency[route].record(received_at.elapsed());
    if let Some(code) = reply.error_code() {
        metrics.rejected[code.index()] += 1;
    }
}

/// Where a task's answer goes.
struct Later {
    slot: u32,
    generation: u32,
    seq: u64,
    route: usize,
    corr_id: CorrId,
    framing: reply::Framing,
    received_at: Instant,
}

fn spawn_later(
    core: &Rc<Core>,
    mailbox: &Rc<Mailbox>,
    date: &Rc<RefCell<HttpDate>>,
    future: Pin<Box<dyn Future<Output = Reply>>>,
    later: Later,
) {
    core.inflight.set(core.inflight.get() + 1);
    core.metrics.borrow_mut().inflight[later.route] += 1;
    let (shard, mailbox, date) = (core.clone(), mailbox.clone(), date.clone());
    let task = async move {
        let reply = future.await;
        shard.inflight.set(shard.inflight.get() - 1);
        shard.note_load();
        shard.metrics.borrow_mut().inflight[later.route] -= 1;
        assert!(!matches!(reply.body, reply::Body::Scratch), "answers from tasks own their bodies");
        // Room for the head and the whole body: a large answer is written
        // once, not copied each time the buffer doubles.
        let body_bytes = match &reply.body {
            reply::Body::Owned(body) => body.len(),
            _ => 0,
        };
        let mut bytes = Vec::with_capacity(256 + body_bytes);
        let date = date.borrow();
        write_response(
            &mut bytes,
            &reply,
            &[],
            &mut Vec::new(),
            &later.corr_id,
            later.framing,
            date.bytes(),
        );
        drop(date);
        record(&shard, later.route, &reply, later.received_at);
        let close = reply.close || !later.framing.keep_alive;
        mailbox.post(Finished {
            slot: later.slot,
            generation: later.generation,
            seq: later.seq,
            bytes,
            close,
        });
    };
    core.spawn(task);
}

/// The `Date` header, formatted once per second.
pub struct HttpDate {
    text: [u8; 29],
    second: u64,
}

impl HttpDate {
    fn new() -> HttpDate {
        let mut date = HttpDate { text: [b' '; 29], second: u64::MAX };
        date.refresh();
        date
    }

    pub fn refresh(&mut self) {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
            }
            self.second = second;
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.text
    }
}
