//! Robust reports: what a sensor proves about its readings and histograms, and how the clouds
//! check the proofs together without seeing what they are about.
//!
//! Additive shares hide a reading but prove nothing about it: one sensor could add 2^100 to a
//! count and skew or block every aggregate it touches. In a robust deployment every record and
//! every load histogram travels as a Prio3 report (prio's VDAF, the proof system of the IETF
//! DAP protocol): shares of the encoded value and of a fully linear proof that it satisfies a
//! validity circuit ([`ReadingCircuit`], [`HistogramCircuit`]). Each cloud queries its shares;
//! only all clouds' answers together tell whether a report is valid, and no cloud learns more
//! than that bit. A verified report's output share is exactly the plain mode's share of the
//! same record or histogram, so everything after verification is the plain pipeline.
//!
//! Prio3 sends explicit shares to its aggregator 0 and a seed to every other one. mcloud makes
//! a batch's explicit party ([`crate::upload::explicit_party`], the batch id modulo the
//! clouds) its aggregator 0, so robust batches spread their explicit bytes over the clouds as
//! plain ones do, and that cloud leads the batch's verification ([`aggregator`]).
//!
//! Every check is one multiplication gate (`b (b − 1)` for a bit, `x · x` for the square) or
//! linear. The gates are summed about √gates at a time, each weighted by a power of joint
//! randomness, in a single gadget (`ParallelSum` of [`Mul`], as prio's own histogram type
//! does): prio's proof system is analysed for one gadget, and a gadget called once per gate
//! would make the proof and the verifier's work grow with the square of the gates. Linear
//! checks with a constant take `1/num_shares` of it per share, so the shares' outputs add up
//! to the check on the whole input.

mod forge;
mod histogram;
mod reading;
mod report;

pub use forge::Forgery;
pub use histogram::{
    HistogramCircuit, HISTOGRAM_COUNT_BITS, HISTOGRAM_PROOFS, MAX_HISTOGRAM_READINGS,
};
pub use reading::ReadingCircuit;
pub use report::{
    Finish, FinishRequest, Invalid, Messages, Prepared, Report, RobustError, RobustUploadRequest,
    SettleAnswer, SettleRequest, VerifierShares,
};

use crate::wire::BatchId;
use prio::field::NttFriendlyFieldElement;
use prio::flp::gadgets::{Mul, ParallelSum, ParallelSumGadget};
use prio::flp::{FlpError, Gadget};
use prio::vdaf::prio3::Prio3;
use prio::vdaf::xof::XofTurboShake128;
use prio::vdaf::VdafError;

/// Prio3 over [`ReadingCircuit`]: one report per record.
pub type ReadingVdaf = Prio3<ReadingCircuit, XofTurboShake128, 32>;
/// Prio3 over [`HistogramCircuit`]: one report per plug and 30 s window.
pub type HistogramVdaf = Prio3<HistogramCircuit, XofTurboShake128, 32>;

/// Prio3's algorithm ids for mcloud's circuits, from the range reserved for private use.
const READING_ALGORITHM: u32 = 0xFFFF_0001;
const HISTOGRAM_ALGORITHM: u32 = 0xFFFF_0002;

/// The application context every report is bound to, so a proof made for another Prio3
/// application never verifies here.
pub const CONTEXT: &[u8] = b"mcloud robust reports v1";

/// The two VDAFs of a robust deployment of `parties` clouds.
#[derive(Clone, Debug)]
pub struct Robust {
    readings: ReadingVdaf,
    histograms: HistogramVdaf,
    /// The circuits again: Prio3 keeps its own private, and a forger needs them.
    reading_circuit: ReadingCircuit,
    histogram_circuit: HistogramCircuit,
    parties: u16,
}

impl Robust {
    /// Readings up to [`crate::fixed::MAX_FIXED`], histograms of [`crate::histogram::BUCKETS`]
    /// buckets, among `parties` clouds (2 to 255: verification needs two).
    pub fn new(parties: u16) -> Result<Robust, VdafError> {
        let aggregators = u8::try_from(parties)
            .ok()
            .filter(|n| *n >= 2)
            .ok_or_else(|| {
                VdafError::Uncategorized(format!(
                    "robust reports need 2 to 255 clouds, not {parties}"
                ))
            })?;
        let readings = ReadingCircuit::new(crate::fixed::MAX_FIXED)?;
        let histograms = HistogramCircuit::new(crate::histogram::BUCKETS)?;
        Ok(Robust {
            readings: Prio3::new(aggregators, 1, READING_ALGORITHM, readings.clone())?,
            histograms: Prio3::new(
                aggregators,
                HISTOGRAM_PROOFS,
                HISTOGRAM_ALGORITHM,
                histograms.clone(),
            )?,
            reading_circuit: readings,
            histogram_circuit: histograms,
            parties,
        })
    }

    pub fn parties(&self) -> u16 {
        self.parties
    }
}

/// The key the clouds derive their verification randomness from. It must be the same at
/// every cloud of a deployment and unknown to every sensor: a sensor that knew it could find
/// a proof of an invalid report that passes.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey(pub [u8; 32]);

impl VerifyKey {
    pub fn random() -> VerifyKey {
        VerifyKey(rand::random())
    }

    /// From 64 hex digits, as node configurations hold it.
    pub fn from_hex(text: &str) -> Result<VerifyKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("verify key: {e}"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(VerifyKey)
            .map_err(|_| format!("verify key: {} bytes, expected 32", bytes.len()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyKey(..)")
    }
}

/// Most bytes one record's report adds to a cloud's body (the explicit party's: its shares of
/// the encoding and the proof; a seed party's is about 200), beside its plain metadata.
pub const REPORT_RECORD_BYTES_MAX: usize = 1_300;
/// Most bytes one histogram's report adds to a cloud's body, beside its plain metadata.
pub const REPORT_HISTOGRAM_BYTES_MAX: usize = 14_400;

/// The largest robust body of `records` records and `histograms` histograms for any party:
/// what a sender that cuts robust batches by size compares with its target.
pub const fn upload_wire_bytes_max(records: usize, histograms: usize) -> usize {
    crate::wire::upload_wire_bytes_max(records, histograms)
        .saturating_add(records.saturating_mul(REPORT_RECORD_BYTES_MAX))
        .saturating_add(histograms.saturating_mul(REPORT_HISTOGRAM_BYTES_MAX))
}

/// Cloud `party`'s Prio3 aggregator id for `batch`: the batch's explicit party is aggregator
/// 0, the explicit one and the leader of its verification; the others follow in party order.
pub fn aggregator(batch: BatchId, party: u16, parties: u16) -> usize {
    let explicit = crate::upload::explicit_party(batch, parties);
    usize::from((party + parties - explicit) % parties.max(1))
}

/// The cloud of `batch`'s aggregator `agg`.
pub fn party_of(batch: BatchId, agg: usize, parties: u16) -> u16 {
    let explicit = crate::upload::explicit_party(batch, parties);
    ((usize::from(explicit) + agg) % usize::from(parties.max(1))) as u16
}

/// Which of a batch's reports a nonce is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    Record,
    Histogram,
}

/// The Prio3 nonce of report `index` of `kind` in `batch`. It binds the proof's joint
/// randomness to the report's place: a report copied into another batch or place fails.
pub fn nonce(batch: BatchId, kind: ReportKind, index: usize) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"mcloud robust nonce");
    ctx.update(&batch.0.to_le_bytes());
    ctx.update(&[kind as u8]);
    ctx.update(&(index as u64).to_le_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

/// The `Flp` methods that follow from a circuit's `shape: GateShape` alone: its one gadget
/// and the lengths of the proof, the verifier and the randomness.
macro_rules! gate_shape_lens {
    ($field:ty) => {
        fn gadget(&self) -> Vec<Box<dyn Gadget<$field>>> {
            vec![self.shape.gadget()]
        }

        fn num_gadgets(&self) -> usize {
            1
        }

        fn proof_len(&self) -> usize {
            self.shape.proof_len()
        }

        fn verifier_len(&self) -> usize {
            self.shape.verifier_len()
        }

        fn joint_rand_len(&self) -> usize {
            self.shape.calls()
        }

        fn prove_rand_len(&self) -> usize {
            self.shape.prove_rand_len()
        }
    };
}
use gate_shape_lens;

/// The most shares a circuit runs in: Prio3's most aggregators.
const MAX_SHARES: usize = 255;

/// `1/num_shares` from a circuit's table of them. A circuit computes it at every evaluation
/// (the prover's, and every cloud's query), and an inversion is an exponentiation: one of the
/// costliest steps of verifying a small report, so the table is made once with the circuit.
fn one_over<F: Copy>(table: &[F], num_shares: usize) -> Result<F, FlpError> {
    num_shares
        .checked_sub(1)
        .and_then(|i| table.get(i))
        .copied()
        .ok_or_else(|| {
            FlpError::InvalidParameter(format!(
                "{num_shares} shares; a circuit runs in 1 to {MAX_SHARES}"
            ))
        })
}

/// How a circuit's multiplication gates are grouped into calls of its one gadget.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GateShape {
    gates: usize,
    /// Gates summed per gadget call: about √gates keeps both the proof and the verifier's
    /// work near √gates and linear in the gates; one gate per call would make the verifier
    /// quadratic.
    chunk: usize,
}

impl GateShape {
    fn new(gates: usize) -> GateShape {
        GateShape {
            gates,
            chunk: (gates as f64).sqrt().ceil() as usize,
        }
    }

    fn calls(&self) -> usize {
        self.gates.div_ceil(self.chunk)
    }

    fn gadget<F: NttFriendlyFieldElement>(&self) -> Box<dyn Gadget<F>> {
        Box::new(ParallelSum::new(Mul::new(self.calls()), self.chunk))
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

    fn prove_rand_len(&self) -> usize {
        2 * self.chunk
    }
}

/// `Σ_k r^k · a_k · b_k` over `gates` in chunks, one joint random value `r` per chunk, and the
/// weight the last gate got (a circuit takes a claimed product off with it).
fn gate_sum<F: NttFriendlyFieldElement>(
    gadget: &mut Box<dyn Gadget<F>>,
    gates: &[(F, F)],
    shape: &GateShape,
    joint_rand: &[F],
) -> Result<(F, F), FlpError> {
    let mut sum = F::zero();
    let mut last_weight = F::zero();
    let mut args = vec![F::zero(); 2 * shape.chunk];
    for (chunk, r) in gates.chunks(shape.chunk).zip(joint_rand) {
        // Powers of one joint random value weigh the gates of a chunk, so a gate that is not
        // 0 cannot be cancelled by another (but with negligible probability).
        let mut weight = *r;
        for (pair, (a, b)) in args.chunks_exact_mut(2).zip(chunk) {
            pair[0] = weight * *a;
            pair[1] = *b;
            last_weight = weight;
            weight *= *r;
        }
        for unused in &mut args[2 * chunk.len()..] {
            *unused = F::zero();
        }
        sum += gadget.eval(&args)?;
    }
    Ok((sum, last_weight))
}

#[cfg(test)]
pub(crate) mod tests {
    use prio::field::{FieldElement, NttFriendlyFieldElement};
    use prio::flp::Type;

    /// Proves `input` (possibly tampered after encoding) and checks it in `shares` shares.
    pub(crate) fn accepted<T: Type>(typ: &T, input: &[T::Field], shares: usize) -> bool
    where
        T::Field: NttFriendlyFieldElement,
    {
        let prove_rand = T::Field::random_vector(typ.prove_rand_len());
        let query_rand = T::Field::random_vector(typ.query_rand_len());
        let joint_rand = T::Field::random_vector(typ.joint_rand_len());
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

    fn split<F: NttFriendlyFieldElement>(v: &[F], n: usize) -> Vec<Vec<F>> {
        let mut shares: Vec<Vec<F>> = (1..n).map(|_| F::random_vector(v.len())).collect();
        let last = v
            .iter()
            .enumerate()
            .map(|(i, x)| shares.iter().fold(*x, |acc, s| acc - s[i]))
            .collect();
        shares.push(last);
        shares
    }
}
