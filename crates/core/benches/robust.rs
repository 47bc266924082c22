//! Robust reports (`mcloud_core::robust`): what proving costs a sensor (shard) and what
//! verifying costs the clouds (every cloud's prepare, the leader's combine, every cloud's
//! finish), per record and per load histogram, among 3 clouds.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcloud_core::reading::{GroupKey, Metric, Reading};
use mcloud_core::robust::{party_of, Robust, VerifierShares, VerifyKey};
use mcloud_core::upload::PlainHistogram;
use mcloud_core::BatchId;
use std::hint::black_box;

const CLOUDS: u16 = 3;
/// Reports per batch in the bench: enough that per-batch costs vanish.
const REPORTS: usize = 64;

fn inputs(histograms: bool) -> (Vec<Reading>, Vec<PlainHistogram>) {
    let group = GroupKey {
        house: 1,
        household: 0,
        plug: 2,
    };
    if histograms {
        let mut counts = vec![0; mcloud_core::histogram::BUCKETS];
        counts[17] = 25;
        counts[18] = 5;
        let h = (0..REPORTS)
            .map(|i| PlainHistogram {
                plug: group,
                window_start: 30 * i as u64,
                counts: counts.clone(),
            })
            .collect();
        (Vec::new(), h)
    } else {
        let r = (0..REPORTS as u64)
            .map(|k| Reading {
                id: k,
                ts: k,
                value: 123_456 + k,
                metric: Metric::Load,
                group,
            })
            .collect();
        (r, Vec::new())
    }
}

fn robust(c: &mut Criterion) {
    let robust = Robust::new(CLOUDS).unwrap();
    let key = VerifyKey::random();
    let id = BatchId(5);
    let mut group = c.benchmark_group("robust");
    group.throughput(Throughput::Elements(REPORTS as u64));
    for (name, histograms) in [("record", false), ("histogram", true)] {
        let (readings, hists) = inputs(histograms);
        group.bench_function(BenchmarkId::new("shard", name), |b| {
            b.iter(|| black_box(robust.shard_batch(id, &readings, &hists, None).unwrap()))
        });
        let bodies = robust.shard_batch(id, &readings, &hists, None).unwrap();
        group.bench_function(BenchmarkId::new("verify_all_clouds", name), |b| {
            b.iter(|| {
                let prepared: Vec<_> = (0..CLOUDS)
                    .map(|p| robust.prepare(&key, p, &bodies[p as usize]).unwrap())
                    .collect();
                let shares: Vec<VerifierShares> = (0..CLOUDS as usize)
                    .map(|agg| {
                        prepared[party_of(id, agg, CLOUDS) as usize]
                            .shares()
                            .unwrap()
                    })
                    .collect();
                let leader = party_of(id, 0, CLOUDS) as usize;
                let messages = robust.combine(&prepared[leader], &shares).unwrap();
                for p in prepared {
                    black_box(robust.finish(p, &messages).unwrap());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, robust);
criterion_main!(benches);
