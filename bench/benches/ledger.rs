//! Criterion benches of the committer's CPU path: record encode and decode,
//! and accumulator appends. `cargo bench -p ron-bench --bench ledger`;
//! `cargo test -p ron-bench --benches` runs each once as a test.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ron_proto::ledger::{Entry, EntryKind};
use ron_proto::log::{self as ledger, RecordRead, RecordWriter};
use ron_proto::merkle;
use ron_shards::accumulator::Accumulator;
use std::hint::black_box;

/// Entries per record in the benches: a batch of 16-entry ingest requests.
const BATCH_ENTRIES: usize = 1024;

fn entries(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let entry = Entry {
                id: format!("bench-entry-{i:08}"),
                kind: if i % 2 == 0 { EntryKind::Debit } else { EntryKind::Credit },
                account: format!("acct-{}", i % 1024),
                asset: Some("roc".to_owned()),
                amount: 1_000 + i as u128,
                ts: Some(1_700_000_000_000),
                memo: None,
            };
            let mut encoded = Vec::new();
            entry.encode(&mut encoded);
            encoded
        })
        .collect()
}

fn record_encode_decode(c: &mut Criterion) {
    let encoded = entries(BATCH_ENTRIES);
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(BATCH_ENTRIES as u64));
    group.bench_function("seal_1024_entries", |b| {
        let mut writer = RecordWriter::default();
        b.iter(|| {
            writer.start();
            for entry in &encoded {
                writer.push(entry);
            }
            black_box(writer.seal(1, 0, [0; 32], [1; 32]).len())
        })
    });
    let mut writer = RecordWriter::default();
    writer.start();
    encoded.iter().for_each(|e| writer.push(e));
    let record = writer.seal(1, 0, [0; 32], [1; 32]).to_vec();
    group.bench_function("read_and_decode_1024_entries", |b| {
        b.iter(|| {
            let RecordRead::Record(header, body) = ledger::read_record(&record) else {
                panic!("a valid record")
            };
            let (body, _) = ledger::split_body(body, header.count).expect("a valid body");
            let total: u128 = ledger::body_entries(body)
                .map(|e| Entry::decode(e.expect("framed")).expect("valid").amount)
                .sum();
            black_box(total)
        })
    });
    group.finish();
}

fn accumulator_append(c: &mut Criterion) {
    let leaves: Vec<[u8; 32]> =
        entries(BATCH_ENTRIES).iter().map(|e| merkle::leaf_hash(e)).collect();
    let mut group = c.benchmark_group("accumulator");
    group.throughput(Throughput::Elements(BATCH_ENTRIES as u64));
    group.bench_function("leaf_hash_1024", |b| {
        let encoded = entries(BATCH_ENTRIES);
        b.iter(|| {
            black_box(encoded.iter().map(|e| merkle::leaf_hash(e)[0]).fold(0u8, |a, x| a ^ x))
        })
    });
    group.bench_function("append_1024_and_root", |b| {
        b.iter_batched(
            Accumulator::new,
            |mut accumulator| {
                leaves.iter().for_each(|l| accumulator.push(*l));
                black_box(accumulator.root())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, record_encode_decode, accumulator_append);
criterion_main!(benches);
