//! Share generation: splitting a batch of readings into upload bodies for 1 (plaintext) and
//! 3 clouds, as the sensor does before every upload.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::upload::split_batch;
use mcloud_core::{BatchId, Reading};
use std::hint::black_box;

fn split(c: &mut Criterion) {
    let readings: Vec<Reading> = Synthetic::new(SyntheticConfig::default())
        .take(4096)
        .collect();
    let mut group = c.benchmark_group("split_batch");
    group.throughput(Throughput::Elements(readings.len() as u64));
    for parties in [1u16, 3] {
        group.bench_with_input(
            BenchmarkId::from_parameter(parties),
            &parties,
            |b, &parties| {
                b.iter(|| {
                    black_box(split_batch(
                        BatchId(7),
                        &[7; 32],
                        parties,
                        black_box(&readings),
                        &[],
                    ))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, split);
criterion_main!(benches);
