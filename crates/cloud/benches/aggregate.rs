//! The decoding of an upload body at a cloud, at the explicit party and at a seed party
//! (which expands its shares from the seed). Summing the decoded batch is the workers' part of
//! the upload path, measured with routing and gathering by `mcloud bench --elastic`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::upload::{expand, explicit_party, split_batch};
use mcloud_core::wire::UploadRequest;
use mcloud_core::{BatchId, Reading};
use std::hint::black_box;

fn bodies() -> (Vec<u8>, Vec<u8>) {
    let readings: Vec<Reading> = Synthetic::new(SyntheticConfig::default())
        .take(4096)
        .collect();
    let id = BatchId(1);
    let requests = split_batch(id, &[3; 32], 3, &readings, &[]).unwrap_or_default();
    let explicit = usize::from(explicit_party(id, 3));
    let encode = |r: &UploadRequest| postcard::to_stdvec(r).unwrap_or_default();
    (
        encode(&requests[explicit]),
        encode(&requests[(explicit + 1) % 3]),
    )
}

fn decode(body: &[u8]) -> Option<mcloud_core::wire::UploadBatch> {
    expand(postcard::from_bytes::<UploadRequest>(body).ok()?).ok()
}

fn aggregate(c: &mut Criterion) {
    let (explicit, seed) = bodies();
    let Some(batch) = decode(&explicit) else {
        return;
    };
    let mut group = c.benchmark_group("cloud");
    group.throughput(Throughput::Elements(batch.records.len() as u64));
    group.bench_function("decode_batch", |b| {
        b.iter(|| black_box(decode(black_box(&explicit))))
    });
    group.bench_function("decode_batch_seed", |b| {
        b.iter(|| black_box(decode(black_box(&seed))))
    });
    group.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
