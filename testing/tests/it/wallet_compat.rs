//! Wire compatibility with the original svc-wallet (Y3LLOWVESTS/rustyonions,
//! `crates/svc-wallet`), through the real binary: its receipts' fields,
//! order, nulls, status and hash; its balance fields; its answer to a
//! transaction id of another shape. Extra fields of ours may follow.

use ron_testing::{NodeOptions, Response, TestNode, get, post_json};
use serde::Serialize;
use simd_json::prelude::*;

/// The original's `ReceiptHashPreimage`, field for field: its receipt
/// without `receipt_hash`, serialised as compact JSON and hashed.
#[derive(Serialize)]
struct Preimage<'a> {
    txid: &'a str,
    op: &'a str,
    from: Option<&'a str>,
    to: Option<&'a str>,
    asset: &'a str,
    amount_minor: &'a str,
    nonce: Option<u64>,
    idem: &'a str,
    ts: u64,
    ledger_seq_start: Option<u64>,
    ledger_seq_end: Option<u64>,
    ledger_root: &'a str,
    settlement_status: &'a str,
}

const ORIGINAL_RECEIPT_FIELDS: [&str; 14] = [
    "txid",
    "op",
    "from",
    "to",
    "asset",
    "amount_minor",
    "nonce",
    "idem",
    "ts",
    "ledger_seq_start",
    "ledger_seq_end",
    "ledger_root",
    "settlement_status",
    "receipt_hash",
];

/// The keys of a flat JSON object, in the order they appear.
fn keys_in_order(text: &str) -> Vec<String> {
    let json: simd_json::OwnedValue =
        simd_json::to_owned_value(&mut text.as_bytes().to_vec()).unwrap();
    let object = json.as_object().expect("an object");
    let mut keys: Vec<(usize, String)> = object
        .keys()
        .map(|key| (text.find(&format!("\"{key}\":")).expect("key in text"), key.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, key)| key).collect()
}

/// Checks a receipt has the original's fields in its order (extra fields
/// only before `receipt_hash`, after the original's), `from`, `to` and
/// `nonce` present (null or as expected), status `accepted`, and the hash
/// the original computes.
fn check_receipt(response: &Response, from: Option<&str>, to: Option<&str>, nonce: Option<u64>) {
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    let keys = keys_in_order(&text);
    let original: Vec<&String> =
        keys.iter().filter(|k| ORIGINAL_RECEIPT_FIELDS.contains(&k.as_str())).collect();
    assert_eq!(original, ORIGINAL_RECEIPT_FIELDS.iter().collect::<Vec<_>>(), "{text}");
    assert_eq!(keys.last().map(String::as_str), Some("receipt_hash"), "{text}");
    let json = response.json();
    let field = |name: &str| json.get(name).unwrap_or_else(|| panic!("{name} missing: {text}"));
    assert_eq!(field("from").as_str(), from, "{text}");
    assert_eq!(field("from").is_null(), from.is_none(), "{text}");
    assert_eq!(field("to").as_str(), to, "{text}");
    assert_eq!(field("to").is_null(), to.is_none(), "{text}");
    assert_eq!(field("nonce").as_u64(), nonce, "{text}");
    assert_eq!(field("nonce").is_null(), nonce.is_none(), "{text}");
    assert_eq!(json.get_str("settlement_status"), Some("accepted"), "{text}");
    let preimage = Preimage {
        txid: json.get_str("txid").unwrap(),
        op: json.get_str("op").unwrap(),
        from,
        to,
        asset: json.get_str("asset").unwrap(),
        amount_minor: json.get_str("amount_minor").unwrap(),
        nonce,
        idem: json.get_str("idem").unwrap(),
        ts: json.get_u64("ts").unwrap(),
        ledger_seq_start: json.get_u64("ledger_seq_start"),
        ledger_seq_end: json.get_u64("ledger_seq_end"),
        ledger_root: json.get_str("ledger_root").unwrap(),
        settlement_status: json.get_str("settlement_status").unwrap(),
    };
    let hash = blake3::hash(&simd_json::to_vec(&preimage).unwrap());
    assert_eq!(json.get_str("receipt_hash"), Some(format!("b3:{}", hash.to_hex()).as_str()));
}

#[test]
fn receipts_balances_and_tx_lookups_answer_like_the_original_svc_wallet() {
    let node = TestNode::start(NodeOptions::default());
    let admin = node.admin();
    let post = |path: &str, body: &str| post_json(node.listen, path, &admin, body);

    let issue = post(
        "/v1/issue",
        r#"{"to":"alice","asset":"roc","amount_minor":"100","idempotency_key":"i-1"}"#,
    );
    check_receipt(&issue, None, Some("alice"), None);
    let transfer = post(
        "/v1/transfer",
        r#"{"from":"alice","to":"bob","asset":"roc","amount_minor":"30","nonce":1,"idempotency_key":"t-1"}"#,
    );
    check_receipt(&transfer, Some("alice"), Some("bob"), Some(1));
    let burn = post(
        "/v1/burn",
        r#"{"from":"bob","asset":"roc","amount_minor":"10","nonce":1,"idempotency_key":"b-1"}"#,
    );
    check_receipt(&burn, Some("bob"), None, Some(1));
    // A hold keeps its id, an extra field outside the original's hash.
    let hold = post(
        "/v1/hold",
        r#"{"from":"alice","to":"bob","asset":"roc","amount_minor":"5","nonce":2,"idempotency_key":"h-1"}"#,
    );
    check_receipt(&hold, Some("alice"), Some("bob"), Some(2));
    assert!(hold.json().get_str("hold_id").is_some_and(|id| id.starts_with("h_")));

    // The stored receipt is the same bytes.
    let txid = transfer.json().get_str("txid").unwrap().to_owned();
    let stored = get(node.listen, &format!("/v1/tx/{txid}"), &[("Authorization", &admin)]).unwrap();
    assert_eq!(stored.body, transfer.body);

    // Balance: the original's as_of_height and stale_ms, then our as_of_seq.
    let path = "/v1/balance?account=alice&asset=roc";
    let balance = get(node.listen, path, &[("Authorization", &admin)]).unwrap();
    assert_eq!(balance.status, 200, "{}", balance.text());
    assert_eq!(
        keys_in_order(&balance.text()),
        ["account", "asset", "amount_minor", "as_of_height", "stale_ms", "as_of_seq"]
    );
    let json = balance.json();
    assert_eq!(json.get_str("amount_minor"), Some("65"));
    assert_eq!(json.get_u64("stale_ms"), Some(0));
    let height = json.get_u64("as_of_height").unwrap();
    assert_eq!(json.get_u64("as_of_seq"), Some(height));
    assert!(height >= hold.json().get_u64("ledger_seq_end").unwrap());

    // Lookups: an id of another shape is not found; only an id no store
    // could hold is a bad request; who is not authenticated learns nothing.
    let lookup = |id: &str, auth: bool| {
        let headers: &[(&str, &str)] = if auth { &[("Authorization", &admin)] } else { &[] };
        let response = get(node.listen, &format!("/v1/tx/{id}"), headers).unwrap();
        (response.status, response.json().get_str("code").unwrap_or("").to_owned())
    };
    for id in
        ["abc", "tx_1234", "tx_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", &format!("tx_{}", "0".repeat(32))]
    {
        assert_eq!(lookup(id, true), (404, "NOT_FOUND".to_owned()), "{id}");
        assert_eq!(lookup(id, false).0, 401, "{id}");
    }
    assert_eq!(lookup(&"x".repeat(81), true), (400, "BAD_REQUEST".to_owned()));
    assert_eq!(lookup(&"x".repeat(80), true), (404, "NOT_FOUND".to_owned()));
}
