//! The harness: builds and starts the real `ron-node` on loopback, and speaks
//! HTTP/1.1 to it both through a real client (ureq) and byte by byte, for the
//! cases a polite client never produces.

pub mod counting;

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How long a node may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testing/ sits in the workspace")
        .to_owned()
}

/// The `ron-node` binary of this build profile, built once per test run.
pub fn node_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_binary("ron-server", "ron-node"))
}

/// The `ron-load` binary of this build profile, built once per test run.
pub fn load_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_binary("ron-bench", "ron-load"))
}

/// Builds one binary of the workspace in the profile of this test binary.
fn build_binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-… → target/<profile>
    let profile_dir =
        exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_owned();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.current_dir(workspace()).args(["build", "--quiet", "-p", package, "--bin", bin]);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "building {bin} failed");
    let binary = profile_dir.join(bin);
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}

/// Ports for test nodes: blocks of consecutive free ports, distinct within
/// this process and spread by process id across processes, below Linux's
/// ephemeral range (32768 on): a port found free there could be taken as
/// the local port of any test's outgoing connection before the node binds
/// it (a CI run failed so: "Address already in use").
pub fn port_block(len: u16) -> u16 {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 120) as u16 * 100;
    loop {
        let offset = NEXT.fetch_add(len, Ordering::Relaxed);
        let base = FIRST + (start + offset % SPAN) % SPAN;
        if base + len > FIRST + SPAN {
            continue;
        }
        if (base..base + len).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

/// How to start a test node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub shards: usize,
    pub amnesia: bool,
    /// Extra TOML appended to the generated config (sections allowed).
    pub config: String,
    pub env: Vec<(String, String)>,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions { shards: 1, amnesia: false, config: String::new(), env: Vec::new() }
    }
}

impl NodeOptions {
    pub fn shards(mut self, shards: usize) -> NodeOptions {
        self.shards = shards;
        self
    }
    pub fn amnesia(mut self) -> NodeOptions {
        self.amnesia = true;
        self
    }
    pub fn config(mut self, toml: &str) -> NodeOptions {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> NodeOptions {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running `ron-node` child process.
pub struct TestNode {
    child: Option<Child>,
    pub listen: SocketAddr,
    pub shard_ports: Vec<u16>,
    pub admin_token: String,
    pub data_dir: tempfile::TempDir,
    pub log_path: PathBuf,
    config_path: PathBuf,
    options: NodeOptions,
}

/// Writes the config of a node with `shards` shards on this 2-core machine:
/// shards on cores 0.., committer on the last core.
fn write_config(
    dir: &Path,
    listen: SocketAddr,
    shard_port_base: u16,
    options: &NodeOptions,
) -> PathBuf {
    let cores: Vec<String> = (0..options.shards).map(|i| (i % 2).to_string()).collect();
    let (top, sections) = split_top_level(&options.config);
    let text = format!(
        "listen = \"{listen}\"\nshard_port_base = {shard_port_base}\ndata_dir = \"{}\"\n{top}\n[cores]\nshards = [{}]\ncommitter = 1\n{sections}",
        dir.join("data").display(),
        cores.join(", "),
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// Top-level keys must come before the first table in TOML.
fn split_top_level(extra: &str) -> (String, String) {
    match extra.find("\n[").map(|i| i + 1).or_else(|| extra.starts_with('[').then_some(0)) {
        Some(at) => (extra[..at].to_owned(), extra[at..].to_owned()),
        None => (extra.to_owned(), String::new()),
    }
}

impl TestNode {
    pub fn start(options: NodeOptions) -> TestNode {
        let data_dir = tempfile::tempdir().expect("a temp dir");
        let ports = port_block(1 + options.shards as u16);
        let listen: SocketAddr = format!("127.0.0.1:{ports}").parse().expect("an address");
        let shard_port_base = ports + 1;
        let config_path = write_config(data_dir.path(), listen, shard_port_base, &options);
        let mut node = TestNode {
            child: None,
            listen,
            shard_ports: (0..options.shards as u16).map(|i| shard_port_base + i).collect(),
            admin_token: String::new(),
            log_path: data_dir.path().join("node.log"),
            data_dir,
            config_path,
            options,
        };
        node.spawn();
        node
    }

    /// Starts the process (again) on the same config and data, and waits
    /// until it is ready.
    pub fn spawn(&mut self) {
        self.spawn_waiting_for("/readyz");
    }

    /// Starts the process (again) and waits only until it answers
    /// `/healthz` (a node in safe mode is never ready).
    pub fn spawn_unready(&mut self) {
        self.spawn_waiting_for("/healthz");
    }

    fn spawn_waiting_for(&mut self, probe: &str) {
        assert!(self.child.is_none(), "the node is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut command = Command::new(node_binary());
        command
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("RON_LOG")
            .stdout(Stdio::piped())
            .stderr(log);
        if self.options.amnesia {
            command.arg("--amnesia");
        }
        for (key, value) in &self.options.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawning ron-node");
        if self.options.amnesia {
            let stdout = child.stdout.take().expect("piped stdout");
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).expect("reading the admin token");
            self.admin_token = line
                .trim()
                .strip_prefix("RON_ADMIN_TOKEN=")
                .expect("the first line is the token")
                .to_owned();
        }
        self.child = Some(child);
        self.wait_for(probe);
        if !self.options.amnesia {
            let path = self.data_dir.path().join("data/admin.token");
            self.admin_token = std::fs::read_to_string(path).expect("the admin token file");
        }
    }

    fn wait_for(&mut self, probe: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("ron-node exited with {status} before it was ready:\n{}", self.log());
            }
            if let Ok(response) = get(self.listen, probe, &[])
                && response.status == 200
            {
                return;
            }
            if Instant::now() >= deadline {
                let pid = self.pid();
                panic!("ron-node not ready in time:\n{}\n{}", self.log(), threads_of(pid));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits up to 10 s until the node's log holds `text` `times` times;
    /// whether it did.
    pub fn log_holds(&self, text: &str, times: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(text).count() < times {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn shard_address(&self, shard: usize) -> SocketAddr {
        SocketAddr::new(self.listen.ip(), self.shard_ports[shard])
    }

    /// The bearer header of the admin token.
    pub fn admin(&self) -> String {
        format!("Bearer {}", self.admin_token)
    }

    /// The root key of kid 1 (macronode only), for minting test tokens.
    pub fn root_key(&self) -> [u8; 32] {
        let bytes =
            std::fs::read(self.data_dir.path().join("data/keys/root-1.key")).expect("the root key");
        bytes.try_into().expect("32 bytes")
    }

    /// Sends a signal and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill has no memory effects; the pid is our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("waiting") {
                self.wait_until_ports_are_released();
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "ron-node did not exit within {timeout:?} after signal {signal}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// io_uring releases a dead process's listening sockets a moment after
    /// it exits; until then the kernel may still hand connections to them.
    fn wait_until_ports_are_released(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut addresses = vec![self.listen];
        addresses.extend((0..self.shard_ports.len()).map(|i| self.shard_address(i)));
        for address in addresses {
            while TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok() {
                assert!(Instant::now() < deadline, "{address} still accepts after the node exited");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Restarts with `shards` shards on the same data (at most as many as
    /// the node started with, whose ports it keeps).
    pub fn set_shards(&mut self, shards: usize) {
        assert!(shards >= 1 && shards <= self.shard_ports.len());
        self.options.shards = shards;
        self.shard_ports.truncate(shards);
        let base = self.shard_ports[0];
        self.config_path = write_config(self.data_dir.path(), self.listen, base, &self.options);
    }

    /// Restarts with `toml` instead of the extra config it started with.
    pub fn set_config(&mut self, toml: &str) {
        self.options.config = format!("{toml}\n");
        let base = self.shard_ports[0];
        self.config_path = write_config(self.data_dir.path(), self.listen, base, &self.options);
    }

    /// Rewrites the config with `toml` as its extra part and sends SIGHUP;
    /// returns once the node has logged the reload.
    pub fn reload(&mut self, toml: &str) {
        const RELOADED: &str = "SIGHUP: configuration reloaded";
        let before = self.log().matches(RELOADED).count();
        self.set_config(toml);
        // SAFETY: kill has no memory effects; the pid is our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(RELOADED).count() == before {
            assert!(Instant::now() < deadline, "no reload logged:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The ledger's log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.path().join("data/log")
    }

    /// Reads a metric's value from `/metrics` (the first line that starts with `series`).
    pub fn metric(&self, series: &str) -> f64 {
        let response = get(self.listen, "/metrics", &[]).expect("scraping");
        assert_eq!(response.status, 200);
        let text = response.text();
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> simd_json::OwnedValue {
        let mut bytes = self.body.clone();
        simd_json::to_owned_value(&mut bytes).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// The `code` of an error envelope.
    pub fn code(&self) -> String {
        use simd_json::prelude::*;
        self.json().get_str("code").unwrap_or_default().to_owned()
    }
}

/// A client connection that reads responses one at a time, so tests can
/// pipeline, trickle bytes, and look at every interim answer.
pub struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Conn {
    pub fn open(address: SocketAddr) -> Conn {
        Conn::connect(address).expect("connecting")
    }

    pub fn connect(address: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buffer: Vec::new() })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("sending");
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).expect("timeout");
    }

    /// Reads one response; `Err` when the connection closed or timed out first.
    pub fn read(&mut self) -> std::io::Result<Response> {
        self.read_framed(true)
    }

    /// Reads the answer to a HEAD request: a head whose length describes a
    /// body that is not sent.
    pub fn read_head_answer(&mut self) -> std::io::Result<Response> {
        self.read_framed(false)
    }

    fn read_framed(&mut self, with_body: bool) -> std::io::Result<Response> {
        loop {
            if let Some((response, used)) = parse_response(&self.buffer, with_body)? {
                self.buffer.drain(..used);
                return Ok(response);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.read_some(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closed the connection (reads EOF within `timeout`).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).expect("timeout");
        let mut byte = [0u8; 1];
        matches!(self.read_some(&mut byte), Ok(0))
            || matches!(self.read_some(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    /// One `read`, asked again when it is interrupted. A socket with a
    /// read timeout fails with `EINTR` when the process is stopped and
    /// resumed (or frozen and thawed), even with no signal handler (see
    /// signal(7)); that is not an answer from the node.
    fn read_some(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.stream.read(buffer) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// What each thread of `pid` is doing, sampled twice a second apart:
/// name, state, CPU ticks used between the samples, and where it sleeps
/// (for a node that never became ready: spinning, or waiting on what).
fn threads_of(pid: u32) -> String {
    let sample = || -> Vec<(String, String, u64, String)> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
        let mut threads: Vec<_> = tasks
            .flatten()
            .filter_map(|task| {
                let path = task.path();
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // The name is in parentheses and may hold spaces.
                let (head, rest) = stat.rsplit_once(") ")?;
                let name = head.split_once(" (")?.1.to_owned();
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let ticks =
                    fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
                let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
                let id = task.file_name().to_string_lossy().into_owned();
                Some((format!("{id} {name}"), fields.first()?.to_string(), ticks, wchan))
            })
            .collect();
        threads.sort();
        threads
    };
    let before = sample();
    std::thread::sleep(Duration::from_secs(1));
    let mut out = format!("threads of {pid} (state, CPU ticks in 1 s, wait channel):\n");
    for (thread, state, ticks, wchan) in sample() {
        let used = before.iter().find(|b| b.0 == thread).map_or(ticks, |b| ticks - b.2);
        out.push_str(&format!("  {thread}: {state} {used} {wchan}\n"));
    }
    out
}

fn parse_response(buffer: &[u8], with_body: bool) -> std::io::Result<Option<(Response, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buffer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
    };
    let status = response.code.expect("a complete head has a code");
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    // Interim (1xx) answers have no body.
    let length = if (100..200).contains(&status) || !with_body {
        0
    } else {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>().expect("a numeric content-length"))
            .unwrap_or(0)
    };
    if buffer.len() < head_len + length {
        return Ok(None);
    }
    let body = buffer[head_len..head_len + length].to_vec();
    Ok(Some((Response { status, headers, body }, head_len + length)))
}

/// One request on a fresh connection.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    let mut conn = Conn::connect(address)?;
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    conn.send(&bytes);
    conn.read()
}

pub fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    request(address, "GET", path, headers, &[])
}

/// A POST of a JSON body.
pub fn post_json(address: SocketAddr, path: &str, bearer: &str, body: &str) -> Response {
    request(
        address,
        "POST",
        path,
        &[("Authorization", bearer), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .expect("a response")
}

/// Keeps the shard behind `address` busy until `stop` is set: large
/// `/ingest` batches of fresh mints, each parsed and checked on that
/// shard's thread, so that calls to it are answered late (the reservation
/// tests, with a 1 ms request timeout).
pub fn keep_busy(address: SocketAddr, bearer: &str, stop: &std::sync::atomic::AtomicBool) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        let entries: Vec<String> = (0..2000)
            .map(|i| {
                format!(
                    r#"{{"id":"busy-{nanos:x}-{round}-{i}","kind":"Mint","account":"busy:{i}","asset":"roc","amount":"1"}}"#
                )
            })
            .collect();
        let body = format!(r#"{{"batch":[{}]}}"#, entries.join(","));
        let _ = request(
            address,
            "POST",
            "/ingest",
            &[("Authorization", bearer), ("Content-Type", "application/json")],
            body.as_bytes(),
        );
        round += 1;
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("compressing");
    encoder.finish().expect("compressing")
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_of_lists_every_thread_with_its_state_and_cpu() {
        let _sleeper = std::thread::Builder::new()
            .name("a-sleeper".to_owned())
            .spawn(|| std::thread::sleep(std::time::Duration::from_secs(3)))
            .unwrap();
        let listed = super::threads_of(std::process::id());
        assert!(listed.starts_with("threads of"), "{listed}");
        let sleeper = listed.lines().find(|l| l.contains(" a-sleeper: ")).expect(&listed);
        // Asleep, using nothing, in the kernel's sleep.
        assert!(sleeper.contains(": S 0 "), "{listed}");
    }
}
