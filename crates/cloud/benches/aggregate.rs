//! Pre-aggregation at a cloud: one upload batch summed per (window, metric, plug), as on the
//! upload path, and the decoding of the batch body it starts from.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mcloud_cloud::windows::BatchPartial;
use mcloud_core::share::{split_record, ShareStream};
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::wire::{ShareRecord, UploadBatch};
use mcloud_core::{BatchId, Field};
use prio::field::FieldElement;
use std::hint::black_box;

fn batch() -> UploadBatch {
    let mut stream = ShareStream::from_seed([3; 32]);
    let mut shares = vec![[Field::zero(); 3]; 3];
    let records = Synthetic::new(SyntheticConfig::default())
        .take(4096)
        .map(|r| {
            split_record(r.value, &mut stream, &mut shares);
            ShareRecord {
                key: r.id,
                ts: r.ts,
                metric: r.metric,
                group: r.group,
                share: shares[0],
            }
        })
        .collect();
    UploadBatch {
        batch_id: BatchId(1),
        party: 0,
        parties: 3,
        records,
        histograms: Vec::new(),
    }
}

fn aggregate(c: &mut Criterion) {
    let batch = batch();
    let body = postcard::to_stdvec(&batch).unwrap_or_default();
    let mut group = c.benchmark_group("cloud");
    group.throughput(Throughput::Elements(batch.records.len() as u64));
    group.bench_function("decode_batch", |b| {
        b.iter(|| black_box(postcard::from_bytes::<UploadBatch>(black_box(&body)).ok()))
    });
    group.bench_function("aggregate_batch", |b| {
        b.iter(|| black_box(BatchPartial::of(black_box(&batch.records), &[], 60)))
    });
    group.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
