//! Robust reports (`mcloud_core::robust`): what one reading's proof costs the sensor (shard)
//! and the clouds (each cloud's verification, and combining their verifier shares), among 3
//! clouds, with and without the 195-bucket load histogram.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcloud_core::robust::{vdaf, RobustReading};
use prio::vdaf::{Aggregator, Client};
use std::hint::black_box;

const CTX: &[u8] = b"mcloud robust bench";

fn robust(c: &mut Criterion) {
    let mut group = c.benchmark_group("robust");
    group.throughput(Throughput::Elements(1));
    for buckets in [0, mcloud_core::histogram::BUCKETS] {
        let vdaf = vdaf(3, mcloud_core::fixed::MAX_FIXED, buckets).unwrap();
        let reading = RobustReading {
            value: 123_456,
            bucket: (buckets > 0).then_some(17),
        };
        let nonce = [7; 16];
        let key = [3; 32];
        group.bench_with_input(BenchmarkId::new("shard", buckets), &reading, |b, r| {
            b.iter(|| black_box(vdaf.shard(CTX, r, &nonce).unwrap()))
        });
        let (public, inputs) = vdaf.shard(CTX, &reading, &nonce).unwrap();
        group.bench_with_input(
            BenchmarkId::new("verify_all_clouds", buckets),
            &(),
            |b, _| {
                b.iter(|| {
                    let shares = (0..3).map(|agg| {
                        vdaf.verify_init(&key, CTX, agg, &(), &nonce, &public, &inputs[agg])
                            .unwrap()
                            .1
                    });
                    black_box(vdaf.verifier_shares_to_message(CTX, &(), shares).unwrap())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, robust);
criterion_main!(benches);
