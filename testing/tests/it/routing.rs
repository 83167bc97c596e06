//! Cross-shard routing: a request for a key of shard B that arrives on shard A
//! is answered by B, on the shared port and on both shard ports.

use crate::http::key_of_shard;
use ron_proto::routing::owner;
use ron_testing::{NodeOptions, TestNode, get};
use simd_json::prelude::*;

#[test]
fn any_port_answers_for_any_key_and_the_owner_answers() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let auth = node.admin();
    for key_shard in 0..2 {
        let key = key_of_shard(key_shard, 2);
        assert_eq!(owner(key.as_bytes(), 2), key_shard);
        let mut ports = vec![(node.listen, None)];
        ports.extend((0..2).map(|s| (node.shard_address(s), Some(s))));
        for (address, port_shard) in ports {
            let path = format!("/v1/node/owner?key={key}");
            let response = get(address, &path, &[("Authorization", &auth)]).unwrap();
            assert_eq!(response.status, 200, "{}", response.text());
            let answer = response.json();
            assert_eq!(answer.get_str("key"), Some(key.as_str()));
            assert_eq!(answer.get_u64("owner"), Some(key_shard as u64));
            assert_eq!(answer.get_u64("answered_by"), Some(key_shard as u64));
            if let Some(port_shard) = port_shard {
                assert_eq!(answer.get_u64("received_by"), Some(port_shard as u64));
            }
        }
    }
    assert!(node.metric("mesh_calls_total") >= 2.0);
    let bad = get(node.listen, "/v1/node/owner", &[("Authorization", &auth)]).unwrap();
    assert_eq!(bad.status, 400);
    let long = format!("/v1/node/owner?key={}", "k".repeat(300));
    assert_eq!(get(node.listen, &long, &[("Authorization", &auth)]).unwrap().status, 400);
}
