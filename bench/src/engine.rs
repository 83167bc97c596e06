//! The open-loop engine (SPEC §10).
//!
//! Requests are planned at a constant rate: request k of a thread is due at
//! `start + k / rate`. Latency is measured from that intended time, not from
//! when the request happened to be written, so a server that stalls is
//! charged for every request that should have been sent during the stall
//! (no coordinated omission). A request is written as soon as it is due on the
//! next connection with room; connections pipeline, so a slow answer does not
//! hold back the plan. Sends that leave more than `late_after` behind their
//! intended time are counted as late; requests that find every connection
//! at its pipeline limit are dropped and counted. Both make a run suspect,
//! and the report says so.
//!
//! Each thread is pinned to its core. By default it busy-polls its sockets
//! (mio, zero timeout): the generator's own core is spent on precision.
//! With [`Idle::Sleep`] it sleeps in the poll instead, until an answer
//! arrives or a timer (a `timerfd`, nanosecond resolution) says the next
//! send is due, so that the core is left to whatever else runs on it (the
//! node's worker threads, in a layout that puts them there). An answer that
//! arrives while it sleeps is timed after the thread wakes, so sleeping can
//! only add to the latencies measured, never hide any.

use crate::workload::{Workload, WorkloadSpec};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Bytes read from a socket at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Headers parsed per response.
const RESPONSE_HEADERS_MAX: usize = 32;
/// Latency range recorded, in nanoseconds.
const LATENCY_NS_MAX: u64 = 120_000_000_000;

/// One run at one rate.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub target: SocketAddr,
    /// Shard-aware runs: every shard's own address, in shard order; the
    /// workload says which shard each request is for. Empty: everything
    /// goes to `target`.
    pub shard_targets: Vec<SocketAddr>,
    pub workload: WorkloadSpec,
    /// Requests per second, over all threads.
    pub rate: f64,
    /// During the middle third of the measured time the rate is this many
    /// times `rate` (1: steady), as the seeds' burst runs ask.
    pub burst: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    /// Requests in flight on one connection, at most.
    pub pipeline_max: usize,
    /// Cores to pin generator threads to; one thread per core.
    pub cores: Vec<usize>,
    /// A send this far behind its plan is late.
    pub late_after: Duration,
    /// How long to wait for answers after the last send.
    pub drain: Duration,
    /// What a thread does while nothing is due and nothing has arrived.
    pub idle: Idle,
}

/// What a generator thread does between events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Idle {
    /// Poll the sockets again at once: the most precise, and the whole core.
    #[default]
    Spin,
    /// Sleep until an answer arrives or the next send is due.
    Sleep,
}

impl Idle {
    pub fn parse(name: &str) -> Option<Idle> {
        [Idle::Spin, Idle::Sleep].into_iter().find(|idle| idle.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Idle::Spin => "spin",
            Idle::Sleep => "sleep",
        }
    }
}

/// What a run measured. Only requests planned after the warm-up count.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub latency_ns: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub planned: u64,
    pub sent: u64,
    pub completed: u64,
    pub late: u64,
    pub dropped: u64,
    /// Requests without an answer: timed out or lost to a closed connection.
    pub unanswered: u64,
    /// Connections the server closed and the generator opened again.
    pub reconnects: u64,
    pub measured: Duration,
    /// CPU time the generator's threads used, all of the run.
    pub cpu: Duration,
    /// What the writes inside answers came to (`Workload::outcomes`).
    pub outcomes: BTreeMap<String, u64>,
}

impl RunResult {
    fn empty() -> RunResult {
        RunResult {
            latency_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid bounds"),
            statuses: BTreeMap::new(),
            planned: 0,
            sent: 0,
            completed: 0,
            late: 0,
            dropped: 0,
            unanswered: 0,
            reconnects: 0,
            measured: Duration::ZERO,
            cpu: Duration::ZERO,
            outcomes: BTreeMap::new(),
        }
    }

    fn add(&mut self, other: &RunResult) {
        self.latency_ns.add(&other.latency_ns).expect("same bounds");
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.planned += other.planned;
        self.sent += other.sent;
        self.completed += other.completed;
        self.late += other.late;
        self.dropped += other.dropped;
        self.unanswered += other.unanswered;
        self.reconnects += other.reconnects;
        self.measured = self.measured.max(other.measured);
        self.cpu += other.cpu;
        for (code, count) in &other.outcomes {
            *self.outcomes.entry(code.clone()).or_default() += count;
        }
    }

    pub fn achieved_rate(&self) -> f64 {
        self.completed as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    /// Answers that were not 2xx or 3xx.
    pub fn errors(&self) -> u64 {
        self.statuses.iter().filter(|(s, _)| **s >= 400).map(|(_, c)| c).sum()
    }

    /// Whether the generator kept its plan and the server answered everything
    /// it was sent, successfully.
    pub fn sustained(&self, rate: f64) -> bool {
        self.dropped == 0
            && self.unanswered == 0
            && self.errors() == 0
            && self.achieved_rate() >= 0.97 * rate
            && self.late * 100 <= self.planned
    }

    pub fn quantile_us(&self, quantile: f64) -> f64 {
        self.latency_ns.value_at_quantile(quantile) as f64 / 1000.0
    }
}

struct Connection {
    stream: TcpStream,
    token: Token,
    /// Index into the run's addresses.
    target: usize,
    out: Vec<u8>,
    input: Vec<u8>,
    /// Intended send times (ns since start) and indices of requests in
    /// flight, in order.
    inflight: VecDeque<(u64, u64)>,
    open: bool,
}

/// When each request of a thread is due: at a constant rate, times the
/// burst factor over the middle third of the measured time.
struct Plan {
    interval_ns: f64,
    burst: f64,
    /// Where the burst begins and ends, in ns from the start.
    burst_from_ns: f64,
    burst_to_ns: f64,
    /// Requests before and during the burst.
    before: u64,
    during: u64,
    total: u64,
}

impl Plan {
    fn new(spec: &RunSpec, rate: f64) -> Plan {
        let interval_ns = 1e9 / rate;
        let (warmup, measured) = (spec.warmup.as_nanos() as f64, spec.duration.as_nanos() as f64);
        let (burst_from_ns, burst_to_ns) = (warmup + measured / 3.0, warmup + 2.0 * measured / 3.0);
        let before = (burst_from_ns / interval_ns).ceil() as u64;
        let during = ((burst_to_ns - burst_from_ns) * spec.burst / interval_ns) as u64;
        let after = ((warmup + measured - burst_to_ns) / interval_ns) as u64;
        let total = if spec.burst > 1.0 {
            before + during + after
        } else {
            ((warmup + measured) / interval_ns) as u64
        };
        Plan { interval_ns, burst: spec.burst, burst_from_ns, burst_to_ns, before, during, total }
    }

    fn intended(&self, n: u64) -> u64 {
        if self.burst <= 1.0 || n < self.before {
            return (n as f64 * self.interval_ns) as u64;
        }
        let into = n - self.before;
        if into < self.during {
            return (self.burst_from_ns + into as f64 * self.interval_ns / self.burst) as u64;
        }
        (self.burst_to_ns + (into - self.during) as f64 * self.interval_ns) as u64
    }
}

impl RunSpec {
    /// The mean rate it plans over the measured time.
    pub fn mean_rate(&self) -> f64 {
        self.rate * (1.0 + (self.burst - 1.0) / 3.0)
    }
}

/// Runs the plan and merges every thread's measurements.
pub fn run(spec: &RunSpec) -> anyhow::Result<RunResult> {
    anyhow::ensure!(spec.rate > 0.0, "the rate must be positive");
    anyhow::ensure!(spec.burst >= 1.0, "the burst factor is at least 1");
    let threads = spec.cores.len().max(1);
    anyhow::ensure!(spec.connections >= threads, "at least one connection per thread");
    let barrier = Arc::new(Barrier::new(threads));
    let start_slot = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut handles = Vec::with_capacity(threads);
    for thread in 0..threads {
        let spec = spec.clone();
        let barrier = barrier.clone();
        let start_slot = start_slot.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<RunResult> {
            if let Some(core) = spec.cores.get(thread) {
                anyhow::ensure!(
                    core_affinity::set_for_current(core_affinity::CoreId { id: *core }),
                    "cannot pin to core {core}"
                );
            }
            let connections =
                spec.connections / threads + usize::from(thread < spec.connections % threads);
            let rate = spec.rate / threads as f64;
            let addresses = spec.addresses();
            let connections = connections.max(addresses.len());
            let mut streams = Vec::with_capacity(connections);
            for i in 0..connections {
                let target = i % addresses.len();
                streams.push((target, connect(addresses[target])?));
            }
            barrier.wait();
            // Every thread plans from the same instant.
            let start = *start_slot.get_or_init(|| Instant::now() + Duration::from_millis(20));
            drive(&spec, thread, rate, streams, start)
        }));
    }
    let mut total = RunResult::empty();
    for handle in handles {
        let result =
            handle.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        total.add(&result);
    }
    Ok(total)
}

impl RunSpec {
    /// Where connections go: the shards' addresses, or the one target.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        if self.shard_targets.is_empty() { vec![self.target] } else { self.shard_targets.clone() }
    }
}

fn connect(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = std::net::TcpStream::connect(target)
        .map_err(|e| anyhow::anyhow!("connecting to {target}: {e}"))?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream))
}

fn drive(
    spec: &RunSpec,
    thread: usize,
    rate: f64,
    streams: Vec<(usize, TcpStream)>,
    start: Instant,
) -> anyhow::Result<RunResult> {
    let mut poll = Poll::new()?;
    let timer = match spec.idle {
        Idle::Spin => None,
        Idle::Sleep => Some(Timer::new(&poll)?),
    };
    let addresses = spec.addresses();
    let mut connections: Vec<Connection> = Vec::with_capacity(streams.len());
    for (i, (target, mut stream)) in streams.into_iter().enumerate() {
        poll.registry().register(&mut stream, Token(i), Interest::READABLE)?;
        connections.push(Connection {
            stream,
            token: Token(i),
            target,
            out: Vec::with_capacity(16 * 1024),
            input: Vec::with_capacity(READ_CHUNK_BYTES),
            inflight: VecDeque::with_capacity(spec.pipeline_max),
            open: true,
        });
    }
    let mut workload = spec.workload.build(thread, spec.cores.len().max(1));
    let workload = workload.as_mut();
    let mut scratch = Vec::with_capacity(4096);
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut result = RunResult::empty();
    let plan = Plan::new(spec, rate);
    let warmup_ns = spec.warmup.as_nanos() as u64;
    let plan_ns = (spec.warmup + spec.duration).as_nanos() as u64;
    let total = plan.total;
    let late_ns = spec.late_after.as_nanos() as u64;
    let give_up_ns = plan_ns + spec.drain.as_nanos() as u64;
    let mut next = 0u64;
    let mut cursor = 0usize;
    while Instant::now() < start {
        std::hint::spin_loop();
    }
    loop {
        let now = start.elapsed().as_nanos() as u64;
        // Send every request that is due.
        while next < total {
            let intended = plan.intended(next);
            if intended > now {
                break;
            }
            let counted = intended >= warmup_ns;
            if counted {
                result.planned += 1;
            }
            scratch.clear();
            let shard = workload.request(next, &mut scratch);
            let wanted = (addresses.len() > 1).then(|| shard % addresses.len());
            let picked =
                (0..connections.len()).map(|i| (cursor + i) % connections.len()).find(|i| {
                    let c = &connections[*i];
                    c.open
                        && c.inflight.len() < spec.pipeline_max
                        && wanted.is_none_or(|t| t == c.target)
                });
            match picked {
                Some(i) => {
                    cursor = i + 1;
                    let connection = &mut connections[i];
                    connection.out.extend_from_slice(&scratch);
                    connection.inflight.push_back((intended, next));
                    if counted {
                        result.sent += 1;
                        if now - intended > late_ns {
                            result.late += 1;
                        }
                    }
                }
                None => {
                    workload.answered(next, 0, &[]);
                    if counted {
                        result.dropped += 1;
                    }
                }
            }
            next += 1;
        }
        // A server may close a connection (a keep-alive request limit, say):
        // its unanswered requests are counted, and a new one takes its place.
        if next < total {
            for connection in connections.iter_mut().filter(|c| !c.open) {
                let mut stream = connect(addresses[connection.target])?;
                poll.registry().register(&mut stream, connection.token, Interest::READABLE)?;
                connection.stream = stream;
                connection.input.clear();
                connection.open = true;
                result.reconnects += 1;
            }
        }
        for connection in connections.iter_mut().filter(|c| c.open && !c.out.is_empty()) {
            match connection.stream.write(&connection.out) {
                Ok(written) => {
                    connection.out.drain(..written);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => close(connection, warmup_ns, &mut result, workload),
            }
        }
        // Sleep until the next send is due, unless bytes wait to be written
        // (only readable sockets wake the poll).
        let wait = match &timer {
            Some(timer) if connections.iter().all(|c| c.out.is_empty()) => {
                let due = if next < total { plan.intended(next) } else { give_up_ns };
                let now = start.elapsed().as_nanos() as u64;
                if due > now {
                    timer.arm(due - now)?;
                    None
                } else {
                    Some(Duration::ZERO)
                }
            }
            _ => Some(Duration::ZERO),
        };
        poll.poll(&mut events, wait)?;
        for event in events.iter() {
            if event.token() == TIMER {
                timer.as_ref().expect("armed").clear();
                continue;
            }
            let connection = &mut connections[event.token().0];
            read_answers(connection, &mut chunk, start, warmup_ns, &mut result, workload);
        }
        let now = start.elapsed().as_nanos() as u64;
        let idle = connections.iter().all(|c| c.inflight.is_empty());
        if next >= total && (idle || now > give_up_ns) {
            break;
        }
    }
    for connection in &mut connections {
        while let Some((intended, index)) = connection.inflight.pop_front() {
            workload.answered(index, 0, &[]);
            if intended >= warmup_ns {
                result.unanswered += 1;
            }
        }
    }
    result.measured = spec.duration;
    result.cpu = thread_cpu();
    result.outcomes = workload.outcomes();
    Ok(result)
}

/// The CPU time (user and system) the calling thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes a rusage the call is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The poll token of [`Timer`]; connections are numbered from 0.
const TIMER: Token = Token(usize::MAX);

/// A one-shot `timerfd` in a thread's poll: it wakes the poll when the next
/// send is due.
struct Timer {
    fd: std::os::fd::OwnedFd,
}

impl Timer {
    fn new(poll: &Poll) -> std::io::Result<Timer> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: timerfd_create takes no pointers; a valid descriptor is
        // owned from here on.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        poll.registry().register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Timer { fd })
    }

    /// Fires once, `after_ns` from now.
    fn arm(&self, after_ns: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let value = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (after_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (after_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: both pointers are valid for the call; a null old value is
        // allowed.
        let done =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &value, std::ptr::null_mut()) };
        if done < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Reads the expirations, so that the descriptor is quiet until it fires
    /// again.
    fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into a u64 the call may write.
        unsafe {
            libc::read(self.fd.as_raw_fd(), (&mut expirations as *mut u64).cast(), 8);
        }
    }
}

fn close(
    connection: &mut Connection,
    warmup_ns: u64,
    result: &mut RunResult,
    workload: &mut dyn Workload,
) {
    if !connection.open {
        return;
    }
    connection.open = false;
    connection.out.clear();
    while let Some((intended, index)) = connection.inflight.pop_front() {
        workload.answered(index, 0, &[]);
        if intended >= warmup_ns {
            result.unanswered += 1;
        }
    }
}

fn read_answers(
    connection: &mut Connection,
    chunk: &mut [u8],
    start: Instant,
    warmup_ns: u64,
    result: &mut RunResult,
    workload: &mut dyn Workload,
) {
    loop {
        match connection.stream.read(chunk) {
            Ok(0) => {
                close(connection, warmup_ns, result, workload);
                return;
            }
            Ok(n) => connection.input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                close(connection, warmup_ns, result, workload);
                return;
            }
        }
    }
    let now = start.elapsed().as_nanos() as u64;
    let mut consumed = 0;
    loop {
        match parse_response(&connection.input[consumed..]) {
            Ok(Some((status, used))) => {
                let response = &connection.input[consumed..consumed + used];
                consumed += used;
                let Some((intended, index)) = connection.inflight.pop_front() else {
                    close(connection, warmup_ns, result, workload);
                    return;
                };
                workload.answered(index, status, response);
                if intended >= warmup_ns {
                    result.completed += 1;
                    *result.statuses.entry(status).or_default() += 1;
                    result.latency_ns.saturating_record(now.saturating_sub(intended).max(1));
                }
            }
            Ok(None) => break,
            Err(()) => {
                close(connection, warmup_ns, result, workload);
                return;
            }
        }
    }
    connection.input.drain(..consumed);
}

/// A complete response's status and length, `None` if more bytes are needed.
/// Only `Content-Length` framing is understood.
fn parse_response(bytes: &[u8]) -> Result<Option<(u16, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(bytes) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = response.code.ok_or(())?;
    let mut length = 0usize;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .map_err(|_| ())?
                .trim()
                .parse()
                .map_err(|_| ())?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        }
    }
    if bytes.len() < head + length {
        return Ok(None);
    }
    Ok(Some((status, head + length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_by_content_length() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 429 Too Many\r\nContent-Length: 0\r\n\r\n";
        let (status, used) = parse_response(two).unwrap().unwrap();
        assert_eq!((status, used), (200, 40));
        assert_eq!(parse_response(&two[used..]).unwrap().unwrap().0, 429);
        assert_eq!(parse_response(&two[..39]).unwrap(), None);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn a_burst_doubles_the_rate_over_the_middle_third() {
        let spec = |burst| RunSpec {
            target: "127.0.0.1:1".parse().unwrap(),
            shard_targets: Vec::new(),
            workload: WorkloadSpec::Get { path: "/".into() },
            rate: 100.0,
            burst,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(3),
            connections: 1,
            pipeline_max: 1,
            cores: Vec::new(),
            late_after: Duration::from_millis(1),
            drain: Duration::from_secs(1),
            idle: Idle::Spin,
        };
        let steady = Plan::new(&spec(1.0), 100.0);
        assert_eq!(steady.total, 300);
        assert_eq!(steady.intended(150), 1_500_000_000);
        let burst = Plan::new(&spec(2.0), 100.0);
        assert_eq!(burst.total, 400);
        let due: Vec<u64> = (0..burst.total).map(|n| burst.intended(n)).collect();
        assert!(due.windows(2).all(|w| w[0] < w[1]));
        let per_second = |s: u64| due.iter().filter(|d| **d / 1_000_000_000 == s).count();
        assert_eq!([per_second(0), per_second(1), per_second(2)], [100, 200, 100]);
        assert!((spec(2.0).mean_rate() - 400.0 / 3.0).abs() < 1e-9);
    }
}
