//! The rewarder (SPEC §8) through the real binary, against bytes the
//! original svc-rewarder produced for the same requests (its
//! `tests/integration/http_compute.rs` body): manifests, run keys,
//! commitments, settlement keys and memos, replay, promotion, conflict,
//! quarantine, its nested envelope; runs survive kill -9 and a shard-count
//! change.

use ron_testing::{NodeOptions, Response, TestNode, get, request};
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::time::Duration;

const INPUTS: &str = "b3:81d428e1df7c29a8443467db8ed59ee2628ac43acd47c692fbc3c23ee495606d";

fn policy_hash() -> String {
    format!("b3:{}", "b".repeat(64))
}

/// The original's test request (accounts out of order, as it sends them).
fn body(dry_run: bool) -> String {
    let hash = policy_hash();
    format!(
        r#"{{"inputs_cid":"{INPUTS}","policy_id":"policy:v1","policy_hash":"{hash}","dry_run":{dry_run},"notes":"a note",
        "snapshot":{{"produced_at_millis":1,"pool_minor_units":"1000","contributions":[
          {{"account":"acct_b","bytes_stored":200,"bytes_served":0,"uptime_seconds":20}},
          {{"account":"acct_a","bytes_stored":100,"bytes_served":50,"uptime_seconds":10}}]}},
        "policy":{{"id":"policy:v1","hash":"{hash}","signed":true,"funding_source":"protocol_pool",
          "max_payout_minor_units":"1000","min_payout_minor_units":"1","weight_bps":10000,"rounding":"floor"}}}}"#
    )
}

/// The original's manifest for `epoch-1`, dry run (812 bytes).
const DRY: &str = r#"{"version":1,"epoch_id":"epoch-1","run_key":"b3:d61affcf4ac0e833b22b44079b73a4148bf74b08328e41a4ef59ec9815b0cf09","commitment":"b3:e528895f8a851682fbae4caf143de9e5d99217b2c1d2149b8c3d2ab8e22dbdfc","status":"ok","inputs_cid":"b3:81d428e1df7c29a8443467db8ed59ee2628ac43acd47c692fbc3c23ee495606d","totals":{"pool_minor_units":"1000","payout_minor_units":"999","residual_minor_units":"1"},"policy":{"id":"policy:v1","hash":"b3:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","signed":true,"funding_source":"protocol_pool"},"invariants":{"conservation":true,"overflow":false,"idempotent":true},"ledger":{"emitted":false,"result":"dry_run"},"payouts":[{"account":"acct_a","amount_minor_units":"356","score":1220000},{"account":"acct_b","amount_minor_units":"643","score":2200000}],"attestation":null}"#;

/// The same, made live by a later request (the original's promotion).
fn live() -> String {
    DRY.replace(
        "b3:e528895f8a851682fbae4caf143de9e5d99217b2c1d2149b8c3d2ab8e22dbdfc",
        "b3:619c202bf3ac0dcd1ddbff9be905d942dcaa615d3b283b1ec01f6b443042672a",
    )
    .replace(r#""emitted":false,"result":"dry_run""#, r#""emitted":true,"result":"accepted""#)
}

/// The original's settlement of the live `epoch-1`.
const SETTLEMENT: &str = r#"{"run_key":"b3:d61affcf4ac0e833b22b44079b73a4148bf74b08328e41a4ef59ec9815b0cf09","epoch_id":"epoch-1","manifest_commitment":"b3:619c202bf3ac0dcd1ddbff9be905d942dcaa615d3b283b1ec01f6b443042672a","funding_source":"protocol_pool","wallet_path":"/v1/issue","total_minor_units":"999","requests":[{"to":"acct_a","asset":"roc","amount_minor":"356","idempotency_key":"b3:ba06f27201c32e38a706abc36d7b20596580faad590e179bf530cdee2dd6","memo":"svc-rewarder:epoch-1:acct_a"},{"to":"acct_b","asset":"roc","amount_minor":"643","idempotency_key":"b3:617a3e86474eafb064d4cbdc942adf5fddab40d1ad14f6ed7274c8dce514","memo":"svc-rewarder:epoch-1:acct_b"}]}"#;

fn compute(node: &TestNode, at: SocketAddr, epoch: &str, body: &str, corr: &str) -> Response {
    let auth = node.admin();
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("X-Corr-ID", corr),
    ];
    let path = format!("/rewarder/epochs/{epoch}/compute");
    request(at, "POST", &path, &headers, body.as_bytes()).unwrap()
}

fn inspect(node: &TestNode, at: SocketAddr, path: &str) -> Response {
    let auth = node.admin();
    get(at, path, &[("Authorization", auth.as_str())]).unwrap()
}

/// The original's envelope: `{"error":{code, message, corr_id, details:{reason}}}`.
fn envelope(response: &Response, status: u16, code: &str, reason: &str, message: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    let body = response.json();
    let error = body.get("error").unwrap();
    assert_eq!(error.get_str("code"), Some(code), "{}", response.text());
    assert_eq!(
        error.get("details").unwrap().get_str("reason"),
        Some(reason),
        "{}",
        response.text()
    );
    assert_eq!(error.get_str("message"), Some(message), "{}", response.text());
}

#[test]
fn manifests_replays_promotion_conflicts_and_settlements_are_the_originals() {
    let mut node =
        TestNode::start(NodeOptions::default().shards(2).config("[ledger]\nview_write_ms = 50\n"));
    let at = node.listen;
    // A dry run: the original's bytes, and again the same bytes, from
    // either shard.
    let dry = compute(&node, at, "epoch-1", &body(true), "c-1");
    assert_eq!(dry.status, 200, "{}", dry.text());
    assert_eq!(dry.text(), DRY);
    for shard in 0..2 {
        let again = compute(&node, node.shard_address(shard), "epoch-1", &body(true), "c-2");
        assert_eq!(again.text(), DRY);
    }
    // A live request promotes it; after that, a dry request gets the live
    // manifest (as the original answers).
    let live_answer = compute(&node, at, "epoch-1", &body(false), "c-3");
    assert_eq!(live_answer.text(), live());
    assert_eq!(compute(&node, at, "epoch-1", &body(true), "c-4").text(), live());
    assert_eq!(inspect(&node, at, "/rewarder/epochs/epoch-1").text(), live());
    assert_eq!(inspect(&node, at, "/rewarder/epochs/epoch-1/settlement").text(), SETTLEMENT);
    // Other inputs for the stored epoch: 409, in the original's words and
    // with the request's correlation id.
    let other = body(true).replace(r#""pool_minor_units":"1000""#, r#""pool_minor_units":"999""#);
    let other = other.replace(INPUTS, &format!("b3:{}", "c".repeat(64)));
    let conflict = compute(&node, at, "epoch-1", &other, "corr-test");
    assert_eq!(
        conflict.text(),
        r#"{"error":{"code":"CONFLICT","message":"conflict: epoch already computed with different policy_hash or inputs_cid","corr_id":"corr-test","details":{"reason":"conflict"}}}"#
    );
    assert_eq!(conflict.status, 409);
    // A wrong inputs_cid for a new epoch: 400 naming both.
    let wrong = body(true).replace(INPUTS, &format!("b3:{}", "c".repeat(64)));
    envelope(
        &compute(&node, at, "epoch-2", &wrong, "c-5"),
        400,
        "BAD_REQUEST",
        "bad_request",
        &format!("bad request: inputs_cid mismatch: expected {INPUTS}, got b3:{}", "c".repeat(64)),
    );
    // Overflow: quarantined, 409, not stored, counted.
    let overflow_snapshot = r#"{"produced_at_millis":0,"pool_minor_units":"340282366920938463463374607431768211455","contributions":[{"account":"acct_overflow","bytes_stored":2,"bytes_served":0,"uptime_seconds":0}]}"#;
    let overflow = format!(
        r#"{{"inputs_cid":"b3:{}","policy_id":"policy:v1","policy_hash":"{}","dry_run":true,"snapshot":{overflow_snapshot}}}"#,
        blake3::hash(overflow_snapshot.as_bytes()).to_hex(),
        policy_hash()
    );
    let quarantined = compute(&node, at, "epoch-quarantine", &overflow, "q-1");
    assert_eq!(
        quarantined.text(),
        r#"{"error":{"code":"QUARANTINED","message":"quarantined: mul/div overflow","corr_id":"q-1","details":{"reason":"invariant"}}}"#
    );
    envelope(
        &inspect(&node, at, "/rewarder/epochs/epoch-quarantine"),
        404,
        "NOT_FOUND",
        "not_found",
        "not found: epoch manifest not found",
    );
    assert_eq!(node.metric("reward_invariant_fail_total"), 1.0);
    // The original's checks and texts.
    envelope(
        &compute(&node, at, "e%20x", &body(true), "c-6"),
        400,
        "BAD_REQUEST",
        "bad_request",
        "bad request: epoch_id contains unsupported characters",
    );
    envelope(
        &compute(&node, at, &"e".repeat(129), &body(true), "c-7"),
        400,
        "BAD_REQUEST",
        "bad_request",
        "bad request: epoch_id must be 1..=128 bytes",
    );
    let upper = body(true).replace(&policy_hash(), &format!("b3:{}", "B".repeat(64)));
    envelope(
        &compute(&node, at, "epoch-3", &upper, "c-8"),
        400,
        "BAD_REQUEST",
        "bad_request",
        "bad request: policy_hash must be lowercase canonical b3 hex",
    );
    let unknown = body(true).replace(r#""notes":"a note""#, r#""extra":1"#);
    assert_eq!(compute(&node, at, "epoch-3", &unknown, "c-9").status, 422);
    // Scopes: none → 401, the wrong one → 403 (in the original's names).
    let anonymous = request(
        at,
        "POST",
        "/rewarder/epochs/epoch-3/compute",
        &[("Content-Type", "application/json")],
        body(true).as_bytes(),
    )
    .unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json().get("error").unwrap().get_str("code"), Some("UNAUTHENTICATED"));

    // Runs survive kill -9 (views written, then one more run that only the
    // log has) and a shard-count change.
    std::thread::sleep(Duration::from_millis(300));
    let empty_snapshot = r#"{"produced_at_millis":0,"pool_minor_units":"0","contributions":[]}"#;
    let empty = format!(
        r#"{{"inputs_cid":"b3:340491fd208f690a75ac9d41517d6ca7662f0d8eaa832480c8332901290e544c","policy_id":"policy:v1","policy_hash":"{}","snapshot":{empty_snapshot}}}"#,
        policy_hash()
    );
    let zero = compute(&node, at, "e-zero", &empty, "c-10");
    assert_eq!(zero.status, 200, "{}", zero.text());
    let check = |node: &TestNode| {
        assert_eq!(inspect(node, node.listen, "/rewarder/epochs/epoch-1").text(), live());
        assert_eq!(inspect(node, node.listen, "/rewarder/epochs/e-zero").text(), zero.text());
        assert_eq!(compute(node, node.listen, "epoch-1", &body(false), "c-11").text(), live());
    };
    check(&node);
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    check(&node);
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.set_shards(1);
    node.spawn();
    check(&node);
}

#[test]
fn a_snapshot_sent_ahead_as_an_index_object_is_used() {
    let node = TestNode::start(NodeOptions::default());
    let at = node.listen;
    let canonical = r#"{"produced_at_millis":1,"pool_minor_units":"1000","contributions":[{"account":"acct_a","bytes_stored":100,"bytes_served":50,"uptime_seconds":10},{"account":"acct_b","bytes_stored":200,"bytes_served":0,"uptime_seconds":20}]}"#;
    let auth = node.admin();
    let put =
        request(at, "PUT", "/v1/index/objects", &[("Authorization", &auth)], canonical.as_bytes())
            .unwrap();
    assert_eq!(put.json().get_str("cid"), Some(INPUTS));
    let hash = policy_hash();
    let by_cid = format!(
        r#"{{"inputs_cid":"{INPUTS}","policy_id":"policy:v1","policy_hash":"{hash}","dry_run":true,
        "policy":{{"id":"policy:v1","hash":"{hash}","signed":true,"funding_source":"protocol_pool",
          "max_payout_minor_units":"1000","min_payout_minor_units":"1","weight_bps":10000,"rounding":"floor"}}}}"#
    );
    assert_eq!(compute(&node, at, "epoch-1", &by_cid, "c-1").text(), DRY);
    // No inline snapshot and nothing under the cid: 400.
    let missing = by_cid.replace(INPUTS, &format!("b3:{}", "d".repeat(64)));
    envelope(
        &compute(&node, at, "epoch-2", &missing, "c-2"),
        400,
        "BAD_REQUEST",
        "bad_request",
        "bad request: no inline snapshot, and no object under inputs_cid",
    );
}

fn balance(node: &TestNode, account: &str) -> u128 {
    let path = format!("/v1/balance?account={account}&asset=roc");
    let response = get(node.listen, &path, &[("Authorization", &node.admin())]).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().get_str("amount_minor").unwrap().parse().unwrap()
}

fn emit(node: &TestNode, epoch: &str) -> Response {
    let auth = node.admin();
    let path = format!("/rewarder/epochs/{epoch}/emit");
    request(node.listen, "POST", &path, &[("Authorization", auth.as_str())], b"").unwrap()
}

/// The original's compute → settlement → emit loop: the wallet balances
/// the manifest names, each receipt what `POST /v1/issue` with the payout's
/// key answers, and no payout issued twice — by a repeated emit, or after
/// an emission cut short (one payout issued before the emit).
#[test]
fn emission_issues_every_payout_once() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let at = node.listen;
    envelope(
        &emit(&node, "epoch-1"),
        404,
        "NOT_FOUND",
        "not_found",
        "not found: epoch manifest not found",
    );
    assert_eq!(compute(&node, at, "epoch-1", &body(true), "c-1").status, 200);
    envelope(
        &emit(&node, "epoch-1"),
        400,
        "BAD_REQUEST",
        "bad_request",
        "bad request: cannot emit settlement for dry-run manifest; recompute with dry_run=false first",
    );
    assert_eq!(compute(&node, at, "epoch-1", &body(false), "c-2").text(), live());
    // acct_b's payout issued already, as by an emission that stopped there.
    let issued_before = ron_testing::post_json(
        at,
        "/v1/issue",
        &node.admin(),
        r#"{"to":"acct_b","asset":"roc","amount_minor":"643","memo":"svc-rewarder:epoch-1:acct_b","idempotency_key":"b3:617a3e86474eafb064d4cbdc942adf5fddab40d1ad14f6ed7274c8dce514"}"#,
    );
    assert_eq!(issued_before.status, 200, "{}", issued_before.text());
    let first = emit(&node, "epoch-1");
    assert_eq!(first.status, 200, "{}", first.text());
    let answer = first.json();
    assert_eq!(answer.get_str("result"), Some("accepted"));
    assert_eq!(simd_json::to_string(answer.get("batch").unwrap()).unwrap(), SETTLEMENT);
    let receipts = answer.get_array("receipts").unwrap();
    assert_eq!(receipts.len(), 2);
    assert_eq!(
        receipts[1].get_str("txid"),
        issued_before.json().get_str("txid"),
        "the payout issued before is found, not issued again"
    );
    assert_eq!((balance(&node, "acct_a"), balance(&node, "acct_b")), (356, 643));
    // Each receipt is what POST /v1/issue with that key answers, and
    // readable at /v1/tx/{txid}.
    let by_hand = ron_testing::post_json(
        at,
        "/v1/issue",
        &node.admin(),
        r#"{"to":"acct_a","asset":"roc","amount_minor":"356","memo":"svc-rewarder:epoch-1:acct_a","idempotency_key":"b3:ba06f27201c32e38a706abc36d7b20596580faad590e179bf530cdee2dd6"}"#,
    );
    assert_eq!(by_hand.json(), receipts[0]);
    let txid = receipts[0].get_str("txid").unwrap();
    let tx = get(at, &format!("/v1/tx/{txid}"), &[("Authorization", &node.admin())]).unwrap();
    assert_eq!(tx.status, 200, "{}", tx.text());
    // Emitted again: the same receipts, nothing issued.
    let again = emit(&node, "epoch-1");
    assert_eq!(again.json().get("receipts"), answer.get("receipts"));
    assert_eq!((balance(&node, "acct_a"), balance(&node, "acct_b")), (356, 643));
    assert_eq!(node.metric("ledger_intents_total{result=\"accepted\"}"), 1.0);
    assert_eq!(node.metric("ledger_intents_total{result=\"dup\"}"), 3.0);
    assert_eq!(node.metric("ledger_intents_total{result=\"dry_run\"}"), 2.0);
}

/// Quarantine-only mode: with the ledger in safe mode (its disk full), an
/// emit is accepted as owed (202, `quarantine: true`) and kept; once the
/// ledger takes writes again (space, and a restart out of safe mode) the
/// node issues it by itself — once.
#[test]
fn an_emission_owed_in_safe_mode_is_issued_by_the_node_once_the_ledger_heals() {
    let mut node =
        TestNode::start(NodeOptions::default().config("[ledger]\nsegment_bytes = 65536\n"));
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    let mount = crate::ledger::Mount::tmpfs(&node.log_dir(), "256k");
    node.spawn();
    let at = node.listen;
    assert_eq!(compute(&node, at, "epoch-1", &body(false), "c-1").text(), live());
    // Fill the log's disk with issues until the ledger refuses writes.
    let mut n = 0;
    let refused = loop {
        assert!(n < 5000, "the disk never filled");
        let issue = format!(
            r#"{{"to":"filler","asset":"roc","amount_minor":"1","idempotency_key":"fill-{n}"}}"#
        );
        let answer = ron_testing::post_json(at, "/v1/issue", &node.admin(), &issue);
        if answer.status != 200 {
            break answer;
        }
        n += 1;
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    let owed = emit(&node, "epoch-1");
    assert_eq!(owed.status, 202, "{}", owed.text());
    let body = owed.json();
    assert_eq!(body.get_bool("quarantine"), Some(true));
    assert_eq!(body.get_str("result"), Some("quarantined"));
    assert_eq!(simd_json::to_string(body.get("batch").unwrap()).unwrap(), SETTLEMENT);
    assert_eq!(node.metric("reward_emissions_deferred_total"), 1.0);
    // Space again, and a restart: the node emits what it owes.
    mount.resize("4m");
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    let healed = std::time::Instant::now();
    while (balance(&node, "acct_a"), balance(&node, "acct_b")) != (356, 643) {
        assert!(healed.elapsed() < Duration::from_secs(10), "the owed emission was not issued");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node.metric("ledger_intents_total{result=\"accepted\"}"), 2.0);
    // Nothing is owed any more, and an emit now finds both issued.
    let again = emit(&node, "epoch-1");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!((balance(&node, "acct_a"), balance(&node, "acct_b")), (356, 643));
    assert_eq!(node.metric("ledger_intents_total{result=\"dup\"}"), 2.0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node.metric("reward_emissions_pending"), 0.0);
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    drop(mount);
}

/// The S golden vector through the binary: the node answers the checked-in
/// inputs_cid, run_key and commitment (M and L, 5 and 26 MB of requests,
/// are recomputed in `ron_bench::reward_vectors`'s tests and measured by
/// the bench).
#[test]
fn the_s_golden_vector_gives_its_checked_in_outputs() {
    use ron_bench::reward_vectors::{SCALES, body, epoch_of, expected, request};
    let mut node = TestNode::start(NodeOptions::default());
    let scale = SCALES[0];
    let want = expected(scale);
    let answer = compute(
        &node,
        node.listen,
        &epoch_of(scale),
        &String::from_utf8(body(&request(scale))).unwrap(),
        "v-1",
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let manifest = answer.json();
    assert_eq!(manifest.get_str("inputs_cid"), Some(want.inputs_cid.as_str()));
    assert_eq!(manifest.get_str("run_key"), Some(want.run_key.as_str()));
    assert_eq!(manifest.get_str("commitment"), Some(want.commitment.as_str()));
    assert_eq!(manifest.get_array("payouts").unwrap().len(), want.payouts);
    // The same bytes again: the same answer, not parsed again; after a
    // restart the first is parsed (what is known is in RAM), then known.
    let body = String::from_utf8(body(&request(scale))).unwrap();
    let unparsed = "reward_replays_unparsed_total";
    for corr in ["v-2", "v-3"] {
        let again = compute(&node, node.listen, &epoch_of(scale), &body, corr);
        assert_eq!(again.body, answer.body);
    }
    assert_eq!(node.metric(unparsed), 2.0);
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.spawn();
    for corr in ["v-4", "v-5"] {
        let again = compute(&node, node.listen, &epoch_of(scale), &body, corr);
        assert_eq!(again.body, answer.body);
    }
    assert_eq!(node.metric(unparsed), 1.0);
    assert_eq!(node.metric("reward_runs_total{status=\"replay\"}"), 2.0);
}

/// kill -9 in the middle of an emission, then a restart and another emit:
/// every payout issued exactly once.
#[test]
fn a_kill_during_emission_then_an_emit_pays_every_payout_once() {
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    let accounts = 1500;
    let contributions: Vec<String> = (0..accounts)
        .map(|i| {
            format!(
                r#"{{"account":"acct-{i:05}","bytes_stored":{},"bytes_served":0,"uptime_seconds":0}}"#,
                1 + i % 7
            )
        })
        .collect();
    let snapshot = format!(
        r#"{{"produced_at_millis":0,"pool_minor_units":"100000000","contributions":[{}]}}"#,
        contributions.join(",")
    );
    let body = format!(
        r#"{{"inputs_cid":"b3:{}","policy_id":"policy:v1","policy_hash":"{}","snapshot":{snapshot}}}"#,
        blake3::hash(snapshot.as_bytes()).to_hex(),
        policy_hash()
    );
    let manifest = compute(&node, node.listen, "epoch-kill", &body, "k-1");
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    let payouts: Vec<(String, u128)> = manifest
        .json()
        .get_array("payouts")
        .unwrap()
        .iter()
        .map(|p| {
            let amount = p.get_str("amount_minor_units").unwrap().parse().unwrap();
            (p.get_str("account").unwrap().to_owned(), amount)
        })
        .collect();
    assert_eq!(payouts.len(), accounts);
    // Emit, and kill the node while it issues.
    let (auth, at) = (node.admin(), node.listen);
    let emitting = std::thread::spawn(move || {
        let path = "/rewarder/epochs/epoch-kill/emit";
        request(at, "POST", path, &[("Authorization", auth.as_str())], b"").map(|r| r.status)
    });
    let started = std::time::Instant::now();
    while node.metric("ledger_intents_total{result=\"accepted\"}") < 50.0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the emission did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    let cut = emitting.join().unwrap();
    assert!(cut.is_err() || cut.as_ref().is_ok_and(|s| *s != 200), "the emission was cut: {cut:?}");
    node.spawn();
    let paid_before: usize = payouts.iter().filter(|(a, _)| balance(&node, a) > 0).count();
    assert!(
        paid_before > 0 && paid_before < accounts,
        "{paid_before} of {accounts} paid before the kill"
    );
    let resumed = emit(&node, "epoch-kill");
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    assert_eq!(resumed.json().get_array("receipts").unwrap().len(), accounts);
    for (account, amount) in &payouts {
        assert_eq!(balance(&node, account), *amount, "{account}");
    }
    // And again: nothing more.
    assert_eq!(emit(&node, "epoch-kill").status, 200);
    for (account, amount) in payouts.iter().step_by(97) {
        assert_eq!(balance(&node, account), *amount, "{account}");
    }
}

/// With `pq_mode` on, a manifest carries Ed25519 and ML-DSA-65 signatures
/// of its commitment by the node's passport keys (checked here with the
/// published keys and another ML-DSA implementation); the commitment, and
/// so the run's keys, are those of the original's manifest.
#[test]
fn with_pq_on_manifests_are_attested() {
    use base64::Engine as _;
    use ml_dsa::signature::Verifier as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let node = TestNode::start(NodeOptions::default().config("[passport]\npq_mode = \"mirror\"\n"));
    let answer = compute(&node, node.listen, "epoch-1", &body(true), "c-1");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let manifest = answer.json();
    let commitment = manifest.get_str("commitment").unwrap();
    assert_eq!(commitment, "b3:e528895f8a851682fbae4caf143de9e5d99217b2c1d2149b8c3d2ab8e22dbdfc");
    let attestation = manifest.get("attestation").unwrap();
    let message = format!("ron-node|rewarder-attestation|v1|{commitment}");
    let kid = attestation.get_u64("kid").unwrap();
    let keys = get(node.listen, "/v1/keys", &[]).unwrap().json();
    let public = |alg: &str| -> Vec<u8> {
        let key = keys
            .get_array("keys")
            .unwrap()
            .iter()
            .find(|k| k.get_str("kid") == Some(&kid.to_string()) && k.get_str("alg") == Some(alg))
            .unwrap();
        let field = if alg == "EdDSA" { "x" } else { "pub" };
        b64.decode(key.get_str(field).unwrap()).unwrap()
    };
    let ed = ed25519_dalek::VerifyingKey::from_bytes(&public("EdDSA").try_into().unwrap()).unwrap();
    let signature: [u8; 64] =
        b64.decode(attestation.get_str("sig_ed25519").unwrap()).unwrap().try_into().unwrap();
    assert!(
        ed.verify_strict(message.as_bytes(), &ed25519_dalek::Signature::from_bytes(&signature))
            .is_ok()
    );
    let signature = b64.decode(attestation.get_str("sig_pq").unwrap()).unwrap();
    let signature = ml_dsa::Signature::<ml_dsa::MlDsa65>::try_from(signature.as_slice()).unwrap();
    let pq = public("ML-DSA-65");
    let pq = ml_dsa::EncodedVerifyingKey::<ml_dsa::MlDsa65>::try_from(pq.as_slice()).unwrap();
    let pq = ml_dsa::VerifyingKey::<ml_dsa::MlDsa65>::decode(&pq);
    assert!(pq.verify(message.as_bytes(), &signature).is_ok());
    // The settlement keys are bound to the same commitment as without PQ.
    let settlement = inspect(&node, node.listen, "/rewarder/epochs/epoch-1/settlement").json();
    assert_eq!(settlement.get_str("manifest_commitment"), Some(commitment));
}

/// `rewarder.manifests_bytes_max` crossed: the compute that does not fit
/// is refused (422) and nothing stored before it is lost.
#[test]
fn a_full_manifest_store_refuses_the_run_and_keeps_the_rest() {
    use ron_bench::reward_vectors::{SCALES, body, request};
    let node = TestNode::start(
        NodeOptions::default().config("[rewarder]\nmanifests_bytes_max = 1048576\n"),
    );
    let vector = String::from_utf8(body(&request(SCALES[0]))).unwrap();
    let mut stored = Vec::new();
    let refused = loop {
        assert!(stored.len() < 40, "the store never filled");
        let epoch = format!("fill-{}", stored.len());
        let answer = compute(&node, node.listen, &epoch, &vector, "f");
        if answer.status != 200 {
            break answer;
        }
        stored.push((epoch, answer.body));
    };
    envelope(
        &refused,
        422,
        "LIMITS_EXCEEDED",
        "limits_exceeded",
        "the manifest store is full (rewarder.manifests_bytes_max)",
    );
    assert!(stored.len() >= 5, "only {} manifests fit", stored.len());
    for (epoch, manifest) in &stored {
        let got = inspect(&node, node.listen, &format!("/rewarder/epochs/{epoch}"));
        assert_eq!(&got.body, manifest, "{epoch}");
    }
}

/// A token of `tenant` with every scope, minted with the node's root key.
fn tenant_token(node: &TestNode, id: u8, tenant: &str) -> String {
    use ron_proto::token::{Claims, Token, scope};
    let issued_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = Claims {
        kid: 1,
        token_id: [id; 16],
        epoch: 0,
        issued_at,
        subject: format!("tenant-{id}"),
        audience: "ron-node".into(),
    };
    let scopes = format!("scope={}", scope::ALL.join(","));
    let tenant = format!("tenant={tenant}");
    Token::mint(&node.root_key(), claims, &[scopes.as_str(), tenant.as_str()]).unwrap().encode()
}

/// `rewarder.inflight_max` and `work_queue_max` crossed (429 past both),
/// `rewarder.tenant_rps_max` crossed; SIGHUP raises and lifts them without
/// a restart, and reports a change it cannot apply.
#[test]
fn compute_caps_and_the_tenant_clamp_are_enforced_and_reloaded_on_sighup() {
    use ron_bench::reward_vectors::{SCALES, body, request};
    let caps = "[rewarder]\ninflight_max = 1\nwork_queue_max = 0\ntenant_rps_max = 1";
    let mut node = TestNode::start(NodeOptions::default().config(caps));
    let snapshot_body = String::from_utf8(body(&request(SCALES[0]))).unwrap();
    // Eight computes of fresh epochs at once: one runs, the rest are refused.
    let burst = |node: &TestNode, round: &str| -> Vec<Response> {
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let (start, body) = (&start, &snapshot_body);
                    s.spawn(move || {
                        start.wait();
                        compute(node, node.listen, &format!("{round}-{i}"), body, "b")
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
    };
    let answers = burst(&node, "capped");
    let refused = answers.iter().filter(|a| a.status == 429).count();
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 429));
    assert!((1..8).contains(&refused), "{refused} of 8 refused");
    let refusal = answers.iter().find(|a| a.status == 429).unwrap();
    envelope(refusal, 429, "TOO_MANY_REQUESTS", "busy", "busy: compute workers exhausted");
    assert!(node.metric("rejected_total{reason=\"busy\"}") >= refused as f64);

    // The tenant clamp: one request a second to the rewarder's routes.
    let acme = tenant_token(&node, 0x51, "acme");
    let auth = format!("Bearer {acme}");
    let listen = node.listen;
    let ask = || get(listen, "/rewarder/epochs/nothing", &[("Authorization", &auth)]);
    let statuses: Vec<u16> = (0..3).map(|_| ask().unwrap().status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 1, "{statuses:?}");
    let clamped = ask().unwrap();
    assert_eq!(clamped.status, 429, "{}", clamped.text());
    assert!(clamped.text().contains("rewarder.tenant_rps_max"), "{}", clamped.text());

    // SIGHUP: room for all eight, no tenant clamp; the same process.
    let pid = node.pid();
    node.reload("[rewarder]\ninflight_max = 2\nwork_queue_max = 8\ntenant_rps_max = 0");
    let answers = burst(&node, "queued");
    assert!(
        answers.iter().all(|a| a.status == 200),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!((0..5).all(|_| ask().unwrap().status == 404));
    assert_eq!(node.metric("queue_depth{q=\"rewarder\"}"), 0.0);
    assert!(node.log().contains("rewarder.work_queue_max: 0 -> 8"), "{}", node.log());

    // A change that needs a restart is reported and not applied.
    node.reload("[rewarder]\ninflight_max = 2\nwork_queue_max = 8\nidempotency_salt = \"other\"");
    assert!(node.log().contains("need a restart"), "{}", node.log());
    assert_eq!(node.pid(), pid);
    let replayed = compute(&node, node.listen, "queued-0", &snapshot_body, "r");
    assert_eq!(replayed.status, 200, "the salt did not change: a replay, not a conflict");
}
