//! Share generation: splitting readings into additive shares for 1 (plaintext) and 3 clouds.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcloud_core::share::{split_record, ShareStream};
use mcloud_core::Field;
use prio::field::FieldElement;
use std::hint::black_box;

fn split(c: &mut Criterion) {
    let mut group = c.benchmark_group("split_record");
    let records = 4096u64;
    group.throughput(Throughput::Elements(records));
    for parties in [1usize, 3] {
        group.bench_with_input(
            BenchmarkId::from_parameter(parties),
            &parties,
            |b, &parties| {
                let mut stream = ShareStream::from_seed([7; 32]);
                let mut shares = vec![[Field::zero(); 3]; parties];
                b.iter(|| {
                    for value in 0..records {
                        split_record(black_box(value * 1_237), &mut stream, &mut shares);
                        black_box(&shares);
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, split);
criterion_main!(benches);
