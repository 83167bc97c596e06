//! The wallet through the real binary: every write and rejection, receipts
//! and replays, holds, nonces under contention, cross-shard visibility,
//! restarts, and the token's account, asset and amount caveats.

use ron_testing::{NodeOptions, Response, TestNode, get, post_json, request};
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::time::Duration;

fn post(node: &TestNode, address: SocketAddr, path: &str, body: &str) -> Response {
    post_json(address, path, &node.admin(), body)
}

fn code(response: &Response) -> String {
    response.json().get_str("code").unwrap_or("").to_owned()
}

fn balance(node: &TestNode, address: SocketAddr, account: &str) -> u128 {
    let path = format!("/v1/balance?account={account}&asset=roc");
    let response = get(address, &path, &[("Authorization", &node.admin())]).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().get_str("amount_minor").unwrap().parse().unwrap()
}

fn issue(node: &TestNode, to: &str, amount: u64, key: &str) -> Response {
    let body = format!(
        r#"{{"to":"{to}","asset":"roc","amount_minor":"{amount}","idempotency_key":"{key}"}}"#
    );
    post(node, node.listen, "/v1/issue", &body)
}

fn transfer(node: &TestNode, from: &str, to: &str, amount: u64, nonce: u64, key: &str) -> Response {
    let body = format!(
        r#"{{"from":"{from}","to":"{to}","asset":"roc","amount_minor":"{amount}","nonce":{nonce},"idempotency_key":"{key}"}}"#
    );
    post(node, node.listen, "/v1/transfer", &body)
}

fn ok(response: Response) -> simd_json::OwnedValue {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[test]
fn writes_receipts_replays_and_every_rejection() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let receipt = issue(&node, "alice", 100, "i-1");
    assert_eq!(receipt.status, 200, "{}", receipt.text());
    let json = receipt.json();
    let txid = json.get_str("txid").unwrap().to_owned();
    assert!(txid.starts_with("tx_") && txid.len() == 35);
    assert_eq!(json.get_str("op"), Some("issue"));
    assert!(json.get_str("receipt_hash").unwrap().starts_with("b3:"));
    let seq = json.get_u64("ledger_seq_start").unwrap();
    assert_eq!(json.get_u64("ledger_seq_end"), Some(seq));
    // The receipt is kept, byte for byte, and readable on every port.
    for address in [node.listen, node.shard_address(0), node.shard_address(1)] {
        let path = format!("/v1/tx/{txid}");
        let stored = get(address, &path, &[("Authorization", &node.admin())]).unwrap();
        assert_eq!(stored.status, 200);
        assert_eq!(stored.body, receipt.body);
        assert_eq!(balance(&node, address, "alice"), 100);
    }
    let missing = format!("/v1/tx/tx_{}", "0".repeat(32));
    assert_eq!(
        get(node.listen, &missing, &[("Authorization", &node.admin())]).unwrap().status,
        404
    );
    // The same request again: the stored receipt, byte-identical.
    let replay = issue(&node, "alice", 100, "i-1");
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body, receipt.body);
    assert!(node.metric("wallet_idem_replays_total") >= 1.0);
    assert_eq!(balance(&node, node.listen, "alice"), 100);
    // The same key for another request.
    let conflict = issue(&node, "alice", 101, "i-1");
    assert_eq!((conflict.status, code(&conflict)), (409, "IDEMPOTENCY_CONFLICT".to_owned()));
    // Nonces: exactly last + 1; a refused write does not use its nonce.
    ok(transfer(&node, "alice", "bob", 30, 1, "t-1"));
    let reused = transfer(&node, "alice", "bob", 1, 1, "t-2");
    assert_eq!((reused.status, code(&reused)), (409, "NONCE_CONFLICT".to_owned()));
    assert!(reused.text().contains("expected 2, got 1"), "{}", reused.text());
    let skipped = transfer(&node, "alice", "bob", 1, 3, "t-3");
    assert_eq!(code(&skipped), "NONCE_CONFLICT");
    let broke = transfer(&node, "alice", "bob", 71, 2, "t-4");
    assert_eq!((broke.status, code(&broke)), (409, "INSUFFICIENT_FUNDS".to_owned()));
    ok(transfer(&node, "alice", "bob", 70, 2, "t-5"));
    assert_eq!(balance(&node, node.listen, "alice"), 0);
    assert_eq!(balance(&node, node.listen, "bob"), 100);
    let burn =
        r#"{"from":"bob","asset":"roc","amount_minor":"40","nonce":1,"idempotency_key":"b-1"}"#;
    assert_eq!(ok(post(&node, node.listen, "/v1/burn", burn)).get_str("op"), Some("burn"));
    assert_eq!(balance(&node, node.listen, "bob"), 60);
    // The key in a header works like the body's.
    let body = r#"{"to":"carol","asset":"roc","amount_minor":5}"#;
    let headers = [
        ("Authorization", node.admin()),
        ("Content-Type", "application/json".to_owned()),
        ("Idempotency-Key", "h-1".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let by_header = request(node.listen, "POST", "/v1/issue", &headers, body.as_bytes()).unwrap();
    assert_eq!(by_header.status, 200, "{}", by_header.text());
    assert_eq!(by_header.json().get_str("idem"), Some("h-1"));
    // Validation: each refused with its code, nothing changes.
    let bad = [
        (r#"{"to":"carol","asset":"roc","amount_minor":"5"}"#, 400, "BAD_REQUEST"),
        (
            r#"{"to":"carol","asset":"roc","amount_minor":"5","idempotency_key":"a b"}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            r#"{"to":"ca rol","asset":"roc","amount_minor":"5","idempotency_key":"v1"}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            r#"{"to":"carol","asset":"xyz","amount_minor":"5","idempotency_key":"v2"}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            r#"{"to":"carol","asset":"roc","amount_minor":"0","idempotency_key":"v3"}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            r#"{"to":"carol","asset":"roc","amount_minor":"-5","idempotency_key":"v4"}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            r#"{"to":"carol","asset":"roc","amount_minor":"1000000000000000001","idempotency_key":"v5"}"#,
            422,
            "LIMITS_EXCEEDED",
        ),
        (
            r#"{"to":"carol","asset":"roc","amount_minor":"5","idempotency_key":"v6","extra":1}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            r#"{"to":"carol","asset":"roc","amount_minor":"5","idempotency_key":"v7","memo":"a\nb"}"#,
            400,
            "BAD_REQUEST",
        ),
    ];
    for (body, status, expected) in bad {
        let response = post(&node, node.listen, "/v1/issue", body);
        assert_eq!((response.status, code(&response)), (status, expected.to_owned()), "{body}");
    }
    let same = r#"{"from":"bob","to":"bob","asset":"roc","amount_minor":"1","nonce":2,"idempotency_key":"s1"}"#;
    assert_eq!(post(&node, node.listen, "/v1/transfer", same).status, 400);
    // Each length and range limit, one past it.
    let key65 = "k".repeat(65);
    let memo257 = "m".repeat(257);
    let over = [
        (
            "/v1/issue",
            format!(r#"{{"to":"carol","asset":"roc","amount_minor":"5","idempotency_key":"{key65}"}}"#),
            400,
        ),
        (
            "/v1/issue",
            format!(r#"{{"to":"carol","asset":"roc","amount_minor":"5","idempotency_key":"m1","memo":"{memo257}"}}"#),
            400,
        ),
        (
            "/v1/hold",
            r#"{"from":"bob","to":"carol","asset":"roc","amount_minor":"1","nonce":2,"timeout_s":0,"idempotency_key":"t0"}"#.to_owned(),
            422,
        ),
        (
            "/v1/hold",
            r#"{"from":"bob","to":"carol","asset":"roc","amount_minor":"1","nonce":2,"timeout_s":31536001,"idempotency_key":"t1"}"#.to_owned(),
            422,
        ),
    ];
    for (path, body, status) in over {
        assert_eq!(post(&node, node.listen, path, &body).status, status, "{path} {body}");
    }
    // At the limits themselves: accepted.
    let key64 = "k".repeat(64);
    let memo256 = "m".repeat(256);
    let at = format!(
        r#"{{"to":"dave","asset":"roc","amount_minor":"1","idempotency_key":"{key64}","memo":"{memo256}"}}"#
    );
    ok(post(&node, node.listen, "/v1/issue", &at));
    let hold = r#"{"from":"bob","to":"carol","asset":"roc","amount_minor":"1","nonce":2,"timeout_s":31536000,"idempotency_key":"t2"}"#;
    ok(post(&node, node.listen, "/v1/hold", hold));
    let long = format!(
        r#"{{"to":"{}","asset":"roc","amount_minor":"1","idempotency_key":"l1"}}"#,
        "a".repeat(257)
    );
    assert_eq!(post(&node, node.listen, "/v1/issue", &long).status, 400);
    assert_eq!(balance(&node, node.listen, "carol"), 5);
}

#[test]
fn holds_capture_release_and_conserve() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    ok(issue(&node, "payer", 100, "i"));
    let hold = r#"{"from":"payer","to":"shop","asset":"roc","amount_minor":"40","nonce":1,"timeout_s":600,"idempotency_key":"h1"}"#;
    let held = ok(post(&node, node.listen, "/v1/hold", hold));
    let hold_id = held.get_str("hold_id").unwrap().to_owned();
    assert_eq!(balance(&node, node.listen, "payer"), 60);
    // A partial capture: 15 to the shop, 25 back to the payer.
    let capture = format!(
        r#"{{"hold_id":"{hold_id}","amount_minor":"15","nonce":2,"idempotency_key":"c1"}}"#
    );
    let captured = ok(post(&node, node.listen, "/v1/capture", &capture));
    assert_eq!(captured.get_str("amount_minor"), Some("15"));
    assert_eq!(captured.get_str("from"), Some("payer"));
    assert_eq!(balance(&node, node.listen, "shop"), 15);
    assert_eq!(balance(&node, node.listen, "payer"), 85);
    // Resolved once: a second capture or a release finds no hold; the
    // replay of the capture still gets its receipt.
    let again = format!(r#"{{"hold_id":"{hold_id}","nonce":3,"idempotency_key":"c2"}}"#);
    assert_eq!(post(&node, node.listen, "/v1/capture", &again).status, 404);
    assert_eq!(post(&node, node.listen, "/v1/release", &again).status, 404);
    let replay = post(&node, node.listen, "/v1/capture", &capture);
    assert_eq!(replay.status, 200);
    // A release returns everything.
    let hold = r#"{"from":"payer","to":"shop","asset":"roc","amount_minor":"80","nonce":3,"idempotency_key":"h2"}"#;
    let hold_id =
        ok(post(&node, node.listen, "/v1/hold", hold)).get_str("hold_id").unwrap().to_owned();
    assert_eq!(balance(&node, node.listen, "payer"), 5);
    let over = format!(
        r#"{{"hold_id":"{hold_id}","amount_minor":"81","nonce":4,"idempotency_key":"c3"}}"#
    );
    let refused = post(&node, node.listen, "/v1/capture", &over);
    assert_eq!((refused.status, code(&refused)), (422, "LIMITS_EXCEEDED".to_owned()));
    let release = format!(r#"{{"hold_id":"{hold_id}","nonce":4,"idempotency_key":"r1"}}"#);
    ok(post(&node, node.listen, "/v1/release", &release));
    assert_eq!(balance(&node, node.listen, "payer"), 85);
    assert_eq!(balance(&node, node.listen, "payer") + balance(&node, node.listen, "shop"), 100);
    let unknown =
        format!(r#"{{"hold_id":"h_{}","nonce":5,"idempotency_key":"r2"}}"#, "0".repeat(32));
    assert_eq!(post(&node, node.listen, "/v1/release", &unknown).status, 404);
}

#[test]
fn one_nonce_one_winner_and_restarts_keep_everything() {
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    ok(issue(&node, "spender", 1000, "i"));
    // Many connections race with the same nonce: exactly one wins.
    let winners: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let node = &node;
                scope.spawn(move || {
                    let to = format!("r{i}");
                    usize::from(
                        transfer(node, "spender", &to, 10, 1, &format!("race-{i}")).status == 200,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(winners, 1);
    let receipt = transfer(&node, "spender", "keeper", 5, 2, "after");
    assert_eq!(receipt.status, 200);
    let hold = r#"{"from":"spender","to":"keeper","asset":"roc","amount_minor":"7","nonce":3,"idempotency_key":"h"}"#;
    let hold_id =
        ok(post(&node, node.listen, "/v1/hold", hold)).get_str("hold_id").unwrap().to_owned();
    let before: Vec<u128> =
        ["spender", "keeper"].iter().map(|a| balance(&node, node.listen, a)).collect();
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    let after: Vec<u128> =
        ["spender", "keeper"].iter().map(|a| balance(&node, node.listen, a)).collect();
    assert_eq!(after, before);
    // Receipts, idempotency records, nonces and holds survived.
    let replay = transfer(&node, "spender", "keeper", 5, 2, "after");
    assert_eq!(replay.body, receipt.body);
    let txid = receipt.json().get_str("txid").unwrap().to_owned();
    let stored =
        get(node.listen, &format!("/v1/tx/{txid}"), &[("Authorization", &node.admin())]).unwrap();
    assert_eq!(stored.body, receipt.body);
    assert_eq!(code(&transfer(&node, "spender", "keeper", 1, 3, "n3")), "NONCE_CONFLICT");
    let capture = format!(r#"{{"hold_id":"{hold_id}","nonce":4,"idempotency_key":"c"}}"#);
    ok(post(&node, node.listen, "/v1/capture", &capture));
    assert_eq!(balance(&node, node.listen, "keeper"), before[1] + 7);
    // A new shard count rebuilds the same state.
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.set_shards(1);
    node.spawn();
    assert_eq!(balance(&node, node.listen, "keeper"), before[1] + 7);
    assert_eq!(transfer(&node, "spender", "keeper", 5, 2, "after").body, receipt.body);
}

/// A bearer header for a token minted with the node's root key.
fn token(node: &TestNode, caveats: &[&str]) -> String {
    format!("Bearer {}", crate::access::mint(node, caveats))
}

#[test]
fn caveats_bound_the_account_the_asset_and_the_amount() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    ok(issue(&node, "alice", 100, "i1"));
    ok(issue(&node, "bob", 100, "i2"));
    let scopes = "scope=wallet.transfer,wallet.read";
    let alice_only = token(&node, &[scopes, "account=alice", "amount_max=10"]);
    let send = |bearer: &str, from: &str, amount: u64, nonce: u64, key: &str| {
        let body = format!(
            r#"{{"from":"{from}","to":"carol","asset":"roc","amount_minor":"{amount}","nonce":{nonce},"idempotency_key":"{key}"}}"#
        );
        post_json(node.listen, "/v1/transfer", bearer, &body)
    };
    assert_eq!(send(&alice_only, "alice", 10, 1, "a1").status, 200);
    assert_eq!(send(&alice_only, "bob", 1, 1, "b1").status, 403);
    assert_eq!(send(&alice_only, "alice", 11, 2, "a2").status, 403);
    let read = |bearer: &str, account: &str| {
        let path = format!("/v1/balance?account={account}&asset=roc");
        get(node.listen, &path, &[("Authorization", bearer)]).unwrap().status
    };
    assert_eq!(read(&alice_only, "alice"), 200);
    assert_eq!(read(&alice_only, "bob"), 403);
    let prefixed = token(&node, &[scopes, "account_prefix=ali"]);
    assert_eq!(send(&prefixed, "alice", 1, 2, "p1").status, 200);
    assert_eq!(send(&prefixed, "bob", 1, 1, "p2").status, 403);
    let other_asset = token(&node, &[scopes, "asset=gold"]);
    assert_eq!(send(&other_asset, "alice", 1, 3, "g1").status, 403);
    // A capture is checked against its hold's account once the hold is found.
    let hold = r#"{"from":"bob","to":"carol","asset":"roc","amount_minor":"5","nonce":1,"idempotency_key":"h"}"#;
    let hold_id =
        ok(post(&node, node.listen, "/v1/hold", hold)).get_str("hold_id").unwrap().to_owned();
    let capture = format!(r#"{{"hold_id":"{hold_id}","nonce":2,"idempotency_key":"c"}}"#);
    assert_eq!(post_json(node.listen, "/v1/capture", &alice_only, &capture).status, 403);
    // Refused, it released what it reserved: the owner's token may capture.
    let bob = token(&node, &[scopes, "account=bob"]);
    assert_eq!(post_json(node.listen, "/v1/capture", &bob, &capture).status, 200);
    // A read-only token cannot write.
    let reader = token(&node, &["scope=wallet.read"]);
    assert_eq!(send(&reader, "alice", 1, 3, "r1").status, 403);
    // Receipts: a token bound to an account reads those it is from or to.
    let to_carol = send(&alice_only, "alice", 2, 3, "a3");
    let txid = to_carol.json().get_str("txid").unwrap().to_owned();
    let read_tx = |bearer: &str| {
        get(node.listen, &format!("/v1/tx/{txid}"), &[("Authorization", bearer)]).unwrap()
    };
    assert_eq!(read_tx(&alice_only).body, to_carol.body);
    let carol = token(&node, &["scope=wallet.read", "account=carol"]);
    assert_eq!(read_tx(&carol).status, 200);
    assert_eq!(read_tx(&bob).status, 403);
    // Unauthenticated: 401 whether or not the transaction exists.
    let missing = format!("/v1/tx/tx_{}", "0".repeat(32));
    assert_eq!(get(node.listen, &missing, &[]).unwrap().status, 401);
    assert_eq!(get(node.listen, &format!("/v1/tx/{txid}"), &[]).unwrap().status, 401);
    assert_eq!(get(node.listen, &missing, &[("Authorization", &carol)]).unwrap().status, 404);
}

#[test]
fn a_hold_expires_by_itself_as_a_committed_operation() {
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    ok(issue(&node, "payer", 50, "i"));
    let hold = r#"{"from":"payer","to":"shop","asset":"roc","amount_minor":"20","nonce":1,"timeout_s":1,"idempotency_key":"h"}"#;
    let hold_id =
        ok(post(&node, node.listen, "/v1/hold", hold)).get_str("hold_id").unwrap().to_owned();
    assert_eq!(balance(&node, node.listen, "payer"), 30);
    let seq_before = node.metric("ledger_entries_total");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while balance(&node, node.listen, "payer") != 50 {
        assert!(std::time::Instant::now() < deadline, "the hold did not expire");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The expiry is an entry of the log, and the hold is gone for good.
    assert_eq!(node.metric("ledger_entries_total"), seq_before + 1.0);
    let capture = format!(r#"{{"hold_id":"{hold_id}","nonce":2,"idempotency_key":"c"}}"#);
    assert_eq!(post(&node, node.listen, "/v1/capture", &capture).status, 404);
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    assert_eq!(balance(&node, node.listen, "payer"), 50);
    assert_eq!(balance(&node, node.listen, "shop"), 0);
    assert_eq!(post(&node, node.listen, "/v1/capture", &capture).status, 404);
}

/// Writers with strictly increasing nonces, a SIGKILL in the middle, a
/// restart: every acknowledged receipt is there byte for byte, the total
/// is conserved, and each account's next nonce follows what it committed.
#[test]
fn kill_9_under_write_load_keeps_every_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    let payers: Vec<String> = (0..8).map(|i| format!("acct:{i}")).collect();
    for (i, payer) in payers.iter().enumerate() {
        ok(issue(&node, payer, 1000, &format!("fund-{i}")));
    }
    let stop = AtomicBool::new(false);
    let (listen, admin, pid) = (node.listen, node.admin(), node.pid());
    // (txid, receipt) acknowledged; (account, last acknowledged nonce, last tried).
    type Outcome = (Vec<(String, Vec<u8>)>, Vec<(String, u64, u64)>);
    let (acked, attempted): Outcome = std::thread::scope(|scope| {
        let handles: Vec<_> = payers
                .chunks(2)
                .enumerate()
                .map(|(worker, mine)| {
                    let admin = &admin;
                    let stop = &stop;
                    let payers = &payers;
                    scope.spawn(move || {
                        let mut acked = Vec::new();
                        let mut next = vec![1u64; mine.len()];
                        let mut last_acked = vec![0u64; mine.len()];
                        let mut n = 0usize;
                        while !stop.load(Ordering::Relaxed) {
                            let which = n % mine.len();
                            let to = &payers[(worker * 3 + n) % payers.len()];
                            n += 1;
                            if *to == mine[which] {
                                continue;
                            }
                            let key = format!("w{worker}-{n}");
                            let body = format!(
                                r#"{{"from":"{}","to":"{to}","asset":"roc","amount_minor":"1","nonce":{},"idempotency_key":"{key}"}}"#,
                                mine[which], next[which]
                            );
                            let Ok(response) = request(
                                listen,
                                "POST",
                                "/v1/transfer",
                                &[("Authorization", admin), ("Content-Type", "application/json")],
                                body.as_bytes(),
                            ) else {
                                break;
                            };
                            if response.status == 200 {
                                last_acked[which] = next[which];
                                next[which] += 1;
                                let txid = response.json().get_str("txid").unwrap().to_owned();
                                acked.push((txid, response.body));
                            }
                        }
                        let attempted: Vec<(String, u64, u64)> = mine
                            .iter()
                            .enumerate()
                            .map(|(i, a)| (a.clone(), last_acked[i], next[i]))
                            .collect();
                        (acked, attempted)
                    })
                })
                .collect();
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: kill has no memory effects; the pid is our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        stop.store(true, Ordering::Relaxed);
        let mut all_acked = Vec::new();
        let mut all_attempted = Vec::new();
        for handle in handles {
            let (acked, attempted) = handle.join().unwrap();
            all_acked.extend(acked);
            all_attempted.extend(attempted);
        }
        (all_acked, all_attempted)
    });
    assert!(acked.len() > 10, "only {} writes were acknowledged", acked.len());
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    for (txid, body) in &acked {
        let stored =
            get(node.listen, &format!("/v1/tx/{txid}"), &[("Authorization", &node.admin())])
                .unwrap();
        assert_eq!(&stored.body, body, "{txid}");
    }
    let total: u128 = payers.iter().map(|p| balance(&node, node.listen, p)).sum();
    assert_eq!(total, 8 * 1000);
    for (account, last_acked, next) in attempted {
        // The next nonce is one past what committed: everything
        // acknowledged, and perhaps the one attempt whose answer was lost.
        let probe = transfer(&node, &account, "probe", 1, 0x7fff_ffff, "probe");
        assert_eq!(code(&probe), "NONCE_CONFLICT");
        let expected: u64 = probe
            .text()
            .split("expected ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .and_then(|t| t.parse().ok())
            .unwrap();
        assert!(
            expected > last_acked && expected <= next + 1,
            "{account}: {expected} not in ({last_acked}, {}]",
            next + 1
        );
    }
}

/// Receipts leave memory once the shard's view holds them, and are read
/// from there: after the view is written, after a clean stop, after a kill.
#[test]
fn receipts_move_to_the_view_and_are_read_from_it() {
    let options = NodeOptions::default().shards(2).config("[ledger]\nview_write_ms = 100\n");
    let mut node = TestNode::start(options);
    let receipts: Vec<Response> = (0..6)
        .map(|i| ok_response(issue(&node, &format!("user:{i}"), 10 + i, &format!("k{i}"))))
        .collect();
    ok(transfer(&node, "user:0", "user:1", 4, 1, "t1"));
    let hold = r#"{"from":"user:2","to":"user:3","asset":"roc","amount_minor":"5","nonce":1,"idempotency_key":"h1"}"#;
    let hold_id =
        ok(post(&node, node.listen, "/v1/hold", hold)).get_str("hold_id").unwrap().to_owned();
    let applied = node.metric("ledger_applied_seq{shard=\"0\"}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for shard in 0..2 {
        let series = format!("ledger_view_seq{{shard=\"{shard}\"}}");
        while node.metric(&series) < applied {
            assert!(std::time::Instant::now() < deadline, "views not written");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Their txids went to the views' LSM trees, which `/metrics` sizes.
    let lsm_bytes: f64 = (0..2)
        .map(|shard| node.metric(&format!("ledger_view_lsm_bytes{{shard=\"{shard}\"}}")))
        .sum();
    assert!(lsm_bytes > 0.0, "the LSM trees' bytes are reported");
    // The next tick forgets them from memory.
    std::thread::sleep(Duration::from_millis(300));
    let check = |node: &TestNode| {
        for (i, receipt) in receipts.iter().enumerate() {
            let txid = receipt.json().get_str("txid").unwrap().to_owned();
            let stored =
                get(node.listen, &format!("/v1/tx/{txid}"), &[("Authorization", &node.admin())])
                    .unwrap();
            assert_eq!(stored.body, receipt.body, "{txid}");
            // A replay finds the receipt where it is kept too.
            let replay = issue(node, &format!("user:{i}"), 10 + i as u64, &format!("k{i}"));
            assert_eq!(replay.body, receipt.body);
        }
    };
    check(&node);
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.spawn();
    // Everything came from the views: nothing was replayed after them.
    assert_eq!(crate::ledger::tail_entries(&node, 2), [0, 0]);
    check(&node);
    let state = |node: &TestNode| {
        let balances: Vec<u128> =
            (0..4).map(|i| balance(node, node.listen, &format!("user:{i}"))).collect();
        assert_eq!(balances, [6, 15, 7, 13]);
        assert!(transfer(node, "user:0", "user:1", 1, 1, "again").text().contains("expected 2"));
    };
    state(&node);
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    check(&node);
    state(&node);
    // The hold survived too, and resolves once.
    let capture = format!(r#"{{"hold_id":"{hold_id}","nonce":2,"idempotency_key":"c1"}}"#);
    ok(post(&node, node.listen, "/v1/capture", &capture));
    assert_eq!(balance(&node, node.listen, "user:3"), 18);
}

fn ok_response(response: Response) -> Response {
    assert_eq!(response.status, 200, "{}", response.text());
    response
}
