//! The passport service: revocation on every shard and across restarts,
//! batch verification and the verify cache.

use ron_proto::token::{Claims, Token, scope};
use ron_testing::{NodeOptions, TestNode, get, post_json};
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::time::Duration;

const ISSUE: &str = "/v1/passport/issue";
const REVOKE: &str = "/v1/passport/revoke";

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Issues a token for `subject` through the route; returns (token, token_id).
fn issue(node: &TestNode, subject: &str, scopes: &str) -> (String, String) {
    let body = format!(
        r#"{{"subject_ref":"{subject}","audience":"ron-node","ttl_s":600,"scopes":[{scopes}]}}"#
    );
    let issued = post_json(node.listen, ISSUE, &node.admin(), &body);
    assert_eq!(issued.status, 200, "{}", issued.text());
    let issued = issued.json();
    (issued.get_str("token").unwrap().to_owned(), issued.get_str("token_id").unwrap().to_owned())
}

/// A token with every scope in `epoch`, minted with the node's root key.
fn operator_token(node: &TestNode, epoch: u64) -> String {
    let claims = Claims {
        kid: 1,
        token_id: [0x0e; 16],
        epoch,
        issued_at: now_s(),
        subject: "operator".into(),
        audience: "ron-node".into(),
    };
    let scopes = format!("scope={}", scope::ALL.join(","));
    Token::mint(&node.root_key(), claims, &[&scopes]).unwrap().encode()
}

/// The status of an authenticated request with `token` on `address`.
fn status_with(address: SocketAddr, token: &str) -> u16 {
    get(address, "/v1/node/owner?key=k", &[("Authorization", &bearer(token))]).unwrap().status
}

/// Every port of the node: the shared listener and each shard's own.
fn ports(node: &TestNode) -> Vec<SocketAddr> {
    let mut ports = vec![node.listen];
    ports.extend((0..node.shard_ports.len()).map(|i| node.shard_address(i)));
    ports
}

/// `/v1/passport/verify`'s reason for `token` (None when ok).
fn verify_reason(address: SocketAddr, caller: &str, token: &str) -> Option<String> {
    let body = format!(r#"{{"token":"{token}"}}"#);
    let answer = post_json(address, "/v1/passport/verify", &bearer(caller), &body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    match answer.get_bool("ok") {
        Some(true) => None,
        _ => Some(answer.get_str("reason").unwrap().to_owned()),
    }
}

fn revoke(node: &TestNode, caller: &str, body: &str) -> simd_json::OwnedValue {
    let answer = post_json(node.listen, REVOKE, &bearer(caller), body);
    assert_eq!(answer.status, 200, "{body}: {}", answer.text());
    answer.json()
}

#[test]
fn revocations_hold_on_every_port_at_once_and_after_kill_9() {
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    let admin = node.admin_token.clone();
    let (alice, alice_id) = issue(&node, "alice", r#""wallet.read""#);
    let (bob, _) = issue(&node, "bob", r#""wallet.read""#);
    let (carol, _) = issue(&node, "carol", r#""wallet.read""#);
    let operator = operator_token(&node, 1);
    for port in ports(&node) {
        for token in [&alice, &bob, &carol, &operator] {
            assert_eq!(status_with(port, token), 200);
        }
    }
    // Every way of naming what is revoked, each refused on every port as
    // soon as the revocation is answered.
    let answer = revoke(&node, &admin, &format!(r#"{{"token_id":"{alice_id}","reason":"lost"}}"#));
    assert_eq!(answer.get("revoked").unwrap().get_str("token_id"), Some(alice_id.as_str()));
    assert!(answer.get_u64("seq").unwrap() >= 1);
    for port in ports(&node) {
        assert_eq!(status_with(port, &alice), 401);
        assert_eq!(verify_reason(port, &admin, &alice).as_deref(), Some("revoked"));
        assert_eq!(status_with(port, &bob), 200);
    }
    revoke(&node, &admin, r#"{"subject_ref":"bob","reason":"left"}"#);
    for port in ports(&node) {
        assert_eq!(status_with(port, &bob), 401);
        assert_eq!(status_with(port, &carol), 200);
    }
    let answer = revoke(&node, &admin, r#"{"epoch":0,"reason":"rotate everything"}"#);
    assert_eq!(answer.get_u64("current_epoch"), Some(1));
    for port in ports(&node) {
        assert_eq!(status_with(port, &carol), 401);
        assert_eq!(status_with(port, &admin), 401, "the admin token is of epoch 0");
        assert_eq!(status_with(port, &operator), 200, "epoch 1 is not revoked");
    }
    // New tokens are minted in the current epoch.
    let fresh = post_json(
        node.listen,
        ISSUE,
        &bearer(&operator),
        r#"{"subject_ref":"dave","audience":"ron-node","ttl_s":60,"scopes":["wallet.read"]}"#,
    );
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    let fresh = fresh.json().get_str("token").unwrap().to_owned();
    assert_eq!(status_with(node.listen, &fresh), 200);
    let propagated = node.metric("passport_revocation_propagation_seconds_count");
    assert_eq!(propagated, 3.0);

    // Revocations are in the log: a kill -9 and a restart keep them all.
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    for port in ports(&node) {
        for token in [&alice, &bob, &carol, &admin] {
            assert_eq!(status_with(port, token), 401);
        }
        assert_eq!(status_with(port, &operator), 200);
        assert_eq!(status_with(port, &fresh), 200);
    }
    // Still epoch 1, and bad revocations are refused without a trace.
    for body in [
        r#"{"reason":"nothing named"}"#,
        r#"{"token_id":"abc","reason":"short id"}"#,
        r#"{"kid":1,"epoch":3,"reason":"two named"}"#,
        r#"{"subject_ref":"","reason":"empty"}"#,
    ] {
        let refused = post_json(node.listen, REVOKE, &bearer(&operator), body);
        assert_eq!(refused.status, 400, "{body}: {}", refused.text());
    }
    let long_reason = format!(r#"{{"kid":9,"reason":"{}"}}"#, "r".repeat(257));
    assert_eq!(post_json(node.listen, REVOKE, &bearer(&operator), &long_reason).status, 400);
    // A token without passport.admin may not revoke.
    assert_eq!(
        post_json(node.listen, REVOKE, &bearer(&fresh), r#"{"kid":1,"reason":"x"}"#).status,
        403
    );
    assert_eq!(status_with(node.listen, &operator), 200);
}

#[test]
fn verify_batch_answers_in_order_and_has_a_limit() {
    let node = TestNode::start(NodeOptions::default());
    let admin = node.admin();
    let (good, _) = issue(&node, "erin", r#""wallet.read""#);
    let mut tampered = good.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let body = format!(r#"{{"tokens":["{good}","{tampered}","nonsense"]}}"#);
    let answer = post_json(node.listen, "/v1/passport/verify_batch", &admin, &body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    let results = answer.get_array("results").unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].get_bool("ok"), Some(true));
    assert_eq!(results[1].get_str("reason"), Some("bad_tag"));
    assert_eq!(results[2].get_str("reason"), Some("malformed"));
    let at_limit = vec![format!("\"{good}\""); 512].join(",");
    let answer = post_json(
        node.listen,
        "/v1/passport/verify_batch",
        &admin,
        &format!(r#"{{"tokens":[{at_limit}]}}"#),
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json().get_array("results").unwrap().len(), 512);
    let over = vec![format!("\"{good}\""); 513].join(",");
    let refused = post_json(
        node.listen,
        "/v1/passport/verify_batch",
        &admin,
        &format!(r#"{{"tokens":[{over}]}}"#),
    );
    assert_eq!(refused.code(), "LIMITS_EXCEEDED", "{}", refused.text());
    // The same token 512 times: one miss, then hits.
    assert!(node.metric("passport_verify_cache_hits_total") >= 511.0);
    assert!(node.metric("passport_verify_cache_hit_ratio") > 0.5);
    assert!(node.metric("svc_passport_rejects_total{reason=\"bad_tag\"}") >= 1.0);
    assert!(node.metric("svc_passport_verify_latency_seconds_count") >= 515.0);
    assert!(node.metric("svc_passport_issue_latency_seconds_count") >= 1.0);
}
