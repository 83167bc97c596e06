//! Three `ron-node` processes on loopback forming a DHT (libp2p Kademlia):
//! a cid provided on one node resolves from another with its manifest
//! fetched and verified; a stalled provider is beaten by the hedge; a
//! provider serving bytes that do not match is refused, counted, and the
//! next one used; a lookup past its deadline answers 504; an expired
//! provider disappears; restarted nodes rejoin.

use crate::index::{cid_of, post};
use ron_testing::{NodeOptions, TestNode, get, port_block, request};
use simd_json::prelude::*;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A node whose DHT listens on `dht_port`, bootstrapping from `peers`.
fn dht_node(dht_port: u16, peers: &[u16], extra: &str) -> TestNode {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"/ip4/127.0.0.1/tcp/{p}\"")).collect();
    let config = format!(
        "[index]\ndht_listen = \"/ip4/127.0.0.1/tcp/{dht_port}\"\npeers = [{}]\n{extra}",
        peers.join(", ")
    );
    TestNode::start(NodeOptions::default().config(&config))
}

fn dht_status(node: &TestNode) -> simd_json::OwnedValue {
    get(node.listen, "/v1/index/dht", &[]).unwrap().json()
}

/// Waits until `node`'s routing table holds `peers` peers.
fn wait_for_peers(node: &TestNode, peers: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dht_status(node).get_u64("routing_peers").unwrap_or(0) < peers {
        assert!(Instant::now() < deadline, "DHT peers: {:?}", dht_status(node));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn put_object(node: &TestNode, bytes: &[u8]) -> String {
    let auth = node.admin();
    let put = request(node.listen, "PUT", "/v1/index/objects", &[("Authorization", &auth)], bytes)
        .unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    cid_of(bytes)
}

fn provide(node: &TestNode, cid: &str, uri: &str, ttl_secs: u64) {
    let body = format!(r#"{{"cid":"{cid}","node":"{uri}","ttl_secs":{ttl_secs}}}"#);
    let provided = post(node, node.listen, "/dht/provide", &body);
    assert_eq!(provided.status, 200, "{}", provided.text());
}

/// Resolves `cid` on `node` (bypassing its cache) until it names
/// `providers` providers, or 10 s.
fn resolve_until(node: &TestNode, cid: &str, providers: usize) -> ron_testing::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resolved = get(node.listen, &format!("/resolve/{cid}?fresh=true"), &[]).unwrap();
        if resolved.status == 200
            && resolved.json().get_array("providers").unwrap().len() == providers
        {
            return resolved;
        }
        assert!(Instant::now() < deadline, "{cid}: {} {}", resolved.status, resolved.text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A peer on loopback that, for at most `connections` connections and
/// `lifetime`, reads a request and then answers with `answer` (or never,
/// if `None`); it stops by itself.
fn fake_provider(connections: usize, lifetime: Duration, answer: Option<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + lifetime;
        let mut held = Vec::new();
        let mut served = 0;
        while Instant::now() < end && served < connections {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    served += 1;
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer);
                    if let Some(body) = answer {
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(body);
                    }
                    held.push(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    format!("http://{address}")
}

#[test]
fn three_nodes_find_fetch_hedge_verify_and_rejoin() {
    let ports = port_block(3);
    let (pa, pb, pc) = (ports, ports + 1, ports + 2);
    let tuned = "alpha = 1\nbeta = 1\nhedge_after_ms = 100\ndeadline_ms = 1500\n";
    let a = dht_node(pa, &[], tuned);
    let mut b = dht_node(pb, &[pa], "");
    let mut c = dht_node(pc, &[pa], "");
    wait_for_peers(&a, 2);
    wait_for_peers(&c, 1);
    let c_url = format!("http://{}", c.listen);

    // Provided on C, resolved from A: the DHT names C, C names its
    // providers, A fetches the manifest and checks it against the cid.
    let manifest = br#"{"site":"remote","files":["index.html"]}"#;
    let cid = put_object(&c, manifest);
    provide(&c, &cid, &c_url, 600);
    let resolved = resolve_until(&a, &cid, 1).json();
    assert_eq!(resolved.get_str("manifest"), Some(cid.as_str()));
    assert_eq!(resolved.get_array("providers").unwrap()[0].get_str("id"), Some(c_url.as_str()));
    let kept = get(a.listen, &format!("/v1/index/objects/{cid}?local=true"), &[]).unwrap();
    assert_eq!(
        (kept.status, kept.body.as_slice()),
        (200, &manifest[..]),
        "A keeps what it resolved"
    );
    let found = get(b.listen, &format!("/dht/find_providers/{cid}"), &[]).unwrap().json();
    let nodes = found.get_array("providers").unwrap();
    assert_eq!(nodes.iter().map(|n| n.as_str().unwrap()).collect::<Vec<_>>(), [c_url.as_str()]);
    // B fetches it through GET /v1/index/objects as well.
    let fetched = get(b.listen, &format!("/v1/index/objects/{cid}"), &[]).unwrap();
    assert_eq!(fetched.body, manifest);

    // A stalled provider ranked first (more TTL left), a good one second:
    // the hedge wins. A provider serving other bytes: refused, counted,
    // the next one used.
    let stalled = fake_provider(64, Duration::from_secs(30), None);
    let liar = fake_provider(64, Duration::from_secs(30), Some(b"not the manifest"));
    let hedged = put_object(&c, b"{\"hedged\":true}");
    let checked = put_object(&c, b"{\"checked\":true}");
    provide(&c, &hedged, &c_url, 4);
    provide(&c, &checked, &c_url, 4);
    std::thread::sleep(Duration::from_millis(1100));
    provide(&c, &hedged, &stalled, 600);
    provide(&c, &checked, &liar, 600);
    let started = Instant::now();
    let resolved = resolve_until(&a, &hedged, 2);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        resolved.json().get_array("providers").unwrap()[0].get_str("id"),
        Some(stalled.as_str())
    );
    assert!(a.metric("dht_hedged_requests_total{result=\"win\"}") >= 1.0);
    let resolved = resolve_until(&a, &checked, 2);
    assert_eq!(resolved.status, 200);
    assert!(a.metric("index_integrity_fail_total{stage=\"peer\"}") >= 1.0);
    let kept = get(a.listen, &format!("/v1/index/objects/{checked}?local=true"), &[]).unwrap();
    assert_eq!(kept.body, b"{\"checked\":true}");

    // Only a stalled provider: the deadline answers 504 in the index's
    // envelope.
    let slow = cid_of(b"nobody serves this");
    provide(&c, &slow, &stalled, 600);
    let deadline = Instant::now() + Duration::from_secs(10);
    let timed_out = loop {
        let answer = get(a.listen, &format!("/resolve/{slow}?fresh=true"), &[]).unwrap();
        if answer.status == 504 {
            break answer;
        }
        assert!(Instant::now() < deadline, "{} {}", answer.status, answer.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(timed_out.json().get_str("code"), Some("timeout"));

    // An expired provider disappears from remote answers too (C's TTLs
    // decide, not Kademlia's).
    let brief = put_object(&c, b"{\"brief\":true}");
    provide(&c, &brief, &c_url, 2);
    resolve_until(&a, &brief, 1);
    std::thread::sleep(Duration::from_millis(2100));
    let gone = resolve_until(&a, &brief, 0).json();
    assert_eq!(gone.get_str("manifest"), Some(brief.as_str()));

    // C restarts (its records come back from its log and are announced
    // again); B restarts and rejoins through its bootstrap peer.
    c.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    c.spawn();
    wait_for_peers(&c, 1);
    let after = put_object(&c, b"{\"after\":\"restart\"}");
    provide(&c, &after, &c_url, 600);
    resolve_until(&a, &after, 1);
    b.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    b.spawn();
    wait_for_peers(&b, 1);
    let again = resolve_until(&b, &after, 1).json();
    assert_eq!(again.get_str("manifest"), Some(after.as_str()));
    assert!(a.metric("index_dht_lookup_ms_count") >= 1.0);
}

#[test]
fn readyz_reports_a_dht_client_that_reaches_no_peer() {
    let mut node = TestNode::start(NodeOptions::default());
    assert_eq!(dht_status(&node).get_bool("ready"), Some(true));
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    // A bootstrap peer nobody listens on.
    let nobody = port_block(1);
    node.set_config(&format!("[index]\npeers = [\"/ip4/127.0.0.1/tcp/{nobody}\"]\n"));
    node.spawn_unready();
    let ready = get(node.listen, "/readyz", &[]).unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    let missing = ready.json();
    let missing = missing.get_array("missing").unwrap();
    assert!(
        missing.iter().any(|m| m.as_str() == Some("index DHT client reaches none of index.peers")),
        "{missing:?}"
    );
}
