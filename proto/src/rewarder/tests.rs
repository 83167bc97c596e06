//! Golden bytes of the original svc-rewarder, the extensions, and a model
//! test against a plain reference of the formula.
use super::*;

const B64: &str = "b3:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const INPUTS: &str = "b3:81d428e1df7c29a8443467db8ed59ee2628ac43acd47c692fbc3c23ee495606d";

/// The original's integration-test request (accounts out of order).
fn request(dry_run: bool) -> ComputeRequest<'static> {
    let body = format!(
        r#"{{"inputs_cid":"{INPUTS}","policy_id":"policy:v1","policy_hash":"{B64}","dry_run":{dry_run},
        "snapshot":{{"produced_at_millis":1,"pool_minor_units":"1000","contributions":[
          {{"account":"acct_b","bytes_stored":200,"bytes_served":0,"uptime_seconds":20}},
          {{"account":"acct_a","bytes_stored":100,"bytes_served":50,"uptime_seconds":10}}]}},
        "policy":{{"id":"policy:v1","hash":"{B64}","signed":true,"funding_source":"protocol_pool",
          "max_payout_minor_units":"1000","min_payout_minor_units":"1","weight_bps":10000,"rounding":"floor"}}}}"#
    );
    serde_json::from_str(Box::leak(body.into_boxed_str())).unwrap()
}

fn manifest_of(
    epoch: &str,
    request: ComputeRequest<'_>,
    ledger: LedgerResult,
) -> Result<Manifest, Refusal> {
    let inputs_cid = parse_inputs_cid(&request.inputs_cid)?;
    let mut snapshot = request.snapshot.clone().unwrap();
    seal(&mut snapshot, &inputs_cid)?;
    let policy = Policy::resolve(request.policy.clone(), &request.policy_id, &request.policy_hash)?;
    let run_key = run_key(DEFAULT_SALT, epoch, &request.policy_hash, &inputs_cid);
    compute(&Run {
        epoch_id: epoch,
        run_key: &run_key,
        inputs_cid: &inputs_cid,
        snapshot: &snapshot,
        policy: &policy,
        ledger,
    })
}

/// Golden bytes produced by the original svc-rewarder for this request.
#[test]
fn the_originals_manifest_byte_for_byte() {
    let dry = manifest_of("epoch-1", request(true), LedgerResult::DryRun).unwrap();
    let expected = r#"{"version":1,"epoch_id":"epoch-1","run_key":"b3:d61affcf4ac0e833b22b44079b73a4148bf74b08328e41a4ef59ec9815b0cf09","commitment":"b3:e528895f8a851682fbae4caf143de9e5d99217b2c1d2149b8c3d2ab8e22dbdfc","status":"ok","inputs_cid":"b3:81d428e1df7c29a8443467db8ed59ee2628ac43acd47c692fbc3c23ee495606d","totals":{"pool_minor_units":"1000","payout_minor_units":"999","residual_minor_units":"1"},"policy":{"id":"policy:v1","hash":"b3:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","signed":true,"funding_source":"protocol_pool"},"invariants":{"conservation":true,"overflow":false,"idempotent":true},"ledger":{"emitted":false,"result":"dry_run"},"payouts":[{"account":"acct_a","amount_minor_units":"356","score":1220000},{"account":"acct_b","amount_minor_units":"643","score":2200000}],"attestation":null}"#;
    assert_eq!(String::from_utf8(dry.to_bytes()).unwrap(), expected);
    assert_eq!(expected.len(), 812);
    let live = manifest_of("epoch-1", request(false), LedgerResult::Accepted).unwrap();
    let expected_live = expected
        .replace(
            "b3:e528895f8a851682fbae4caf143de9e5d99217b2c1d2149b8c3d2ab8e22dbdfc",
            "b3:619c202bf3ac0dcd1ddbff9be905d942dcaa615d3b283b1ec01f6b443042672a",
        )
        .replace(
            r#""ledger":{"emitted":false,"result":"dry_run"}"#,
            r#""ledger":{"emitted":true,"result":"accepted"}"#,
        );
    assert_eq!(String::from_utf8(live.to_bytes()).unwrap(), expected_live);
    // Stored bytes read back give the same manifest, and the same bytes.
    let read: Manifest = serde_json::from_str(&expected_live).unwrap();
    assert_eq!(read, live);
    assert_eq!(read.commitment_of(), live.commitment.clone().unwrap());
}

#[test]
fn the_originals_settlement_keys_and_memos() {
    let live = manifest_of("epoch-1", request(false), LedgerResult::Accepted).unwrap();
    let settlement = serde_json::to_string(&Settlement::of(&live, "/v1/issue")).unwrap();
    let expected = r#"{"run_key":"b3:d61affcf4ac0e833b22b44079b73a4148bf74b08328e41a4ef59ec9815b0cf09","epoch_id":"epoch-1","manifest_commitment":"b3:619c202bf3ac0dcd1ddbff9be905d942dcaa615d3b283b1ec01f6b443042672a","funding_source":"protocol_pool","wallet_path":"/v1/issue","total_minor_units":"999","requests":[{"to":"acct_a","asset":"roc","amount_minor":"356","idempotency_key":"b3:ba06f27201c32e38a706abc36d7b20596580faad590e179bf530cdee2dd6","memo":"svc-rewarder:epoch-1:acct_a"},{"to":"acct_b","asset":"roc","amount_minor":"643","idempotency_key":"b3:617a3e86474eafb064d4cbdc942adf5fddab40d1ad14f6ed7274c8dce514","memo":"svc-rewarder:epoch-1:acct_b"}]}"#;
    assert_eq!(settlement, expected);
    let dry = manifest_of("epoch-1", request(true), LedgerResult::DryRun).unwrap();
    let keys: Vec<_> = Settlement::of(&dry, "/v1/issue")
        .requests
        .into_iter()
        .map(|r| r.idempotency_key.unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "b3:638324e6c840aef5ae14156d651b3069d1aab6e75a66c0f3c954b4ad2f98",
            "b3:bd2c2de155c583215a4f6c5733f6af3b21cbed65d30c80d01638ff9ba018"
        ]
    );
}

#[test]
fn run_records_round_trip() {
    let live = manifest_of("epoch-1", request(false), LedgerResult::Accepted).unwrap();
    let bytes = live.to_bytes();
    let record = RunRecord::of(&live, &bytes);
    assert_eq!(digest_text(&record.run_key), live.run_key);
    assert_eq!(Some(digest_text(&record.commitment)), live.commitment);
    let mut encoded = Vec::new();
    record.encode(&mut encoded);
    assert_eq!(RunRecord::decode(&encoded), Ok(record));
    assert!(RunRecord::decode(&encoded[..encoded.len() - 1]).is_err());
    encoded.push(0);
    assert!(RunRecord::decode(&encoded).is_err());
    assert_eq!(digest_of("b3:AB"), None);
}

#[test]
fn the_originals_run_keys() {
    let a64 = format!("b3:{}", "a".repeat(64));
    let b64 = format!("b3:{}", "b".repeat(64));
    assert_eq!(
        run_key("salt", "epoch-1", &b64, &a64),
        "b3:ea6413000c26fab26fa1583b1063e47f673547673704b42fc67c05fc5a600a46"
    );
    assert_eq!(
        run_key(DEFAULT_SALT, "epoch-1", &b64, &a64),
        "b3:29400621bc01c104776c6b0c560703ad28427955335c20a5d9a36205ea3a171e"
    );
}

/// Cap of the pool, minimum payout, a zero score, Unicode trimming and
/// weight 3: the original's answer.
#[test]
fn the_originals_edges() {
    let body = r#"{"inputs_cid":"b3:23b2d931fab35aea1a5bba0a94554271d597f1cd50f2af3b1d61927c00fcc6d2","policy_id":"policy:v1","policy_hash":"B64",
      "snapshot":{"produced_at_millis":7,"pool_minor_units":"5000","contributions":[
        {"account":"z","bytes_stored":1,"bytes_served":0,"uptime_seconds":0},
        {"account":"B","bytes_stored":1,"bytes_served":3,"uptime_seconds":0},
        {"account":"\u3000a\t","bytes_stored":1,"bytes_served":0,"uptime_seconds":1},
        {"account":"zero","bytes_stored":0,"bytes_served":3,"uptime_seconds":0}]},
      "policy":{"id":"policy:v1","hash":"B64","signed":false,"funding_source":"sponsor_budget",
        "max_payout_minor_units":"1000","min_payout_minor_units":"300","weight_bps":3,"rounding":"floor"}}"#
        .replace("B64", B64);
    let request: ComputeRequest = serde_json::from_str(&body).unwrap();
    let mut snapshot = request.snapshot.clone().unwrap();
    snapshot.canonicalize();
    assert_eq!(snapshot.cid(), request.inputs_cid);
    let manifest = manifest_of("cap.1:x_y", request, LedgerResult::Accepted).unwrap();
    assert_eq!(
        serde_json::to_string(&manifest.totals).unwrap(),
        r#"{"pool_minor_units":"1000","payout_minor_units":"500","residual_minor_units":"500"}"#
    );
    assert_eq!(
        serde_json::to_string(&manifest.payouts).unwrap(),
        r#"[{"account":"a","amount_minor_units":"500","score":6}]"#
    );
    let settlement = Settlement::of(&manifest, "/v1/issue");
    assert_eq!(settlement.requests[0].memo.as_deref(), Some("svc-rewarder:cap.1:x_y:a"));
    // The keys the original made for this epoch and body.
    assert_eq!(
        manifest.run_key,
        "b3:33c1ee876c9a6b47a27e154310320633e45d6f7ac0d1df11ba36feec96d05815"
    );
    assert_eq!(
        manifest.commitment.as_deref(),
        Some("b3:eaee698a005d48503dae8ba72ebc62da85a335464be641b7155d76e90d8666d3")
    );
    assert_eq!(
        settlement.requests[0].idempotency_key.as_deref(),
        Some("b3:7ca39a56542431cc8bfe16c569e0278ef7adca3d87edbc480b113eaf5e92")
    );
}

#[test]
fn empty_snapshot_and_big_scores() {
    let empty = Snapshot {
        produced_at_millis: 0,
        pool_minor_units: Amount(0),
        contributions: vec![],
        events: vec![],
    };
    assert_eq!(empty.cid(), "b3:340491fd208f690a75ac9d41517d6ca7662f0d8eaa832480c8332901290e544c");
    let policy = Policy::dev_default("p", B64);
    let cid = empty.cid();
    let run = Run {
        epoch_id: "e-zero",
        run_key: "k",
        inputs_cid: &cid,
        snapshot: &empty,
        policy: &policy,
        ledger: LedgerResult::Accepted,
    };
    let manifest = compute(&run).unwrap();
    assert!(manifest.payouts.is_empty());
    assert_eq!(manifest.totals.residual_minor_units, Amount(0));
    // u64::MAX counters, weight 100 000: the score passes 2^64 and is
    // written as a plain number.
    let big = Snapshot {
        events: vec![],
        produced_at_millis: 0,
        pool_minor_units: Amount(1000),
        contributions: vec![
            Contribution {
                account: "big".into(),
                bytes_stored: u64::MAX,
                bytes_served: u64::MAX,
                uptime_seconds: u64::MAX,
            },
            Contribution {
                account: "small".into(),
                bytes_stored: 1,
                bytes_served: 0,
                uptime_seconds: 0,
            },
        ],
    };
    let mut policy = Policy::dev_default("p", B64);
    policy.funding_source = FundingSource::GovernanceBudget;
    policy.min_payout_minor_units = Amount(0);
    policy.weight_bps = 100_000;
    let run = Run { snapshot: &big, policy: &policy, ..run };
    assert_eq!(
        serde_json::to_string(&compute(&run).unwrap().payouts).unwrap(),
        r#"[{"account":"big","amount_minor_units":"999","score":4150517416584649113300000}]"#
    );
}

#[test]
fn overflow_is_quarantined() {
    let snapshot = Snapshot {
        events: vec![],
        produced_at_millis: 0,
        pool_minor_units: Amount(u128::MAX),
        contributions: vec![Contribution {
            account: "acct_overflow".into(),
            bytes_stored: 2,
            bytes_served: 0,
            uptime_seconds: 0,
        }],
    };
    let policy = Policy::dev_default("p", B64);
    let run = Run {
        epoch_id: "q",
        run_key: "k",
        inputs_cid: "c",
        snapshot: &snapshot,
        policy: &policy,
        ledger: LedgerResult::DryRun,
    };
    assert_eq!(compute(&run), Err(Refusal::Quarantined("mul/div overflow".into())));
}

#[test]
fn the_originals_refusals() {
    assert_eq!(
        parse_inputs_cid(" b3:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789 ")
            .unwrap(),
        "b3:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
    );
    assert_eq!(parse_inputs_cid("B3:00"), Err(bad("inputs_cid must start with b3:")));
    assert_eq!(parse_inputs_cid("b3:00"), Err(bad("inputs_cid must be b3:<64 hex chars>")));
    assert_eq!(validate_epoch_id(""), Err(bad("epoch_id must be 1..=128 bytes")));
    assert_eq!(validate_epoch_id(&"e".repeat(129)), Err(bad("epoch_id must be 1..=128 bytes")));
    assert!(validate_epoch_id(&"e".repeat(128)).is_ok());
    assert_eq!(validate_epoch_id("e x"), Err(bad("epoch_id contains unsupported characters")));
    assert!(validate_epoch_id("a:b.c-d_E9").is_ok());
    let mut twice = request(true);
    twice.snapshot.as_mut().unwrap().contributions[0].account = " acct_a ".into();
    assert_eq!(
        manifest_of("e", twice, LedgerResult::DryRun),
        Err(bad("duplicate contribution account: acct_a"))
    );
    let mut other = request(true);
    other.inputs_cid = format!("b3:{}", "c".repeat(64));
    assert_eq!(
        manifest_of("e", other, LedgerResult::DryRun),
        Err(bad(format!("inputs_cid mismatch: expected {INPUTS}, got b3:{}", "c".repeat(64))))
    );
    let resolve = |edit: &dyn Fn(&mut Policy)| {
        let mut policy = Policy::dev_default("p", B64);
        edit(&mut policy);
        Policy::resolve(Some(policy), "p", B64)
    };
    assert_eq!(resolve(&|p| p.id = "q".into()), Err(bad("policy object must match policy_id")));
    assert_eq!(resolve(&|p| p.hash = "x".into()), Err(bad("policy object must match policy_hash")));
    assert_eq!(
        resolve(&|p| p.signed = false),
        Err(bad("funding_source protocol_pool requires signed policy"))
    );
    assert_eq!(resolve(&|p| p.weight_bps = 0), Err(bad("policy weight_bps must be > 0")));
    assert_eq!(
        resolve(&|p| p.weight_bps = 100_001),
        Err(bad("policy weight_bps must be <= 100000"))
    );
    assert_eq!(
        resolve(&|p| p.max_payout_minor_units = Amount(0)),
        Err(bad("policy max_payout_minor_units must be >= min_payout_minor_units"))
    );
    assert_eq!(
        resolve(&|p| p.rounding = "Floor".into()),
        Err(bad("batch 2 supports only rounding=floor"))
    );
    assert_eq!(
        Policy::resolve(None, "p", "b3:zzz"),
        Err(bad("policy_hash must be b3:<64 lowercase hex chars>"))
    );
    assert_eq!(Policy::resolve(None, " ", B64), Err(bad("policy_id cannot be empty")));
    // Money: strings only, Rust's u128 parsing.
    assert_eq!(serde_json::from_str::<Amount>(r#""+7""#).unwrap(), Amount(7));
    assert_eq!(serde_json::from_str::<Amount>(r#""0007""#).unwrap(), Amount(7));
    for refused in
        [r#"" 7""#, r#""-7""#, r#""""#, "7", r#""340282366920938463463374607431768211456""#]
    {
        assert!(serde_json::from_str::<Amount>(refused).is_err(), "{refused}");
    }
    // Unknown fields, at every level; `notes` accepted; `dry_run` null refused.
    let ok = |body: &str| serde_json::from_str::<ComputeRequest>(body).is_ok();
    let head = format!(r#""inputs_cid":"{INPUTS}","policy_id":"p","policy_hash":"{B64}""#);
    assert!(ok(&format!(r#"{{{head},"notes":"hi","snapshot":null,"policy":null}}"#)));
    assert!(!ok(&format!(r#"{{{head},"extra":1}}"#)));
    assert!(!ok(&format!(r#"{{{head},"dry_run":null}}"#)));
    assert!(!ok(&format!(
        r#"{{{head},"snapshot":{{"produced_at_millis":0,"pool_minor_units":"0","contributions":[],"x":1}}}}"#
    )));
}

#[test]
fn largest_remainders_pay_the_pool_exactly_and_caps_hold() {
    let snapshot = |pool: u128, scores: &[(&str, u64)]| Snapshot::<'static> {
        events: vec![],
        produced_at_millis: 0,
        pool_minor_units: Amount(pool),
        contributions: scores
            .iter()
            .map(|(a, s)| Contribution {
                account: a.to_string().into(),
                bytes_stored: *s,
                bytes_served: 0,
                uptime_seconds: 0,
            })
            .collect(),
    };
    let three = snapshot(100, &[("c", 1), ("a", 1), ("b", 1)]);
    let mut policy = Policy::dev_default("p", B64);
    policy.rounding = "largest_remainder".into();
    let run = Run {
        epoch_id: "e",
        run_key: "k",
        inputs_cid: "c",
        snapshot: &three,
        policy: &policy,
        ledger: LedgerResult::DryRun,
    };
    let manifest = compute(&run).unwrap();
    let amounts: Vec<u128> = manifest.payouts.iter().map(|p| p.amount_minor_units.0).collect();
    // 33⅓ each: the one unit left goes to the smallest account.
    assert_eq!(amounts, [34, 33, 33]);
    assert_eq!(manifest.totals.residual_minor_units, Amount(0));
    // With floor: 33 each, 1 left.
    let floor = Policy::dev_default("p", B64);
    let manifest = compute(&Run { policy: &floor, ..run }).unwrap();
    assert_eq!(manifest.totals.residual_minor_units, Amount(1));
    // A cap: the excess stays in the residual.
    let mut capped = policy.clone();
    capped.max_per_payout_minor_units = Some(Amount(30));
    let manifest = compute(&Run { policy: &capped, ..run }).unwrap();
    assert!(manifest.payouts.iter().all(|p| p.amount_minor_units.0 == 30));
    assert_eq!(manifest.totals.residual_minor_units, Amount(10));
}

/// Payouts as (account, amount, score).
type Paid = Vec<(String, u128, u128)>;

/// A plain reference of the formula: every share as a fraction, then
/// floors, or floors plus one unit for the largest remainders, all in
/// checked u128 (`None`: the run must be quarantined).
fn reference(
    contributions: &[(String, u64, u64, u64)],
    pool: u128,
    policy: &Policy,
) -> Option<(Paid, u128)> {
    let mut rows: Vec<(String, u128)> = Vec::new();
    for (account, stored, served, uptime) in contributions {
        let raw = u128::from(*stored) + u128::from(served / 4) + u128::from(*uptime);
        let weighted = raw.checked_mul(u128::from(policy.weight_bps))?;
        if weighted > 0 {
            rows.push((account.trim().to_owned(), weighted));
        }
    }
    rows.sort();
    let pool = pool.min(policy.max_payout_minor_units.0);
    let total = rows.iter().try_fold(0u128, |sum, (_, w)| sum.checked_add(*w))?;
    let mut shares: Vec<(String, u128, u128, u128)> = Vec::new();
    if total > 0 && pool > 0 {
        for (account, weighted) in &rows {
            let product = pool.checked_mul(*weighted)?;
            shares.push((account.clone(), *weighted, product / total, product % total));
        }
    }
    if policy.rounding == "largest_remainder" {
        let left = pool - shares.iter().map(|s| s.2).sum::<u128>();
        let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
        by_remainder
            .sort_by(|a, b| shares[*b].3.cmp(&shares[*a].3).then(shares[*a].0.cmp(&shares[*b].0)));
        for at in by_remainder.into_iter().take(left as usize) {
            shares[at].2 += 1;
        }
    }
    let cap = policy.max_per_payout_minor_units.map_or(u128::MAX, |a| a.0);
    let payouts: Paid = shares
        .into_iter()
        .filter(|s| s.2 > 0 && s.2 >= policy.min_payout_minor_units.0)
        .map(|(account, weighted, amount, _)| (account, amount.min(cap), weighted))
        .collect();
    let paid: u128 = payouts.iter().map(|p| p.1).sum();
    Some((payouts, pool - paid))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Random snapshots and policies against the reference, both
    /// roundings: the same payouts and residual (or both quarantined),
    /// the pool conserved, a commitment that is the digest of the rest,
    /// and an `inputs_cid` that does not depend on the accounts' order.
    #[test]
    fn the_calculus_matches_the_reference(
        accounts in proptest::collection::btree_set("[a-e]{1,3}", 0..12),
        counters in proptest::collection::vec((0u64..5_000, 0u64..5_000, 0u64..5_000), 12),
        huge in proptest::bool::weighted(0.05),
        pool in 0u128..1_000_000,
        max_payout in 0u128..2_000_000,
        min_payout in 0u128..50,
        weight_bps in 1u32..=100_000,
        largest in proptest::bool::ANY,
        cap in proptest::option::of(1u128..100_000),
        seed in 0u64..1000,
    ) {
        let contributions: Vec<(String, u64, u64, u64)> = accounts
            .iter()
            .zip(&counters)
            .map(|(a, (x, y, z))| (a.clone(), *x, *y, *z))
            .collect();
        let pool = if huge { u128::MAX / 3 } else { pool };
        let mut policy = Policy::dev_default("p", &format!("b3:{}", "e".repeat(64)));
        policy.max_payout_minor_units = Amount(max_payout.max(min_payout).max(if huge { u128::MAX } else { 0 }));
        policy.min_payout_minor_units = Amount(min_payout);
        policy.weight_bps = weight_bps;
        policy.rounding = if largest { "largest_remainder" } else { "floor" }.to_owned();
        policy.max_per_payout_minor_units = cap.map(Amount);
        // The snapshot in a shuffled order: the canonical form sorts it.
        let mut shuffled = contributions.clone();
        let n = shuffled.len().max(1);
        shuffled.rotate_left(seed as usize % n);
        let mut snapshot = Snapshot {
            events: vec![],
            produced_at_millis: seed,
            pool_minor_units: Amount(pool),
            contributions: shuffled
                .iter()
                .map(|(account, stored, served, uptime)| Contribution {
                    account: format!(" {account}").into(),
                    bytes_stored: *stored,
                    bytes_served: *served,
                    uptime_seconds: *uptime,
                })
                .collect(),
        };
        snapshot.canonicalize();
        let mut sorted = Snapshot { contributions: snapshot.contributions.clone(), ..snapshot.clone() };
        sorted.contributions.reverse();
        sorted.canonicalize();
        proptest::prop_assert_eq!(sorted.cid(), snapshot.cid());
        let cid = snapshot.cid();
        let run = Run {
            epoch_id: "e",
            run_key: "k",
            inputs_cid: &cid,
            snapshot: &snapshot,
            policy: &policy,
            ledger: LedgerResult::DryRun,
        };
        match (compute(&run), reference(&contributions, pool, &policy)) {
            (Ok(manifest), Some((payouts, residual))) => {
                let got: Paid = manifest
                    .payouts
                    .iter()
                    .map(|p| (p.account.clone(), p.amount_minor_units.0, p.score))
                    .collect();
                proptest::prop_assert_eq!(got, payouts);
                proptest::prop_assert_eq!(manifest.totals.residual_minor_units.0, residual);
                let totals = &manifest.totals;
                proptest::prop_assert_eq!(
                    totals.payout_minor_units.0 + totals.residual_minor_units.0,
                    totals.pool_minor_units.0
                );
                if largest && min_payout <= 1 && cap.is_none() && !manifest.payouts.is_empty() {
                    proptest::prop_assert_eq!(residual, 0, "largest remainders pay the pool");
                }
                proptest::prop_assert_eq!(manifest.commitment.clone(), Some(manifest.commitment_of()));
            }
            (Err(Refusal::Quarantined(_)), None) => {}
            (got, expected) => proptest::prop_assert!(false, "{got:?} against {expected:?}"),
        }
    }
}

#[test]
fn events_add_weighted_units_to_the_originals_scores() {
    let body = r#"{"produced_at_millis":3,"pool_minor_units":"1000","contributions":[
        {"account":"a","bytes_stored":100,"bytes_served":0,"uptime_seconds":0}],
      "events":[{"actor":" b ","kind":"served","units":30},{"actor":"a","kind":"stored","units":5},
        {"actor":"b","kind":"served","units":20}]}"#;
    let mut snapshot: Snapshot = serde_json::from_str(body).unwrap();
    snapshot.canonicalize();
    snapshot.validate().unwrap();
    // Canonical: events trimmed and sorted; the cid does not depend on
    // their order.
    let canonical = String::from_utf8(snapshot.canonical_bytes()).unwrap();
    assert!(canonical.ends_with(r#""events":[{"actor":"a","kind":"stored","units":5},{"actor":"b","kind":"served","units":20},{"actor":"b","kind":"served","units":30}]}"#), "{canonical}");
    let policy = Policy::dev_default("p", B64);
    let cid = snapshot.cid();
    let run = Run {
        epoch_id: "e",
        run_key: "k",
        inputs_cid: &cid,
        snapshot: &snapshot,
        policy: &policy,
        ledger: LedgerResult::DryRun,
    };
    assert_eq!(compute(&run), Err(bad("event kind stored has no weight in policy.kind_weights")));
    let mut weighted = policy.clone();
    weighted.kind_weights = [("stored".to_owned(), 10), ("served".to_owned(), 1)].into();
    let run = Run { policy: &weighted, ..run };
    let manifest = compute(&run).unwrap();
    // a: 100 + 5 × 10 = 150; b: 50 × 1 = 50 (× weight_bps 10 000).
    let got: Vec<(String, u128, u128)> = manifest
        .payouts
        .iter()
        .map(|p| (p.account.clone(), p.amount_minor_units.0, p.score))
        .collect();
    assert_eq!(got, [("a".to_owned(), 750, 1_500_000), ("b".to_owned(), 250, 500_000)]);
    // Without events, the original's bytes are unchanged (the golden
    // tests above), and no `events` key is written.
    let plain = Snapshot { events: vec![], ..snapshot };
    assert!(!String::from_utf8(plain.canonical_bytes()).unwrap().contains("events"));
}
