//! Start, configuration errors, keys on disk, drain and stop.

use ron_testing::{Conn, NodeOptions, TestNode, node_binary, post_json};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(node_binary());
    command.args(args).env("RON_LOG", "error");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("running ron-node");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bad_configuration_stops_the_process_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[limits]\nbody_max_byte = 10\n").unwrap();
    let (code, stderr) = run_with(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("body_max_byte"), "{stderr}");

    std::fs::write(&file, "[cores]\nshards = [0, 0]\n").unwrap();
    let (code, stderr) = run_with(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cores.shards"), "{stderr}");

    let (code, stderr) = run_with(&["--amnesia"], &[("RON_LIMITS_INFLIGHT_PER_SHARD_MAX", "lots")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("limits.inflight_per_shard_max"), "{stderr}");

    let (code, stderr) = run_with(&["--config", "/nonexistent/ron.toml"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/ron.toml"), "{stderr}");
}

#[test]
fn keys_and_admin_token_are_private_and_survive_a_restart() {
    let mut node = TestNode::start(NodeOptions::default());
    let data = node.data_dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("admin.token")), 0o600);
    assert_eq!(mode(&data.join("keys")), 0o700);
    assert_eq!(mode(&data.join("keys/root-1.key")), 0o600);
    assert!(!node.log().contains(&node.admin_token), "the admin token was logged");
    let token = node.admin_token.clone();

    let status = node.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", node.log());
    node.spawn();
    assert_eq!(node.admin_token, token, "the admin token is made once");
    let body = r#"{"subject_ref":"x","audience":"ron-node","ttl_s":5,"scopes":["wallet.read"]}"#;
    assert_eq!(
        post_json(node.listen, "/v1/passport/issue", &format!("Bearer {token}"), body).status,
        200
    );
}

#[test]
fn amnesia_prints_the_token_and_writes_nothing() {
    let node = TestNode::start(NodeOptions::default().amnesia());
    assert!(node.admin_token.starts_with("ron1."));
    assert!(!node.data_dir.path().join("data").exists());
    assert!(!node.log().contains(&node.admin_token));
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_zero() {
    let mut node = TestNode::start(NodeOptions::default().amnesia());
    let body = format!(r#"{{"token":"{}"}}"#, node.admin_token);
    let (first, second) = body.split_at(10);
    let mut conn = Conn::open(node.listen);
    conn.send(
        format!(
            "POST /v1/passport/verify HTTP/1.1\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
            node.admin(),
            body.len()
        )
        .as_bytes(),
    );
    let idle = Conn::open(node.listen);
    std::thread::sleep(Duration::from_millis(100));
    let pid = node.pid() as i32;
    // SAFETY: our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    // New connections are no longer accepted...
    assert!(std::net::TcpStream::connect(node.listen).is_err(), "still accepting while draining");
    // ...but the request in flight is answered, with Connection: close.
    conn.send(second.as_bytes());
    let response = conn.read().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    drop(idle);
    let status = node.signal_and_wait(0, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn drain_is_bounded_and_a_second_signal_exits_at_once() {
    let mut node = TestNode::start(
        NodeOptions::default().amnesia().config("[limits]\ndrain_timeout_ms = 300"),
    );
    let mut stuck = Conn::open(node.listen);
    stuck.send(b"POST /v1/passport/verify HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part");
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let status = node.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(3), "drain took {:?}", started.elapsed());

    let mut node = TestNode::start(
        NodeOptions::default().amnesia().config("[limits]\ndrain_timeout_ms = 60000"),
    );
    let mut stuck = Conn::open(node.listen);
    stuck.send(b"POST /v1/passport/verify HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part");
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: our own child.
    unsafe { libc::kill(node.pid() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let status = node.signal_and_wait(libc::SIGINT, Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// SIGHUP takes a new log filter without a restart (and logs the change
/// under it), and names the fields it cannot apply. The key rotation's
/// info line shows whether the library's info events are logged.
#[test]
fn sighup_reloads_the_log_filter_and_names_what_needs_a_restart() {
    const ROTATED: &str = "rotated the passport keys";
    let mut node = TestNode::start(NodeOptions::default());
    let pid = node.pid();
    let rotate = |node: &TestNode| {
        let answer = post_json(node.listen, "/admin/rotate", &node.admin(), "{}");
        assert_eq!(answer.status, 200, "{}", answer.text());
    };
    rotate(&node);
    assert!(node.log_holds(ROTATED, 1));
    // Warnings only, but the binary's own info (the reload's summary).
    node.reload("log = \"warn,ron_node=info\"");
    assert!(node.log().contains("log: info -> warn,ron_node=info"), "{}", node.log());
    // The rotation logs its line before it answers: none this time.
    rotate(&node);
    assert_eq!(node.log().matches(ROTATED).count(), 1, "an info line was logged under warn");
    node.reload("log = \"info\"");
    rotate(&node);
    assert!(node.log_holds(ROTATED, 2));
    // A filter that does not parse changes nothing.
    node.set_config("log = \"ron_server=loud\"");
    // SAFETY: kill has no memory effects; the pid is our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log().contains("the config does not load") {
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    rotate(&node);
    assert!(node.log_holds(ROTATED, 3));
    // Fields that need a restart are named, not applied.
    node.reload("log = \"info\"\n[ledger]\nqueue_capacity = 77\n[limits]\nbody_max_bytes = 5000");
    assert!(node.log_holds("need a restart", 1), "{}", node.log());
    let log = node.log();
    assert!(log.contains("\"ledger.queue_capacity\", \"limits.body_max_bytes\""), "{log}");
    assert_eq!(node.pid(), pid);
}
