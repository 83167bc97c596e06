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
    let options = NodeOptions::default().shards(2).config("[ledger]\nview_write_ms = 50\n");
    let mut node = TestNode::start(options);
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

    // Revocations are kept in every shard's view (the passport's
    // `revocations` table): a kill -9 and a restart keep them all, loaded
    // from views written past them, with no log replayed.
    std::thread::sleep(Duration::from_millis(400));
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    let log = node.log();
    let restart = log.rfind("ledger log recovered").expect("a restart");
    let loaded: Vec<&str> =
        log[restart..].lines().filter(|l| l.contains("shard view loaded")).collect();
    assert!(
        loaded.iter().all(|l| !l.contains("view_seq=0 ")),
        "the views were written past the revocations: {loaded:?}"
    );
    assert!(crate::ledger::tail_entries(&node, loaded.len()).iter().all(|t| *t == 0), "{log}");
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

fn jwks(node: &TestNode) -> (simd_json::OwnedValue, String) {
    let answer = get(node.listen, "/v1/keys", &[]).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("Cache-Control"), Some("public, max-age=300"));
    let etag = answer.header("ETag").unwrap().to_owned();
    (answer.json(), etag)
}

/// The JWK of `kid` with algorithm `alg`, decoded (`x` or `pub`).
fn public_key(jwks: &simd_json::OwnedValue, kid: u32, alg: &str) -> Vec<u8> {
    use base64::Engine as _;
    let key = jwks
        .get_array("keys")
        .unwrap()
        .iter()
        .find(|k| k.get_str("kid") == Some(&kid.to_string()) && k.get_str("alg") == Some(alg))
        .unwrap_or_else(|| panic!("no {alg} key {kid} in {jwks:?}"));
    let field = if alg == "EdDSA" { "x" } else { "pub" };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key.get_str(field).unwrap()).unwrap()
}

fn caveat<'a>(token: &'a ron_proto::token::TokenView<'a>, key: &str) -> Option<(usize, &'a str)> {
    token
        .caveats()
        .enumerate()
        .find_map(|(i, c)| c.strip_prefix(key).and_then(|v| v.strip_prefix('=')).map(|v| (i, v)))
}

#[test]
fn keys_rotate_while_old_tokens_verify_until_they_retire() {
    use std::os::unix::fs::PermissionsExt;
    // Tokens live at most 2 s here, so the old key retires 2 s after rotating.
    let mut node = TestNode::start(
        NodeOptions::default()
            .shards(2)
            .config("[passport]\nttl_max_s = 2\nttl_default_s = 2\nclock_skew_s = 0"),
    );
    let keys_dir = node.data_dir.path().join("data/keys");
    for name in ["root-1.key", "ed25519-1.key", "mldsa65-1.key"] {
        let mode = std::fs::metadata(keys_dir.join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let (keys, etag) = jwks(&node);
    assert_eq!(keys.get_array("keys").unwrap().len(), 2);
    assert_eq!(public_key(&keys, 1, "EdDSA").len(), 32);
    assert_eq!(public_key(&keys, 1, "ML-DSA-65").len(), 1952);
    let cached = get(node.listen, "/v1/keys", &[("If-None-Match", &etag)]).unwrap();
    assert_eq!(cached.status, 304);
    assert_eq!(cached.header("ETag"), Some(etag.as_str()));
    assert!(cached.body.is_empty());

    let old_admin = node.admin_token.clone();
    let body =
        r#"{"subject_ref":"frank","audience":"ron-node","ttl_s":2,"scopes":["wallet.read"]}"#;
    let old = post_json(node.listen, ISSUE, &node.admin(), body).json();
    let old = old.get_str("token").unwrap().to_owned();
    let rotated = post_json(node.listen, "/admin/rotate", &node.admin(), "{}");
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let rotated = rotated.json();
    assert_eq!(rotated.get_u64("kid"), Some(2));
    let retire_at = rotated.get_array("retiring").unwrap()[0].get_u64("retire_at").unwrap();
    assert!(retire_at <= now_s() + 2);
    // A new admin token under kid 2 replaced the file; the old one still works.
    let new_admin = std::fs::read_to_string(node.data_dir.path().join("data/admin.token")).unwrap();
    assert_ne!(new_admin, old_admin);
    let (keys, new_etag) = jwks(&node);
    assert_ne!(new_etag, etag);
    assert_eq!(keys.get_array("keys").unwrap().len(), 4);
    assert_eq!(get(node.listen, "/v1/keys", &[("If-None-Match", &etag)]).unwrap().status, 200);
    let fresh = post_json(node.listen, ISSUE, &bearer(&new_admin), body).json();
    assert_eq!(fresh.get_u64("kid"), Some(2));
    let fresh = fresh.get_str("token").unwrap().to_owned();
    for port in ports(&node) {
        assert_eq!(status_with(port, &old), 200, "kid 1 verifies until it retires");
        assert_eq!(status_with(port, &old_admin), 200);
        assert_eq!(status_with(port, &fresh), 200);
    }
    // Past the retirement: kid 1 is refused everywhere, also after a restart
    // (which removes its files); kid 2 goes on.
    while now_s() < retire_at + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    for port in ports(&node) {
        assert_eq!(status_with(port, &old_admin), 401);
        assert_eq!(verify_reason(port, &new_admin, &old_admin).as_deref(), Some("unknown_kid"));
    }
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.spawn();
    assert!(!keys_dir.join("root-1.key").exists());
    assert_eq!(status_with(node.listen, &old_admin), 401);
    assert_eq!(status_with(node.listen, &new_admin), 200);
    assert_eq!(jwks(&node).0.get_array("keys").unwrap().len(), 2);
}

#[test]
fn ed25519_signatures_verify_with_the_published_key() {
    let node = TestNode::start(NodeOptions::default().config("[passport]\ncaveats_max = 4"));
    let issued = post_json(
        node.listen,
        ISSUE,
        &node.admin(),
        r#"{"subject_ref":"gina","audience":"ron-node","ttl_s":60,"scopes":["wallet.read"],"accept_algs":["ed25519"]}"#,
    );
    assert_eq!(issued.status, 200, "{}", issued.text());
    let issued = issued.json();
    assert_eq!(issued.get_str("alg"), Some("ed25519"));
    let text = issued.get_str("token").unwrap().to_owned();
    let mut scratch = Vec::new();
    let view = ron_proto::token::decode(text.as_bytes(), 64, &mut scratch).unwrap();
    let (at, value) = caveat(&view, ron_proto::token::SIG_ED25519).expect("a signature caveat");
    assert_eq!(issued.get_str("sig"), Some(value));
    use base64::Engine as _;
    let signature: [u8; 64] =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value).unwrap().try_into().unwrap();
    let public: [u8; 32] = public_key(&jwks(&node).0, 1, "EdDSA").try_into().unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    assert!(public.verify_strict(&view.signed_message(at), &signature).is_ok());
    assert!(public.verify_strict(&view.signed_message(at - 1), &signature).is_err());
    // The token works; the MAC-only default and unknown algorithms.
    assert_eq!(status_with(node.listen, &text), 200);
    let plain = post_json(
        node.listen,
        ISSUE,
        &node.admin(),
        r#"{"subject_ref":"gina","audience":"ron-node","ttl_s":60,"scopes":["wallet.read"]}"#,
    );
    assert_eq!(plain.json().get_str("alg"), Some("blake3-keyed"));
    // The signature caveat counts: scope, exp, 1 more and the signature fit
    // in 4; 2 more do not, though they would without a signature.
    let with = |caveats: &str, algs: &str| {
        let body = format!(
            r#"{{"subject_ref":"g","audience":"ron-node","ttl_s":6,"scopes":["wallet.read"],"caveats":[{caveats}],"accept_algs":[{algs}]}}"#
        );
        post_json(node.listen, ISSUE, &node.admin(), &body)
    };
    assert_eq!(with(r#""method=GET""#, r#""ed25519""#).status, 200);
    assert_eq!(with(r#""method=GET","aud=ron-node""#, r#""blake3-keyed""#).status, 200);
    let over = with(r#""method=GET","aud=ron-node""#, r#""ed25519""#);
    assert_eq!(over.status, 400);
    assert!(over.text().contains("too_many_caveats"), "{}", over.text());
    for algs in [r#"["rsa"]"#, r#"["ed25519+ml-dsa-65"]"#] {
        let body = format!(
            r#"{{"subject_ref":"g","audience":"ron-node","ttl_s":6,"scopes":["wallet.read"],"accept_algs":{algs}}}"#
        );
        let refused = post_json(node.listen, ISSUE, &node.admin(), &body);
        assert_eq!(refused.status, 400, "{algs}");
        assert!(refused.text().contains("no_acceptable_alg"));
    }
}

/// Checks a token's `sig.ml-dsa-65` caveat as a third party would: its
/// batch from `/v1/passport/pq` (signed within milliseconds of issuance),
/// the token's leaf in it, the root over the leaves, and the signature with
/// the JWKS key, checked by another ML-DSA implementation than the node's.
fn check_pq_caveat(node: &TestNode, text: &str) {
    use base64::Engine as _;
    use ml_dsa::signature::Verifier as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut scratch = Vec::new();
    let view = ron_proto::token::decode(text.as_bytes(), 64, &mut scratch).unwrap();
    let (at, value) = caveat(&view, ron_proto::token::SIG_ML_DSA).expect("a PQ caveat");
    let attestation = ron_proto::attestation::Attestation::parse(value).unwrap();
    let path = format!("/v1/passport/pq/{}.{}", attestation.shard, attestation.batch);
    // The signer runs at idle priority: on a busy machine it can lag.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let batch = loop {
        let batch = get(node.listen, &path, &[]).unwrap();
        if batch.status == 200 || std::time::Instant::now() > deadline {
            break batch;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(batch.status, 200, "{}", batch.text());
    let batch = batch.json();
    let leaves = b64.decode(batch.get_str("leaves").unwrap()).unwrap();
    let leaves: Vec<[u8; 32]> = leaves.chunks(32).map(|c| c.try_into().unwrap()).collect();
    assert_eq!(batch.get_u64("size"), Some(leaves.len() as u64));
    let leaf = ron_proto::attestation::leaf(&view.signed_message(at));
    assert_eq!(leaves[attestation.index as usize], leaf, "the token's leaf is in its batch");
    let mut tree = ron_shards::accumulator::Accumulator::new();
    for leaf in &leaves {
        tree.push(*leaf);
    }
    let root: [u8; 32] = b64.decode(batch.get_str("root").unwrap()).unwrap().try_into().unwrap();
    assert_eq!(tree.root(), root);
    let message = ron_proto::attestation::batch_message(
        attestation.kid,
        attestation.shard,
        attestation.batch,
        leaves.len() as u64,
        &root,
    );
    let signature = b64.decode(batch.get_str("sig").unwrap()).unwrap();
    let signature = ml_dsa::Signature::<ml_dsa::MlDsa65>::try_from(signature.as_slice()).unwrap();
    let public = public_key(&jwks(node).0, attestation.kid, "ML-DSA-65");
    let public =
        ml_dsa::EncodedVerifyingKey::<ml_dsa::MlDsa65>::try_from(public.as_slice()).unwrap();
    let public = ml_dsa::VerifyingKey::<ml_dsa::MlDsa65>::decode(&public);
    assert!(public.verify(&message, &signature).is_ok());
    assert!(public.verify(b"another message", &signature).is_err());
}

#[test]
fn pq_require_attaches_batch_signatures_and_enforce_refuses_classic_tokens() {
    let node = TestNode::start(NodeOptions::default().config("[passport]\npq_mode = \"require\""));
    let body = r#"{"subject_ref":"hal","audience":"ron-node","ttl_s":60,"scopes":["wallet.read"]}"#;
    // Concurrent issues share batches.
    let tokens: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                scope.spawn(|| {
                    let issued = post_json(node.listen, ISSUE, &node.admin(), body);
                    assert_eq!(issued.status, 200, "{}", issued.text());
                    let issued = issued.json();
                    assert_eq!(issued.get_str("alg"), Some("ed25519+ml-dsa-65"));
                    issued.get_str("token").unwrap().to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for token in &tokens {
        check_pq_caveat(&node, token);
        assert_eq!(status_with(node.listen, token), 200);
    }
    let refused = post_json(
        node.listen,
        ISSUE,
        &node.admin(),
        r#"{"subject_ref":"hal","audience":"ron-node","ttl_s":60,"scopes":["wallet.read"],"accept_algs":["ed25519"]}"#,
    );
    assert!(refused.text().contains("no_acceptable_alg"), "{}", refused.text());
    assert!(node.metric("passport_pq_batch_sign_seconds_count") >= 1.0);
    assert_eq!(get(node.listen, "/v1/passport/pq/0.1", &[]).unwrap().status, 404);

    // enforce: the admin token (made at first start, with a batch of its
    // own) and hybrid tokens pass; classic ones and forged caveats do not.
    let mut node =
        TestNode::start(NodeOptions::default().config("[passport]\npq_mode = \"enforce\""));
    let hybrid = post_json(node.listen, ISSUE, &node.admin(), body);
    assert_eq!(hybrid.status, 200, "{}", hybrid.text());
    let hybrid = hybrid.json().get_str("token").unwrap().to_owned();
    assert_eq!(status_with(node.listen, &hybrid), 200);
    let classic = operator_token(&node, 0);
    assert_eq!(status_with(node.listen, &classic), 401);
    assert_eq!(verify_reason(node.listen, &hybrid, &classic).as_deref(), Some("pq_required"));
    // A holder can append a caveat, but not one that checks out.
    let mut scratch = Vec::new();
    let view = ron_proto::token::decode(hybrid.as_bytes(), 64, &mut scratch).unwrap();
    let (_, value) = caveat(&view, ron_proto::token::SIG_ML_DSA).unwrap();
    let mut forged =
        ron_proto::token::decode(classic.as_bytes(), 64, &mut Vec::new()).unwrap().to_token();
    forged.attenuate(&format!("{}={value}", ron_proto::token::SIG_ML_DSA)).unwrap();
    assert_eq!(status_with(node.listen, &forged.encode()), 401);
    // And after a restart the attestations still check out (stateless).
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.spawn();
    assert_eq!(status_with(node.listen, &hybrid), 200);
    assert_eq!(status_with(node.listen, &classic), 401);
}

#[test]
fn unreadable_signing_keys_stop_issuance_but_not_verification() {
    let mut node = TestNode::start(NodeOptions::default());
    let body = r#"{"subject_ref":"ivy","audience":"ron-node","ttl_s":60,"scopes":["wallet.read"]}"#;
    let before = post_json(node.listen, ISSUE, &node.admin(), body).json();
    let before = before.get_str("token").unwrap().to_owned();
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    std::fs::write(node.data_dir.path().join("data/keys/ed25519-1.key"), b"damaged").unwrap();
    node.spawn();
    let ready = get(node.listen, "/readyz", &[]).unwrap();
    assert_eq!(ready.status, 200);
    let ready = ready.json();
    assert_eq!(ready.get_str("issuance"), Some("unavailable"), "{ready:?}");
    let refused = post_json(node.listen, ISSUE, &node.admin(), body);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(status_with(node.listen, &before), 200);
    assert_eq!(status_with(node.listen, &node.admin_token), 200);
}

/// A token with every scope and `caveats`, minted with the root key.
fn counted_token(node: &TestNode, id: u8, caveats: &[&str]) -> String {
    let claims = Claims {
        kid: 1,
        token_id: [id; 16],
        epoch: 0,
        issued_at: now_s(),
        subject: format!("counted-{id}"),
        audience: "ron-node".into(),
    };
    let scopes = format!("scope={}", scope::ALL.join(","));
    let mut all = vec![scopes.as_str()];
    all.extend_from_slice(caveats);
    Token::mint(&node.root_key(), claims, &all).unwrap().encode()
}

#[test]
fn rate_budget_and_tenant_caveats_count_on_the_owner_across_ports() {
    let node =
        TestNode::start(NodeOptions::default().shards(2).config("[limits]\ntenant_rps_max = 1"));
    let ports = ports(&node);
    // Buckets refill one request a second: a burst that took longer may
    // see that many more pass.
    let refills = |started: std::time::Instant| started.elapsed().as_secs() as usize;
    // rate.rps=1: one rate whichever port the requests come to.
    let limited = counted_token(&node, 0x21, &["rate.rps=1"]);
    let started = std::time::Instant::now();
    let statuses: Vec<u16> =
        (0..3).map(|i| status_with(ports[i % ports.len()], &limited)).collect();
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!((1..=1 + refills(started)).contains(&passed), "{statuses:?}");
    let refused =
        get(ports[1], "/v1/node/owner?key=k", &[("Authorization", &bearer(&limited))]).unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.code(), "BUSY");
    assert!(refused.header("Retry-After").is_some());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(status_with(ports[2], &limited), 200, "refilled after a second");
    let zero = counted_token(&node, 0x22, &["rate.rps=0"]);
    assert_eq!(status_with(node.listen, &zero), 429);

    // budget.bytes=130: request bodies (62 bytes here) count until spent.
    let budgeted = counted_token(&node, 0x23, &["budget.bytes=130"]);
    let verify = |port: SocketAddr, token: &str| {
        let body = format!(r#"{{"token":"{}"}}"#, "x".repeat(50));
        post_json(port, "/v1/passport/verify", &bearer(token), &body).status
    };
    assert_eq!(verify(ports[1], &budgeted), 200);
    assert_eq!(verify(ports[2], &budgeted), 200);
    let spent = post_json(ports[0], "/v1/passport/verify", &bearer(&budgeted), r#"{"token":"y"}"#);
    assert_eq!(spent.status, 403, "{}", spent.text());
    assert!(spent.text().contains("budget"));

    // tenant: tokens of one tenant share tenant_rps_max = 1; another tenant
    // has its own.
    let acme: Vec<String> =
        (0..3).map(|i| counted_token(&node, 0x30 + i, &["tenant=acme"])).collect();
    let other = counted_token(&node, 0x40, &["tenant=other"]);
    let started = std::time::Instant::now();
    let passed = (0..3).filter(|i| status_with(ports[i % ports.len()], &acme[*i]) == 200).count();
    assert!((1..=1 + refills(started)).contains(&passed), "{passed} passed");
    assert_eq!(status_with(node.listen, &other), 200);
    assert!(node.metric("svc_passport_rejects_total{reason=\"tenant_rate\"}") >= 1.0);
    assert!(node.metric("svc_passport_rejects_total{reason=\"rate\"}") >= 1.0);
    assert!(node.metric("svc_passport_rejects_total{reason=\"budget\"}") >= 1.0);
}

#[test]
fn ingest_honours_the_passport_caveats() {
    let node = TestNode::start(NodeOptions::default());
    let mint = |id: u8, caveats: &[&str]| {
        let claims = Claims {
            kid: 1,
            token_id: [id; 16],
            epoch: 0,
            issued_at: now_s(),
            subject: "ingester".into(),
            audience: "ron-node".into(),
        };
        Token::mint(&node.root_key(), claims, caveats).unwrap().encode()
    };
    let mut n = 0;
    let mut ingest = |token: &str| {
        n += 1;
        let body = format!(
            r#"{{"batch":[{{"id":"cav-{n}","kind":"Mint","account":"acct:z","asset":"roc","amount":"5"}}]}}"#
        );
        post_json(node.listen, "/ingest", &bearer(token), &body).status
    };
    let scope = "scope=ledger.ingest";
    let later = format!("nbf={}", now_s() + 3600);
    let past = format!("exp={}", now_s() - 3600);
    for (id, (caveats, status)) in [
        (vec![scope], 200),
        (vec![scope, "route=/ingest", "method=POST", "ip=127.0.0.0/8"], 200),
        (vec!["scope=wallet.read"], 403),
        (vec![scope, "route=/v1"], 403),
        (vec![scope, "method=GET"], 403),
        (vec![scope, "ip=10.0.0.0/8"], 403),
        (vec![scope, "aud=elsewhere"], 403),
        (vec![scope, "account=acct:z"], 403),
        (vec![scope, later.as_str()], 401),
        (vec![scope, past.as_str()], 401),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(ingest(&mint(0x50 + id as u8, &caveats)), status, "{caveats:?}");
    }
    let limited = mint(0x70, &[scope, "rate.rps=1"]);
    assert_eq!(ingest(&limited), 200);
    assert_eq!(ingest(&limited), 429);
}

/// `/v1/passport/verify` with a `context.audience` of `audience`.
fn verify_for(node: &TestNode, token: &str, audience: &str) -> simd_json::OwnedValue {
    let body = format!(r#"{{"token":"{token}","context":{{"audience":"{audience}"}}}}"#);
    let answer = post_json(node.listen, "/v1/passport/verify", &node.admin(), &body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()
}

/// A token for an audience the node does not answer to: `/verify` says
/// `audience` (but `ok` for that audience when asked about it), the wallet
/// refuses it; once `passport.audiences` names it, the node takes it.
#[test]
fn audiences_are_configured_and_verify_takes_the_callers_audience() {
    let options = |audiences: Option<&str>| {
        let options = NodeOptions::default();
        match audiences {
            Some(list) => options.env("RON_PASSPORT_AUDIENCES", list),
            None => options,
        }
    };
    let balance = |node: &TestNode, token: &str| {
        let path = "/v1/balance?account=alice&asset=roc";
        get(node.listen, path, &[("Authorization", &bearer(token))]).unwrap().status
    };
    let issue_for = |node: &TestNode, audience: &str| {
        let body = format!(
            r#"{{"subject_ref":"app","audience":"{audience}","ttl_s":600,"scopes":["wallet.read"]}}"#
        );
        let issued = post_json(node.listen, ISSUE, &node.admin(), &body);
        assert_eq!(issued.status, 200, "{}", issued.text());
        issued.json().get_str("token").unwrap().to_owned()
    };
    let attenuate = |node: &TestNode, token: &str, caveat: &str| {
        let body = format!(r#"{{"token":"{token}","caveats":["{caveat}"]}}"#);
        let answer = post_json(node.listen, "/v1/passport/attenuate", &node.admin(), &body);
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json().get_str("token").unwrap().to_owned()
    };

    // The default: the node answers to "ron-node" only.
    let node = TestNode::start(options(None));
    let token = issue_for(&node, "ron");
    assert_eq!(verify_reason(node.listen, &node.admin_token, &token).as_deref(), Some("audience"));
    let asked = verify_for(&node, &token, "ron");
    assert_eq!(asked.get_bool("ok"), Some(true), "{asked:?}");
    assert_eq!(asked.get("parsed").and_then(|p| p.get_str("aud")), Some("ron"));
    assert_eq!(verify_for(&node, &token, "svc-other").get_str("reason"), Some("audience"));
    // An `aud` caveat narrows to the one named.
    let narrowed = attenuate(&node, &token, "aud=svc-other");
    assert_eq!(verify_for(&node, &narrowed, "ron").get_str("reason"), Some("audience"));
    assert_eq!(verify_for(&node, &narrowed, "svc-other").get_str("reason"), Some("audience"));
    assert_eq!(balance(&node, &token), 403);
    assert_eq!(balance(&node, &attenuate(&node, &token, "asset=roc")), 403);
    assert_eq!(balance(&node, &node.admin_token), 200);
    let long = "a".repeat(257);
    let body = format!(r#"{{"token":"{token}","context":{{"audience":"{long}"}}}}"#);
    assert_eq!(post_json(node.listen, "/v1/passport/verify", &node.admin(), &body).status, 400);
    drop(node);

    // Configured: "ron" too; the admin token is minted for the first name.
    let node = TestNode::start(options(Some(r#"["ron", "ron-node"]"#)));
    let token = issue_for(&node, "ron");
    assert_eq!(verify_reason(node.listen, &node.admin_token, &token), None);
    assert_eq!(balance(&node, &token), 200);
    assert_eq!(balance(&node, &attenuate(&node, &token, "aud=ron-node")), 200);
    assert_eq!(balance(&node, &attenuate(&node, &token, "aud=svc-other")), 403);
    assert_eq!(balance(&node, &issue_for(&node, "svc-other")), 403);
    let admin = node.admin_token.clone();
    let body = format!(r#"{{"token":"{admin}"}}"#);
    let parsed = post_json(node.listen, "/v1/passport/verify", &node.admin(), &body).json();
    assert_eq!(parsed.get("parsed").and_then(|p| p.get_str("aud")), Some("ron"));
}

/// Spent `budget.bytes` survive a clean restart, a kill -9 (past the one
/// second in which spending is written), and a new shard count.
#[test]
fn spent_budgets_survive_restarts_and_a_new_shard_count() {
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    // budget.bytes=200: each verify below spends 62 bytes of body.
    let tokens: Vec<String> =
        (0..4).map(|i| counted_token(&node, 0x60 + i, &["budget.bytes=200"])).collect();
    let verify = |node: &TestNode, token: &str| {
        let body = format!(r#"{{"token":"{}"}}"#, "x".repeat(50));
        post_json(node.listen, "/v1/passport/verify", &bearer(token), &body).status
    };
    // Three spends each: 186 of 200; a fourth would pass 200.
    for token in &tokens {
        for _ in 0..3 {
            assert_eq!(verify(&node, token), 200);
        }
    }
    let spent = |node: &TestNode| tokens.iter().filter(|t| verify(node, t) == 403).count();
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    node.spawn();
    assert_eq!(spent(&node), 4, "a clean restart kept every budget");

    // Spending that had a second to be written survives kill -9.
    let fresh = counted_token(&node, 0x70, &["budget.bytes=130"]);
    assert_eq!(verify(&node, &fresh), 200);
    assert_eq!(verify(&node, &fresh), 200);
    std::thread::sleep(Duration::from_millis(2500));
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.set_shards(1);
    node.spawn();
    assert_eq!(verify(&node, &fresh), 403, "kept across kill -9 and one shard instead of two");
    assert_eq!(spent(&node), 4);
}

/// Signed PQ batches are fetched after a restart: after kill -9 and on a
/// node with fewer shards.
#[test]
fn signed_pq_batches_are_kept_across_restarts() {
    let options = NodeOptions::default().shards(2).config("[passport]\npq_mode = \"require\"");
    let mut node = TestNode::start(options);
    let body = r#"{"subject_ref":"hal","audience":"ron-node","ttl_s":60,"scopes":["wallet.read"]}"#;
    let mut paths = Vec::new();
    for port in [node.shard_address(0), node.shard_address(1)] {
        for _ in 0..3 {
            let issued = post_json(port, ISSUE, &node.admin(), body);
            assert_eq!(issued.status, 200, "{}", issued.text());
            let token = issued.json().get_str("token").unwrap().to_owned();
            check_pq_caveat(&node, &token);
            let mut scratch = Vec::new();
            let view = ron_proto::token::decode(token.as_bytes(), 64, &mut scratch).unwrap();
            let (_, value) = caveat(&view, ron_proto::token::SIG_ML_DSA).unwrap();
            let attestation = ron_proto::attestation::Attestation::parse(value).unwrap();
            paths.push(format!("/v1/passport/pq/{}.{}", attestation.shard, attestation.batch));
        }
    }
    paths.dedup();
    assert!(paths.iter().any(|p| p.starts_with("/v1/passport/pq/1.")), "{paths:?}");
    let fetch = |node: &TestNode, path: &str| {
        let answer = get(node.listen, path, &[]).unwrap();
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        answer.body
    };
    let before: Vec<Vec<u8>> = paths.iter().map(|p| fetch(&node, p)).collect();
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.set_shards(1);
    node.spawn();
    for (path, bytes) in paths.iter().zip(&before) {
        assert_eq!(&fetch(&node, path), bytes, "{path} after kill -9, on one shard");
    }
    assert_eq!(get(node.listen, "/v1/passport/pq/1.12345", &[]).unwrap().status, 404);
}
