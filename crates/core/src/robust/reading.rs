//! The validity circuit of one reading: what a record's report proves.
//!
//! For an encoding `[c, b_0 .. b_{B-1}, s]` it proves:
//! - `c = 1`: the report counts one reading;
//! - every `b_i` is 0 or 1, and `x = Σ b_i w_i` (the weights of a range-checked integer, the
//!   last one chosen so that `x` reaches exactly `max` and no further) is the reading;
//! - `s = x²`: the square the clouds add up for the variance is the square of the reading.
//!
//! Its output, `[c, x, s]`, is exactly a record's three shares in plain mode, so a verified
//! report joins the same window sums as a plain record.

use super::{gate_shape_lens, gate_sum, GateShape};
use prio::field::{Field128, FieldElement};
use prio::flp::{Flp, FlpError, Gadget, Type};

/// The validity circuit of one reading (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadingCircuit {
    max: u64,
    /// B: bits of the range-checked reading.
    bits: usize,
    /// Weight of the last bit: `max − (2^(B−1) − 1)`, so the largest encodable value is `max`.
    last_weight: u64,
    shape: GateShape,
    /// `1/n` at `n − 1` for every number of shares the circuit runs in (see `one_over`).
    one_over: Vec<Field128>,
    /// Every bit's weight as a field element, made once: every evaluation sums them.
    weights: Vec<Field128>,
}

impl ReadingCircuit {
    /// Readings in `[0, max]` (`1 ≤ max ≤ 2^62`, so squares and their sums stay far below the
    /// field's modulus).
    pub fn new(max: u64) -> Result<ReadingCircuit, FlpError> {
        if max == 0 || max > 1 << 62 {
            return Err(FlpError::InvalidParameter(format!(
                "max reading {max} is outside 1..=2^62"
            )));
        }
        let bits = max.ilog2() as usize + 1;
        let last_weight = max - ((1u64 << (bits - 1)) - 1);
        let weights = (0..bits)
            .map(|i| {
                if i + 1 == bits {
                    Field128::from(u128::from(last_weight))
                } else {
                    Field128::from(1u128 << i)
                }
            })
            .collect();
        Ok(ReadingCircuit {
            max,
            bits,
            last_weight,
            weights,
            // One gate per bit, and the square.
            shape: GateShape::new(bits + 1),
            one_over: (1..=super::MAX_SHARES as u128)
                .map(|n| Field128::one() / Field128::from(n))
                .collect(),
        })
    }

    /// `x = Σ b_i w_i`, linear, so it holds on shares as on the whole.
    fn reading(&self, bits: &[Field128]) -> Field128 {
        bits.iter()
            .zip(&self.weights)
            .fold(Field128::zero(), |x, (b, w)| x + *b * *w)
    }

    /// The encoding of `value`, proven or not: a forging sensor (`super::forge`) changes it
    /// after this.
    pub(crate) fn encode_value(&self, value: u64) -> Vec<Field128> {
        let mut encoded = Vec::with_capacity(self.input_len());
        encoded.push(Field128::one());
        // The last bit stands for `last_weight`: set when the value needs it.
        let low_max = (1u64 << (self.bits - 1)) - 1;
        let (high, low) = if value > low_max {
            (true, value.saturating_sub(self.last_weight))
        } else {
            (false, value)
        };
        for i in 0..self.bits - 1 {
            encoded.push(Field128::from(u128::from((low >> i) & 1)));
        }
        encoded.push(Field128::from(u128::from(high)));
        let value = u128::from(value);
        encoded.push(Field128::from(value * value));
        encoded
    }

    /// Positions in the encoding: the first bit, and the square.
    pub(crate) fn layout(&self) -> (usize, usize) {
        (1, 1 + self.bits)
    }
}

impl Flp for ReadingCircuit {
    type Field = Field128;

    gate_shape_lens!(Field128);

    fn valid(
        &self,
        g: &mut Vec<Box<dyn Gadget<Field128>>>,
        input: &[Field128],
        joint_rand: &[Field128],
        num_shares: usize,
    ) -> Result<Vec<Field128>, FlpError> {
        self.valid_call_check(input, joint_rand)?;
        // Each share's part of the constant 1.
        let one = super::one_over(&self.one_over, num_shares)?;
        let (count, rest) = (input[0], &input[1..]);
        let (bits, square) = (&rest[..self.bits], rest[self.bits]);
        let x = self.reading(bits);
        // Every gate is a product a·b that must be 0: b(b − 1) for the bits, then x·x, whose
        // claimed value s is taken off after the sum.
        let gates: Vec<(Field128, Field128)> = bits
            .iter()
            .map(|b| (*b, *b - one))
            .chain(std::iter::once((x, x)))
            .collect();
        let (sum, last_weight) = gate_sum(&mut g[0], &gates, &self.shape, joint_rand)?;
        Ok(vec![count - one, sum - last_weight * square])
    }

    fn input_len(&self) -> usize {
        1 + self.bits + 1
    }

    fn eval_output_len(&self) -> usize {
        2
    }
}

impl Type for ReadingCircuit {
    type Measurement = u64;
    type AggregateResult = [u128; 3];

    fn encode_measurement(&self, value: &u64) -> Result<Vec<Field128>, FlpError> {
        if *value > self.max {
            return Err(FlpError::Encode(format!(
                "reading {value} is above the maximum {}",
                self.max
            )));
        }
        Ok(self.encode_value(*value))
    }

    fn truncate(&self, input: Vec<Field128>) -> Result<Vec<Field128>, FlpError> {
        self.truncate_call_check(&input)?;
        let (first, square) = self.layout();
        Ok(vec![
            input[0],
            self.reading(&input[first..square]),
            input[square],
        ])
    }

    fn decode_result(
        &self,
        data: &[Field128],
        _num_measurements: usize,
    ) -> Result<[u128; 3], FlpError> {
        match data {
            [c, x, s] => Ok([u128::from(*c), u128::from(*x), u128::from(*s)]),
            _ => Err(FlpError::Decode(format!(
                "{} aggregate elements, expected 3",
                data.len()
            ))),
        }
    }

    fn output_len(&self) -> usize {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::accepted;
    use super::*;
    use crate::fixed::MAX_FIXED;

    fn circuit() -> ReadingCircuit {
        ReadingCircuit::new(MAX_FIXED).unwrap()
    }

    #[test]
    fn valid_readings_are_accepted_at_the_bounds() {
        let typ = circuit();
        for value in [0, 1, 1234567, (1 << 39) - 1, 1 << 39, MAX_FIXED] {
            let input = typ.encode_measurement(&value).unwrap();
            assert_eq!(
                typ.truncate(input.clone()).unwrap()[1],
                Field128::from(u128::from(value))
            );
            for shares in [2, 3, 5] {
                assert!(accepted(&typ, &input, shares), "{value} in {shares} shares");
            }
        }
    }

    #[test]
    fn a_reading_above_the_maximum_cannot_be_encoded() {
        assert!(circuit().encode_measurement(&(MAX_FIXED + 1)).is_err());
        assert!(ReadingCircuit::new(0).is_err());
        assert!(ReadingCircuit::new((1 << 62) + 1).is_err());
    }

    #[test]
    fn every_kind_of_tampering_is_rejected() {
        let typ = circuit();
        let honest = typ.encode_measurement(&4242).unwrap();
        let (first, square) = typ.layout();
        let tampered: Vec<(&str, Vec<Field128>)> = vec![
            ("a count of 2", {
                let mut v = honest.clone();
                v[0] = Field128::from(2);
                v
            }),
            ("a count of 0", {
                let mut v = honest.clone();
                v[0] = Field128::zero();
                v
            }),
            ("a bit of 2 (a reading past the maximum)", {
                let mut v = honest.clone();
                v[square - 1] = Field128::from(2);
                v
            }),
            ("a negative bit", {
                let mut v = honest.clone();
                v[first] = -Field128::one();
                v
            }),
            ("a forged square", {
                let mut v = honest.clone();
                v[square] += Field128::one();
                v
            }),
        ];
        for (what, input) in tampered {
            assert!(!accepted(&typ, &input, 3), "{what} was accepted");
        }
    }
}
