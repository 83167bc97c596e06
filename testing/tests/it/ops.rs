//! Ops routes through a real HTTP client.

use ron_testing::{NodeOptions, TestNode, get};
use simd_json::prelude::*;

#[test]
fn healthz_readyz_version_topology_with_a_real_client() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let agent = ureq::AgentBuilder::new().build();
    let health = agent.get(&node.url("/healthz")).call().expect("healthz");
    assert_eq!(health.status(), 200);
    assert!(health.header("X-Corr-ID").is_some());
    assert_eq!(health.into_string().unwrap(), r#"{"status":"ok"}"#);

    let ready = agent.get(&node.url("/readyz")).call().expect("readyz");
    assert_eq!(ready.into_string().unwrap(), r#"{"ready":true}"#);

    let mut version =
        agent.get(&node.url("/version")).call().unwrap().into_string().unwrap().into_bytes();
    let version = simd_json::to_owned_value(&mut version).unwrap();
    assert_eq!(version.get_str("name"), Some("ron-node"));
    assert_eq!(version.get_u64("shards"), Some(2));
    assert_eq!(version.get_str("profile"), Some("macronode"));

    let mut topology = agent
        .get(&node.url("/v1/node/topology"))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
        .into_bytes();
    let topology = simd_json::to_owned_value(&mut topology).unwrap();
    assert_eq!(topology.get_u64("shards"), Some(2));
    let ports: Vec<u64> =
        topology.get_array("shard_ports").unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert_eq!(ports, node.shard_ports.iter().map(|p| u64::from(*p)).collect::<Vec<_>>());
    let function = topology.get("routing").unwrap().get_str("function").unwrap();
    assert_eq!(function, ron_proto::routing::ROUTING_FUNCTION);
}

#[test]
fn metrics_are_prometheus_text_merged_over_shards() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    // Each shard answers healthz on its own port.
    for shard in 0..2 {
        for _ in 0..3 {
            assert_eq!(get(node.shard_address(shard), "/healthz", &[]).unwrap().status, 200);
        }
    }
    assert_eq!(get(node.listen, "/nope", &[]).unwrap().status, 404);
    let metrics = get(node.listen, "/metrics", &[]).unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("Content-Type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    for needle in [
        "# TYPE request_latency_seconds histogram",
        "request_latency_seconds_bucket{route=\"/healthz\",le=\"0.00005\"}",
        "request_latency_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 6",
        "request_latency_seconds_count{route=\"/healthz\"} 6",
        "request_latency_seconds_sum{route=\"/healthz\"}",
        "rejected_total{reason=\"not_found\"} 1",
        "busy_rejections_total{endpoint=\"/v1/node/owner\"} 0",
        "inflight_requests{route=\"/metrics\"} 1",
        "# TYPE process_resident_memory_bytes gauge",
        "process_open_fds ",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(node.metric("process_resident_memory_bytes") > 1_000_000.0);
}

#[test]
fn unknown_routes_and_wrong_methods() {
    let node = TestNode::start(NodeOptions::default().amnesia());
    let missing = get(node.listen, "/v2/nothing", &[]).unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.code(), "NOT_FOUND");
    let wrong = ron_testing::request(node.listen, "DELETE", "/healthz", &[], &[]).unwrap();
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.code(), "METHOD_NOT_ALLOWED");
    assert_eq!(wrong.header("Allow"), Some("GET, HEAD"));
    // A HEAD answer announces the length of a body it does not carry: the
    // next answer on the connection must follow its head directly.
    let mut conn = ron_testing::Conn::open(node.listen);
    conn.send(b"HEAD /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n");
    let head = conn.read_head_answer().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("15"));
    let get = conn.read().unwrap();
    assert_eq!(get.text(), r#"{"status":"ok"}"#);
}

#[test]
fn the_timer_probe_measures_every_shard() {
    let node = TestNode::start(
        NodeOptions::default().shards(2).config("[executor]\ntimer_probe_interval_ms = 10"),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Two shards, one probe each per 10 ms: idle shards still run timers.
    let probes = node.metric("executor_timer_lateness_seconds_count");
    assert!(probes >= 40.0, "{probes} probes in 500 ms");
    let max = node.metric("executor_timer_lateness_max_seconds");
    assert!(max > 0.0 && max < 5.0, "{max}");
}

/// `ops/check.sh` (promtool, installed when absent): the rules and their
/// unit tests, the dashboard's queries, and the exposition of a live
/// node's `/metrics` after some traffic; a broken exposition fails it.
#[test]
fn prometheus_rules_dashboard_and_live_metrics_pass_promtool() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let auth = node.admin();
    for path in ["/healthz", "/v1/balance/acct:1?asset=roc", "/resolve/name:nothing.bench", "/nope"]
    {
        get(node.listen, path, &[("Authorization", auth.as_str())]).unwrap();
    }
    let metrics = get(node.listen, "/metrics", &[]).unwrap();
    assert_eq!(metrics.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &[u8]| {
        let file = dir.path().join("metrics.txt");
        std::fs::write(&file, text).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/check.sh");
        std::process::Command::new("bash")
            .arg(script)
            .arg(&file)
            .output()
            .expect("running ops/check.sh")
    };
    let checked = check(&metrics.body);
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(said.contains("Unit Testing:  rules_test.yml\n  SUCCESS"), "{said}");
    assert!(said.contains("exposition checked"), "{said}");
    // The same text with a family declared twice: refused.
    let mut broken = metrics.body.clone();
    broken.extend_from_slice(
        b"# HELP queue_depth again\n# TYPE queue_depth gauge\nqueue_depth{q=\"x\"} 1\n",
    );
    assert!(!check(&broken).status.success());
}
