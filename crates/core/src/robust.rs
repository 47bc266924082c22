//! Robust reports: what a sensor proves about one reading, and how the clouds check the proof
//! together without seeing the reading.
//!
//! Additive shares hide a reading but prove nothing about it: one sensor could add 2^100 to a
//! count and skew or block every aggregate it touches. A robust report carries, next to its
//! shares, shares of a fully linear proof (prio's FLP, the proof system of Prio3 and the IETF
//! DAP protocol) that the reading satisfies [`ReadingCircuit`]; each cloud queries its shares
//! of the report and the proof, and only the sum of every cloud's answer tells whether the
//! report is valid. No cloud learns more than that bit.
//!
//! The circuit proves, for an encoding `[c, b_0 .. b_{B-1}, s, h_0 .. h_{H-1}]`:
//! - `c = 1`: the report counts one reading;
//! - every `b_i` is 0 or 1, and `x = Σ b_i w_i` (the weights of a range-checked integer, the
//!   last one chosen so that `x` reaches exactly `max` and no further) is the reading;
//! - `s = x²`: the square the clouds add up for the variance is the square of the reading;
//! - every `h_j` is 0 or 1 and `Σ h_j = c`: the load histogram is one-hot. Which bucket is hot
//!   is not tied to `x` (a comparison circuit would cost a bit decomposition per bucket
//!   bound): a sensor can put a valid reading in a wrong bucket, never add more than one
//!   reading to the histogram.
//!
//! Every check is one multiplication gate (`b (b − 1)`, `h (h − 1)`, `x · x`) or linear. The
//! gates are summed about √gates at a time, each weighted by a power of joint randomness, in
//! a single gadget (`ParallelSum` of [`Mul`], as prio's own histogram type does): prio's proof
//! system is analysed for one gadget, and a gadget called once per gate would make the proof
//! and the verifier's work grow with the square of the gates. Linear checks with a constant
//! take `1/num_shares` of it per share, so the shares' outputs add up to the check on the
//! whole input.

use prio::field::{Field128, FieldElement, FieldElementWithInteger};
use prio::flp::gadgets::{Mul, ParallelSum, ParallelSumGadget};
use prio::flp::{Flp, FlpError, Gadget, Type};
use prio::vdaf::prio3::Prio3;
use prio::vdaf::xof::XofTurboShake128;
use prio::vdaf::VdafError;

/// One reading of a robust report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RobustReading {
    /// Fixed-point value, at most the circuit's `max`.
    pub value: u64,
    /// Load histogram bucket, when the circuit has buckets.
    pub bucket: Option<usize>,
}

/// What robust reports add up to: the number of readings, their sum and the sum of their
/// squares, and the histogram (empty without buckets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobustTotals {
    pub count: u128,
    pub sum: u128,
    pub squares: u128,
    pub histogram: Vec<u128>,
}

/// The validity circuit of one reading (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadingCircuit {
    max: u64,
    /// B: bits of the range-checked reading.
    bits: usize,
    /// Weight of the last bit: `max − (2^(B−1) − 1)`, so the largest encodable value is `max`.
    last_weight: u64,
    /// H: histogram buckets, 0 for none.
    buckets: usize,
    /// Gates summed per gadget call.
    chunk: usize,
}

impl ReadingCircuit {
    /// Readings in `[0, max]` (`1 ≤ max ≤ 2^62`, so squares and their sums stay far below the
    /// field's modulus), with `buckets` histogram buckets (0 for none).
    pub fn new(max: u64, buckets: usize) -> Result<ReadingCircuit, FlpError> {
        if max == 0 || max > 1 << 62 {
            return Err(FlpError::InvalidParameter(format!(
                "max reading {max} is outside 1..=2^62"
            )));
        }
        if buckets > 4096 {
            return Err(FlpError::InvalidParameter(format!(
                "{buckets} histogram buckets; at most 4096"
            )));
        }
        let bits = max.ilog2() as usize + 1;
        let last_weight = max - ((1u64 << (bits - 1)) - 1);
        let gates = bits + buckets + 1;
        Ok(ReadingCircuit {
            max,
            bits,
            last_weight,
            buckets,
            // About √gates per call keeps both the proof and the verifier's work near √gates
            // and linear in the gates; one gate per call would make the verifier quadratic.
            chunk: (gates as f64).sqrt().ceil() as usize,
        })
    }

    /// The weight of bit `i`.
    fn weight(&self, i: usize) -> Field128 {
        if i + 1 == self.bits {
            Field128::from(u128::from(self.last_weight))
        } else {
            Field128::from(1u128 << i)
        }
    }

    /// `x = Σ b_i w_i`, linear, so it holds on shares as on the whole.
    fn reading(&self, bits: &[Field128]) -> Field128 {
        bits.iter()
            .enumerate()
            .fold(Field128::zero(), |x, (i, b)| x + *b * self.weight(i))
    }

    /// Multiplication gates: one per bit, one per bucket, the square.
    fn gates(&self) -> usize {
        self.bits + self.buckets + 1
    }

    /// Calls of the gadget, each summing `chunk` gates.
    fn calls(&self) -> usize {
        self.gates().div_ceil(self.chunk)
    }
}

impl Flp for ReadingCircuit {
    type Field = Field128;

    fn gadget(&self) -> Vec<Box<dyn Gadget<Field128>>> {
        vec![Box::new(ParallelSum::new(
            Mul::new(self.calls()),
            self.chunk,
        ))]
    }

    fn num_gadgets(&self) -> usize {
        1
    }

    fn valid(
        &self,
        g: &mut Vec<Box<dyn Gadget<Field128>>>,
        input: &[Field128],
        joint_rand: &[Field128],
        num_shares: usize,
    ) -> Result<Vec<Field128>, FlpError> {
        self.valid_call_check(input, joint_rand)?;
        let num_shares = u128::try_from(num_shares)
            .map_err(|_| FlpError::InvalidParameter("too many shares".into()))?;
        // Each share's part of the constant 1.
        let one = Field128::one() / Field128::from(num_shares);
        let (count, rest) = (input[0], &input[1..]);
        let (bits, rest) = rest.split_at(self.bits);
        let (square, histogram) = (rest[0], &rest[1..]);
        let x = self.reading(bits);
        // Every gate is a product a·b that must be 0: e(e − 1) for the bits and buckets, then
        // x·x, whose claimed value s is taken off after the sum.
        let gates = bits
            .iter()
            .chain(histogram)
            .map(|e| (*e, *e - one))
            .chain(std::iter::once((x, x)));
        let mut sum = Field128::zero();
        let mut square_weight = Field128::zero();
        let mut args = vec![Field128::zero(); 2 * self.chunk];
        let gates: Vec<(Field128, Field128)> = gates.collect();
        for (chunk, r) in gates.chunks(self.chunk).zip(joint_rand) {
            // Powers of one joint random value weigh the gates of a chunk, so a gate that is
            // not 0 cannot be cancelled by another (but with negligible probability).
            let mut weight = *r;
            for (pair, (a, b)) in args.chunks_exact_mut(2).zip(chunk) {
                pair[0] = weight * *a;
                pair[1] = *b;
                square_weight = weight;
                weight *= *r;
            }
            for pair in args[2 * chunk.len()..].chunks_exact_mut(2) {
                pair[0] = Field128::zero();
                pair[1] = Field128::zero();
            }
            sum += g[0].eval(&args)?;
        }
        // The square's gate is the last one: its weight is the last one used.
        let mut out = vec![count - one, sum - square_weight * square];
        if self.buckets > 0 {
            let hot = histogram.iter().fold(Field128::zero(), |a, h| a + *h);
            out.push(hot - count);
        }
        Ok(out)
    }

    fn input_len(&self) -> usize {
        1 + self.bits + 1 + self.buckets
    }

    fn proof_len(&self) -> usize {
        // The gadget's arity (2 per gate of a chunk) of seed values, then the gadget
        // polynomial: degree 2 over wire polynomials of (1 + calls).next_power_of_two().
        2 * self.chunk + 2 * ((1 + self.calls()).next_power_of_two() - 1) + 1
    }

    fn verifier_len(&self) -> usize {
        // The circuit's output, the gadget's arity, the gadget's output.
        2 + 2 * self.chunk
    }

    fn joint_rand_len(&self) -> usize {
        self.calls()
    }

    fn eval_output_len(&self) -> usize {
        if self.buckets > 0 {
            3
        } else {
            2
        }
    }

    fn prove_rand_len(&self) -> usize {
        2 * self.chunk
    }
}

impl Type for ReadingCircuit {
    type Measurement = RobustReading;
    type AggregateResult = RobustTotals;

    fn encode_measurement(&self, reading: &RobustReading) -> Result<Vec<Field128>, FlpError> {
        if reading.value > self.max {
            return Err(FlpError::Encode(format!(
                "reading {} is above the maximum {}",
                reading.value, self.max
            )));
        }
        let mut encoded = Vec::with_capacity(self.input_len());
        encoded.push(Field128::one());
        // The last bit stands for `last_weight`: set when the value needs it.
        let low_max = (1u64 << (self.bits - 1)) - 1;
        let (high, low) = if reading.value > low_max {
            (true, reading.value - self.last_weight)
        } else {
            (false, reading.value)
        };
        for i in 0..self.bits - 1 {
            encoded.push(Field128::from(u128::from((low >> i) & 1)));
        }
        encoded.push(Field128::from(u128::from(high)));
        let value = u128::from(reading.value);
        encoded.push(Field128::from(value * value));
        match (reading.bucket, self.buckets) {
            (None, 0) => {}
            (Some(b), n) if b < n => {
                encoded.extend((0..n).map(|j| Field128::from(u128::from(j == b))));
            }
            (bucket, n) => {
                return Err(FlpError::Encode(format!(
                    "bucket {bucket:?} for a circuit of {n} buckets"
                )))
            }
        }
        Ok(encoded)
    }

    fn truncate(&self, input: Vec<Field128>) -> Result<Vec<Field128>, FlpError> {
        self.truncate_call_check(&input)?;
        let bits = &input[1..1 + self.bits];
        let mut out = Vec::with_capacity(self.output_len());
        out.push(input[0]);
        out.push(self.reading(bits));
        out.extend_from_slice(&input[1 + self.bits..]);
        Ok(out)
    }

    fn decode_result(
        &self,
        data: &[Field128],
        _num_measurements: usize,
    ) -> Result<RobustTotals, FlpError> {
        if data.len() != self.output_len() {
            return Err(FlpError::Decode(format!(
                "{} aggregate elements, expected {}",
                data.len(),
                self.output_len()
            )));
        }
        let value = |f: &Field128| <Field128 as FieldElementWithInteger>::Integer::from(*f);
        Ok(RobustTotals {
            count: value(&data[0]),
            sum: value(&data[1]),
            squares: value(&data[2]),
            histogram: data[3..].iter().map(value).collect(),
        })
    }

    fn output_len(&self) -> usize {
        3 + self.buckets
    }
}

/// Prio3 over [`ReadingCircuit`] among `clouds` clouds: the first cloud gets explicit shares
/// of the report and the proof, every other cloud a 32-byte seed it expands (TurboSHAKE128).
pub type RobustVdaf = Prio3<ReadingCircuit, XofTurboShake128, 32>;

/// Prio3's algorithm id for mcloud's circuit, from the range reserved for private use.
const ALGORITHM_ID: u32 = 0xFFFF_0001;

/// The robust mode's VDAF for `clouds` clouds.
pub fn vdaf(clouds: u8, max: u64, buckets: usize) -> Result<RobustVdaf, VdafError> {
    let circuit = ReadingCircuit::new(max, buckets).map_err(VdafError::from)?;
    Prio3::new(clouds, 1, ALGORITHM_ID, circuit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prio::codec::{Encode, ParameterizedDecode};
    use prio::vdaf::prio3::Prio3InputShare;
    use prio::vdaf::{Aggregatable, Aggregator, Client, Collector, VerifyTransition};

    const CTX: &[u8] = b"mcloud robust test";

    fn circuit() -> ReadingCircuit {
        ReadingCircuit::new(crate::fixed::MAX_FIXED, crate::histogram::BUCKETS).unwrap()
    }

    /// Proves `input` (possibly tampered after encoding) and checks it in `shares` shares.
    fn accepted(typ: &ReadingCircuit, input: &[Field128], shares: usize) -> bool {
        let prove_rand = Field128::random_vector(typ.prove_rand_len());
        let query_rand = Field128::random_vector(typ.query_rand_len());
        let joint_rand = Field128::random_vector(typ.joint_rand_len());
        let proof = typ.prove(input, &prove_rand, &joint_rand).unwrap();
        let input_shares = split(input, shares);
        let proof_shares = split(&proof, shares);
        let verifier = (0..shares)
            .map(|i| {
                typ.query(
                    &input_shares[i],
                    &proof_shares[i],
                    &query_rand,
                    &joint_rand,
                    shares,
                )
                .unwrap()
            })
            .reduce(|a, b| a.iter().zip(&b).map(|(x, y)| *x + *y).collect())
            .unwrap();
        typ.decide(&verifier).unwrap()
    }

    fn split(v: &[Field128], n: usize) -> Vec<Vec<Field128>> {
        let mut shares: Vec<Vec<Field128>> =
            (1..n).map(|_| Field128::random_vector(v.len())).collect();
        let last = v
            .iter()
            .enumerate()
            .map(|(i, x)| shares.iter().fold(*x, |acc, s| acc - s[i]))
            .collect();
        shares.push(last);
        shares
    }

    fn reading(value: u64, bucket: usize) -> RobustReading {
        RobustReading {
            value,
            bucket: Some(bucket),
        }
    }

    #[test]
    fn valid_readings_are_accepted_at_the_bounds() {
        let typ = circuit();
        for (value, bucket) in [
            (0, 0),
            (1, 5),
            (1234567, 100),
            (crate::fixed::MAX_FIXED, 194),
        ] {
            let input = typ.encode_measurement(&reading(value, bucket)).unwrap();
            for shares in [2, 3, 5] {
                assert!(accepted(&typ, &input, shares), "{value} in {shares} shares");
            }
        }
    }

    #[test]
    fn a_reading_above_the_maximum_cannot_be_encoded() {
        let typ = circuit();
        assert!(typ
            .encode_measurement(&reading(crate::fixed::MAX_FIXED + 1, 0))
            .is_err());
        assert!(typ.encode_measurement(&reading(1, 195)).is_err());
    }

    #[test]
    fn every_kind_of_tampering_is_rejected() {
        let typ = circuit();
        let honest = typ.encode_measurement(&reading(4242, 7)).unwrap();
        let bits = 1..1 + typ.bits;
        let square = 1 + typ.bits;
        let hist = square + 1;
        let tampered: Vec<(&str, Vec<Field128>)> = vec![
            ("a count of 2", {
                let mut v = honest.clone();
                v[0] = Field128::from(2);
                v
            }),
            ("a bit of 2", {
                let mut v = honest.clone();
                v[bits.start] = Field128::from(2);
                v
            }),
            ("a forged square", {
                let mut v = honest.clone();
                v[square] += Field128::one();
                v
            }),
            ("two hot buckets", {
                let mut v = honest.clone();
                v[hist + 8] = Field128::one();
                v
            }),
            ("no hot bucket", {
                let mut v = honest.clone();
                v[hist + 7] = Field128::zero();
                v
            }),
            ("a bucket of 2", {
                let mut v = honest.clone();
                v[hist + 7] = Field128::from(2);
                v
            }),
        ];
        for (what, input) in tampered {
            assert!(!accepted(&typ, &input, 3), "{what} was accepted");
        }
    }

    /// The whole Prio3 cycle among three clouds: shard, verify at each cloud, combine the
    /// verifier shares, aggregate and unshard.
    #[test]
    fn three_clouds_add_up_valid_reports_and_refuse_a_tampered_one() {
        let vdaf = vdaf(3, crate::fixed::MAX_FIXED, 4).unwrap();
        let verify_key: [u8; 32] = rand::random();
        let readings = [(10_000, 0), (20_000, 1), (30_000, 1), (0, 3)];
        let mut aggregates = vec![vdaf.aggregate_init(&()); 3];
        for (n, (value, bucket)) in readings.into_iter().enumerate() {
            let nonce = [n as u8; 16];
            let (public, inputs) = vdaf.shard(CTX, &reading(value, bucket), &nonce).unwrap();
            let verified: Vec<_> = (0..3)
                .map(|agg| {
                    vdaf.verify_init(&verify_key, CTX, agg, &(), &nonce, &public, &inputs[agg])
                        .unwrap()
                })
                .collect();
            let message = vdaf
                .verifier_shares_to_message(CTX, &(), verified.iter().map(|(_, s)| s.clone()))
                .unwrap();
            for (agg, (state, _)) in verified.into_iter().enumerate() {
                match vdaf.verify_next(CTX, state, message.clone()).unwrap() {
                    VerifyTransition::Finish(out) => aggregates[agg].accumulate(&out).unwrap(),
                    _ => panic!("one round"),
                }
            }
        }
        // A report whose explicit share was changed on its way to the first cloud: the shares
        // no longer add up to what the proof is about, and the verifier shares say so.
        let nonce = [9; 16];
        let (public, mut inputs) = vdaf.shard(CTX, &reading(5, 2), &nonce).unwrap();
        let mut bytes = inputs[0].get_encoded().unwrap();
        bytes[3] ^= 1;
        inputs[0] = Prio3InputShare::get_decoded_with_param(&(&vdaf, 0), &bytes).unwrap();
        let shares = (0..3).map(|agg| {
            vdaf.verify_init(&verify_key, CTX, agg, &(), &nonce, &public, &inputs[agg])
                .unwrap()
                .1
        });
        assert!(vdaf.verifier_shares_to_message(CTX, &(), shares).is_err());

        let totals = vdaf.unshard(&(), aggregates, readings.len()).unwrap();
        assert_eq!(totals.count, 4);
        assert_eq!(totals.sum, 60_000);
        assert_eq!(
            totals.squares,
            10_000u128.pow(2) + 20_000u128.pow(2) + 30_000u128.pow(2)
        );
        assert_eq!(totals.histogram, vec![1, 2, 0, 1]);
    }
}
