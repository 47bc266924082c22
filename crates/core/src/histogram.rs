//! The fixed load-bucket scheme every sensor and every operator shares.
//!
//! Buckets, in fixed-point units (1 unit = 0.001 W):
//! - bucket 0 holds exactly 0 W (many plugs read 0, and the outlier query often compares
//!   against a median of 0, so that value must stay exact);
//! - bucket 1 holds (0 W, 0.1 W);
//! - then log-scale buckets from 0.1 W up to about 10 kW, each `floor(lower / 16)` units wide,
//!   so every bucket's width is at most 1/16 of its lower bound;
//! - the last bucket holds everything at or above the end of the log scale (about 10 kW).
//!
//! The bounds come from an integer recurrence, never from floating point, so a sensor and
//! the analytics always agree on them whatever the platform.
//!
//! **Error bound of [`median`].** The estimate of each middle order statistic lies inside
//! the bucket of the true value. Hence, when the middle value(s) are 0.1 W or more and below
//! the last bucket, the estimate is within 1/16 (6.25 %) of the true median, relative;
//! between 0 and 0.1 W it is within 0.1 W absolute; a median of exactly 0 W is exact. Above
//! the log scale (≥ [`LOG_END`]) the estimate is the last bucket's lower bound, unbounded
//! error.

use crate::fixed::SCALE;

/// Where the log-scale buckets start: 0.1 W.
pub const LOG_START: u64 = SCALE / 10;
/// The log scale ends once a bound reaches 10 kW; the last bucket starts there.
pub const LOG_END: u64 = 10_000 * SCALE;
/// A log bucket is `lower / GROWTH_DIVISOR` units wide.
const GROWTH_DIVISOR: u64 = 16;

const fn count_log_buckets() -> usize {
    let mut bound = LOG_START;
    let mut n = 0;
    while bound < LOG_END {
        bound += bound / GROWTH_DIVISOR;
        n += 1;
    }
    n
}

/// Number of buckets: zero, (0, 0.1 W), the log scale, and the overflow bucket.
pub const BUCKETS: usize = count_log_buckets() + 3;

/// Inclusive lower bound of every bucket; bucket `i` ends where bucket `i + 1` starts.
const LOWER: [u64; BUCKETS] = {
    let mut table = [0u64; BUCKETS];
    table[1] = 1;
    let mut bound = LOG_START;
    let mut i = 2;
    while i < BUCKETS {
        table[i] = bound;
        bound += bound / GROWTH_DIVISOR;
        i += 1;
    }
    table
};

/// The bucket a fixed-point load value falls in.
pub fn bucket_of(fixed_value: u64) -> usize {
    // LOWER[0] == 0, so at least one bound is <= any value.
    LOWER.partition_point(|&lower| lower <= fixed_value) - 1
}

/// Bounds of bucket `index` in fixed-point units: inclusive lower, exclusive upper (`None`
/// for the last, unbounded bucket). `None` when the index is out of range.
pub fn bounds(index: usize) -> Option<(u64, Option<u64>)> {
    let lower = *LOWER.get(index)?;
    Some((lower, LOWER.get(index + 1).copied()))
}

/// A one-hot histogram: what one reading contributes.
pub fn one_hot(fixed_value: u64) -> Vec<u64> {
    let mut histogram = vec![0; BUCKETS];
    histogram[bucket_of(fixed_value)] = 1;
    histogram
}

/// Estimated `rank`-th smallest value (0-based) in fixed-point units, interpolated inside
/// its bucket as if the bucket's values were spread evenly. Entries past the last bucket
/// are treated as belonging to it.
fn order_statistic(histogram: &[u64], rank: u64) -> Option<f64> {
    let mut before = 0u64;
    for (index, &count) in histogram.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if rank < before.saturating_add(count) {
            let index = index.min(BUCKETS - 1);
            let (lower, upper) = bounds(index)?;
            return Some(match upper {
                _ if index == 0 => 0.0,
                Some(upper) => {
                    let position = (rank - before) as f64 + 0.5;
                    lower as f64 + (upper - lower) as f64 * position / count as f64
                }
                None => lower as f64,
            });
        }
        before = before.saturating_add(count);
    }
    None
}

/// Estimated median (fixed-point units) of the values a histogram counts; the mean of the
/// two middle values for an even count. `None` for an empty histogram. See the module
/// documentation for the error bound.
pub fn median(histogram: &[u64]) -> Option<f64> {
    let total = histogram
        .iter()
        .fold(0u64, |acc, &count| acc.saturating_add(count));
    if total == 0 {
        return None;
    }
    if total % 2 == 1 {
        order_statistic(histogram, total / 2)
    } else {
        let low = order_statistic(histogram, total / 2 - 1)?;
        let high = order_statistic(histogram, total / 2)?;
        Some((low + high) / 2.0)
    }
}

/// Adds `other` into `total` bucket by bucket, growing `total` if needed.
pub fn add_into(total: &mut Vec<u64>, other: &[u64]) {
    if total.len() < other.len() {
        total.resize(other.len(), 0);
    }
    for (sum, &count) in total.iter_mut().zip(other) {
        *sum = sum.saturating_add(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scheme_has_a_moderate_bucket_count() {
        assert!((100..=250).contains(&BUCKETS), "{BUCKETS}");
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(LOG_START - 1), 1);
        assert_eq!(bucket_of(LOG_START), 2);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let (last_lower, last_upper) = bounds(BUCKETS - 1).unwrap();
        assert!(last_lower >= LOG_END && last_upper.is_none());
        assert!(bounds(BUCKETS).is_none());
    }

    #[test]
    fn log_buckets_are_at_most_a_sixteenth_wide() {
        for index in 2..BUCKETS - 1 {
            let (lower, upper) = bounds(index).unwrap();
            let upper = upper.unwrap();
            assert!(upper > lower);
            assert!((upper - lower) * 16 <= lower, "bucket {index}");
        }
    }

    #[test]
    fn median_of_even_count_is_mean_of_middle_values() {
        let mut histogram = vec![0; BUCKETS];
        histogram[0] = 1;
        histogram[bucket_of(100_000)] += 1;
        let estimate = median(&histogram).unwrap();
        assert!((estimate - 50_000.0).abs() <= 50_000.0 / 16.0, "{estimate}");
        assert_eq!(median(&vec![0; BUCKETS]), None);
        assert_eq!(median(&one_hot(0)), Some(0.0));
    }

    proptest! {
        #[test]
        fn bucket_of_is_monotonic_and_within_bounds(a in any::<u64>(), b in any::<u64>()) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(bucket_of(low) <= bucket_of(high));
            let (lower, upper) = bounds(bucket_of(a)).unwrap();
            prop_assert!(lower <= a);
            prop_assert!(upper.is_none_or(|upper| a < upper));
        }

        #[test]
        fn median_estimate_respects_the_error_bound(
            values in proptest::collection::vec(LOG_START..LOG_END, 1..40)
        ) {
            let mut histogram = vec![0; BUCKETS];
            for &v in &values {
                histogram[bucket_of(v)] += 1;
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let n = sorted.len();
            let exact = if n % 2 == 1 {
                sorted[n / 2] as f64
            } else {
                (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0
            };
            let estimate = median(&histogram).unwrap();
            prop_assert!((estimate - exact).abs() <= exact / 16.0, "{estimate} vs {exact}");
        }
    }
}
