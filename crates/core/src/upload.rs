//! One batch's upload bodies: splitting a sensor's batch into one body per cloud, and
//! expanding a body back into the shares the cloud aggregates.
//!
//! As Prio3 does for its helpers, exactly one party of a batch, the explicit party, receives
//! its shares explicitly; every other party receives a 32-byte seed and expands its shares
//! from it with a `ShareStream`, in the order `Shares` documents. The explicit shares are the
//! values minus the sum of the other parties' expanded shares, so all shares add up to the
//! values. A seed party's body carries the metadata only (key, time, metric and group of each
//! record; plug and window of each histogram), which every cloud needs in the clear anyway.
//!
//! Each party's seed comes from the batch's master seed (`party_seed`, one ChaCha12 stream per
//! party), which the sensor keeps in its outbox, so a retry sends every cloud the very body it
//! sent the first time and a cloud learns its own seed only. Any N−1 parties still see
//! uniformly random shares: without the explicit party they hold independent PRG outputs
//! only, and with it the missing seed party's PRG output masks the values.

use crate::histogram::BUCKETS;
use crate::reading::{GroupKey, Reading};
use crate::share::{party_seed, record_values, RecordShares, ShareStream};
use crate::wire::{
    BatchId, HistogramMeta, HistogramShare, RecordMeta, ShareRecord, Shares, UploadBatch,
    UploadRequest,
};
use crate::{CountField, Field};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A plug's load readings in one 30 s window, counted per bucket of `histogram`, before
/// sharing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlainHistogram {
    pub plug: GroupKey,
    pub window_start: u64,
    pub counts: Vec<u64>,
}

/// Why a batch cannot be split.
#[derive(Debug, Error, PartialEq)]
pub enum SplitError {
    #[error("a batch is split for at least one cloud")]
    NoParties,
    #[error("histogram of plug {plug:?} at {window_start} has {got} buckets, expected {BUCKETS}")]
    Buckets {
        plug: GroupKey,
        window_start: u64,
        got: usize,
    },
}

/// Why an upload body does not expand into shares.
#[derive(Debug, Error, PartialEq)]
pub enum ExpandError {
    #[error("batch {id} is addressed to cloud {party} of {parties}, which does not exist")]
    NoSuchParty {
        id: BatchId,
        party: u16,
        parties: u16,
    },
    #[error("batch {id}: cloud {party} receives a seed for this batch (its explicit party is cloud {explicit}, the batch id mod {parties}), but the body carries explicit shares")]
    ExplicitAtSeedParty {
        id: BatchId,
        party: u16,
        parties: u16,
        explicit: u16,
    },
    #[error("batch {id}: cloud {party} is this batch's explicit party (the batch id mod {parties}), but the body carries a seed instead of explicit shares")]
    SeedAtExplicitParty {
        id: BatchId,
        party: u16,
        parties: u16,
    },
    #[error("batch {id}: the explicit shares hold {got} record shares for {records} records")]
    RecordShares {
        id: BatchId,
        got: usize,
        records: usize,
    },
    #[error("batch {id}: the explicit shares hold {got} histogram counts for {histograms} histograms of {BUCKETS} buckets")]
    HistogramShares {
        id: BatchId,
        got: usize,
        histograms: usize,
    },
}

/// The party that receives a batch's shares explicitly: the batch id modulo the number of
/// parties. The explicit body is several times the size of a seed body, and batch ids are
/// uniformly random, so this spreads the explicit bytes (and the storage they take) evenly
/// over the clouds instead of loading one of them with nearly all of it; and every cloud
/// computes it from the batch id it receives anyway, so all of them agree which party is
/// explicit without anything else to agree on. With one party it is that party.
pub fn explicit_party(batch_id: BatchId, parties: u16) -> u16 {
    (batch_id.0 % u128::from(parties.max(1))) as u16
}

/// Splits a batch into one upload body per party, in party order. The same arguments give
/// the same bodies, byte for byte.
pub fn split_batch(
    batch_id: BatchId,
    master_seed: &[u8; 32],
    parties: u16,
    readings: &[Reading],
    histograms: &[PlainHistogram],
) -> Result<Vec<UploadRequest>, SplitError> {
    if parties == 0 {
        return Err(SplitError::NoParties);
    }
    let explicit = explicit_party(batch_id, parties);
    // One stream per seed party, each drawn in the order its party will expand it in.
    let mut streams: Vec<ShareStream> = (0..parties)
        .filter(|&p| p != explicit)
        .map(|p| ShareStream::from_seed(party_seed(master_seed, p)))
        .collect();
    let mut record_shares: Vec<RecordShares> = Vec::with_capacity(readings.len());
    for r in readings {
        let mut share = record_values(r.value);
        for stream in &mut streams {
            for element in &mut share {
                *element -= stream.next_element::<Field>();
            }
        }
        record_shares.push(share);
    }
    let mut count_shares: Vec<CountField> = Vec::with_capacity(histograms.len() * BUCKETS);
    for h in histograms {
        if h.counts.len() != BUCKETS {
            return Err(SplitError::Buckets {
                plug: h.plug,
                window_start: h.window_start,
                got: h.counts.len(),
            });
        }
        for &count in &h.counts {
            let mut share = CountField::from(count);
            for stream in &mut streams {
                share -= stream.next_element::<CountField>();
            }
            count_shares.push(share);
        }
    }
    let (records, histogram_meta) = metadata(readings, histograms);
    let mut explicit_shares = Some(Shares::Explicit {
        records: record_shares,
        histograms: count_shares,
    });
    Ok((0..parties)
        .map(|party| UploadRequest {
            batch_id,
            party,
            parties,
            records: records.clone(),
            histograms: histogram_meta.clone(),
            shares: match explicit_shares.take_if(|_| party == explicit) {
                Some(shares) => shares,
                None => Shares::Seed(party_seed(master_seed, party)),
            },
        })
        .collect())
}

/// What travels in the clear about a batch's readings and histograms: the same in every
/// cloud's body, plain or robust.
pub fn metadata(
    readings: &[Reading],
    histograms: &[PlainHistogram],
) -> (Vec<RecordMeta>, Vec<HistogramMeta>) {
    let records = readings
        .iter()
        .map(|r| RecordMeta {
            key: r.id,
            ts: r.ts,
            metric: r.metric,
            group: r.group,
        })
        .collect();
    let histograms = histograms
        .iter()
        .map(|h| HistogramMeta {
            plug: h.plug,
            window_start: h.window_start,
        })
        .collect();
    (records, histograms)
}

/// Turns an upload body into the batch of explicit shares the cloud aggregates: a seed is
/// expanded (every record's 3 elements in record order, then every histogram's buckets in
/// order), explicit and verified shares are checked to fit the metadata exactly. Refuses a
/// body that disagrees with `explicit_party` on which kind of shares this party receives.
/// Verified shares are a cloud's own (see `Shares::Verified`): the cloud refuses them from a
/// sensor before this.
pub fn expand(request: UploadRequest) -> Result<UploadBatch, ExpandError> {
    let UploadRequest {
        batch_id: id,
        party,
        parties,
        records,
        histograms,
        shares,
    } = request;
    if party >= parties {
        return Err(ExpandError::NoSuchParty { id, party, parties });
    }
    let explicit = explicit_party(id, parties);
    let (record_shares, count_shares) = match shares {
        Shares::Verified {
            records: record_shares,
            histograms: count_shares,
        } => {
            check_explicit_lengths(id, &records, &histograms, &record_shares, &count_shares)?;
            (record_shares, count_shares)
        }
        Shares::Explicit {
            records: record_shares,
            histograms: count_shares,
        } => {
            if party != explicit {
                return Err(ExpandError::ExplicitAtSeedParty {
                    id,
                    party,
                    parties,
                    explicit,
                });
            }
            check_explicit_lengths(id, &records, &histograms, &record_shares, &count_shares)?;
            (record_shares, count_shares)
        }
        Shares::Seed(seed) => {
            if party == explicit {
                return Err(ExpandError::SeedAtExplicitParty { id, party, parties });
            }
            let mut stream = ShareStream::from_seed(seed);
            let record_shares: Vec<RecordShares> = records
                .iter()
                .map(|_| {
                    [
                        stream.next_element(),
                        stream.next_element(),
                        stream.next_element(),
                    ]
                })
                .collect();
            let count_shares: Vec<CountField> = (0..histograms.len() * BUCKETS)
                .map(|_| stream.next_element())
                .collect();
            (record_shares, count_shares)
        }
    };
    Ok(UploadBatch {
        batch_id: id,
        party,
        parties,
        records: records
            .into_iter()
            .zip(record_shares)
            .map(|(m, share)| ShareRecord {
                key: m.key,
                ts: m.ts,
                metric: m.metric,
                group: m.group,
                share,
            })
            .collect(),
        histograms: histograms
            .into_iter()
            .zip(count_shares.chunks_exact(BUCKETS))
            .map(|(m, counts)| HistogramShare {
                plug: m.plug,
                window_start: m.window_start,
                counts: counts.to_vec(),
            })
            .collect(),
    })
}

/// Explicit shares must fit the metadata exactly: one per record, `BUCKETS` per histogram.
fn check_explicit_lengths(
    id: BatchId,
    records: &[RecordMeta],
    histograms: &[HistogramMeta],
    record_shares: &[RecordShares],
    count_shares: &[CountField],
) -> Result<(), ExpandError> {
    if record_shares.len() != records.len() {
        return Err(ExpandError::RecordShares {
            id,
            got: record_shares.len(),
            records: records.len(),
        });
    }
    if Some(count_shares.len()) != histograms.len().checked_mul(BUCKETS) {
        return Err(ExpandError::HistogramShares {
            id,
            got: count_shares.len(),
            histograms: histograms.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Metric;
    use crate::share::reconstruct;
    use crate::synthetic::{Synthetic, SyntheticConfig};
    use crate::window::Window;
    use prio::field::FieldElement;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Fails unless `samples` observations spread over 16 cells as uniformly as chance
    /// allows: chi-square with 15 degrees of freedom below 37.7, its 0.1 % critical value.
    pub(crate) fn assert_uniform(cells: &[u64; 16], samples: u64, what: &str) {
        let expected = samples as f64 / 16.0;
        let chi2: f64 = cells
            .iter()
            .map(|&o| (o as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 37.7, "{what}: chi-square {chi2} over {cells:?}");
    }

    fn reading(key: u64, value: u64) -> Reading {
        Reading {
            id: key,
            ts: 1_400_000_000 + key,
            value,
            metric: if key % 2 == 0 {
                Metric::Load
            } else {
                Metric::Work
            },
            group: GroupKey {
                house: (key % 5) as u32,
                household: 0,
                plug: (key % 7) as u32,
            },
        }
    }

    fn histogram(i: u64, counts: Vec<u64>) -> PlainHistogram {
        PlainHistogram {
            plug: GroupKey {
                house: 1,
                household: 2,
                plug: i as u32,
            },
            window_start: 30 * i,
            counts,
        }
    }

    fn encode(request: &UploadRequest) -> Vec<u8> {
        postcard::to_stdvec(request).expect("encoding never fails")
    }

    proptest! {
        #[test]
        fn every_partys_expansion_adds_up_to_the_values(
            values in prop::collection::vec(0u64..(1 << 40), 0..20),
            counts in prop::collection::vec(prop::collection::vec(0u64..(1 << 40), BUCKETS), 0..3),
            parties in 1u16..=6,
            master in any::<[u8; 32]>(),
            id in any::<u128>(),
        ) {
            let readings: Vec<Reading> = values
                .iter()
                .enumerate()
                .map(|(k, &v)| reading(k as u64, v))
                .collect();
            let histograms: Vec<PlainHistogram> = counts
                .iter()
                .enumerate()
                .map(|(i, c)| histogram(i as u64, c.clone()))
                .collect();
            let batch_id = BatchId(id);
            let requests = split_batch(batch_id, &master, parties, &readings, &histograms).unwrap();
            prop_assert_eq!(requests.len(), parties as usize);
            let again = split_batch(batch_id, &master, parties, &readings, &histograms).unwrap();
            for (a, b) in requests.iter().zip(&again) {
                prop_assert_eq!(encode(a), encode(b));
            }
            let explicit = explicit_party(batch_id, parties);
            let mut record_sums = vec![[Field::zero(); 3]; readings.len()];
            let mut count_sums = vec![vec![CountField::zero(); BUCKETS]; histograms.len()];
            for (party, request) in requests.into_iter().enumerate() {
                prop_assert_eq!(request.party as usize, party);
                let is_seed = matches!(request.shares, Shares::Seed(_));
                prop_assert_eq!(is_seed, party != explicit as usize);
                if !is_seed {
                    // Every party computes the explicit body's share bytes from the metadata.
                    let seed_body = UploadRequest { shares: Shares::Seed([0; 32]), ..request.clone() };
                    prop_assert_eq!(
                        encode(&request).len() + 33,
                        encode(&seed_body).len() + request.explicit_share_bytes()
                    );
                }
                let batch = expand(request).unwrap();
                prop_assert_eq!(batch.records.len(), readings.len());
                for ((sum, record), r) in record_sums.iter_mut().zip(&batch.records).zip(&readings) {
                    prop_assert_eq!((record.key, record.ts, record.metric, record.group), (r.id, r.ts, r.metric, r.group));
                    *sum = reconstruct(&[*sum, record.share]);
                }
                prop_assert_eq!(batch.histograms.len(), histograms.len());
                for ((sum, h), plain) in count_sums.iter_mut().zip(&batch.histograms).zip(&histograms) {
                    prop_assert_eq!((h.plug, h.window_start), (plain.plug, plain.window_start));
                    for (s, c) in sum.iter_mut().zip(&h.counts) {
                        *s += *c;
                    }
                }
            }
            for (sum, r) in record_sums.iter().zip(&readings) {
                prop_assert_eq!(*sum, record_values(r.value));
            }
            for (sum, plain) in count_sums.iter().zip(&histograms) {
                let revealed: Vec<u64> = sum.iter().map(|&c| u64::from(c)).collect();
                prop_assert_eq!(&revealed, &plain.counts);
            }
        }
    }

    fn requests_for(id: u128, parties: u16) -> Vec<UploadRequest> {
        let readings: Vec<Reading> = (0..4).map(|k| reading(k, k * 1000)).collect();
        let histograms = vec![
            histogram(0, vec![1; BUCKETS]),
            histogram(1, vec![2; BUCKETS]),
        ];
        split_batch(BatchId(id), &[9; 32], parties, &readings, &histograms).unwrap()
    }

    #[test]
    fn the_explicit_party_rotates_with_the_batch_id() {
        let mut explicit_at = [0; 3];
        for id in 0..300u128 {
            let requests = requests_for(id, 3);
            let explicit: Vec<usize> = requests
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r.shares, Shares::Explicit { .. }))
                .map(|(p, _)| p)
                .collect();
            assert_eq!(explicit, vec![(id % 3) as usize]);
            explicit_at[explicit[0]] += 1;
        }
        assert_eq!(explicit_at, [100; 3]);
        // With one party, it is the explicit party and its shares are the values.
        let single = expand(requests_for(7, 1).remove(0)).unwrap();
        assert_eq!(single.records[1].share, record_values(1000));
        assert_eq!(
            single.histograms[1].counts,
            vec![CountField::from(2u64); BUCKETS]
        );
    }

    #[test]
    fn bodies_that_disagree_on_the_explicit_party_or_the_lengths_are_refused() {
        let requests = requests_for(4, 3); // explicit party 1
        let explicit = requests[1].clone();
        let Shares::Explicit {
            records,
            histograms,
        } = explicit.shares.clone()
        else {
            panic!("party 1 is explicit");
        };
        let at_seed_party = UploadRequest {
            party: 0,
            ..explicit.clone()
        };
        assert!(matches!(
            expand(at_seed_party),
            Err(ExpandError::ExplicitAtSeedParty { explicit: 1, .. })
        ));
        let seed_at_explicit = UploadRequest {
            shares: Shares::Seed([1; 32]),
            ..explicit.clone()
        };
        assert!(matches!(
            expand(seed_at_explicit),
            Err(ExpandError::SeedAtExplicitParty { party: 1, .. })
        ));
        let short = UploadRequest {
            shares: Shares::Explicit {
                records: records[1..].to_vec(),
                histograms: histograms.clone(),
            },
            ..explicit.clone()
        };
        assert_eq!(
            expand(short).unwrap_err().to_string(),
            format!(
                "batch {}: the explicit shares hold 3 record shares for 4 records",
                BatchId(4)
            )
        );
        let long = UploadRequest {
            shares: Shares::Explicit {
                records,
                histograms: [histograms.clone(), vec![CountField::one()]].concat(),
            },
            ..explicit.clone()
        };
        assert!(matches!(
            expand(long),
            Err(ExpandError::HistogramShares {
                got,
                histograms: 2,
                ..
            }) if got == 2 * BUCKETS + 1
        ));
        let nobody = UploadRequest {
            party: 3,
            ..requests[0].clone()
        };
        assert!(matches!(
            expand(nobody),
            Err(ExpandError::NoSuchParty { .. })
        ));
        assert!(matches!(
            split_batch(BatchId(1), &[0; 32], 3, &[], &[histogram(0, vec![0; 3])]),
            Err(SplitError::Buckets { got: 3, .. })
        ));
        assert_eq!(
            split_batch(BatchId(1), &[0; 32], 0, &[], &[]),
            Err(SplitError::NoParties)
        );
    }

    /// Any N−1 parties' expanded shares are jointly uniform, whatever the values: for every
    /// pair of three parties, a chi-square test over the top 2 bits of both parties' share of
    /// the same element (16 cells, 15 degrees of freedom; 37.7 is the 0.1 % critical value),
    /// for record shares and count shares, for values that are always 0 and always the
    /// largest. The explicit party moves with the batch id, so every pair includes pairs of
    /// seed parties and pairs with the explicit party. Fixed seeds, so the test is
    /// deterministic.
    #[test]
    fn any_n_minus_one_parties_expanded_shares_look_uniform() {
        let pairs = [(0usize, 1usize), (0, 2), (1, 2)];
        for (value, count) in [(0u64, 0u64), ((1 << 40) - 1, (1 << 40) - 1)] {
            let readings: Vec<Reading> = (0..100).map(|k| reading(k, value)).collect();
            let histograms: Vec<PlainHistogram> =
                (0..2).map(|i| histogram(i, vec![count; BUCKETS])).collect();
            let mut record_cells = [[0u64; 16]; 3];
            let mut count_cells = [[0u64; 16]; 3];
            let (mut record_samples, mut count_samples) = (0u64, 0u64);
            for b in 0..240u128 {
                let master = [(b % 251) as u8 ^ (value as u8); 32];
                let batches: Vec<UploadBatch> =
                    split_batch(BatchId(b), &master, 3, &readings, &histograms)
                        .unwrap()
                        .into_iter()
                        .map(|r| expand(r).unwrap())
                        .collect();
                for (cells, &(a, c)) in record_cells.iter_mut().zip(&pairs) {
                    for (ra, rc) in batches[a].records.iter().zip(&batches[c].records) {
                        for (x, y) in ra.share.iter().zip(&rc.share) {
                            let cell = (u128::from(*x) >> 126) * 4 + (u128::from(*y) >> 126);
                            cells[cell as usize] += 1;
                        }
                    }
                }
                for (cells, &(a, c)) in count_cells.iter_mut().zip(&pairs) {
                    for (ha, hc) in batches[a].histograms.iter().zip(&batches[c].histograms) {
                        for (x, y) in ha.counts.iter().zip(&hc.counts) {
                            let cell = (u64::from(*x) >> 62) * 4 + (u64::from(*y) >> 62);
                            cells[cell as usize] += 1;
                        }
                    }
                }
                record_samples += 300;
                count_samples += 2 * BUCKETS as u64;
            }
            for (kind, cells, samples) in [
                ("record", record_cells, record_samples),
                ("count", count_cells, count_samples),
            ] {
                for (cell, pair) in cells.iter().zip(&pairs) {
                    assert_uniform(
                        cell,
                        samples,
                        &format!("{kind} shares of parties {pair:?}, value {value}"),
                    );
                }
            }
        }
    }

    /// The body each cloud receives, in the format before seeds (every cloud explicit shares,
    /// histogram counts in `Field`), for comparison.
    #[derive(Serialize)]
    struct ExplicitOnlyBatch {
        batch_id: BatchId,
        party: u16,
        parties: u16,
        records: Vec<ShareRecord>,
        histograms: Vec<(GroupKey, u64, Vec<Field>)>,
    }

    fn explicit_only_body(batch: &UploadBatch, with_histograms: bool) -> usize {
        let old = ExplicitOnlyBatch {
            batch_id: batch.batch_id,
            party: batch.party,
            parties: batch.parties,
            records: batch.records.clone(),
            histograms: if with_histograms {
                batch
                    .histograms
                    .iter()
                    // A `Field` element takes 17 bytes whatever its value.
                    .map(|h| (h.plug, h.window_start, vec![Field::zero(); h.counts.len()]))
                    .collect()
            } else {
                Vec::new()
            },
        };
        postcard::to_stdvec(&old)
            .expect("encoding never fails")
            .len()
    }

    /// Bytes per reading and cloud of a realistic batch (4096 readings of 107 plugs, one
    /// reading per plug and minute, with the load histograms of the 30 s windows they cover),
    /// before seeds and after, for 3 parties. Run with `--nocapture` to see the figures the
    /// README quotes.
    #[test]
    fn seed_parties_receive_a_fraction_of_the_bytes() {
        let readings: Vec<Reading> = Synthetic::new(SyntheticConfig {
            houses: 107,
            households_per_house: 1,
            plugs_per_household: 1,
            duration_secs: 86_400,
            interval_secs: 60,
            ..SyntheticConfig::default()
        })
        .take(4096)
        .collect();
        let mut cells: BTreeMap<(u64, GroupKey), Vec<u64>> = BTreeMap::new();
        for r in readings.iter().filter(|r| r.metric == Metric::Load) {
            let start = Window::containing(r.ts, 30).start;
            cells
                .entry((start, r.group))
                .or_insert_with(|| vec![0; BUCKETS])[crate::histogram::bucket_of(r.value)] += 1;
        }
        let histograms: Vec<PlainHistogram> = cells
            .into_iter()
            .map(|((window_start, plug), counts)| PlainHistogram {
                plug,
                window_start,
                counts,
            })
            .collect();
        let n = readings.len() as f64;
        let id = BatchId(0x5eed_0000_0000_0000_0000_0000_0000_0001);
        let mut lines = Vec::new();
        for (label, histograms) in [
            ("shares only", &[][..]),
            ("with histograms", &histograms[..]),
        ] {
            let requests = split_batch(id, &[5; 32], 3, &readings, histograms).unwrap();
            let explicit = explicit_party(id, 3) as usize;
            let sizes: Vec<usize> = requests.iter().map(|r| encode(r).len()).collect();
            let seed = sizes[(explicit + 1) % 3];
            let before = explicit_only_body(
                &expand(requests[explicit].clone()).unwrap(),
                !histograms.is_empty(),
            );
            let mean = sizes.iter().sum::<usize>() as f64 / 3.0;
            lines.push(format!(
                "{label} ({} readings, {} histograms): before {:.1} B/reading at every cloud; after: explicit party {:.1}, seed parties {:.1}, mean {:.1}",
                readings.len(),
                histograms.len(),
                before as f64 / n,
                sizes[explicit] as f64 / n,
                seed as f64 / n,
                mean / n,
            ));
            assert!(
                sizes[explicit] >= 3 * seed,
                "{label}: explicit body {} bytes, seed body {seed}",
                sizes[explicit]
            );
            // The explicit body carries what every body carried before, plus the shares'
            // variant and a second length; histogram counts take half the bytes.
            if histograms.is_empty() {
                assert!(
                    sizes[explicit] <= before + 8,
                    "{label}: {} vs {before}",
                    sizes[explicit]
                );
            } else {
                assert!(
                    2 * sizes[explicit] < before + before / 8,
                    "{label}: {} vs {before}",
                    sizes[explicit]
                );
            }
            assert!(
                sizes[explicit]
                    <= crate::wire::upload_wire_bytes_max(readings.len(), histograms.len())
            );
        }
        for line in lines {
            println!("{line}");
        }
    }
}
