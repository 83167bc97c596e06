//! The ledger through the real binary: gap-free sequences, roots that a
//! client recomputes from the entries, proofs, rejections, restarts, torn
//! and corrupt records, kills under load, and a full disk.

use ron_proto::ledger::{Entry, EntryKind};
use ron_proto::merkle::{self, Hash, from_hex, verify_consistency, verify_inclusion};
use ron_shards::accumulator::Accumulator;
use ron_testing::{NodeOptions, Response, TestNode, get, post_json};
use simd_json::prelude::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SEGMENT: &str = "00000000000000000001.seg";

fn mint(id: &str, account: &str, amount: u64) -> Entry {
    Entry {
        id: id.to_owned(),
        kind: EntryKind::Mint,
        account: account.to_owned(),
        asset: Some("roc".to_owned()),
        amount: u128::from(amount),
        ts: None,
        memo: None,
    }
}

fn entry_json(entry: &Entry) -> String {
    format!(
        r#"{{"id":"{}","kind":"{}","account":"{}","asset":"roc","amount":"{}"}}"#,
        entry.id,
        entry.kind.name(),
        entry.account,
        entry.amount
    )
}

fn batch_json(entries: &[Entry]) -> String {
    let items: Vec<String> = entries.iter().map(entry_json).collect();
    format!(r#"{{"batch":[{}]}}"#, items.join(","))
}

fn ingest(address: SocketAddr, bearer: &str, entries: &[Entry]) -> std::io::Result<Response> {
    ron_testing::request(
        address,
        "POST",
        "/ingest",
        &[("Authorization", bearer), ("Content-Type", "application/json")],
        batch_json(entries).as_bytes(),
    )
}

fn leaf(entry: &Entry) -> Hash {
    let mut encoded = Vec::new();
    entry.encode(&mut encoded);
    merkle::leaf_hash(&encoded)
}

fn hash_field(value: &simd_json::OwnedValue, key: &str) -> Hash {
    from_hex(value.get(key).and_then(|v| v.as_str()).expect("a hex field")).expect("64 hex digits")
}

fn hash_list(value: &simd_json::OwnedValue, key: &str) -> Vec<Hash> {
    value
        .get(key)
        .and_then(|v| v.as_array())
        .expect("a list")
        .iter()
        .map(|h| from_hex(h.as_str().unwrap()).unwrap())
        .collect()
}

/// An acknowledged batch: where the node put it.
#[derive(Clone, Debug)]
struct Acked {
    seq_start: u64,
    seq_end: u64,
    entries: Vec<Entry>,
}

fn acked(response: &Response, entries: Vec<Entry>) -> Acked {
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    assert_eq!(json.get("accepted").and_then(|v| v.as_bool()), Some(true));
    let seq_start = json.get("seq_start").and_then(|v| v.as_u64()).unwrap();
    let seq_end = json.get("seq_end").and_then(|v| v.as_u64()).unwrap();
    assert_eq!(seq_end - seq_start + 1, entries.len() as u64);
    Acked { seq_start, seq_end, entries }
}

/// Every published root, following `next`.
fn all_roots(address: SocketAddr) -> Vec<(u64, Hash)> {
    let mut roots = Vec::new();
    let mut since = 0;
    loop {
        let response = get(address, &format!("/roots?since={since}"), &[]).unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        let json = response.json();
        for item in json.get("roots").and_then(|v| v.as_array()).unwrap() {
            roots.push((
                item.get("seq").and_then(|v| v.as_u64()).unwrap(),
                hash_field(item, "root"),
            ));
        }
        match json.get("next").and_then(|v| v.as_u64()) {
            Some(next) => since = next,
            None => return roots,
        }
    }
}

/// Puts acknowledged batches in sequence order and checks they tile 1..=n.
fn in_sequence(mut batches: Vec<Acked>) -> Vec<Entry> {
    batches.sort_by_key(|b| b.seq_start);
    let mut next = 1;
    let mut entries = Vec::new();
    for batch in batches {
        assert_eq!(batch.seq_start, next, "a gap or an overlap before seq {}", batch.seq_start);
        next = batch.seq_end + 1;
        entries.extend(batch.entries);
    }
    entries
}

fn checked_roots(address: SocketAddr, entries: &[Entry]) -> Vec<(u64, Hash)> {
    let mut accumulator = Accumulator::new();
    entries.iter().for_each(|e| accumulator.push(leaf(e)));
    let roots = all_roots(address);
    for (seq, root) in &roots {
        assert_eq!(accumulator.root_at(*seq), *root, "the root after seq {seq}");
    }
    roots
}

#[test]
fn concurrent_ingest_is_gap_free_and_roots_reproduce_from_the_entries() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let bearer = node.admin();
    let addresses = [node.listen, node.shard_address(0), node.shard_address(1)];
    let batches: Vec<Acked> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|thread| {
                let bearer = bearer.clone();
                let address = addresses[thread % addresses.len()];
                scope.spawn(move || {
                    (0..15)
                        .map(|n| {
                            let entries: Vec<Entry> = (0..4)
                                .map(|i| mint(&format!("t{thread}-{n}-{i}"), &format!("a{i}"), 5))
                                .collect();
                            acked(&ingest(address, &bearer, &entries).unwrap(), entries)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let entries = in_sequence(batches);
    assert_eq!(entries.len(), 240);
    let roots = checked_roots(node.listen, &entries);
    assert_eq!(roots.last().unwrap().0, 240);
    assert!(roots.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(node.metric("ledger_entries_total"), 240.0);
    assert_eq!(node.metric("ledger_seq_gap_detected_total"), 0.0);
    assert!(node.metric("ledger_fsync_seconds_count") >= 1.0);
    // Paging: one root per page boundary is not skipped or repeated.
    let first = get(node.listen, &format!("/roots?since={}", roots[0].0), &[]).unwrap().json();
    let listed = first.get("roots").and_then(|v| v.as_array()).unwrap();
    assert_eq!(listed.len(), roots.len() - 1);
}

#[test]
fn proofs_verify_and_tampered_proofs_fail() {
    let node = TestNode::start(NodeOptions::default());
    let bearer = node.admin();
    let mut batches = Vec::new();
    for n in 0..5 {
        let entries: Vec<Entry> = (0..3).map(|i| mint(&format!("p{n}-{i}"), "a", 1)).collect();
        batches.push(acked(&ingest(node.listen, &bearer, &entries).unwrap(), entries));
    }
    let entries = in_sequence(batches);
    let roots = checked_roots(node.listen, &entries);
    let size = entries.len() as u64;
    let root = roots.last().unwrap().1;
    for seq in 1..=size {
        let path = format!("/v1/ledger/proof/inclusion?seq={seq}&root_seq={size}");
        let proof = get(node.listen, &path, &[("Authorization", &bearer)]).unwrap();
        assert_eq!(proof.status, 200, "{}", proof.text());
        let json = proof.json();
        let leaf_hash = leaf(&entries[seq as usize - 1]);
        assert_eq!(hash_field(&json, "leaf_hash"), leaf_hash);
        assert_eq!(hash_field(&json, "root"), root);
        let audit = hash_list(&json, "path");
        assert!(verify_inclusion(seq - 1, size, &leaf_hash, &audit, &root));
        let other = leaf(&entries[(seq as usize) % entries.len()]);
        assert!(!verify_inclusion(seq - 1, size, &other, &audit, &root));
        let mut tampered = audit.clone();
        tampered[0][31] ^= 1;
        assert!(!verify_inclusion(seq - 1, size, &leaf_hash, &tampered, &root));
    }
    for pair in roots.windows(2) {
        let ((from, from_root), (to, to_root)) = (pair[0], pair[1]);
        let path = format!("/v1/ledger/proof/consistency?from={from}&to={to}");
        let json = get(node.listen, &path, &[("Authorization", &bearer)]).unwrap().json();
        let audit = hash_list(&json, "path");
        assert!(verify_consistency(from, to, &from_root, &to_root, &audit));
        let mut tampered = audit.clone();
        tampered.last_mut().unwrap()[0] ^= 1;
        assert!(!verify_consistency(from, to, &from_root, &to_root, &tampered));
    }
    let beyond = format!("/v1/ledger/proof/inclusion?seq=1&root_seq={}", size + 1);
    assert_eq!(get(node.listen, &beyond, &[("Authorization", &bearer)]).unwrap().status, 404);
    let missing =
        get(node.listen, "/v1/ledger/proof/inclusion?seq=1", &[("Authorization", &bearer)]);
    assert!(missing.unwrap().text().contains("root_seq is required"));
    let bad =
        get(node.listen, "/v1/ledger/proof/consistency?from=x&to=2", &[("Authorization", &bearer)]);
    assert_eq!(bad.unwrap().status, 400);
    let unauthenticated = get(node.listen, "/v1/ledger/proof/inclusion?seq=1&root_seq=1", &[]);
    assert_eq!(unauthenticated.unwrap().status, 401);
}

#[test]
fn every_ingest_rejection_has_its_code_and_reasons() {
    let node = TestNode::start(NodeOptions::default().config("[ledger]\nbatch_entries_max = 4"));
    let bearer = node.admin();
    let post = |body: &str| post_json(node.listen, "/ingest", &bearer, body);
    let entry = |fields: &str| format!(r#"{{"batch":[{fields}]}}"#);
    let cases: [(String, u16, &str); 9] = [
        (entry(r#"{"id":"x","kind":"Gift","account":"a","amount":"1"}"#), 400, "unknown kind"),
        (entry(r#"{"id":"x","kind":"Mint","account":"a","amount":"-1"}"#), 400, "decimal u128"),
        (entry(r#"{"id":"x","kind":"Mint","account":"a","amount":"0"}"#), 400, "positive"),
        (
            entry(&format!(
                r#"{{"id":"{}","kind":"Mint","account":"a","amount":1}}"#,
                "i".repeat(129)
            )),
            400,
            "id must be",
        ),
        (
            entry(r#"{"id":"x","kind":"Mint","account":"a","amount":1,"extra":1}"#),
            400,
            "unknown field",
        ),
        (r#"{"batch":[]}"#.to_owned(), 422, "1..=4"),
        (
            batch_json(&(0..5).map(|i| mint(&format!("b{i}"), "a", 1)).collect::<Vec<_>>()),
            422,
            "1..=4",
        ),
        (
            entry(
                r#"{"id":"c1","kind":"Debit","account":"a","asset":"roc","amount":5},{"id":"c2","kind":"Credit","account":"b","asset":"roc","amount":4}"#,
            ),
            422,
            "conservation",
        ),
        (
            format!(
                r#"{{"batch":[{{"id":"x","kind":"Mint","account":"a","amount":1}}],"idem_id":"{}"}}"#,
                "k".repeat(129)
            ),
            400,
            "idem_id",
        ),
    ];
    for (body, status, needle) in cases {
        let response = post(&body);
        assert_eq!(response.status, status, "{body}: {}", response.text());
        assert!(response.text().contains(needle), "{needle} missing: {}", response.text());
    }
    // Reasons name the entry.
    let bad_second = entry(
        r#"{"id":"ok","kind":"Mint","account":"a","amount":1},{"id":"x","kind":"Nope","account":"a","amount":1}"#,
    );
    let reasons = post(&bad_second).json();
    let first = &reasons.get("reasons").and_then(|v| v.as_array()).unwrap()[0];
    assert_eq!(first.get("idx").and_then(|v| v.as_u64()), Some(1));
    // Ids are unique forever, within a batch and across batches; a refused
    // batch applies nothing.
    assert_eq!(ingest(node.listen, &bearer, &[mint("u1", "a", 1)]).unwrap().status, 200);
    let again = ingest(node.listen, &bearer, &[mint("u2", "a", 1), mint("u1", "a", 1)]).unwrap();
    assert_eq!(again.status, 409, "{}", again.text());
    assert!(again.text().contains(r#"{"idx":1,"reason":"duplicate_id"}"#), "{}", again.text());
    let twice = ingest(node.listen, &bearer, &[mint("u3", "a", 1), mint("u3", "a", 1)]).unwrap();
    assert_eq!(twice.status, 409);
    assert_eq!(ingest(node.listen, &bearer, &[mint("u2", "a", 1)]).unwrap().status, 200);
    assert_eq!(ingest(node.listen, &bearer, &[mint("u3", "a", 1)]).unwrap().status, 200);
    // Media type and access.
    let text = ron_testing::request(
        node.listen,
        "POST",
        "/ingest",
        &[("Authorization", &bearer), ("Content-Type", "text/plain")],
        b"{}",
    )
    .unwrap();
    assert_eq!(text.status, 415);
    assert_eq!(post_json(node.listen, "/ingest", "Bearer nope", "{}").status, 401);
    // u1, u2 and u3: nothing refused was committed.
    assert_eq!(all_roots(node.listen).last().unwrap().0, 3);
}

#[test]
fn a_restart_keeps_roots_ids_and_the_sequence() {
    let mut node = TestNode::start(NodeOptions::default());
    let bearer = node.admin();
    let first = acked(
        &ingest(node.listen, &bearer, &[mint("r1", "a", 1), mint("r2", "b", 2)]).unwrap(),
        vec![mint("r1", "a", 1), mint("r2", "b", 2)],
    );
    let roots_before = all_roots(node.listen);
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    assert_eq!(all_roots(node.listen), roots_before);
    assert_eq!(ingest(node.listen, &bearer, &[mint("r1", "a", 1)]).unwrap().status, 409);
    let next = acked(
        &ingest(node.listen, &bearer, &[mint("r3", "a", 1)]).unwrap(),
        vec![mint("r3", "a", 1)],
    );
    assert_eq!(next.seq_start, first.seq_end + 1);
    let entries = in_sequence(vec![first, next]);
    checked_roots(node.listen, &entries);
}

/// Writes `mutate` over the log segment while the node is stopped.
fn garble(node: &TestNode, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(node.log_dir().join(SEGMENT))
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset).unwrap();
    file.sync_all().unwrap();
}

/// `ron-node verify-log` on the node's data dir: exit code and what it printed.
fn verify_log(node: &TestNode) -> (i32, String) {
    let data_dir = node.log_dir().parent().unwrap().to_owned();
    let output = std::process::Command::new(ron_testing::node_binary())
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("verify-log")
        .env("RON_LOG", "error")
        .output()
        .unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn a_torn_last_record_is_truncated_and_a_corrupt_middle_one_means_safe_mode() {
    let mut node = TestNode::start(NodeOptions::default());
    let bearer = node.admin();
    let mut batches = Vec::new();
    for n in 0..3 {
        let entries = vec![mint(&format!("g{n}"), "a", 1)];
        batches.push(acked(&ingest(node.listen, &bearer, &entries).unwrap(), entries));
    }
    // Small records: one per 4 KiB block. Tear the third (a body byte).
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    let (code, report) = verify_log(&node);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("3 records, 3 entries") && report.contains("ok:"), "{report}");
    garble(&node, 2 * 4096 + 140);
    // verify-log reports the torn tail and changes nothing.
    let segment = std::fs::read(node.log_dir().join(SEGMENT)).unwrap();
    let (code, report) = verify_log(&node);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("2 records, 2 entries") && report.contains("torn tail"), "{report}");
    assert!(std::fs::read(node.log_dir().join(SEGMENT)).unwrap() == segment, "verify-log wrote");
    node.spawn();
    assert!(node.log().contains("removed a torn last record"), "{}", node.log());
    let roots = all_roots(node.listen);
    assert_eq!(roots.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
    // Writing goes on from the truncation point.
    let entries = vec![mint("g3", "a", 1)];
    let next = acked(&ingest(node.listen, &bearer, &entries).unwrap(), entries);
    assert_eq!(next.seq_start, 3);
    batches.truncate(2);
    batches.push(next);
    checked_roots(node.listen, &in_sequence(batches));

    // Now garble the first record: a valid one follows, so this is corruption.
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    garble(&node, 140);
    let (code, report) = verify_log(&node);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("CORRUPT") && report.contains(&format!("{SEGMENT} offset 0")),
        "{report}"
    );
    // A start reads only the log after the index's checkpoint (record 3);
    // the background scan of the whole log finds the corrupt record and
    // puts the node in safe mode.
    node.spawn_unready();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Ok(ready) = get(node.listen, "/readyz", &[])
            && ready.status == 503
        {
            break ready;
        }
        assert!(Instant::now() < deadline, "no safe mode: {}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(node.log().contains("the background scan found the log corrupt"), "{}", node.log());
    assert!(
        ready.text().contains("safe mode") && ready.text().contains(&format!("{SEGMENT} offset 0")),
        "{}",
        ready.text()
    );
    let refused = ingest(node.listen, &bearer, &[mint("g4", "a", 1)]).unwrap();
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("DEGRADED"));
    assert_eq!(get(node.listen, "/roots", &[]).unwrap().status, 200);
    assert_eq!(node.metric("ledger_safe_mode"), 1.0);
}

/// A small random generator with a printed seed (`RON_CRASH_SEED` replays).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// SPEC §11: kill -9 under concurrent ingest, restart, and check that every
/// acknowledged entry is there exactly once, at the sequence number it was
/// given, under a root chain that verifies. `RON_CRASH_CYCLES=N` runs N cycles.
#[test]
fn kill_9_under_ingest_loses_nothing_acknowledged() {
    let cycles: usize =
        std::env::var("RON_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let seed =
        std::env::var("RON_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        });
    eprintln!("crash test seed {seed} (RON_CRASH_SEED replays), {cycles} cycles");
    let mut rng = Rng(seed);
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    let bearer = node.admin();
    let mut all_acked: Vec<Acked> = Vec::new();
    for cycle in 0..cycles {
        if cycle > 0 {
            node.spawn();
        }
        let kill_after = Duration::from_millis(150 + rng.next() % 400);
        let address = node.listen;
        let acked_now: Vec<Acked> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|thread| {
                    let bearer = bearer.clone();
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        let deadline = Instant::now() + Duration::from_secs(10);
                        for n in 0.. {
                            if Instant::now() > deadline {
                                break;
                            }
                            let entries: Vec<Entry> = (0..16)
                                .map(|i| {
                                    mint(
                                        &format!("c{cycle}-t{thread}-{n}-{i}"),
                                        &format!("acct{i}"),
                                        1,
                                    )
                                })
                                .collect();
                            match ingest(address, &bearer, &entries) {
                                Ok(response) if response.status == 200 => {
                                    mine.push(acked(&response, entries))
                                }
                                _ => break,
                            }
                        }
                        mine
                    })
                })
                .collect();
            std::thread::sleep(kill_after);
            node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert!(!acked_now.is_empty(), "cycle {cycle}: nothing was acknowledged before the kill");
        all_acked.extend(acked_now);
    }
    node.spawn();
    let roots = all_roots(node.listen);
    let size = roots.last().unwrap().0;
    let root = roots.last().unwrap().1;
    assert!(all_acked.iter().all(|a| a.seq_end <= size));
    // The chain of roots verifies link by link.
    for pair in roots.windows(2) {
        let ((from, from_root), (to, to_root)) = (pair[0], pair[1]);
        let path = format!("/v1/ledger/proof/consistency?from={from}&to={to}");
        let json = get(node.listen, &path, &[("Authorization", &bearer)]).unwrap().json();
        assert!(verify_consistency(from, to, &from_root, &to_root, &hash_list(&json, "path")));
    }
    // Every acknowledged entry is at its sequence number, exactly as sent.
    let mut checked = 0;
    for batch in &all_acked {
        for (i, entry) in batch.entries.iter().enumerate().step_by(5) {
            let seq = batch.seq_start + i as u64;
            let path = format!("/v1/ledger/proof/inclusion?seq={seq}&root_seq={size}");
            let json = get(node.listen, &path, &[("Authorization", &bearer)]).unwrap().json();
            assert!(
                verify_inclusion(seq - 1, size, &leaf(entry), &hash_list(&json, "path"), &root),
                "seq {seq}"
            );
            checked += 1;
        }
    }
    // Balances are a replay of the log: every entry minted 1 to one of
    // acct0..acct15, so they add up to the log's size, no batch half-applied.
    let total: u128 = (0..16).map(|i| balance(&node, node.listen, &format!("acct{i}")).0).sum();
    assert_eq!(total, u128::from(size));
    // And applied once: sending it again is refused.
    let again = &all_acked[all_acked.len() / 2].entries[0];
    assert_eq!(ingest(node.listen, &bearer, std::slice::from_ref(again)).unwrap().status, 409);
    eprintln!(
        "{} acknowledged batches, {checked} entries proven, log holds {size}",
        all_acked.len()
    );
}

/// Unmounts a tmpfs however the test ends.
pub struct Mount(std::path::PathBuf);

impl Mount {
    pub fn tmpfs(path: &std::path::Path, size: &str) -> Mount {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        Mount(path.to_owned())
    }

    pub fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("running mount");
        assert!(status.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// SPEC §11: the log's filesystem fills up → safe mode: writes 503, reads
/// 200, nothing acknowledged lost; with space again, a restart recovers.
#[test]
fn a_full_disk_means_safe_mode_and_a_restart_with_space_recovers() {
    let mut node =
        TestNode::start(NodeOptions::default().config("[ledger]\nsegment_bytes = 65536"));
    let bearer = node.admin();
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    let mount = Mount::tmpfs(&node.log_dir(), "256k");
    node.spawn();
    let mut batches = Vec::new();
    let refused = loop {
        let n = batches.len();
        assert!(n < 1000, "the disk never filled");
        let entries: Vec<Entry> = (0..8).map(|i| mint(&format!("f{n}-{i}"), "a", 1)).collect();
        let response = ingest(node.listen, &bearer, &entries).unwrap();
        if response.status != 200 {
            break response;
        }
        batches.push(acked(&response, entries));
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("DEGRADED"), "{}", refused.text());
    assert!(batches.len() > 10, "only {} batches fit", batches.len());
    // Writes stay refused, reads work, the node says why it is not ready.
    assert_eq!(ingest(node.listen, &bearer, &[mint("late", "a", 1)]).unwrap().status, 503);
    let ready = get(node.listen, "/readyz", &[]).unwrap();
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("safe mode"), "{}", ready.text());
    assert_eq!(node.metric("ledger_safe_mode"), 1.0);
    let entries = in_sequence(batches.clone());
    checked_roots(node.listen, &entries);
    // Space again, and a restart: everything acknowledged is there, and
    // writes resume where the durable log ends.
    mount.resize("4m");
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    let size = all_roots(node.listen).last().unwrap().0;
    assert_eq!(size, entries.len() as u64);
    let resumed = vec![mint("after", "a", 1)];
    let resumed = acked(&ingest(node.listen, &bearer, &resumed).unwrap(), resumed);
    assert_eq!(resumed.seq_start, size + 1);
    batches.push(resumed);
    checked_roots(node.listen, &in_sequence(batches));
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    drop(mount);
}

fn balance(node: &TestNode, address: SocketAddr, account: &str) -> (u128, u128) {
    let path = format!("/v1/ledger/balance?account={account}&asset=roc");
    let response = get(address, &path, &[("Authorization", &node.admin())]).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    let number =
        |key: &str| json.get(key).and_then(|v| v.as_str()).unwrap().parse::<u128>().unwrap();
    (number("balance"), number("reserved"))
}

fn entry_of(id: &str, kind: EntryKind, account: &str, amount: u64) -> Entry {
    Entry { kind, ..mint(id, account, amount) }
}

#[test]
fn owners_refuse_overdrafts_and_a_refused_batch_applies_nothing() {
    let node = TestNode::start(NodeOptions::default().shards(2));
    let bearer = node.admin();
    let debit = entry_of("d1", EntryKind::Debit, "alice", 5);
    let credit = entry_of("c1", EntryKind::Credit, "bob", 5);
    let refused = ingest(node.listen, &bearer, &[debit.clone(), credit.clone()]).unwrap();
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("INSUFFICIENT_FUNDS") && refused.text().contains(r#""idx":0"#));
    assert_eq!(ingest(node.listen, &bearer, &[mint("m1", "alice", 10)]).unwrap().status, 200);
    let moved =
        [entry_of("d2", EntryKind::Debit, "alice", 6), entry_of("c2", EntryKind::Credit, "bob", 6)];
    assert_eq!(ingest(node.listen, &bearer, &moved).unwrap().status, 200);
    // Read on every port: the owner answers, and the write is visible.
    for address in [node.listen, node.shard_address(0), node.shard_address(1)] {
        assert_eq!(balance(&node, address, "alice"), (4, 0));
        assert_eq!(balance(&node, address, "bob"), (6, 0));
    }
    // More than alice holds: refused whole, bob does not get his credit.
    let over = [
        entry_of("d3", EntryKind::Burn, "alice", 3),
        entry_of("d4", EntryKind::Debit, "alice", 2),
        entry_of("c4", EntryKind::Credit, "bob", 2),
    ];
    let response = ingest(node.listen, &bearer, &over).unwrap();
    assert_eq!(response.status, 409, "{}", response.text());
    assert_eq!(balance(&node, node.listen, "alice"), (4, 0));
    assert_eq!(balance(&node, node.listen, "bob"), (6, 0));
    // Concurrent spenders of one balance: never more than it holds.
    assert_eq!(ingest(node.listen, &bearer, &[mint("m2", "carol", 10)]).unwrap().status, 200);
    let accepted: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let bearer = bearer.clone();
                let address = node.listen;
                scope.spawn(move || {
                    let burn = entry_of(&format!("burn{i}"), EntryKind::Burn, "carol", 3);
                    usize::from(ingest(address, &bearer, &[burn]).unwrap().status == 200)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(accepted, 3);
    assert_eq!(balance(&node, node.listen, "carol"), (1, 0));
}

#[test]
fn balances_and_roots_survive_restarts_and_a_new_shard_count() {
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    let bearer = node.admin();
    let accounts = ["a", "b", "c", "d", "e", "f"];
    for (i, account) in accounts.iter().enumerate() {
        assert_eq!(
            ingest(node.listen, &bearer, &[mint(&format!("m{i}"), account, 100)]).unwrap().status,
            200
        );
    }
    for n in 0..12 {
        let (from, to) = (accounts[n % 6], accounts[(n * 5 + 1) % 6]);
        let moved = [
            entry_of(&format!("x{n}"), EntryKind::Debit, from, 7 + n as u64),
            entry_of(&format!("y{n}"), EntryKind::Credit, to, 7 + n as u64),
        ];
        assert_eq!(ingest(node.listen, &bearer, &moved).unwrap().status, 200);
    }
    let before: Vec<(u128, u128)> =
        accounts.iter().map(|a| balance(&node, node.listen, a)).collect();
    assert_eq!(before.iter().map(|b| b.0).sum::<u128>(), 600);
    let roots = all_roots(node.listen);
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    assert_eq!(accounts.iter().map(|a| balance(&node, node.listen, a)).collect::<Vec<_>>(), before);
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.set_shards(1);
    node.spawn();
    assert_eq!(accounts.iter().map(|a| balance(&node, node.listen, a)).collect::<Vec<_>>(), before);
    assert_eq!(all_roots(node.listen), roots);
}

/// Copies the files of `from` into a new directory `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// The `tail_entries` each shard replayed after its view at the last start.
pub fn tail_entries(node: &TestNode, shards: usize) -> Vec<u64> {
    let log = node.log();
    let start = log.rfind("ledger log recovered").expect("a start");
    let lines: Vec<&str> =
        log[start..].lines().filter(|l| l.contains("shard view loaded")).take(shards).collect();
    assert_eq!(lines.len(), shards, "{log}");
    lines
        .iter()
        .map(|line| {
            let at = line.find("tail_entries=").expect("tail_entries") + "tail_entries=".len();
            line[at..].split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn shard_views_are_written_loaded_and_rebuilt_when_they_do_not_match_the_log() {
    let options = NodeOptions::default()
        .shards(2)
        .config("[ledger]\nsegment_bytes = 1048576\nview_write_ms = 100\n");
    let mut node = TestNode::start(options);
    let bearer = node.admin();
    let accounts = ["a", "b", "c", "d", "e", "f"];
    for (i, account) in accounts.iter().enumerate() {
        let minted = [mint(&format!("m{i}"), account, 100)];
        assert_eq!(ingest(node.listen, &bearer, &minted).unwrap().status, 200);
    }
    let moved =
        [entry_of("x", EntryKind::Debit, "a", 30), entry_of("y", EntryKind::Credit, "b", 30)];
    assert_eq!(ingest(node.listen, &bearer, &moved).unwrap().status, 200);
    let read_all = |node: &TestNode| -> Vec<(u128, u128)> {
        accounts.iter().map(|a| balance(node, node.listen, a)).collect()
    };
    let before = read_all(&node);
    // Views are written in the background, within about a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    for shard in 0..2 {
        let applied = node.metric(&format!("ledger_applied_seq{{shard=\"{shard}\"}}"));
        assert_eq!(applied, 8.0);
        while node.metric(&format!("ledger_view_seq{{shard=\"{shard}\"}}")) < applied {
            assert!(Instant::now() < deadline, "shard {shard}'s view was not written");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    let data = node.log_dir().parent().unwrap().to_owned();
    assert!(data.join("shard-0/data.mdb").exists() && data.join("shard-1/data.mdb").exists());
    let old_log = data.join("log-copy");
    copy_dir(&node.log_dir(), &old_log);
    // A restart loads the views and has nothing to replay after them. From
    // here on, views are written only when the node stops.
    node.set_config("[ledger]\nsegment_bytes = 1048576\nview_write_ms = 3600000\n");
    node.spawn();
    assert_eq!(tail_entries(&node, 2), [0, 0]);
    assert_eq!(read_all(&node), before);
    let more = [entry_of("z", EntryKind::Burn, "b", 5), mint("w", "c", 1)];
    assert_eq!(ingest(node.listen, &bearer, &more).unwrap().status, 200);
    let after = read_all(&node);
    assert_ne!(after, before);
    // Killed: the views are behind, the log after them is replayed.
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    assert_eq!(tail_entries(&node, 2).iter().sum::<u64>(), 2);
    assert_eq!(read_all(&node), after);
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    // The log replaced by its older copy: the views are ahead of it and are
    // rebuilt from it.
    std::fs::remove_dir_all(node.log_dir()).unwrap();
    std::fs::rename(&old_log, node.log_dir()).unwrap();
    node.spawn();
    assert!(node.log().contains("views do not match the log"), "{}", node.log());
    assert_eq!(read_all(&node), before);
    // A new shard count rebuilds every view; the extra one is removed.
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.set_shards(1);
    node.spawn();
    assert_eq!(tail_entries(&node, 1), [8]);
    assert!(!data.join("shard-1").exists());
    assert_eq!(read_all(&node), before);
}

fn ingest_idem(address: SocketAddr, bearer: &str, entries: &[Entry], idem: &str) -> Response {
    let items: Vec<String> = entries.iter().map(entry_json).collect();
    let body = format!(r#"{{"batch":[{}],"idem_id":"{idem}"}}"#, items.join(","));
    post_json(address, "/ingest", bearer, &body)
}

#[test]
fn an_idem_id_replays_the_original_answer_even_after_a_restart() {
    let mut node = TestNode::start(NodeOptions::default().shards(2));
    let bearer = node.admin();
    assert_eq!(ingest(node.listen, &bearer, &[mint("fund", "alice", 10)]).unwrap().status, 200);
    let pay = [
        entry_of("pay-d", EntryKind::Debit, "alice", 6),
        entry_of("pay-c", EntryKind::Credit, "bob", 6),
    ];
    let first = ingest_idem(node.listen, &bearer, &pay, "pay-1");
    assert_eq!(first.status, 200, "{}", first.text());
    // The same request again, on another port, and a different body under
    // the same key: the original answer, byte for byte, and nothing applied.
    let again = ingest_idem(node.shard_address(1), &bearer, &pay, "pay-1");
    assert_eq!((again.status, &again.body), (200, &first.body));
    let other = ingest_idem(node.listen, &bearer, &[mint("other", "bob", 1)], "pay-1");
    assert_eq!(other.body, first.body);
    assert_eq!(balance(&node, node.listen, "alice"), (4, 0));
    assert_eq!(balance(&node, node.listen, "bob"), (6, 0));
    // Concurrent requests with one new key: one commit, one answer.
    let answers: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let bearer = bearer.clone();
                let address = node.listen;
                scope.spawn(move || {
                    ingest_idem(address, &bearer, &[mint("once", "carol", 5)], "mint-once").body
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(balance(&node, node.listen, "carol"), (5, 0));
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    let after = ingest_idem(node.listen, &bearer, &pay, "pay-1");
    assert_eq!((after.status, &after.body), (200, &first.body));
    assert_eq!(balance(&node, node.listen, "alice"), (4, 0));
}

#[test]
fn a_micronode_commits_in_memory_and_writes_nothing() {
    let node = TestNode::start(NodeOptions::default().amnesia());
    let bearer = node.admin();
    let entries = vec![mint("mem-1", "a", 3), mint("mem-2", "b", 4)];
    let batch = acked(&ingest(node.listen, &bearer, &entries).unwrap(), entries);
    checked_roots(node.listen, &in_sequence(vec![batch]));
    assert_eq!(ingest(node.listen, &bearer, &[mint("mem-1", "a", 3)]).unwrap().status, 409);
    assert_eq!(balance(&node, node.listen, "b"), (4, 0));
    assert!(!node.data_dir.path().join("data").exists(), "a micronode touched the disk");
    assert_eq!(node.metric("ledger_fsync_seconds_count"), 0.0);
}

/// An owner's reservation never outlives the request that asked for it
/// (the wallet's twin is `wallet::a_reservation_never_outlives_its_request`):
/// with a 1 ms mesh timeout, batches debiting one account on each shard,
/// sent many at once, are refused in part with 503; afterwards no account
/// holds a reservation, and each pair moved together or not at all.
#[test]
fn an_owners_reservation_never_outlives_its_request() {
    use ron_proto::routing::owner;
    const PAIRS: usize = 128;
    let options = NodeOptions::default().shards(2).env("RON_LIMITS_REQUEST_TIMEOUT_MS", "1");
    let node = TestNode::start(options);
    let bearer = node.admin();
    let on = |shard: usize| {
        (0..)
            .map(move |i| format!("own{shard}:{i}"))
            .filter(move |a| owner(a.as_bytes(), 2) == shard)
    };
    let pairs: Vec<(String, String)> = on(0).zip(on(1)).take(PAIRS).collect();
    let until_answered = |entries: &[Entry]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let response = ingest(node.shard_address(0), &bearer, entries).unwrap();
            if !matches!(response.status, 429 | 503) || Instant::now() > deadline {
                return response;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for (a, b) in &pairs {
        let minted =
            until_answered(&[mint(&format!("m-{a}"), a, 10), mint(&format!("m-{b}"), b, 10)]);
        assert_eq!(minted.status, 200, "{}", minted.text());
    }
    // The storm, while shard 1 is kept busy: its reservations come late.
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| ron_testing::keep_busy(node.shard_address(1), &bearer, &stop));
        let lanes: Vec<_> = pairs
            .chunks(PAIRS / 16)
            .map(|lane| {
                let (bearer, refused, address) = (&bearer, &refused, node.shard_address(0));
                scope.spawn(move || {
                    for (a, b) in lane {
                        let burns = [
                            entry_of(&format!("b-{a}"), EntryKind::Burn, a, 10),
                            entry_of(&format!("b-{b}"), EntryKind::Burn, b, 10),
                        ];
                        let response = ingest(address, bearer, &burns).unwrap();
                        if matches!(response.status, 429 | 503) {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        lanes.into_iter().for_each(|lane| lane.join().unwrap());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let refused = refused.into_inner();
    eprintln!("{refused} of {PAIRS} batches were refused with 429 or 503");
    assert!(refused > 0, "the 1 ms timeout refused nothing: the test shows nothing");
    for (a, b) in &pairs {
        let (left_a, reserved_a) = balance(&node, node.shard_address(0), a);
        let (left_b, reserved_b) = balance(&node, node.shard_address(1), b);
        assert_eq!((reserved_a, reserved_b), (0, 0), "{a} {b}: a reservation held by nothing");
        assert_eq!(left_a, left_b, "{a} {b}: a batch applied in part");
    }
}

/// A number field of the last start's "ledger log recovered" line.
fn recovered(node: &TestNode, field: &str) -> u64 {
    let log = node.log();
    let line = log.lines().rev().find(|l| l.contains("ledger log recovered")).expect("a start");
    let at = line.find(&format!("{field}=")).expect(field) + field.len() + 1;
    line[at..].split_whitespace().next().unwrap().parse().unwrap()
}

/// What the log index answers for: refused ids, idempotent replays, the
/// roots, and proofs over the whole tree.
fn index_answers(node: &TestNode, entries: &[Entry], idem_answer: &[u8]) {
    let bearer = node.admin();
    assert_eq!(ingest(node.listen, &bearer, &entries[..1]).unwrap().status, 409);
    let again = ingest_idem(node.listen, &bearer, &[mint("x-idem", "b", 2)], "key-1");
    assert_eq!(again.body, idem_answer);
    let roots = checked_roots(node.listen, entries);
    let (size, root) = *roots.last().unwrap();
    assert_eq!(size, entries.len() as u64);
    for seq in [1, size / 2, size] {
        let path = format!("/v1/ledger/proof/inclusion?seq={seq}&root_seq={size}");
        let json = get(node.listen, &path, &[("Authorization", &bearer)]).unwrap().json();
        let leaf_hash = leaf(&entries[seq as usize - 1]);
        assert!(verify_inclusion(seq - 1, size, &leaf_hash, &hash_list(&json, "path"), &root));
    }
}

#[test]
fn a_start_reads_the_log_after_the_index_checkpoint_and_rebuilds_an_index_the_log_disowns() {
    // 16 records to a segment: the checkpoint's record and the tail after
    // it lie in different segments.
    let small_segments = "[ledger]\nsegment_bytes = 65536\n";
    let mut node = TestNode::start(NodeOptions::default().config(small_segments));
    let bearer = node.admin();
    let mut batches = Vec::new();
    let write = |node: &TestNode, requests: std::ops::Range<usize>, batches: &mut Vec<Acked>| {
        for n in requests {
            let entries: Vec<Entry> = (0..3).map(|i| mint(&format!("k{n}-{i}"), "a", 1)).collect();
            batches.push(acked(&ingest(node.listen, &bearer, &entries).unwrap(), entries));
        }
    };
    write(&node, 0..40, &mut batches);
    let idem = [mint("x-idem", "b", 2)];
    let first = ingest_idem(node.listen, &bearer, &idem, "key-1");
    batches.push(acked(&first, idem.to_vec()));
    // A clean stop checkpoints everything: the start reads no record.
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.spawn();
    assert_eq!((recovered(&node, "index_checkpoint"), recovered(&node, "records_read")), (121, 0));
    index_answers(&node, &in_sequence(batches.clone()), &first.body);

    // kill -9 after more writes: the start reads the records after the
    // index's entry ids (one per request here), which go to disk in large
    // batches (or at a stop); the tree and roots may be further on.
    write(&node, 40..50, &mut batches);
    node.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    node.spawn();
    assert_eq!(recovered(&node, "index_ids_checkpoint"), 121);
    assert!((121..=151).contains(&recovered(&node, "index_checkpoint")), "{}", node.log());
    assert_eq!(recovered(&node, "records_read"), 10);
    index_answers(&node, &in_sequence(batches.clone()), &first.body);
    assert!(node.log_holds("the background scan checked the log", 1), "{}", node.log());

    // An index written for another log is not used: rebuilt from this one.
    let mut other = TestNode::start(NodeOptions::default());
    let other_bearer = other.admin();
    for n in 0..60 {
        let entries = [mint(&format!("o{n}"), "z", 1)];
        assert_eq!(ingest(other.listen, &other_bearer, &entries).unwrap().status, 200);
    }
    other.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    node.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    let index_of = |node: &TestNode| node.log_dir().parent().unwrap().join("log-index");
    std::fs::remove_dir_all(index_of(&node)).unwrap();
    copy_dir(&index_of(&other), &index_of(&node));
    node.spawn();
    assert!(node.log().contains("does not match the log: rebuilding it"), "{}", node.log());
    let segments = std::fs::read_dir(node.log_dir()).unwrap().count();
    assert!(segments >= 4, "{segments} segments");
    assert_eq!(recovered(&node, "index_checkpoint"), 0);
    assert_eq!(recovered(&node, "records_read"), 51);
    index_answers(&node, &in_sequence(batches), &first.body);
}
