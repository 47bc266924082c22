//! Partial aggregates (sums of shares) and what the collector reveals from them.

use crate::fixed::{self, SCALE};
use crate::share::RecordShares;
use crate::Field;
use prio::field::FieldElement;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A party's running sums of shares of x, x² and 1 for one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    pub sum: Field,
    pub sumsq: Field,
    pub count: Field,
}

impl Default for Partial {
    fn default() -> Self {
        Partial {
            sum: Field::zero(),
            sumsq: Field::zero(),
            count: Field::zero(),
        }
    }
}

impl Partial {
    pub fn add_shares(&mut self, shares: &RecordShares) {
        self.sum += shares[0];
        self.sumsq += shares[1];
        self.count += shares[2];
    }

    pub fn merge(&mut self, other: &Partial) {
        self.sum += other.sum;
        self.sumsq += other.sumsq;
        self.count += other.count;
    }

    /// Takes `other` back out (shares form a group, so sums can slide).
    pub fn unmerge(&mut self, other: &Partial) {
        self.sum -= other.sum;
        self.sumsq -= other.sumsq;
        self.count -= other.count;
    }
}

#[derive(Debug, Error, PartialEq)]
#[error("combined count {0} is not a plausible count: the parties' partial aggregates do not belong together")]
pub struct RevealError(u128);

impl RevealError {
    pub fn new(value: u128) -> RevealError {
        RevealError(value)
    }
}

/// Exact integer totals of one group (fixed-point units), and the statistics derived from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Revealed {
    pub count: u64,
    pub sum: u128,
    pub sumsq: u128,
}

impl Revealed {
    /// Decodes the sum of all parties' partials.
    pub fn from_combined(total: &Partial) -> Result<Revealed, RevealError> {
        let count = u128::from(total.count);
        let count = u64::try_from(count).map_err(|_| RevealError(count))?;
        Ok(Revealed {
            count,
            sum: u128::from(total.sum),
            sumsq: u128::from(total.sumsq),
        })
    }

    /// A total that carries differential-privacy noise (see `noise`): read signed, since
    /// noise may take it below zero, and clamped at zero.
    pub fn from_noisy(total: &Partial) -> Revealed {
        let clamp = |f| crate::noise::signed(f).max(0) as u128;
        Revealed {
            count: clamp(total.count).min(u64::MAX as u128) as u64,
            sum: clamp(total.sum),
            sumsq: clamp(total.sumsq),
        }
    }

    pub fn add_value(&mut self, value: u64) {
        let v = value as u128;
        self.count += 1;
        self.sum += v;
        self.sumsq += v * v;
    }

    pub fn sum_decimal(&self) -> String {
        fixed::format(self.sum)
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum as f64 / self.count as f64 / SCALE as f64
    }

    /// Population variance. Computed as (n·Σx² − (Σx)²) / n² in exact integers where they fit,
    /// because the textbook E[x²] − E[x]² in floating point cancels catastrophically.
    pub fn variance(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let n = self.count as u128;
        let scale2 = (SCALE * SCALE) as f64;
        match (self.sumsq.checked_mul(n), self.sum.checked_mul(self.sum)) {
            (Some(a), Some(b)) if a >= b => (a - b) as f64 / (n as f64 * n as f64) / scale2,
            _ => {
                let mean = self.sum as f64 / n as f64;
                (self.sumsq as f64 / n as f64 - mean * mean).max(0.0) / scale2
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{GroupKey, Metric, Reading};
    use crate::upload::{expand, split_batch};
    use crate::wire::BatchId;
    use proptest::prelude::*;

    proptest! {
        /// Aggregation is order-independent: any permutation of records, split into shares
        /// and summed per party, reveals the same totals as the plaintext.
        #[test]
        fn aggregation_is_order_independent(values in proptest::collection::vec(0u64..1_000_000_000, 1..60), seed in any::<[u8; 32]>(), rot in 0usize..60) {
            let readings: Vec<Reading> = values
                .iter()
                .enumerate()
                .map(|(i, &value)| Reading {
                    id: i as u64,
                    ts: 1_400_000_000,
                    value,
                    metric: Metric::Load,
                    group: GroupKey { house: 0, household: 0, plug: 0 },
                })
                .collect();
            let batches: Vec<_> = split_batch(BatchId(7), &seed, 3, &readings, &[])
                .unwrap()
                .into_iter()
                .map(|r| expand(r).unwrap())
                .collect();
            let mut per_record: Vec<[crate::RecordShares; 3]> = (0..values.len())
                .map(|i| std::array::from_fn(|p| batches[p].records[i].share))
                .collect();
            let rot = rot % values.len();
            per_record.rotate_left(rot);
            per_record.reverse();
            let mut parties = [Partial::default(); 3];
            for shares in &per_record {
                for (p, s) in parties.iter_mut().zip(shares) {
                    p.add_shares(s);
                }
            }
            let mut total = Partial::default();
            for p in &parties { total.merge(p); }
            let revealed = Revealed::from_combined(&total).unwrap();
            let mut expected = Revealed::default();
            for &v in &values { expected.add_value(v); }
            prop_assert_eq!(revealed, expected);
        }
    }

    #[test]
    fn mean_and_variance() {
        let mut r = Revealed::default();
        for v in [1000, 2000, 3000, 4000] {
            r.add_value(v);
        }
        assert_eq!(r.sum_decimal(), "10.000");
        assert!((r.mean() - 2.5).abs() < 1e-12);
        assert!((r.variance() - 1.25).abs() < 1e-12);
    }
}
