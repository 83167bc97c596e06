//! The echo service, which exists to show (and keep showing) that a service
//! is a folder and one registry line: its route, its cross-shard call, its
//! log item and its view table, through the real binary.

use crate::http::key_of_shard;
use ron_testing::{NodeOptions, TestNode, get, request};
use simd_json::prelude::*;
use std::time::Duration;

fn put(node: &TestNode, port: std::net::SocketAddr, key: &str, value: &[u8]) -> u16 {
    let auth = node.admin();
    let response =
        request(port, "PUT", &format!("/v1/echo/{key}"), &[("Authorization", &auth)], value)
            .unwrap();
    response.status
}

fn read(node: &TestNode, port: std::net::SocketAddr, key: &str) -> (u16, Vec<u8>) {
    let auth = node.admin();
    let response = get(port, &format!("/v1/echo/{key}"), &[("Authorization", &auth)]).unwrap();
    (response.status, response.body)
}

#[test]
fn echo_is_off_unless_enabled() {
    let node = TestNode::start(NodeOptions::default().amnesia());
    let auth = node.admin();
    let missing = get(node.listen, "/v1/echo/k", &[("Authorization", &auth)]).unwrap();
    assert_eq!(missing.status, 404);
    let version = get(node.listen, "/version", &[]).unwrap().json();
    let services = version.get_array("services").expect("services are listed");
    assert!(!services.iter().any(|s| s.as_str() == Some("echo")));
}

#[test]
fn echo_writes_through_the_log_reads_across_shards_and_survives_restarts() {
    let options = NodeOptions::default()
        .shards(2)
        .config("[services]\nenable = [\"echo\"]\n[ledger]\nview_write_ms = 50\n");
    let mut node = TestNode::start(options);
    let version = get(node.listen, "/version", &[]).unwrap().json();
    let services = version.get_array("services").expect("services are listed");
    assert!(services.iter().any(|s| s.as_str() == Some("echo")));
    // A key of every shard, written on one shard's port and read on another's:
    // the write goes to the log, the owner applies it, the read is a mesh call.
    let keys: Vec<String> = (0..2).map(|shard| key_of_shard(shard, 2)).collect();
    for (i, key) in keys.iter().enumerate() {
        let value = format!("value of {key}");
        assert_eq!(put(&node, node.shard_address(i), key, value.as_bytes()), 200);
        let other = node.shard_address((i + 1) % 2);
        assert_eq!(read(&node, other, key), (200, value.into_bytes()));
    }
    assert_eq!(read(&node, node.listen, "nobody").0, 404);
    // Limits: a key or value too long is refused and stores nothing.
    let long_key = "k".repeat(65);
    assert_eq!(put(&node, node.listen, &long_key, b"x"), 400);
    assert_eq!(put(&node, node.listen, "big", &[b'x'; 513]), 413);
    assert_eq!(read(&node, node.listen, "big").0, 404);
    // Views are written, then a restart loads them; a second write after the
    // last view write is replayed from the log.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(put(&node, node.listen, &keys[0], b"second"), 200);
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    assert_eq!(read(&node, node.listen, &keys[0]), (200, b"second".to_vec()));
    for key in &keys[1..] {
        assert_eq!(read(&node, node.listen, key), (200, format!("value of {key}").into_bytes()));
    }
    // The restart loaded both shards' views and replayed only the write
    // after them, on the shard that owns its key.
    let log = node.log();
    let start = log.rfind("ledger log recovered").expect("a restart");
    let view_seqs: Vec<u64> = log[start..]
        .lines()
        .filter(|l| l.contains("shard view loaded"))
        .map(|l| {
            let at = l.find("view_seq=").expect("view_seq") + "view_seq=".len();
            l[at..].split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(view_seqs.len(), 2, "{log}");
    assert!(
        view_seqs.iter().all(|seq| *seq > 0),
        "views were written before the kill: {view_seqs:?}"
    );
    assert_eq!(crate::ledger::tail_entries(&node, 2), vec![1, 0]);
    // Turned off, its items stay in the log, known and applied by nobody:
    // the node starts and is ready, and the route is gone.
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.set_config("[ledger]\nview_write_ms = 50\n");
    node.spawn();
    assert_eq!(read(&node, node.listen, &keys[0]).0, 404);
    assert!(!node.log().contains("safe mode"), "{}", node.log());
    // Turned on again, its state comes back from the log (the views'
    // table layout changed, so they are rebuilt).
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.set_config("[services]\nenable = [\"echo\"]\n");
    node.spawn();
    assert_eq!(read(&node, node.listen, &keys[0]), (200, b"second".to_vec()));
    assert_eq!(
        read(&node, node.listen, &keys[1]),
        (200, format!("value of {}", keys[1]).into_bytes())
    );
}

/// A peer on loopback that accepts and then behaves as `behave` says, for
/// at most `rounds` connections; it stops by itself.
fn bad_peer(rounds: usize, behave: fn(&mut std::net::TcpStream)) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..rounds {
            let Ok((mut stream, _)) = listener.accept() else { return };
            behave(&mut stream);
        }
    });
    address
}

fn ask_peer(node: &TestNode, peer: std::net::SocketAddr, path: &str) -> ron_testing::Response {
    let auth = node.admin();
    let url = format!("/v1/echo-peer?addr={peer}&path={path}");
    get(node.listen, &url, &[("Authorization", &auth)]).unwrap()
}

#[test]
fn outbound_connections_reach_a_second_node_and_survive_bad_peers() {
    let node = TestNode::start(
        NodeOptions::default().amnesia().config("[services]\nenable = [\"echo\"]\n"),
    );
    let second = TestNode::start(NodeOptions::default().amnesia());
    // A real ron-node answers, twice on one kept connection.
    for _ in 0..2 {
        let answer = ask_peer(&node, second.listen, "/version");
        assert_eq!(answer.status, 200, "{}", answer.text());
        let body = answer.json();
        assert_eq!(body.get_u64("status"), Some(200));
        assert!(body.get_str("body").unwrap().contains("\"name\":\"ron-node\""));
    }
    assert_eq!(node.metric("outbound_connects_total"), 1.0);
    assert_eq!(node.metric("outbound_reuses_total"), 1.0);
    // A peer that never answers: the deadline ends it.
    let silent = bad_peer(1, |stream| {
        std::thread::sleep(Duration::from_secs(2));
        let _ = std::io::Write::write_all(stream, b"");
    });
    let started = std::time::Instant::now();
    let answer = ask_peer(&node, silent, "/");
    assert_eq!(answer.status, 503);
    assert!(answer.text().contains("timed_out"), "{}", answer.text());
    assert!(started.elapsed() < Duration::from_millis(1500));
    // One that closes mid-answer.
    let cut = bad_peer(1, |stream| {
        let mut request = [0u8; 1024];
        let _ = std::io::Read::read(stream, &mut request);
        let _ =
            std::io::Write::write_all(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    });
    let answer = ask_peer(&node, cut, "/");
    assert_eq!(answer.status, 503);
    assert!(answer.text().contains("closed"), "{}", answer.text());
    // One whose head is over the limit (`limits.header_max_bytes`, 16 KiB).
    let huge = bad_peer(1, |stream| {
        let mut request = [0u8; 1024];
        let _ = std::io::Read::read(stream, &mut request);
        let long = format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\n\r\n", "x".repeat(20_000));
        let _ = std::io::Write::write_all(stream, long.as_bytes());
    });
    let answer = ask_peer(&node, huge, "/");
    assert_eq!(answer.status, 503);
    assert!(answer.text().contains("too_large"), "{}", answer.text());
    // The node still reaches the good peer afterwards.
    assert_eq!(ask_peer(&node, second.listen, "/healthz").status, 200);
    assert_eq!(node.metric("outbound_timeouts_total"), 1.0);
    assert_eq!(node.metric("outbound_errors_total"), 2.0);
}

#[test]
fn worker_results_come_back_and_a_full_lane_answers_429() {
    let node =
        TestNode::start(NodeOptions::default().amnesia().config(
            "[services]\nenable = [\"echo\"]\n[workers]\nidle_threads = 1\nqueue_max = 1\n",
        ));
    let body = vec![7u8; 1024];
    let expected = {
        let mut digest = *blake3::hash(&body).as_bytes();
        for _ in 1..2 {
            digest = *blake3::hash(&digest).as_bytes();
        }
        ron_proto::merkle::to_hex(&digest)
    };
    let auth = node.admin();
    let answer =
        request(node.listen, "POST", "/v1/echo-hash?rounds=2", &[("Authorization", &auth)], &body)
            .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json().get_str("digest"), Some(expected.as_str()));
    // Long jobs at once: one runs, one waits, the rest find the lane full.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let path = "/v1/echo-hash?rounds=300000";
                    request(node.listen, "POST", path, &[("Authorization", &auth)], &body)
                        .unwrap()
                        .status
                })
            })
            .collect();
        jobs.into_iter().map(|job| job.join().unwrap()).collect()
    });
    let done = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(done >= 1 && refused >= 1 && done + refused == 8, "{statuses:?}");
    assert_eq!(node.metric("worker_refusals_total{lane=\"idle\"}"), refused as f64);
    let too_many = "/v1/echo-hash?rounds=1000001";
    let answer =
        request(node.listen, "POST", too_many, &[("Authorization", &auth)], &body).unwrap();
    assert_eq!(answer.status, 400);
}
