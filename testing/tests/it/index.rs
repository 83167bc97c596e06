//! The index (SPEC §7) through the real binary, checked against the
//! original svc-index and svc-dht: their paths, bodies, validation
//! messages, status codes and envelopes (`tests/http_contract.rs`,
//! `prop_index.rs`, `quickchain_phase1_pointer_dto_strictness.rs`,
//! `svc-dht/tests/api_smoke.rs`, `scripts/smoke_index.sh`).

use ron_testing::{NodeOptions, Response, TestNode, get, request};
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::time::Duration;

pub const ASSET: &str = "b3:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const MANIFEST: &str = "b3:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

pub fn put_json(node: &TestNode, at: SocketAddr, path: &str, body: &str) -> Response {
    let auth = node.admin();
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    request(at, "PUT", path, &headers, body.as_bytes()).unwrap()
}

pub fn post(node: &TestNode, at: SocketAddr, path: &str, body: &str) -> Response {
    ron_testing::post_json(at, path, &node.admin(), body)
}

fn site_path(name: &str) -> String {
    format!("/v1/index/sites/{name}/manifest")
}

fn asset_path(cid: &str) -> String {
    format!("/v1/index/assets/{cid}/manifest")
}

/// svc-index's error envelope: `{code, message}` and nothing else.
fn index_error(response: &Response, status: u16, code: &str, message: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    let body = response.json();
    assert_eq!(body.get_str("code"), Some(code), "{}", response.text());
    assert_eq!(body.get_str("message"), Some(message), "{}", response.text());
    assert_eq!(body.as_object().unwrap().len(), 2, "{}", response.text());
}

/// A cid (`b3:` + hex) of a small manifest written for the test.
pub fn cid_of(bytes: &[u8]) -> String {
    format!("b3:{}", blake3::hash(bytes).to_hex())
}

#[test]
fn pointers_follow_the_originals_contract() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let at = node.listen;
    // A site: 202 and the stored record, nulls written out; the name is
    // normalized, the raw 64-hex manifest spelling accepted.
    let put = put_json(
        &node,
        at,
        &site_path("SeaLobsta.COM"),
        &format!(r#"{{"manifest_cid":"{}"}}"#, &MANIFEST[3..]),
    );
    assert_eq!(put.status, 202, "{}", put.text());
    let record = put.json();
    assert_eq!(record.get_u64("version"), Some(1));
    assert_eq!(record.get_str("name"), Some("sealobsta.com"));
    assert_eq!(record.get_str("manifest_cid"), Some(MANIFEST));
    assert!(record.get("owner_passport_subject").unwrap().is_null());
    assert!(record.get("owner_wallet_account").unwrap().is_null());
    assert!(record.get_u64("updated_at_ms").unwrap() > 1_700_000_000_000);
    assert!(record.get("asset_cid").is_none());
    // Read back on every shard's port.
    for shard in 0..2 {
        let got = get(node.shard_address(shard), &site_path("sealobsta.com"), &[]).unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.json(), record);
    }
    index_error(
        &get(at, &site_path("nobody.example"), &[]).unwrap(),
        404,
        "not_found",
        "Not found",
    );
    index_error(
        &get(at, &site_path(".hidden"), &[]).unwrap(),
        400,
        "bad_request",
        "name contains unsafe path or credential characters",
    );

    // An asset with owners and a time.
    let body = format!(
        r#"{{"asset_kind":" IMAGE ","manifest_cid":"{MANIFEST}","owner_passport_subject":" passport:main:alice ","owner_wallet_account":"","updated_at_ms":1776000000000}}"#
    );
    let put = put_json(&node, at, &asset_path(ASSET), &body);
    assert_eq!(put.status, 202, "{}", put.text());
    let record = put.json();
    assert_eq!(record.get_str("asset_cid"), Some(ASSET));
    assert_eq!(record.get_str("asset_kind"), Some("image"));
    assert_eq!(record.get_str("owner_passport_subject"), Some("passport:main:alice"));
    assert!(record.get("owner_wallet_account").unwrap().is_null());
    assert_eq!(record.get_u64("updated_at_ms"), Some(1_776_000_000_000));
    let got = get(at, &asset_path(&ASSET[3..]), &[]).unwrap();
    assert_eq!((got.status, got.json()), (200, record));

    // Validation, in the original's order and words; nothing is stored.
    let refused = [
        (
            asset_path("b3:abc"),
            format!(r#"{{"asset_kind":"image","manifest_cid":"{MANIFEST}"}}"#),
            "cid must be 64 lowercase hex characters, optionally prefixed with b3:",
        ),
        (
            asset_path(&ASSET.to_uppercase().replace("B3:", "b3:")),
            format!(r#"{{"asset_kind":"image","manifest_cid":"{MANIFEST}"}}"#),
            "cid must use lowercase hex characters only",
        ),
        (
            asset_path(MANIFEST),
            r#"{"asset_kind":"binary","manifest_cid":"nope"}"#.to_owned(),
            "unsupported asset kind",
        ),
        (
            asset_path(MANIFEST),
            r#"{"asset_kind":"   ","manifest_cid":"nope"}"#.to_owned(),
            "asset kind is required",
        ),
        (
            asset_path(MANIFEST),
            r#"{"asset_kind":"video","manifest_cid":"nope"}"#.to_owned(),
            "cid must be 64 lowercase hex characters, optionally prefixed with b3:",
        ),
        (
            asset_path(MANIFEST),
            format!(
                r#"{{"asset_kind":"video","manifest_cid":"{MANIFEST}","owner_wallet_account":"{}"}}"#,
                "x".repeat(513)
            ),
            "owner_wallet_account is too long",
        ),
        (
            asset_path(MANIFEST),
            format!(
                r#"{{"asset_kind":"video","manifest_cid":"{MANIFEST}","owner_passport_subject":"a\u0007"}}"#
            ),
            "owner_passport_subject contains control characters",
        ),
        (
            asset_path(MANIFEST),
            format!(r#"{{"asset_kind":"video","manifest_cid":"{MANIFEST}","updated_at_ms":0}}"#),
            "updated_at_ms must be greater than zero",
        ),
        (
            site_path("a@b"),
            format!(r#"{{"manifest_cid":"{MANIFEST}"}}"#),
            "name contains unsafe path or credential characters",
        ),
        (
            site_path("a%20b"),
            format!(r#"{{"manifest_cid":"{MANIFEST}"}}"#),
            "name contains unsupported characters",
        ),
        (
            site_path(&"a".repeat(254)),
            format!(r#"{{"manifest_cid":"{MANIFEST}"}}"#),
            "name is too long",
        ),
    ];
    for (path, body, message) in refused {
        index_error(&put_json(&node, at, &path, &body), 400, "bad_request", message);
    }
    index_error(&get(at, &asset_path(MANIFEST), &[]).unwrap(), 404, "not_found", "Not found");
    // Unknown fields are refused (some of the original's forbidden ones
    // among them) as axum's `Json` refuses a body of another shape: 422.
    // So are a missing field and a wrong type; JSON that does not parse is
    // a 400.
    for field in ["unexpected", "receipt_id", "balance_minor", "finality", "hold_id"] {
        let body = format!(r#"{{"manifest_cid":"{MANIFEST}","{field}":true}}"#);
        let refused = put_json(&node, at, &site_path("strict.example"), &body);
        assert_eq!(refused.status, 422, "{}", refused.text());
        assert_eq!(refused.json().get_str("code"), Some("unprocessable"));
        assert!(
            refused.json().get_str("message").unwrap().contains("unknown field"),
            "{}",
            refused.text()
        );
    }
    let missing = put_json(&node, at, &asset_path(ASSET), r#"{"manifest_cid":"x"}"#);
    assert_eq!(missing.status, 422, "{}", missing.text());
    let wrong_type = put_json(&node, at, &site_path("strict.example"), r#"{"manifest_cid":7}"#);
    assert_eq!(wrong_type.status, 422, "{}", wrong_type.text());
    let not_json = put_json(&node, at, &site_path("strict.example"), r#"{"manifest_cid":"#);
    assert_eq!(not_json.status, 400, "{}", not_json.text());
    index_error(
        &get(at, &site_path("strict.example"), &[]).unwrap(),
        404,
        "not_found",
        "Not found",
    );
    // Writes need index.write: no token, another scope; answered in the
    // index's envelope.
    let anonymous = request(
        at,
        "PUT",
        &site_path("x.example"),
        &[("Content-Type", "application/json")],
        br#"{"manifest_cid":"x"}"#,
    )
    .unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json().get_str("code"), Some("unauthorized"));
}

#[test]
fn resolve_and_providers_answer_with_etags_a_cache_and_its_invalidation() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    // One shard's port: each shard has its own cache.
    let at = node.shard_address(0);
    let put = put_json(
        &node,
        at,
        &site_path("docs.example"),
        &format!(r#"{{"manifest_cid":"{MANIFEST}"}}"#),
    );
    assert_eq!(put.status, 202);
    // Known name, no providers yet: the manifest, 200.
    let first = get(at, "/resolve/name:Docs.Example", &[]).unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let body = first.json();
    assert_eq!(body.get_str("key"), Some("name:docs.example"));
    assert_eq!(body.get_str("manifest"), Some(MANIFEST));
    assert_eq!(body.get_array("providers").unwrap().len(), 0);
    assert_eq!(body.get_bool("cached"), Some(false));
    let etag = first.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", body.get_str("etag").unwrap()));
    assert_eq!(first.header("cache-control"), Some("public, max-age=5"));
    // Again: from the cache, same tag; If-None-Match → 304.
    let again = get(at, "/resolve/name:docs.example", &[]).unwrap();
    assert_eq!(again.json().get_bool("cached"), Some(true));
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let not_modified = get(at, "/resolve/name:docs.example", &[("If-None-Match", &etag)]).unwrap();
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    // Path segments are percent-decoded, as the original's axum decodes them.
    let encoded = get(at, "/resolve/name%3Adocs%2Eexample", &[]).unwrap();
    assert_eq!(encoded.status, 200);
    assert_eq!(encoded.header("etag"), Some(etag.as_str()));
    assert_eq!(encoded.json().get_str("key"), Some("name:docs.example"));
    // A provider of the manifest: every shard's cached answer is stale at
    // once (the write reaches every shard before it is acknowledged).
    for shard in 0..2 {
        let warm = get(node.shard_address(shard), "/resolve/name:docs.example", &[]).unwrap();
        assert_eq!(warm.status, 200);
    }
    let provided = post(
        &node,
        at,
        "/dht/provide",
        &format!(r#"{{"cid":"{MANIFEST}","node":"http://127.0.0.1:9"}}"#),
    );
    assert_eq!(provided.status, 200, "{}", provided.text());
    assert_eq!(provided.text(), r#"{"ok":true,"ttl_secs_used":600}"#);
    for shard in 0..2 {
        let fresh = get(node.shard_address(shard), "/resolve/name:docs.example", &[]).unwrap();
        let body = fresh.json();
        assert_eq!(body.get_bool("cached"), Some(false), "shard {shard}");
        let providers = body.get_array("providers").unwrap();
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].get_str("id"), Some("http://127.0.0.1:9"));
        assert!(providers[0].get("region").unwrap().is_null());
        assert!(providers[0].get_f64("score").unwrap() > 0.99);
        assert_ne!(fresh.header("etag"), Some(etag.as_str()));
    }
    // ?fresh=true bypasses the cache.
    let bypass = get(at, "/resolve/name:docs.example?fresh=true", &[]).unwrap();
    assert_eq!(bypass.json().get_bool("cached"), Some(false));
    assert!(node.metric("index_cache_hits_total") >= 1.0);
    assert!(node.metric("index_cache_misses_total") >= 5.0);

    // A cid with no pointer resolves to itself (the original's rule); with
    // an asset pointer, to its manifest.
    let plain = get(at, &format!("/resolve/{ASSET}"), &[]).unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json().get_str("manifest"), Some(ASSET));
    let body = format!(r#"{{"asset_kind":"page","manifest_cid":"{MANIFEST}"}}"#);
    assert_eq!(put_json(&node, at, &asset_path(ASSET), &body).status, 202);
    let pointed = get(at, &format!("/resolve/{ASSET}"), &[]).unwrap().json();
    assert_eq!(pointed.get_str("manifest"), Some(MANIFEST));
    assert_eq!(pointed.get_array("providers").unwrap().len(), 1);
    // Unknown name: 404 with the same body; a bad key: 400.
    let missing = get(at, "/resolve/name:nothing.here", &[]).unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.json().get("manifest").unwrap().is_null());
    assert_eq!(missing.json().get_array("providers").unwrap().len(), 0);
    index_error(&get(at, "/resolve/not-a-key", &[]).unwrap(), 400, "bad_request", "invalid key");
    index_error(
        &get(at, &format!("/resolve/{}", &ASSET[3..]), &[]).unwrap(),
        400,
        "bad_request",
        "invalid key",
    );

    // /providers: ranked, limited (default 5, clamped to 1..=32), truncated
    // truthfully, 404 with the same body when none, 400 for a bad cid.
    for i in 0..7 {
        let body = format!(
            r#"{{"cid":"{ASSET}","node":"http://10.0.0.{i}:80","ttl_secs":{}}}"#,
            100 + i * 10
        );
        assert_eq!(post(&node, at, "/v1/index/provide", &body).status, 200);
    }
    let listed = get(at, &format!("/providers/{ASSET}"), &[]).unwrap();
    assert_eq!(listed.status, 200);
    let body = listed.json();
    let providers = body.get_array("providers").unwrap();
    assert_eq!(providers.len(), 5);
    assert_eq!(body.get_bool("truncated"), Some(true));
    assert_eq!(providers[0].get_str("id"), Some("http://10.0.0.6:80"), "most TTL left first");
    let all = get(at, &format!("/providers/{ASSET}?limit=100"), &[]).unwrap().json();
    assert_eq!(all.get_array("providers").unwrap().len(), 7);
    assert_eq!(all.get_bool("truncated"), Some(false));
    let one = get(at, &format!("/providers/{ASSET}?limit=0"), &[]).unwrap().json();
    assert_eq!(one.get_array("providers").unwrap().len(), 1);
    let none = get(at, &format!("/providers/{}", cid_of(b"nobody")), &[]).unwrap();
    assert_eq!(none.status, 404);
    assert_eq!(none.json().get_bool("truncated"), Some(false));
    index_error(&get(at, "/providers/not-a-cid", &[]).unwrap(), 400, "bad_request", "invalid cid");
}

#[test]
fn provider_records_follow_svc_dht() {
    let node = TestNode::start(
        NodeOptions::default()
            .shards(2)
            .config("[index]\nprovider_ttl_max_s = 3600\nproviders_per_cid_max = 3\n"),
    );
    let at = node.listen;
    let cid = cid_of(b"provided");
    let provide = |body: String| post(&node, at, "/dht/provide", &body);
    // The node-URI rule, in svc-dht's envelope.
    for bad in ["not a uri", "nodeA", "   ", "http://a b"] {
        let refused = provide(format!(r#"{{"cid":"{cid}","node":"{bad}"}}"#));
        assert_eq!(refused.status, 400);
        assert_eq!(refused.text(), r#"{"error":"invalid node URI"}"#);
    }
    let bad_cid = provide(format!(r#"{{"cid":"{}","node":"http://a"}}"#, &cid[3..]));
    assert_eq!(bad_cid.status, 400);
    assert!(bad_cid.json().get_str("error").is_some());
    // TTLs: default 600, capped at the maximum; a node providing again
    // replaces its record.
    assert_eq!(
        provide(format!(r#"{{"cid":"{cid}","node":"local://nodeA","ttl_secs":99999}}"#)).text(),
        r#"{"ok":true,"ttl_secs_used":3600}"#
    );
    assert_eq!(
        provide(format!(r#"{{"cid":"{cid}","node":" local://nodeA ","ttl_secs":2}}"#)).text(),
        r#"{"ok":true,"ttl_secs_used":2}"#
    );
    let found = get(at, &format!("/dht/find_providers/{cid}"), &[]).unwrap();
    assert_eq!(found.status, 200);
    let body = found.json();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys.len(), 4, "{}", found.text());
    assert_eq!(body.get_str("cid"), Some(cid.as_str()));
    assert_eq!(body.get_u64("hops"), Some(0));
    assert!(body.get_u64("elapsed_ms").is_some());
    let nodes = body.get_array("providers").unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].as_str(), Some("local://nodeA"));
    // At most providers_per_cid_max per cid: a longer-lived record takes
    // the place of the first to expire.
    for node_uri in ["local://b", "local://c", "local://d"] {
        assert_eq!(
            provide(format!(r#"{{"cid":"{cid}","node":"{node_uri}","ttl_secs":60}}"#)).status,
            200
        );
    }
    let listed = get(at, &format!("/dht/find_providers/{cid}"), &[]).unwrap().json();
    let mut nodes: Vec<&str> =
        listed.get_array("providers").unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["local://b", "local://c", "local://d"]);
    // Expiry: a 1 s record disappears from answers.
    let short = cid_of(b"short-lived");
    assert_eq!(
        provide(format!(r#"{{"cid":"{short}","node":"local://x","ttl_secs":1}}"#)).status,
        200
    );
    assert_eq!(get(at, &format!("/providers/{short}"), &[]).unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(at, &format!("/providers/{short}?fresh=true"), &[]).unwrap().status, 404);
    let gone = get(at, &format!("/dht/find_providers/{short}"), &[]).unwrap().json();
    assert_eq!(gone.get_array("providers").unwrap().len(), 0);
    assert!(node.metric("index_provider_set_changes_total") >= 5.0);
}

#[test]
fn objects_are_kept_by_cid_and_checked() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let at = node.listen;
    let manifest = br#"{"files":["index.html"],"marker":"object-under-test"}"#;
    let auth = node.admin();
    let put =
        request(at, "PUT", "/v1/index/objects", &[("Authorization", &auth)], manifest).unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    let cid = cid_of(manifest);
    assert_eq!(put.json().get_str("cid"), Some(cid.as_str()));
    for shard in 0..2 {
        let got = get(node.shard_address(shard), &format!("/v1/index/objects/{cid}"), &[]).unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body, manifest);
        assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    }
    let raw = get(at, &format!("/v1/index/objects/{}", &cid[3..]), &[]).unwrap();
    assert_eq!(raw.status, 200);
    index_error(
        &get(at, &format!("/v1/index/objects/{}", cid_of(b"other")), &[]).unwrap(),
        404,
        "not_found",
        "Not found",
    );
    let empty = request(at, "PUT", "/v1/index/objects", &[("Authorization", &auth)], b"").unwrap();
    index_error(&empty, 400, "bad_request", "an object needs a body");
    let anonymous = request(at, "PUT", "/v1/index/objects", &[], manifest).unwrap();
    assert_eq!(anonymous.status, 401);
}

#[test]
fn pointers_providers_and_objects_survive_kill_restarts_and_a_shard_count_change() {
    let options = NodeOptions::default().shards(2).config("[ledger]\nview_write_ms = 50\n");
    let mut node = TestNode::start(options);
    let at = node.listen;
    let manifest = br#"{"site":"durable"}"#;
    let cid = cid_of(manifest);
    let auth = node.admin();
    assert_eq!(
        request(at, "PUT", "/v1/index/objects", &[("Authorization", &auth)], manifest)
            .unwrap()
            .status,
        200
    );
    let names: Vec<String> = (0..12).map(|i| format!("site-{i}.example")).collect();
    for name in &names {
        assert_eq!(
            put_json(&node, at, &site_path(name), &format!(r#"{{"manifest_cid":"{cid}"}}"#)).status,
            202
        );
    }
    assert_eq!(
        post(
            &node,
            at,
            "/dht/provide",
            &format!(r#"{{"cid":"{cid}","node":"http://127.0.0.1:1"}}"#)
        )
        .status,
        200
    );
    // Views written, then one more write that only the log has.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        post(
            &node,
            at,
            "/dht/provide",
            &format!(r#"{{"cid":"{cid}","node":"http://127.0.0.1:2"}}"#)
        )
        .status,
        200
    );
    let check = |node: &TestNode| {
        for name in &names {
            let resolved = get(node.listen, &format!("/resolve/name:{name}"), &[]).unwrap();
            assert_eq!(resolved.status, 200, "{name}: {}", resolved.text());
            let body = resolved.json();
            assert_eq!(body.get_str("manifest"), Some(cid.as_str()));
            assert_eq!(body.get_array("providers").unwrap().len(), 2, "{}", resolved.text());
        }
        let object = get(node.listen, &format!("/v1/index/objects/{cid}"), &[]).unwrap();
        assert_eq!(object.body, manifest);
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
fn a_rotten_object_on_disk_is_refused_and_counted() {
    let mut node = TestNode::start(NodeOptions::default());
    let manifest = b"{\"marker\":\"rot-me-0123456789\"}";
    let cid = cid_of(manifest);
    let auth = node.admin();
    let put =
        request(node.listen, "PUT", "/v1/index/objects", &[("Authorization", &auth)], manifest)
            .unwrap();
    assert_eq!(put.status, 200);
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    // Flip a byte of the stored bytes in LMDB's data file.
    let file = node.data_dir.path().join("data/index-objects/data.mdb");
    let mut data = std::fs::read(&file).unwrap();
    let at =
        data.windows(manifest.len()).position(|w| w == manifest).expect("the object is on disk");
    data[at + 3] ^= 0x20;
    std::fs::write(&file, data).unwrap();
    node.spawn();
    let read = get(node.listen, &format!("/v1/index/objects/{cid}"), &[]).unwrap();
    assert_eq!(read.status, 404, "{}", read.text());
    assert_eq!(node.metric("index_integrity_fail_total{stage=\"disk\"}"), 1.0);
}

#[test]
fn amnesia_keeps_the_index_in_ram() {
    let node = TestNode::start(NodeOptions::default().amnesia().shards(2));
    let at = node.listen;
    assert_eq!(
        put_json(
            &node,
            at,
            &site_path("ram.example"),
            &format!(r#"{{"manifest_cid":"{MANIFEST}"}}"#)
        )
        .status,
        202
    );
    assert_eq!(
        get(at, "/resolve/name:ram.example", &[]).unwrap().json().get_str("manifest"),
        Some(MANIFEST)
    );
    let auth = node.admin();
    let put =
        request(at, "PUT", "/v1/index/objects", &[("Authorization", &auth)], b"ram bytes").unwrap();
    assert_eq!(put.status, 200);
    assert_eq!(
        get(at, &format!("/v1/index/objects/{}", cid_of(b"ram bytes")), &[]).unwrap().body,
        b"ram bytes"
    );
    assert!(!node.data_dir.path().join("data/index-objects").exists());
}
