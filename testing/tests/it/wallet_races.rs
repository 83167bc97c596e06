//! Writes that race, through the real binary: a payer's pipelined nonces
//! arriving out of order over several connections, and reservations whose
//! callers stop waiting.

use ron_testing::{Conn, NodeOptions, Response, TestNode, get, post_json};
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn post(node: &TestNode, address: SocketAddr, path: &str, body: &str) -> Response {
    post_json(address, path, &node.admin(), body)
}

fn balance(node: &TestNode, address: SocketAddr, account: &str) -> u128 {
    let path = format!("/v1/balance?account={account}&asset=roc");
    let response = get(address, &path, &[("Authorization", &node.admin())]).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().get_str("amount_minor").unwrap().parse().unwrap()
}

/// A reservation whose request the caller stopped waiting for must not
/// outlive it. With a 1 ms mesh timeout, payers owned by shard 1 send one
/// transfer of their whole balance each through shard 0's port, many at
/// once: some reservations are answered after the caller gave up (503).
/// Then every payer's request, asked again with the same key, must get its
/// receipt (it committed, or it was never reserved and commits now) and
/// every payer ends at 0 with nothing held: no funds held by nothing, no
/// key stuck "being committed".
#[test]
fn a_reservation_never_outlives_its_request() {
    use ron_proto::routing::owner;
    const PAYERS: usize = 128;
    let options = NodeOptions::default().shards(2).env("RON_LIMITS_REQUEST_TIMEOUT_MS", "1");
    let node = TestNode::start(options);
    let payers: Vec<String> = (0..)
        .map(|i| format!("leak:{i}"))
        .filter(|a| owner(a.as_bytes(), 2) == 1)
        .take(PAYERS)
        .collect();
    let shard0 = node.shard_address(0);
    let with_retry = |path: &str, body: &str| -> Response {
        // The 1 ms timeout refuses some calls with 503 at any time, and a
        // request still being committed is 429: ask again (the same key
        // and body) until answered, for 10 s at most.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let response = post(&node, shard0, path, body);
            let refused = matches!(response.status, 429 | 503);
            if !refused || std::time::Instant::now() > deadline {
                return response;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let transfer_body = |payer: &str| {
        format!(
            r#"{{"from":"{payer}","to":"sink","asset":"roc","amount_minor":"10","nonce":1,"idempotency_key":"t-{payer}"}}"#
        )
    };
    for payer in &payers {
        let body = format!(
            r#"{{"to":"{payer}","asset":"roc","amount_minor":"10","idempotency_key":"f-{payer}"}}"#
        );
        assert_eq!(with_retry("/v1/issue", &body).status, 200);
    }
    // The storm: every transfer once, 16 at a time, no retries, while
    // shard 1 (the payers' owner) is kept busy: its reservations come late.
    let timed_out = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let admin = node.admin();
    std::thread::scope(|scope| {
        scope.spawn(|| ron_testing::keep_busy(node.shard_address(1), &admin, &stop));
        let lanes: Vec<_> = payers
            .chunks(PAYERS / 16)
            .map(|lane| {
                let (node, timed_out) = (&node, &timed_out);
                scope.spawn(move || {
                    for payer in lane {
                        let response = post(node, shard0, "/v1/transfer", &transfer_body(payer));
                        if matches!(response.status, 429 | 503) {
                            timed_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        lanes.into_iter().for_each(|lane| lane.join().unwrap());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let timed_out = timed_out.into_inner();
    eprintln!("{timed_out} of {PAYERS} transfers were refused with 429 or 503 in the storm");
    assert!(timed_out > 0, "the 1 ms timeout refused nothing: the test shows nothing");
    // Every request asked again gets its receipt, and nothing stays held.
    for payer in &payers {
        let again = with_retry("/v1/transfer", &transfer_body(payer));
        assert_eq!(again.status, 200, "{payer}: {}", again.text());
    }
    // Read on the owners' own ports (no mesh call to time out).
    let shard1 = node.shard_address(1);
    let sink = node.shard_address(owner(b"sink", 2));
    for payer in &payers {
        assert_eq!(balance(&node, shard1, payer), 0, "{payer}");
        // Nothing reserved either: a new write of 1 finds the funds empty
        // (INSUFFICIENT_FUNDS names what is available), not held.
        let body = format!(
            r#"{{"to":"{payer}","asset":"roc","amount_minor":"1","idempotency_key":"g-{payer}"}}"#
        );
        assert_eq!(with_retry("/v1/issue", &body).status, 200);
        let spend = format!(
            r#"{{"from":"{payer}","to":"sink","asset":"roc","amount_minor":"1","nonce":2,"idempotency_key":"s-{payer}"}}"#
        );
        let spent = with_retry("/v1/transfer", &spend);
        assert_eq!(spent.status, 200, "{payer}: {}", spent.text());
    }
    assert_eq!(balance(&node, sink, "sink"), 11 * PAYERS as u128);
}

/// A raw `POST` of a JSON `body` to `path`, as the admin.
fn raw_post(node: &TestNode, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        node.admin(),
        body.len()
    )
    .into_bytes()
}

/// A raw `POST /v1/transfer` of `payer`'s `nonce`.
fn transfer_request(node: &TestNode, payer: &str, nonce: u64) -> Vec<u8> {
    let body = format!(
        r#"{{"from":"{payer}","to":"shop","asset":"roc","amount_minor":"1","nonce":{nonce},"idempotency_key":"n-{payer}-{nonce}"}}"#
    );
    raw_post(node, "/v1/transfer", &body)
}

/// A payer's nonces sent over several connections, the later ones first:
/// each waits (up to `wallet.nonce_wait_ms`) for those before it, and all
/// commit in nonce order. A nonce whose predecessor never comes is refused
/// once the wait runs out; one beyond `wallet.nonce_window` at once.
#[test]
fn pipelined_nonces_out_of_order_wait_for_the_missing_ones() {
    let options = NodeOptions::default().config("[wallet]\nnonce_window = 8\nnonce_wait_ms = 1500");
    let node = TestNode::start(options);
    let issue = r#"{"to":"payer","asset":"roc","amount_minor":"100","idempotency_key":"fund"}"#;
    assert_eq!(post(&node, node.listen, "/v1/issue", issue).status, 200);

    // Nonces 5, 4, 3, 2, 1, each on its own connection, 20 ms apart.
    let mut conns: Vec<(u64, Conn)> = Vec::new();
    for nonce in (1..=5).rev() {
        let mut conn = Conn::open(node.listen);
        conn.send(&transfer_request(&node, "payer", nonce));
        conns.push((nonce, conn));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seqs = Vec::new();
    for (nonce, conn) in &mut conns {
        let answer = conn.read().unwrap();
        assert_eq!(answer.status, 200, "nonce {nonce}: {}", answer.text());
        let json = answer.json();
        assert_eq!(json.get_u64("nonce"), Some(*nonce));
        seqs.push((json.get_u64("ledger_seq_start").unwrap(), *nonce));
    }
    seqs.sort();
    assert_eq!(seqs.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(balance(&node, node.listen, "payer"), 95);
    // Arrivals 20 ms apart are out of order almost always, not surely.
    assert!(node.metric("wallet_nonce_waits_total{outcome=\"reserved\"}") >= 1.0);

    // Nonce 7 without 6: refused once the wait runs out, nothing spent.
    let started = Instant::now();
    let mut conn = Conn::open(node.listen);
    conn.send(&transfer_request(&node, "payer", 7));
    let answer = conn.read().unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.status, 409, "{}", answer.text());
    assert!(answer.text().contains("expected 6, got 7"), "{}", answer.text());
    assert!(waited >= Duration::from_millis(1400), "refused after {waited:?}");
    assert_eq!(node.metric("wallet_nonce_waits_total{outcome=\"refused\"}"), 1.0);
    // Beyond the window (6 + 8): refused at once.
    let started = Instant::now();
    conn.send(&transfer_request(&node, "payer", 15));
    let answer = conn.read().unwrap();
    assert_eq!(answer.status, 409, "{}", answer.text());
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
    // The next nonce still works, and the balance is what it should be.
    conn.send(&transfer_request(&node, "payer", 6));
    assert_eq!(conn.read().unwrap().status, 200);
    assert_eq!(balance(&node, node.listen, "payer"), 94);
}

/// While a batch holds a payer's nonce, no later nonce of that payer is
/// reserved by anyone else (the unsettled-payer guard). Had it been, and
/// the batch's write then failed, the later nonce would commit past a gap.
/// Each round, payer `p{i}` sends nonce 1 in a batch, linked to a write
/// its payer cannot pay, beside a write that commits (so the batch appends
/// and syncs the log before it hands nonce 1 back); nonce 2 follows at once
/// on another connection. Whatever the timing, nonce 2 never commits: it
/// waits for the batch, then for nonce 1, and is refused. (With the guard
/// taken out, nonce 2 committed past the gap in the first round.)
#[test]
fn a_batch_holds_its_payers_later_nonces_until_it_settles() {
    const ROUNDS: usize = 16;
    let node = TestNode::start(NodeOptions::default().config("[wallet]\nnonce_wait_ms = 20"));
    let funded: Vec<String> = (0..ROUNDS)
        .flat_map(|i| [format!("p{i}"), format!("r{i}")])
        .map(|to| {
            format!(
                r#"{{"to":"{to}","asset":"roc","amount_minor":"5","idempotency_key":"f-{to}"}}"#
            )
        })
        .collect();
    let body = format!(r#"{{"issues":[{}]}}"#, funded.join(","));
    let issued = post(&node, node.listen, "/v1/issues", &body);
    assert_eq!(issued.status, 200, "{}", issued.text());
    assert_eq!(issued.json().get_u64("committed"), Some(2 * ROUNDS as u64));

    let write = |payer: &str, linked: bool| {
        format!(
            r#"{{"from":"{payer}","to":"shop","asset":"roc","amount_minor":"1","nonce":1,"idempotency_key":"b-{payer}","linked":{linked}}}"#
        )
    };
    let (mut batches, mut singles) = (Conn::open(node.listen), Conn::open(node.listen));
    let mut refused = Vec::new();
    for i in 0..ROUNDS {
        let (payer, broke, other) = (format!("p{i}"), format!("broke{i}"), format!("r{i}"));
        let body = format!(
            r#"{{"transfers":[{},{},{}]}}"#,
            write(&payer, true),
            write(&broke, false),
            write(&other, false)
        );
        batches.send(&raw_post(&node, "/v1/transfers", &body));
        singles.send(&transfer_request(&node, &payer, 2));
        let batch = batches.read().unwrap();
        assert_eq!(batch.status, 200, "{}", batch.text());
        let results = batch.json();
        let codes: Vec<String> = (results.get_array("results").unwrap().iter())
            .map(|r| r.get_str("code").unwrap().to_owned())
            .collect();
        assert_eq!(codes, ["LINKED_EVENT_FAILED", "INSUFFICIENT_FUNDS", "OK"], "round {i}");
        let single = singles.read().unwrap();
        assert_ne!(single.status, 200, "round {i}: nonce 2 committed without nonce 1");
        refused.push(single.status);
    }
    // Refused as a nonce conflict (409) once its wait ran out, or as busy
    // (429) if it was still waiting for the batch.
    assert!(refused.iter().all(|status| matches!(status, 409 | 429)), "{refused:?}");
    // Nothing of a refused nonce was spent: nonce 1 then 2 still commit.
    for i in 0..ROUNDS {
        let payer = format!("p{i}");
        for nonce in [1, 2] {
            let mut conn = Conn::open(node.listen);
            conn.send(&transfer_request(&node, &payer, nonce));
            let answer = conn.read().unwrap();
            assert_eq!(answer.status, 200, "{payer} nonce {nonce}: {}", answer.text());
        }
        assert_eq!(balance(&node, node.listen, &payer), 3);
    }
}
