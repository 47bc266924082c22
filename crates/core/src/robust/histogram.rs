//! The validity circuit of one load histogram: what a plug's 30 s histogram report proves.
//!
//! A histogram counts a plug's load readings of one window per bucket. The circuit proves, for
//! an encoding of every bucket's count in K bits followed by K slack bits:
//! - every bit is 0 or 1, so every count `h_j = Σ_i b_{j,i} 2^i` lies in `[0, 2^K − 1]`;
//! - `Σ_j h_j + t = 2^K − 1` with the slack `t` in `[0, 2^K − 1]`, so the counts add up to at
//!   most `2^K − 1` readings ([`MAX_HISTOGRAM_READINGS`]).
//!
//! That is the bound the robust mode gives Q2 in place of "one-hot per reading": a histogram
//! weighs as much as at most `2^K − 1` readings of one window, spread over the buckets as the
//! sensor likes, just as honest readings could be. Tying each count to the proven readings
//! would take a comparison circuit per bucket bound for every reading; the bound above costs
//! `(buckets + 1) · K` gates per window instead of `buckets` per reading, and a sensor that
//! lies about where its readings fall could lie about the readings themselves within range.
//!
//! The counts live in `CountField` (Field64), as plain histograms do, so a verified report's
//! output is a plain histogram share. Field64 is small for a single FLP proof, so the VDAF runs
//! [`HISTOGRAM_PROOFS`] independent proofs, as Prio3's Field64 multiproof types do.

use super::{gate_shape_lens, gate_sum, GateShape};
use crate::CountField;
use prio::field::FieldElement;
use prio::flp::{Flp, FlpError, Gadget, Type};

/// K: bits of each bucket's count and of the slack.
pub const HISTOGRAM_COUNT_BITS: usize = 7;
/// The most readings one histogram report may count: 127 in a 30 s window is a reading about
/// every 236 ms, four times DEBS 2014's rate.
pub const MAX_HISTOGRAM_READINGS: u64 = (1 << HISTOGRAM_COUNT_BITS) - 1;
/// Independent proofs per histogram report: each fails to catch a cheating sensor with a
/// probability of about `gates / 2^64`, so two bring it near 2^−100.
pub const HISTOGRAM_PROOFS: u8 = 2;

/// The validity circuit of one load histogram (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramCircuit {
    buckets: usize,
    shape: GateShape,
    /// `1/n` at `n − 1` for every number of shares the circuit runs in (see `one_over`).
    one_over: Vec<CountField>,
}

impl HistogramCircuit {
    pub fn new(buckets: usize) -> Result<HistogramCircuit, FlpError> {
        if buckets == 0 || buckets > 4096 {
            return Err(FlpError::InvalidParameter(format!(
                "{buckets} histogram buckets; between 1 and 4096"
            )));
        }
        Ok(HistogramCircuit {
            buckets,
            shape: GateShape::new((buckets + 1) * HISTOGRAM_COUNT_BITS),
            one_over: (1..=super::MAX_SHARES as u64)
                .map(|n| CountField::one() / CountField::from(n))
                .collect(),
        })
    }

    /// `Σ_i b_i 2^i` over one count's bits.
    fn count(bits: &[CountField]) -> CountField {
        bits.iter()
            .rev()
            .fold(CountField::zero(), |acc, b| acc + acc + *b)
    }

    /// Bits of `counts` and of the slack, least significant first, without checking them.
    pub(crate) fn encode_counts(&self, counts: &[u64]) -> Vec<CountField> {
        let total = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
        let slack = MAX_HISTOGRAM_READINGS.saturating_sub(total);
        counts
            .iter()
            .chain(std::iter::once(&slack))
            .flat_map(|c| (0..HISTOGRAM_COUNT_BITS).map(move |i| CountField::from((c >> i) & 1)))
            .collect()
    }
}

impl Flp for HistogramCircuit {
    type Field = CountField;

    gate_shape_lens!(CountField);

    fn valid(
        &self,
        g: &mut Vec<Box<dyn Gadget<CountField>>>,
        input: &[CountField],
        joint_rand: &[CountField],
        num_shares: usize,
    ) -> Result<Vec<CountField>, FlpError> {
        self.valid_call_check(input, joint_rand)?;
        let one = super::one_over(&self.one_over, num_shares)?;
        let gates: Vec<(CountField, CountField)> = input.iter().map(|b| (*b, *b - one)).collect();
        let (sum, _) = gate_sum(&mut g[0], &gates, &self.shape, joint_rand)?;
        // The counts and the slack, all linear in the bits, add up to the bound.
        let total = input
            .chunks_exact(HISTOGRAM_COUNT_BITS)
            .fold(CountField::zero(), |a, bits| a + Self::count(bits));
        Ok(vec![
            sum,
            total - CountField::from(MAX_HISTOGRAM_READINGS) * one,
        ])
    }

    fn input_len(&self) -> usize {
        (self.buckets + 1) * HISTOGRAM_COUNT_BITS
    }

    fn eval_output_len(&self) -> usize {
        2
    }
}

impl Type for HistogramCircuit {
    type Measurement = Vec<u64>;
    type AggregateResult = Vec<u64>;

    fn encode_measurement(&self, counts: &Vec<u64>) -> Result<Vec<CountField>, FlpError> {
        if counts.len() != self.buckets {
            return Err(FlpError::Encode(format!(
                "{} buckets for a circuit of {}",
                counts.len(),
                self.buckets
            )));
        }
        let total = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
        if total > MAX_HISTOGRAM_READINGS {
            return Err(FlpError::Encode(format!(
                "the histogram counts {total} readings; a report counts at most {MAX_HISTOGRAM_READINGS}"
            )));
        }
        Ok(self.encode_counts(counts))
    }

    fn truncate(&self, input: Vec<CountField>) -> Result<Vec<CountField>, FlpError> {
        self.truncate_call_check(&input)?;
        Ok(input
            .chunks_exact(HISTOGRAM_COUNT_BITS)
            .take(self.buckets)
            .map(Self::count)
            .collect())
    }

    fn decode_result(
        &self,
        data: &[CountField],
        _num_measurements: usize,
    ) -> Result<Vec<u64>, FlpError> {
        if data.len() != self.buckets {
            return Err(FlpError::Decode(format!(
                "{} aggregate elements, expected {}",
                data.len(),
                self.buckets
            )));
        }
        Ok(data.iter().map(|c| u64::from(*c)).collect())
    }

    fn output_len(&self) -> usize {
        self.buckets
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::accepted;
    use super::*;

    #[test]
    fn bounded_histograms_are_accepted_and_truncate_to_their_counts() {
        let typ = HistogramCircuit::new(5).unwrap();
        for counts in [
            vec![0, 0, 0, 0, 0],
            vec![1, 0, 0, 0, 0],
            vec![3, 20, 0, 7, 1],
            vec![0, 0, MAX_HISTOGRAM_READINGS, 0, 0],
        ] {
            let input = typ.encode_measurement(&counts).unwrap();
            let out: Vec<u64> = typ
                .truncate(input.clone())
                .unwrap()
                .iter()
                .map(|c| u64::from(*c))
                .collect();
            assert_eq!(out, counts);
            for shares in [2, 3] {
                assert!(accepted(&typ, &input, shares), "{counts:?}");
            }
        }
        assert!(typ.encode_measurement(&vec![100, 28, 0, 0, 0]).is_err());
        assert!(typ.encode_measurement(&vec![1, 2]).is_err());
    }

    #[test]
    fn histograms_past_the_bound_or_with_negative_counts_are_rejected() {
        let typ = HistogramCircuit::new(5).unwrap();
        let honest = typ.encode_measurement(&vec![3, 20, 0, 7, 1]).unwrap();
        let k = HISTOGRAM_COUNT_BITS;
        let tampered: Vec<(&str, Vec<CountField>)> = vec![
            ("a bit of 2", {
                let mut v = honest.clone();
                v[2 * k + 6] = CountField::from(2);
                v
            }),
            ("a negative count", {
                let mut v = honest.clone();
                v[2 * k] = -CountField::one();
                v
            }),
            (
                "counts past the bound (the slack does not make up the total)",
                {
                    let mut v = honest.clone();
                    v[2 * k + 6] = CountField::one();
                    v
                },
            ),
            ("a histogram of every bucket full", {
                let all = vec![MAX_HISTOGRAM_READINGS; 5];
                typ.encode_counts(&all)
            }),
        ];
        for (what, input) in tampered {
            assert!(!accepted(&typ, &input, 3), "{what} was accepted");
        }
    }
}
