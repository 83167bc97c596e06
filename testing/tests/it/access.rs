//! Tokens at the door: 401 for missing or invalid, 403 for scope and caveats,
//! expiry, and attenuation that can only narrow.

use ron_proto::token::{self, Claims, Token};
use ron_testing::{NodeOptions, TestNode, get, post_json};
use simd_json::prelude::*;

const ISSUE: &str = "/v1/passport/issue";
const ISSUE_BODY: &str =
    r#"{"subject_ref":"carol","audience":"ron-node","ttl_s":60,"scopes":["wallet.read"]}"#;

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A token minted with the node's root key, as an operator could.
pub fn mint(node: &TestNode, caveats: &[&str]) -> String {
    let claims = Claims {
        kid: 1,
        token_id: [3; 16],
        epoch: 0,
        issued_at: now_s(),
        subject: "tester".into(),
        audience: "ron-node".into(),
    };
    Token::mint(&node.root_key(), claims, caveats).unwrap().encode()
}

/// Appends caveats to a token without any key.
fn attenuate(text: &str, caveats: &[&str]) -> String {
    let mut scratch = Vec::new();
    let mut token = token::decode(text.as_bytes(), 64, &mut scratch).unwrap().to_token();
    for caveat in caveats {
        token.attenuate(caveat).unwrap();
    }
    token.encode()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn missing_malformed_and_tampered_tokens_are_401() {
    let node = TestNode::start(NodeOptions::default());
    let missing = post_json(node.listen, ISSUE, "", ISSUE_BODY);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("WWW-Authenticate"), Some("Bearer"));
    assert_eq!(missing.code(), "UNAUTHORIZED");
    for bad in ["Basic abc", "Bearer", "Bearer nonsense", "Bearer ron1.!!!"] {
        assert_eq!(post_json(node.listen, ISSUE, bad, ISSUE_BODY).status, 401, "{bad}");
    }
    let mut tampered = node.admin_token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&tampered), ISSUE_BODY).status, 401);
    assert_eq!(post_json(node.listen, ISSUE, &node.admin(), ISSUE_BODY).status, 200);
}

#[test]
fn expiry_and_not_before_with_clock_skew() {
    let node = TestNode::start(NodeOptions::default().config("[passport]\nclock_skew_s = 60"));
    let all = "scope=passport.issue";
    let now = now_s();
    let cases = [
        (format!("exp={}", now - 120), 401),
        (format!("exp={}", now - 30), 200), // inside the skew
        (format!("nbf={}", now + 120), 401),
        (format!("nbf={}", now + 30), 200),
    ];
    for (caveat, status) in cases {
        let token = mint(&node, &[all, &caveat]);
        let response = post_json(node.listen, ISSUE, &bearer(&token), ISSUE_BODY);
        assert_eq!(response.status, status, "{caveat}: {}", response.text());
        if status == 401 {
            assert!(
                response.text().contains("expired") || response.text().contains("not_yet_valid")
            );
        }
    }
}

#[test]
fn scopes_and_caveats_are_403_and_attenuation_never_widens() {
    let node = TestNode::start(NodeOptions::default());
    let admin = node.admin_token.clone();
    let read_only = attenuate(&admin, &["scope=wallet.read"]);
    let refused = post_json(node.listen, ISSUE, &bearer(&read_only), ISSUE_BODY);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.code(), "FORBIDDEN");
    // Adding the scope back is adding a caveat: it narrows to nothing.
    let widened = attenuate(&read_only, &["scope=passport.issue"]);
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&widened), ISSUE_BODY).status, 403);

    let get_only = attenuate(&admin, &["method=GET"]);
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&get_only), ISSUE_BODY).status, 403);
    let passport_routes = attenuate(&admin, &["route=/v1/passport"]);
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&passport_routes), ISSUE_BODY).status, 200);
    let owner =
        get(node.listen, "/v1/node/owner?key=a", &[("Authorization", &bearer(&passport_routes))])
            .unwrap();
    assert_eq!(owner.status, 403);
    let elsewhere = attenuate(&admin, &["aud=some-other-node"]);
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&elsewhere), ISSUE_BODY).status, 403);
    let far_away = attenuate(&admin, &["ip=10.0.0.0/8"]);
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&far_away), ISSUE_BODY).status, 403);
    let loopback = attenuate(&admin, &["ip=127.0.0.0/8"]);
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&loopback), ISSUE_BODY).status, 200);
}

#[test]
fn issue_attenuate_and_verify_over_http() {
    let node = TestNode::start(
        NodeOptions::default()
            .config("[passport]\nttl_max_s = 600\nttl_default_s = 300\ncaveats_max = 8"),
    );
    let admin = node.admin();
    let issued = post_json(
        node.listen,
        ISSUE,
        &admin,
        r#"{"subject_ref":"dave","audience":"ron-node","ttl_s":60,"scopes":["passport.issue","wallet.read"],"caveats":["route=/v1/passport"]}"#,
    );
    assert_eq!(issued.status, 200, "{}", issued.text());
    let issued = issued.json();
    let token = issued.get_str("token").unwrap().to_owned();
    assert_eq!(issued.get_str("token_id").unwrap().len(), 32);
    assert!(issued.get_u64("exp").unwrap() > now_s());
    // The issued token works for what it allows.
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&token), ISSUE_BODY).status, 200);

    let narrowed = post_json(
        node.listen,
        "/v1/passport/attenuate",
        &admin,
        &format!(r#"{{"token":"{token}","caveats":["method=GET"]}}"#),
    );
    assert_eq!(narrowed.status, 200, "{}", narrowed.text());
    let narrowed = narrowed.json().get_str("token").unwrap().to_owned();
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&narrowed), ISSUE_BODY).status, 403);

    let verified = post_json(
        node.listen,
        "/v1/passport/verify",
        &admin,
        &format!(
            r#"{{"token":"{token}","context":{{"method":"POST","route":"/v1/passport/issue"}}}}"#
        ),
    )
    .json();
    assert_eq!(verified.get_bool("ok"), Some(true), "{verified:?}");
    let parsed = verified.get("parsed").unwrap();
    assert_eq!(parsed.get_str("sub"), Some("dave"));
    let scopes: Vec<&str> =
        parsed.get_array("scopes").unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(scopes, ["passport.issue", "wallet.read"]);
    let outside = post_json(
        node.listen,
        "/v1/passport/verify",
        &admin,
        &format!(r#"{{"token":"{token}","context":{{"route":"/v1/balance"}}}}"#),
    )
    .json();
    assert_eq!(outside.get_bool("ok"), Some(false));
    assert_eq!(outside.get_str("reason"), Some("route"));
    let forged = post_json(
        node.listen,
        "/v1/passport/verify",
        &admin,
        &format!(r#"{{"token":"{}x"}}"#, &token[..token.len() - 1]),
    )
    .json();
    assert_eq!(forged.get_bool("ok"), Some(false));

    for (body, reason) in [
        (
            r#"{"subject_ref":"e","audience":"ron-node","ttl_s":601,"scopes":["wallet.read"]}"#,
            "ttl_too_long",
        ),
        (
            r#"{"subject_ref":"e","audience":"ron-node","ttl_s":6,"scopes":["wallet.read"],"caveats":["colour=red"]}"#,
            "unknown_caveat",
        ),
        (
            r#"{"subject_ref":"e","audience":"ron-node","ttl_s":6,"scopes":["wallet.fly"]}"#,
            "invalid_scope",
        ),
        (
            r#"{"subject_ref":"e","audience":"ron-node","ttl_s":6,"scopes":["wallet.read"],"accept_algs":["rsa"]}"#,
            "no_acceptable_alg",
        ),
    ] {
        let refused = post_json(node.listen, ISSUE, &admin, body);
        assert_eq!(refused.status, 400, "{body}");
        assert!(refused.text().contains(reason), "{}", refused.text());
    }
}

#[test]
fn tokens_over_the_caveat_limit_are_refused() {
    let node = TestNode::start(
        NodeOptions::default()
            .config("[passport]\ncaveats_max = 3\n[limits]\nheader_max_bytes = 65536"),
    );
    let far = now_s() + 1000;
    let three = mint(&node, &["scope=passport.issue", &format!("exp={far}"), "method=POST"]);
    assert_eq!(post_json(node.listen, ISSUE, &bearer(&three), ISSUE_BODY).status, 200);
    let four = attenuate(&three, &["route=/v1/"]);
    let refused = post_json(node.listen, ISSUE, &bearer(&four), ISSUE_BODY);
    assert_eq!(refused.status, 401);
    let huge = format!("Bearer ron1.{}", "A".repeat(token::TOKEN_TEXT_BYTES_MAX));
    assert_eq!(post_json(node.listen, ISSUE, &huge, ISSUE_BODY).status, 401);
}
