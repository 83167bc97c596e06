//! The HTTP/1.1 surface of SPEC §3: keep-alive, pipelining, HTTP/1.0,
//! chunked, 100-continue, gzip, and every limit crossed.

use ron_proto::routing::owner;
use ron_testing::{Conn, NodeOptions, TestNode, get, gzip, post_json, request};
use std::io::Write as _;
use std::time::{Duration, Instant};

/// A key owned by `shard` of `count`.
pub fn key_of_shard(shard: usize, count: usize) -> String {
    (0..)
        .map(|i| format!("acct:{i}"))
        .find(|k| owner(k.as_bytes(), count) == shard)
        .expect("some key")
}

const VERIFY: &str = "/v1/passport/verify";

fn verify_body(node: &TestNode) -> String {
    format!(r#"{{"token":"{}"}}"#, node.admin_token)
}

#[test]
fn pipelined_answers_come_back_in_request_order_even_when_some_are_answered_later() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let remote = key_of_shard(1, 2);
    let auth = node.admin();
    let mut conn = Conn::open(node.shard_address(0));
    let mut burst = String::new();
    for (id, path) in [
        ("a", "/healthz".to_owned()),
        ("b", format!("/v1/node/owner?key={remote}")),
        ("c", "/healthz".to_owned()),
        ("d", "/metrics".to_owned()),
        ("e", "/version".to_owned()),
    ] {
        burst.push_str(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nX-Corr-ID: {id}\r\nAuthorization: {auth}\r\n\r\n"
        ));
    }
    conn.send(burst.as_bytes());
    let mut order = String::new();
    for _ in 0..5 {
        let response = conn.read().expect("an answer");
        assert_eq!(response.status, 200, "{}", response.text());
        order.push_str(response.header("X-Corr-ID").unwrap());
        if response.header("X-Corr-ID") == Some("b") {
            assert!(
                response.text().contains(r#""answered_by":1,"received_by":0"#),
                "{}",
                response.text()
            );
        }
    }
    assert_eq!(order, "abcde");
}

#[test]
fn keep_alive_reuses_one_connection_for_many_requests() {
    let node = TestNode::start(NodeOptions::default());
    let before = node.metric("connections_accepted_total");
    let agent = ureq::AgentBuilder::new().max_idle_connections_per_host(1).build();
    for _ in 0..20 {
        assert_eq!(
            agent.get(&node.url("/healthz")).call().unwrap().into_string().unwrap(),
            r#"{"status":"ok"}"#
        );
    }
    // One connection for the 20 requests, one for this scrape.
    assert_eq!(node.metric("connections_accepted_total"), before + 2.0);
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let node = TestNode::start(NodeOptions::default().amnesia());
    let mut conn = Conn::open(node.listen);
    conn.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let response = conn.read().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(conn.closed_within(Duration::from_secs(3)));

    let mut conn = Conn::open(node.listen);
    conn.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let response = conn.read().unwrap();
    assert_eq!(response.header("Connection"), Some("keep-alive"));
    conn.send(b"GET /version HTTP/1.0\r\n\r\n");
    assert_eq!(conn.read().unwrap().status, 200);
}

#[test]
fn chunked_bodies_arriving_in_pieces() {
    let node = TestNode::start(NodeOptions::default().amnesia());
    let body = verify_body(&node);
    let (first, second) = body.split_at(body.len() / 2);
    let mut conn = Conn::open(node.listen);
    conn.send(
        format!(
            "POST {VERIFY} HTTP/1.1\r\nAuthorization: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            node.admin()
        )
        .as_bytes(),
    );
    for piece in [
        format!("{:x}\r\n{first}\r\n", first.len()),
        format!("{:x}\r\n{second}\r\n", second.len()),
        "0\r\n\r\n".to_owned(),
    ] {
        for byte in piece.as_bytes().chunks(7) {
            conn.send(byte);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let response = conn.read().unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.text().starts_with(r#"{"ok":true"#), "{}", response.text());
}

#[test]
fn expect_100_continue() {
    let node =
        TestNode::start(NodeOptions::default().amnesia().config("[limits]\nbody_max_bytes = 8192"));
    let body = verify_body(&node);
    let mut conn = Conn::open(node.listen);
    conn.send(
        format!(
            "POST {VERIFY} HTTP/1.1\r\nAuthorization: {}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            node.admin(),
            body.len()
        )
        .as_bytes(),
    );
    let interim = conn.read().unwrap();
    assert_eq!(interim.status, 100);
    conn.send(body.as_bytes());
    assert_eq!(conn.read().unwrap().status, 200);

    // Too large: refused at once, no 100, connection closed.
    let mut conn = Conn::open(node.listen);
    conn.send(b"POST /v1/passport/verify HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9000\r\n\r\n");
    let refused = conn.read().unwrap();
    assert_eq!(refused.status, 413);
    assert_eq!(refused.code(), "TOO_LARGE");
}

#[test]
fn gzip_bodies_and_the_decompression_cap() {
    let node = TestNode::start(
        NodeOptions::default()
            .amnesia()
            .config("[limits]\nbody_max_bytes = 65536\ndecompress_ratio_max = 10"),
    );
    let body = gzip(verify_body(&node).as_bytes());
    let headers = [
        ("Authorization", node.admin()),
        ("Content-Type", "application/json".to_owned()),
        ("Content-Encoding", "gzip".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let ok = request(node.listen, "POST", VERIFY, &headers, &body).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().starts_with(r#"{"ok":true"#));

    // 60 KB of spaces inside valid JSON compresses ~600:1; the cap is 10:1.
    let bomb = gzip(format!("{{\"token\":\"x\"{}}}", " ".repeat(60_000)).as_bytes());
    assert!(bomb.len() * 10 < 60_000);
    let refused = request(node.listen, "POST", VERIFY, &headers, &bomb).unwrap();
    assert_eq!(refused.status, 413);
    assert_eq!(refused.code(), "TOO_LARGE");

    let garbage = request(node.listen, "POST", VERIFY, &headers, b"not gzip at all").unwrap();
    assert_eq!(garbage.status, 400);

    let brotli =
        request(node.listen, "POST", VERIFY, &[("Content-Encoding", "br")], b"{}").unwrap();
    assert_eq!(brotli.status, 415);
    assert!(node.metric("rejected_total{reason=\"too_large\"}") >= 1.0);
}

#[test]
fn bodies_and_heads_over_their_limits() {
    let node = TestNode::start(
        NodeOptions::default()
            .amnesia()
            .config("[limits]\nbody_max_bytes = 1024\nheader_max_bytes = 2048"),
    );
    let big = vec![b'x'; 1025];
    let refused =
        request(node.listen, "POST", VERIFY, &[("Content-Type", "application/json")], &big)
            .unwrap();
    assert_eq!(refused.status, 413);
    assert_eq!(refused.header("Connection"), Some("close"));

    let mut conn = Conn::open(node.listen);
    conn.send(b"POST /v1/passport/verify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        conn.send(format!("200\r\n{}\r\n", "y".repeat(0x200)).as_bytes());
    }
    let refused = conn.read().unwrap();
    assert_eq!(refused.status, 413);

    let long_header = "a".repeat(3000);
    let refused = get(node.listen, "/healthz", &[("X-Long", &long_header)]).unwrap();
    assert_eq!(refused.status, 431);
    assert_eq!(refused.code(), "HEADERS_TOO_LARGE");
    // Exactly at the limit is fine.
    let fits = "a".repeat(1900);
    assert_eq!(get(node.listen, "/healthz", &[("X-Long", &fits)]).unwrap().status, 200);
    assert!(node.metric("rejected_total{reason=\"headers_too_large\"}") >= 1.0);
}

#[test]
fn json_routes_want_json() {
    let node = TestNode::start(NodeOptions::default().amnesia());
    let auth = node.admin();
    let not_json = request(
        node.listen,
        "POST",
        VERIFY,
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        b"hello",
    )
    .unwrap();
    assert_eq!(not_json.status, 415);
    assert_eq!(not_json.code(), "UNSUPPORTED_MEDIA_TYPE");
    assert_eq!(post_json(node.listen, VERIFY, &auth, "{not json").status, 400);
    let unknown = post_json(node.listen, VERIFY, &auth, r#"{"token":"x","colour":"blue"}"#);
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.code(), "BAD_REQUEST");
}

#[test]
fn slow_loris_gets_408_while_another_client_is_served() {
    let node = TestNode::start(
        NodeOptions::default().amnesia().config("[limits]\nheader_read_timeout_ms = 400"),
    );
    let address = node.listen;
    let loris = std::thread::spawn(move || {
        let mut conn = Conn::open(address);
        conn.send(b"GET /healthz HTTP/1.1\r\n");
        let started = Instant::now();
        let mut stream = conn.stream().try_clone().unwrap();
        // One header byte every 50 ms: never a complete head.
        while started.elapsed() < Duration::from_secs(5) {
            if stream.write_all(b"X").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            stream.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            if let Ok(response) = conn.read() {
                return (response, started.elapsed());
            }
        }
        panic!("the slow client was never cut off");
    });
    let mut worst = Duration::ZERO;
    let mut polite = Conn::open(node.listen);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        let sent = Instant::now();
        polite.send(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(polite.read().unwrap().status, 200);
        worst = worst.max(sent.elapsed());
    }
    let (response, after) = loris.join().unwrap();
    assert_eq!(response.status, 408);
    assert_eq!(response.code(), "REQUEST_TIMEOUT");
    assert!(after < Duration::from_secs(2), "cut off after {after:?}");
    // Generous for a shared, noisy machine; the point is "not stuck behind it".
    assert!(worst < Duration::from_millis(200), "a polite request waited {worst:?}");
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let node =
        TestNode::start(NodeOptions::default().amnesia().config("[limits]\nidle_timeout_ms = 300"));
    let mut conn = Conn::open(node.listen);
    conn.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(conn.read().unwrap().status, 200);
    assert!(conn.closed_within(Duration::from_secs(3)));
}

#[test]
fn over_the_inflight_cap_is_429_with_retry_after() {
    let node = TestNode::start(
        NodeOptions::default().shards(2).config("[limits]\ninflight_per_shard_max = 1"),
    );
    let remote = key_of_shard(1, 2);
    let mut conn = Conn::open(node.shard_address(0));
    let one = format!(
        "GET /v1/node/owner?key={remote} HTTP/1.1\r\nAuthorization: {}\r\n\r\n",
        node.admin()
    );
    // All in one write, so they are decoded in one turn: the first is in
    // flight on shard 1 while the rest arrive.
    conn.send(one.repeat(20).as_bytes());
    let mut busy = 0;
    let mut ok = 0;
    for _ in 0..20 {
        let response = conn.read().unwrap();
        match response.status {
            200 => ok += 1,
            429 => {
                busy += 1;
                assert_eq!(response.header("Retry-After"), Some("1"));
                assert_eq!(response.code(), "BUSY");
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    assert_eq!(node.metric("busy_rejections_total{endpoint=\"/v1/node/owner\"}"), f64::from(busy));
    // Ops routes are not shed, and the node recovers by itself.
    assert_eq!(get(node.listen, "/readyz", &[]).unwrap().status, 200);
}

#[test]
fn connections_over_the_per_shard_cap_are_refused() {
    let node = TestNode::start(
        NodeOptions::default().amnesia().config("[limits]\nconnections_per_shard_max = 3"),
    );
    // Wait for the readiness probes' connections to be gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.metric("connections_open") > 1.0 {
        assert!(Instant::now() < deadline, "probe connections linger");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Connections are served until the cap; a probe connection the node has
    // not yet seen close may still hold one slot.
    let mut held: Vec<Conn> = Vec::new();
    loop {
        let mut conn = Conn::open(node.listen);
        conn.send(b"GET /healthz HTTP/1.1\r\n\r\n");
        match conn.read() {
            Ok(response) => {
                assert_eq!(response.status, 200);
                held.push(conn);
                assert!(held.len() <= 3, "more connections than the cap were served");
            }
            Err(_) => break,
        }
    }
    assert!(held.len() >= 2, "only {} connections were served", held.len());
    // The held ones keep working.
    held[0].send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(held[0].read().unwrap().status, 200);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(response) = get(node.listen, "/metrics", &[])
            && response.status == 200
        {
            assert!(
                !response.text().contains("connections_refused_total 0"),
                "{}",
                response.text()
            );
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Large bodies (handed to the handler with the connection's buffer when
/// they are all it holds, copied when more follows) and large answers
/// (moved into the output when it is empty) keep their bytes and their
/// order, alone and pipelined.
#[test]
fn large_bodies_and_answers_keep_their_bytes_alone_and_pipelined() {
    let node = TestNode::start(NodeOptions::default());
    let auth = node.admin();
    let objects: Vec<Vec<u8>> = (0..3u8)
        .map(|i| (0..300_000u32).map(|n| b'a' + ((n + u32::from(i)) % 26) as u8).collect())
        .collect();
    let cid = |bytes: &[u8]| format!("b3:{}", blake3::hash(bytes).to_hex());
    let put = |body: &[u8]| {
        let mut bytes = format!(
            "PUT /v1/index/objects HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        bytes
    };
    let mut conn = Conn::open(node.listen);
    // Alone: the whole buffer is this request.
    conn.send(&put(&objects[0]));
    let answer = conn.read().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains(&cid(&objects[0])), "{}", answer.text());
    // Pipelined: two large bodies and a small request in one send.
    let mut burst = put(&objects[1]);
    burst.extend_from_slice(&put(&objects[2]));
    burst.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    conn.send(&burst);
    for object in &objects[1..] {
        let answer = conn.read().unwrap();
        assert!(answer.text().contains(&cid(object)), "{}", answer.text());
    }
    assert_eq!(conn.read().unwrap().status, 200);
    // Large answers, pipelined behind each other and before a small one.
    let mut gets = String::new();
    for object in &objects {
        gets.push_str(&format!(
            "GET /v1/index/objects/{} HTTP/1.1\r\nHost: t\r\n\r\n",
            cid(object)
        ));
    }
    gets.push_str("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    conn.send(gets.as_bytes());
    for object in &objects {
        let answer = conn.read().unwrap();
        assert_eq!(answer.status, 200);
        assert!(answer.body == *object, "a large answer changed");
    }
    assert_eq!(conn.read().unwrap().text(), r#"{"status":"ok"}"#);
}
