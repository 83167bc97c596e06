//! The rewarder's golden vectors (issue 13, the seed's reference scales):
//! compute requests generated from a seed — S 1 000 actors / 10 000
//! events, M 10 000 / 100 000, L 50 000 / 500 000 — in the `events`
//! snapshot form, with the policy that weighs their kinds.
//! `ron-load reward-vectors` writes them to `testing/performance/vectors/`;
//! their expected `inputs_cid`, `run_key` and `commitment` are checked in
//! beside them (`expected.json`) and recomputed by the tests.

use ron_proto::rewarder::{
    Amount, ComputeRequest, DEFAULT_SALT, Event, FundingSource, LedgerResult, Manifest, Policy,
    Run, Snapshot, compute, run_key,
};
use serde::Serialize;

/// One reference scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    pub name: &'static str,
    pub actors: usize,
    pub events: usize,
}

pub const SCALES: [Scale; 3] = [
    Scale { name: "S", actors: 1_000, events: 10_000 },
    Scale { name: "M", actors: 10_000, events: 100_000 },
    Scale { name: "L", actors: 50_000, events: 500_000 },
];

/// The generator's seed (changing it changes every expected value).
pub const SEED: u64 = 0x5eed_2026_1201;
/// The event kinds and the score a unit of each is worth.
pub const KINDS: [(&str, u64); 3] = [("stored", 4), ("served", 1), ("uptime", 2)];

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The epoch a scale's vector is computed for.
pub fn epoch_of(scale: Scale) -> String {
    format!("vectors-{}", scale.name)
}

/// The vectors' policy hash: a label, as in the original.
pub fn policy_hash() -> String {
    format!("b3:{}", blake3::hash(b"ron-node reward vectors policy v1").to_hex())
}

pub fn policy() -> Policy {
    let mut policy = Policy::dev_default("vectors:v1", &policy_hash());
    policy.funding_source = FundingSource::ProtocolPool;
    policy.kind_weights =
        KINDS.iter().map(|(kind, weight)| ((*kind).to_owned(), *weight)).collect();
    policy
}

/// The canonical snapshot of `scale`.
pub fn snapshot(scale: Scale) -> Snapshot<'static> {
    let mut rng = Rng(SEED ^ (scale.actors as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let events = (0..scale.events)
        .map(|_| {
            let actor = rng.below(scale.actors as u64);
            let (kind, _) = KINDS[rng.below(KINDS.len() as u64) as usize];
            Event {
                actor: format!("actor-{actor:06}").into(),
                kind: kind.into(),
                units: 1 + rng.below(1000),
            }
        })
        .collect();
    let mut snapshot = Snapshot {
        produced_at_millis: 1_764_547_200_000,
        pool_minor_units: Amount(1_000_000_000_000),
        contributions: Vec::new(),
        events,
    };
    snapshot.canonicalize();
    snapshot
}

/// The compute request of `scale` (live).
pub fn request(scale: Scale) -> ComputeRequest<'static> {
    let snapshot = snapshot(scale);
    ComputeRequest {
        inputs_cid: snapshot.cid(),
        policy_id: "vectors:v1".to_owned(),
        policy_hash: policy_hash(),
        dry_run: false,
        notes: None,
        snapshot: Some(snapshot),
        policy: Some(policy()),
    }
}

/// The request's JSON body.
pub fn body(request: &ComputeRequest<'_>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        inputs_cid: &'a str,
        policy_id: &'a str,
        policy_hash: &'a str,
        dry_run: bool,
        snapshot: &'a Snapshot<'a>,
        policy: &'a Policy,
    }
    let body = Body {
        inputs_cid: &request.inputs_cid,
        policy_id: &request.policy_id,
        policy_hash: &request.policy_hash,
        dry_run: request.dry_run,
        snapshot: request.snapshot.as_ref().expect("vectors are inline"),
        policy: request.policy.as_ref().expect("vectors carry their policy"),
    };
    serde_json::to_vec(&body).expect("a request serializes")
}

/// The manifest the node must answer for `scale`'s request (live, first
/// run, default salt).
pub fn manifest(scale: Scale) -> Manifest {
    let request = request(scale);
    let epoch = epoch_of(scale);
    let key = run_key(DEFAULT_SALT, &epoch, &request.policy_hash, &request.inputs_cid);
    compute(&Run {
        epoch_id: &epoch,
        run_key: &key,
        inputs_cid: &request.inputs_cid,
        snapshot: request.snapshot.as_ref().expect("inline"),
        policy: request.policy.as_ref().expect("given"),
        ledger: LedgerResult::Accepted,
    })
    .expect("the vectors compute")
}

/// What `expected.json` keeps of a scale.
#[derive(Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Expected {
    pub epoch_id: String,
    pub inputs_cid: String,
    pub run_key: String,
    pub commitment: String,
    pub payouts: usize,
    pub residual_minor_units: String,
}

pub fn expected(scale: Scale) -> Expected {
    let manifest = manifest(scale);
    Expected {
        epoch_id: manifest.epoch_id.clone(),
        inputs_cid: manifest.inputs_cid.clone(),
        run_key: manifest.run_key.clone(),
        commitment: manifest.commitment.clone().expect("sealed"),
        payouts: manifest.payouts.len(),
        residual_minor_units: manifest.totals.residual_minor_units.0.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in expected values are what the calculus gives for the
    /// generated vectors (regenerate both with `ron-load reward-vectors`).
    #[test]
    fn the_vectors_give_their_checked_in_values() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../testing/performance/vectors/expected.json");
        let text = std::fs::read_to_string(path).expect("expected.json is checked in");
        let checked_in: std::collections::BTreeMap<String, Expected> =
            serde_json::from_str(&text).unwrap();
        for scale in SCALES {
            assert_eq!(checked_in[scale.name], expected(scale), "scale {}", scale.name);
        }
    }

    #[test]
    fn the_scales_have_their_sizes() {
        for scale in SCALES {
            let snapshot = snapshot(scale);
            assert_eq!(snapshot.events.len(), scale.events);
            let actors: std::collections::BTreeSet<&str> =
                snapshot.events.iter().map(|e| e.actor.as_ref()).collect();
            assert!(actors.len() > scale.actors * 9 / 10 && actors.len() <= scale.actors);
        }
    }
}
