//! Batches of writes (`POST /v1/transfers`, `POST /v1/issues`) through the
//! real binary: a result per write, one log record for what commits,
//! linked chains, a payer's later nonces, replays, and the batch's limits.

use ron_proto::routing::owner;
use ron_testing::{NodeOptions, Response, TestNode, get, post_json};
use simd_json::prelude::*;

fn transfer(from: &str, amount: u64, nonce: u64, key: &str, linked: bool) -> String {
    format!(
        r#"{{"from":"{from}","to":"sink","asset":"roc","amount_minor":"{amount}","nonce":{nonce},"idempotency_key":"{key}","linked":{linked}}}"#
    )
}

fn transfers(node: &TestNode, items: &[String]) -> Response {
    let body = format!(r#"{{"transfers":[{}]}}"#, items.join(","));
    post_json(node.listen, "/v1/transfers", &node.admin(), &body)
}

fn balance(node: &TestNode, account: &str) -> u128 {
    let path = format!("/v1/balance?account={account}&asset=roc");
    let response = get(node.listen, &path, &[("Authorization", &node.admin())]).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().get_str("amount_minor").unwrap().parse().unwrap()
}

/// (status, code) of each write's result.
fn codes(answer: &simd_json::OwnedValue) -> Vec<(u64, String)> {
    let results = answer.get_array("results").expect("results");
    results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r.get_u64("index"), Some(i as u64));
            (r.get_u64("status").unwrap(), r.get_str("code").unwrap().to_owned())
        })
        .collect()
}

fn ok() -> (u64, String) {
    (200, "OK".to_owned())
}

fn failed(status: u64, code: &str) -> (u64, String) {
    (status, code.to_owned())
}

#[test]
fn a_batch_commits_in_one_record_with_a_result_per_write() {
    let node = TestNode::start(
        NodeOptions::default().shards(2).config("[wallet]\nbatch_transfers_max = 12"),
    );
    // Payers on both shards.
    let payers: Vec<String> = (0..)
        .map(|i| format!("bp:{i}"))
        .filter(|a| owner(a.as_bytes(), 2) == usize::from(a.ends_with(['1', '3', '5', '7', '9'])))
        .take(4)
        .collect();
    assert_ne!(owner(payers[0].as_bytes(), 2), owner(payers[1].as_bytes(), 2));
    let issues: Vec<String> = payers
        .iter()
        .map(|p| {
            format!(
                r#"{{"to":"{p}","asset":"roc","amount_minor":"100","idempotency_key":"f-{p}"}}"#
            )
        })
        .collect();
    let funded = post_json(
        node.listen,
        "/v1/issues",
        &node.admin(),
        &format!(r#"{{"issues":[{}]}}"#, issues.join(",")),
    );
    assert_eq!(funded.status, 200, "{}", funded.text());
    let funded = funded.json();
    assert_eq!(codes(&funded), vec![ok(); 4]);
    assert_eq!(funded.get_u64("committed"), Some(4));
    let (start, end) =
        (funded.get_u64("ledger_seq_start").unwrap(), funded.get_u64("ledger_seq_end").unwrap());
    assert_eq!(end - start, 3, "four writes, one record, four seqs");

    let [p0, p1, p2, p3] = [&payers[0], &payers[1], &payers[2], &payers[3]];
    let items = vec![
        transfer(p0, 10, 1, "t0", false),
        transfer(p0, 10, 2, "t1", false),
        transfer(p1, 1000, 1, "t2", false),
        transfer(p1, 5, 2, "t3", false),
        // A chain: p2's write reserves, p3's cannot; both fail.
        transfer(p2, 10, 1, "t4", true),
        transfer(p3, 500, 1, "t5", false),
        // p2's next nonce cannot commit without the one released above.
        transfer(p2, 10, 2, "t6", false),
        r#"{"from":"x","to":"sink","asset":"nope","amount_minor":"1","nonce":1,"idempotency_key":"t7"}"#.to_owned(),
        // t0's key for another request.
        transfer(p0, 1, 3, "t0", false),
    ];
    let answer = transfers(&node, &items);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    assert_eq!(
        codes(&answer),
        vec![
            ok(),
            ok(),
            failed(409, "INSUFFICIENT_FUNDS"),
            failed(409, "NONCE_CONFLICT"),
            failed(409, "LINKED_EVENT_FAILED"),
            failed(409, "INSUFFICIENT_FUNDS"),
            failed(409, "NONCE_CONFLICT"),
            failed(400, "BAD_REQUEST"),
            failed(409, "IDEMPOTENCY_CONFLICT"),
        ],
        "{answer:?}"
    );
    assert_eq!(answer.get_u64("committed"), Some(2));
    let start = answer.get_u64("ledger_seq_start").unwrap();
    assert_eq!(answer.get_u64("ledger_seq_end"), Some(start + 1));
    let results = answer.get_array("results").unwrap();
    // Each committed write has its receipt, at its own seq.
    for (i, result) in results.iter().take(2).enumerate() {
        assert_eq!(result.get_u64("ledger_seq"), Some(start + i as u64));
        let txid = result.get_str("txid").unwrap();
        let receipt =
            get(node.listen, &format!("/v1/tx/{txid}"), &[("Authorization", &node.admin())])
                .unwrap();
        assert_eq!(receipt.status, 200, "{}", receipt.text());
        assert_eq!(receipt.json().get_u64("ledger_seq_start"), Some(start + i as u64));
        assert_eq!(receipt.json().get_u64("nonce"), Some(i as u64 + 1));
    }
    assert_eq!(
        [p0, p1, p2, p3].map(|p| balance(&node, p)),
        [80, 100, 100, 100],
        "only the two committed writes moved funds"
    );
    assert_eq!(balance(&node, "sink"), 20);

    // The same batch again: the two committed writes are replays.
    let again = transfers(&node, &items).json();
    let again_codes = codes(&again);
    assert_eq!(again_codes[..2], [ok(), ok()]);
    assert_eq!(again.get_u64("committed"), Some(0));
    let replayed = again.get_array("results").unwrap();
    assert!(replayed.iter().take(2).all(|r| r.get_bool("replayed") == Some(true)));
    assert_eq!(replayed[0].get_str("txid"), results[0].get_str("txid"));
    assert_eq!(balance(&node, "sink"), 20);
    // Nothing stays reserved: p2's nonce 1 and its funds are free.
    let single = post_json(
        node.listen,
        "/v1/transfer",
        &node.admin(),
        &transfer(p2, 100, 1, "s-1", false).replace(r#","linked":false"#, ""),
    );
    assert_eq!(single.status, 200, "{}", single.text());

    // A chain left open by the last write fails whole.
    let open =
        transfers(&node, &[transfer(p0, 1, 3, "o-1", true), transfer(p0, 1, 4, "o-2", true)])
            .json();
    assert_eq!(
        codes(&open),
        [failed(409, "LINKED_EVENT_FAILED"), failed(400, "LINKED_EVENT_CHAIN_OPEN")]
    );
    assert_eq!(balance(&node, p0), 80);

    // Who is not authenticated is refused whole.
    let body = format!(r#"{{"transfers":[{}]}}"#, transfer(p0, 1, 3, "u-1", false));
    let anonymous = post_json(node.listen, "/v1/transfers", "Bearer nope", &body);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());

    // Limits: empty, over batch_transfers_max (12), a body of another shape.
    assert_eq!(transfers(&node, &[]).status, 400);
    let many: Vec<String> =
        (0..13).map(|i| transfer(p0, 1, 3 + i, &format!("m-{i}"), false)).collect();
    let over = transfers(&node, &many);
    assert_eq!(over.status, 422, "{}", over.text());
    assert!(over.text().contains("batch_transfers_max"), "{}", over.text());
    let twelve = transfers(&node, &many[..12]).json();
    assert_eq!(twelve.get_u64("committed"), Some(12), "{twelve:?}");
    let unknown =
        post_json(node.listen, "/v1/transfers", &node.admin(), r#"{"transfers":[],"extra":1}"#);
    assert_eq!(unknown.status, 400);
    assert_eq!(balance(&node, p0), 68);

    // A token bound to one account: its writes pass, another's are 403,
    // each on its own.
    let body = format!(
        r#"{{"subject_ref":"shop","audience":"ron-node","ttl_s":600,"scopes":["wallet.transfer"],"caveats":["account={p0}"]}}"#
    );
    let issued = post_json(node.listen, "/v1/passport/issue", &node.admin(), &body);
    assert_eq!(issued.status, 200, "{}", issued.text());
    let bound = format!("Bearer {}", issued.json().get_str("token").unwrap());
    let body = format!(
        r#"{{"transfers":[{},{}]}}"#,
        transfer(p0, 1, 15, "b-0", false),
        transfer(p1, 1, 2, "b-1", false)
    );
    let mixed = post_json(node.listen, "/v1/transfers", &bound, &body).json();
    assert_eq!(codes(&mixed), [ok(), failed(403, "FORBIDDEN")], "{mixed:?}");
}

#[test]
fn a_batch_past_the_apply_window_applies_every_write_live_and_at_replay() {
    // 600 writes in one record: the wallet applies a committed run 256 at
    // a time (`APPLY_WINDOW`), so this one takes three windows, the last
    // one partial.
    let mut node = TestNode::start(NodeOptions::default());
    let funded = post_json(
        node.listen,
        "/v1/issue",
        &node.admin(),
        r#"{"to":"wide","asset":"roc","amount_minor":"1000","idempotency_key":"f-wide"}"#,
    );
    assert_eq!(funded.status, 200, "{}", funded.text());
    let items: Vec<String> =
        (1..=600).map(|n| transfer("wide", 1, n, &format!("w-{n}"), false)).collect();
    let answer = transfers(&node, &items);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    assert_eq!(answer.get_u64("committed"), Some(600), "{answer:?}");
    let start = answer.get_u64("ledger_seq_start").unwrap();
    assert_eq!(answer.get_u64("ledger_seq_end"), Some(start + 599));
    let check = |node: &TestNode| {
        assert_eq!([balance(node, "wide"), balance(node, "sink")], [400, 600]);
        // The last write's receipt, from the last window.
        let last = &answer.get_array("results").unwrap()[599];
        let txid = last.get_str("txid").unwrap();
        let receipt =
            get(node.listen, &format!("/v1/tx/{txid}"), &[("Authorization", &node.admin())])
                .unwrap();
        assert_eq!(receipt.status, 200, "{}", receipt.text());
        assert_eq!(receipt.json().get_u64("nonce"), Some(600));
    };
    check(&node);
    // Killed, the node replays what its view had not taken.
    node.signal_and_wait(libc::SIGKILL, std::time::Duration::from_secs(5));
    node.spawn();
    check(&node);
    // Every key is kept: the batch again commits nothing.
    let again = transfers(&node, &items).json();
    assert_eq!(again.get_u64("committed"), Some(0), "{again:?}");
    assert_eq!(balance(&node, "sink"), 600);
}
