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

/// Combined totals that no set of readings could have: the group holds a batch whose shares
/// do not add up to readings (a broken or malicious sensor; the clouds check shapes, not
/// values), or the clouds' partials do not belong together.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum RevealError {
    #[error("combined count {0} is not a plausible count")]
    Count(u128),
    #[error("combined sum {sum} is more than {count} readings of at most {max} add up to", max = fixed::MAX_FIXED)]
    Sum { sum: u128, count: u64 },
    #[error("combined sum of squares {sumsq} cannot come from {count} readings summing to {sum}")]
    Squares { sumsq: u128, sum: u128, count: u64 },
}

impl RevealError {
    /// A short stable name, for reports that are matched by machines.
    pub fn code(&self) -> &'static str {
        match self {
            RevealError::Count(_) => "implausible_count",
            RevealError::Sum { .. } => "implausible_sum",
            RevealError::Squares { .. } => "implausible_squares",
        }
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
    /// Refuses totals that no readings in `0..=MAX_FIXED` could give: each reading x adds
    /// 1, x and x², so sum ≤ count·MAX, sumsq ≤ sum·MAX, and sum² ≤ count·sumsq
    /// (Cauchy–Schwarz). Shares that do not belong together are uniform over the field and
    /// land outside these bounds all but surely, so such a batch is caught here instead of
    /// skewing its group. A batch crafted to stay inside them is not: only a proof of each
    /// reading's range and square, checked by the clouds, could catch that.
    pub fn from_combined(total: &Partial) -> Result<Revealed, RevealError> {
        let count = u128::from(total.count);
        let count = u64::try_from(count).map_err(|_| RevealError::Count(count))?;
        let (sum, sumsq) = (u128::from(total.sum), u128::from(total.sumsq));
        let max = u128::from(fixed::MAX_FIXED);
        // count < 2^64 and MAX_FIXED = 2^40: the product fits.
        if sum > u128::from(count) * max {
            return Err(RevealError::Sum { sum, count });
        }
        let squares = RevealError::Squares { sumsq, sum, count };
        if sum.checked_mul(max).is_some_and(|bound| sumsq > bound) {
            return Err(squares);
        }
        let spread = match (sum.checked_mul(sum), sumsq.checked_mul(u128::from(count))) {
            (Some(sum2), Some(nq)) => sum2 <= nq,
            // Past 2^128 (many readings near the bound): in floating point, with a margin
            // far wider than its rounding, so real totals are never refused.
            _ => (sum as f64) * (sum as f64) <= (sumsq as f64) * (count as f64) * (1.0 + 1e-9),
        };
        if !spread {
            return Err(squares);
        }
        Ok(Revealed { count, sum, sumsq })
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

    proptest! {
        /// Totals of real readings, small or at the bound, are never refused.
        #[test]
        fn real_totals_are_plausible(values in proptest::collection::vec(prop_oneof![0u64..=1000, Just(fixed::MAX_FIXED), 0..=fixed::MAX_FIXED], 0..50)) {
            let mut expected = Revealed::default();
            let mut total = Partial::default();
            for &v in &values {
                expected.add_value(v);
                total.add_shares(&crate::share::record_values(v));
            }
            prop_assert_eq!(Revealed::from_combined(&total), Ok(expected));
        }
    }

    /// What a bad batch does to a group's totals: a count past 2^64, a sum larger than its
    /// count of readings allows, a forged square too large or too small for its readings.
    #[test]
    fn implausible_totals_are_refused_by_name() {
        let of = |values: &[u64]| {
            let mut total = Partial::default();
            for &v in values {
                total.add_shares(&crate::share::record_values(v));
            }
            total
        };
        let mut huge_count = of(&[5, 7]);
        huge_count.count += Field::from(1u128 << 100);
        assert_eq!(
            Revealed::from_combined(&huge_count).unwrap_err().code(),
            "implausible_count"
        );
        let mut huge_sum = of(&[5, 7]);
        huge_sum.sum += Field::from(u128::from(fixed::MAX_FIXED) * 2);
        assert_eq!(
            Revealed::from_combined(&huge_sum).unwrap_err().code(),
            "implausible_sum"
        );
        // Beside a real 10: a forged square of 2^50 for 1 is more than readings summing to 11
        // can have; a forged 1 for 20 leaves sum² = 900 > 2·(100 + 1).
        for forged in [[1u64, 1 << 50], [20, 1]] {
            let mut total = of(&[10]);
            total.sum += Field::from(u128::from(forged[0]));
            total.sumsq += Field::from(u128::from(forged[1]));
            total.count += Field::one();
            assert_eq!(
                Revealed::from_combined(&total).unwrap_err().code(),
                "implausible_squares",
                "{forged:?}"
            );
        }
        // A count of zero with values in it.
        let mut ghost = Partial::default();
        ghost.sum += Field::one();
        assert!(Revealed::from_combined(&ghost).is_err());
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
