//! Criterion benches of the rewarder's calculus on the golden vectors
//! (S, M, L): a compute request's body parsed, its snapshot sealed
//! (canonical form, checks, `inputs_cid`), the payouts computed and the
//! manifest serialized — everything a compute does on a worker.
//! `cargo bench -p ron-bench --bench reward_calc`; `cargo test -p
//! ron-bench --benches` runs each once as a test.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ron_bench::reward_vectors::{SCALES, body, epoch_of, request};
use ron_proto::rewarder::{
    ComputeRequest, DEFAULT_SALT, LedgerResult, Policy, Run, compute, run_key, seal,
};
use std::hint::black_box;

fn reward_calc(c: &mut Criterion) {
    let mut group = c.benchmark_group("reward_calc");
    group.sample_size(10);
    for scale in SCALES {
        let bytes = body(&request(scale));
        let epoch = epoch_of(scale);
        group.throughput(Throughput::Elements(scale.events as u64));
        group.bench_function(format!("{}_{}_events", scale.name, scale.events), |b| {
            b.iter(|| {
                let request: ComputeRequest = serde_json::from_slice(&bytes).expect("parses");
                let mut snapshot = request.snapshot.expect("inline");
                seal(&mut snapshot, &request.inputs_cid).expect("sealed");
                let policy =
                    Policy::resolve(request.policy, &request.policy_id, &request.policy_hash)
                        .expect("resolved");
                let key = run_key(DEFAULT_SALT, &epoch, &request.policy_hash, &request.inputs_cid);
                let manifest = compute(&Run {
                    epoch_id: &epoch,
                    run_key: &key,
                    inputs_cid: &request.inputs_cid,
                    snapshot: &snapshot,
                    policy: &policy,
                    ledger: LedgerResult::Accepted,
                })
                .expect("computed");
                black_box(manifest.to_bytes())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, reward_calc);
criterion_main!(benches);
