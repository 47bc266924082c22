//! Differential privacy for what a cloud reveals: discrete Laplace noise added to a cloud's
//! share of each revealed sum, and the signed reading of a noisy total.
//!
//! **Mechanism.** Neighbouring inputs differ in one reading (event-level privacy). At one level
//! a reading lies in exactly one cell of a request (one group, one block), so noise calibrated
//! per cell covers the whole request (parallel composition). A cell reveals three sums: count
//! (one reading changes it by 1), sum (by at most `max_value`) and sum of squares (by at most
//! `max_value`²); each gets ε/3 (basic composition), i.e. discrete Laplace noise of scale
//! 3Δ/ε.
//!
//! **Who adds it.** Every cloud adds a full draw to its own share. The collector sees only the
//! total, which holds every cloud's draw; if every cloud but one colludes with it, they can
//! subtract their own draws, and the honest cloud's draw alone still makes the answer ε-DP.
//! That costs N draws of noise where a distributed scheme (Skellam or Pólya shares that add up
//! to one draw) would cost one, but it needs no trust in how many clouds are honest, and the
//! budget is enforced by each cloud on its own (see `mcloud_cloud::audit`): an honest cloud
//! never answers past a principal's budget, whatever the catalog or the other clouds do.
//!
//! **Sampling** uses floating point (geometric draws by inversion), which is not exactly the
//! discrete Laplace distribution far in its tails (the weakness Mironov described for
//! floating-point Laplace): the guarantee is ε-DP up to that rounding.

use crate::Field;
use prio::field::FieldElementWithInteger;
use rand::Rng;

/// A draw of discrete Laplace noise: P(k) ∝ exp(−|k| / scale).
pub fn discrete_laplace(rng: &mut impl Rng, scale: f64) -> i128 {
    if !(scale.is_finite() && scale > 0.0) {
        return 0;
    }
    // The difference of two geometric draws with success 1 − e^(−1/scale) is discrete Laplace.
    let ln_alpha = -1.0 / scale;
    let mut geometric = || {
        let u: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
        (u.ln() / ln_alpha).floor()
    };
    let draw = geometric() - geometric();
    draw.clamp(-1e30, 1e30) as i128
}

/// `value + noise` in the field (negative noise wraps, as a share may).
pub fn add_signed(value: Field, noise: i128) -> Field {
    let magnitude = Field::from(noise.unsigned_abs());
    if noise < 0 {
        value - magnitude
    } else {
        value + magnitude
    }
}

/// A field element read as a signed number: values past half the modulus are negative (a
/// noisy total may fall below zero).
pub fn signed(value: Field) -> i128 {
    let v = u128::from(value);
    let p = Field::modulus();
    if v > p / 2 {
        -((p - v) as i128)
    } else {
        v as i128
    }
}

/// The noise one cloud adds to its share of one cell's (sum, sum of squares, count).
pub fn cell_noise(rng: &mut impl Rng, epsilon: f64, max_value: u64) -> [i128; 3] {
    let per_sum = epsilon / 3.0;
    let max = max_value as f64;
    [
        discrete_laplace(rng, max / per_sum),
        discrete_laplace(rng, max * max / per_sum),
        discrete_laplace(rng, 1.0 / per_sum),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use prio::field::FieldElement;
    use rand::SeedableRng;

    #[test]
    fn discrete_laplace_has_the_announced_spread() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for scale in [0.5, 3.0, 1000.0] {
            let n = 200_000;
            let draws: Vec<f64> = (0..n)
                .map(|_| discrete_laplace(&mut rng, scale) as f64)
                .collect();
            let mean = draws.iter().sum::<f64>() / n as f64;
            let var = draws.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / n as f64;
            // Var = 2α / (1 − α)² with α = e^(−1/scale).
            let a = (-1.0 / scale).exp();
            let expected = 2.0 * a / ((1.0 - a) * (1.0 - a));
            assert!(
                (var / expected - 1.0).abs() < 0.05,
                "scale {scale}: variance {var}, expected {expected}"
            );
            assert!(
                mean.abs() < 4.0 * (expected / n as f64).sqrt(),
                "mean {mean}"
            );
        }
        assert_eq!(discrete_laplace(&mut rng, 0.0), 0);
    }

    #[test]
    fn negative_noise_wraps_and_reads_back_signed() {
        let five = Field::from(5u128);
        assert_eq!(signed(add_signed(five, -8)), -3);
        assert_eq!(signed(add_signed(five, 8)), 13);
        assert_eq!(signed(add_signed(Field::zero(), -(1 << 100))), -(1 << 100));
    }
}
