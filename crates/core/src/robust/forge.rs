//! Invalid reports, made the way a broken or malicious sensor would: with a valid-looking
//! proof of an encoding that breaks the circuit. `mcloud demo --malicious-fraction` and the
//! tests send them to show that the clouds reject them; an honest sensor never forges.
//!
//! Prio3 proves whatever its type encodes, so a forger wraps the circuit in [`Forged`], whose
//! measurement is the raw encoding. Everything else (lengths, gadget, algorithm id) is the
//! circuit's own, so the shares it makes decode at the clouds as any report does.

use prio::flp::{Flp, FlpError, Gadget, Type};

/// What a forging sensor breaks in one report of each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgery {
    /// A reading past the maximum: its top bit is 2 instead of 0 or 1.
    OutOfRange,
    /// The square uploaded for the variance is not the square of the reading.
    ForgedSquare,
    /// A histogram that counts a reading in every bucket, past what one window may hold.
    PastTheBound,
    /// A valid report whose shares do not add up to what its proof is about: one seed
    /// cloud's seed is changed after proving.
    SharesDoNotAddUp,
    /// A valid report, except that one cloud gets another public share (the joint
    /// randomness parts) than the others: valid as far as the other clouds can tell.
    TamperedForOneCloud,
    /// A valid report of this reading, proven for the same place in another batch and
    /// copied here.
    Replayed,
}

impl Forgery {
    pub const ALL: [Forgery; 6] = [
        Forgery::OutOfRange,
        Forgery::ForgedSquare,
        Forgery::PastTheBound,
        Forgery::SharesDoNotAddUp,
        Forgery::TamperedForOneCloud,
        Forgery::Replayed,
    ];

    /// True when the forgery is of a histogram report rather than a record's.
    pub fn of_histogram(self) -> bool {
        self == Forgery::PastTheBound
    }
}

/// `T` with the raw encoding as its measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Forged<T>(pub T);

impl<T: Type> Flp for Forged<T> {
    type Field = T::Field;

    fn gadget(&self) -> Vec<Box<dyn Gadget<T::Field>>> {
        self.0.gadget()
    }

    fn num_gadgets(&self) -> usize {
        self.0.num_gadgets()
    }

    fn valid(
        &self,
        g: &mut Vec<Box<dyn Gadget<T::Field>>>,
        input: &[T::Field],
        joint_rand: &[T::Field],
        num_shares: usize,
    ) -> Result<Vec<T::Field>, FlpError> {
        self.0.valid(g, input, joint_rand, num_shares)
    }

    fn input_len(&self) -> usize {
        self.0.input_len()
    }

    fn proof_len(&self) -> usize {
        self.0.proof_len()
    }

    fn verifier_len(&self) -> usize {
        self.0.verifier_len()
    }

    fn joint_rand_len(&self) -> usize {
        self.0.joint_rand_len()
    }

    fn eval_output_len(&self) -> usize {
        self.0.eval_output_len()
    }

    fn prove_rand_len(&self) -> usize {
        self.0.prove_rand_len()
    }
}

impl<T: Type> Type for Forged<T> {
    type Measurement = Vec<T::Field>;
    type AggregateResult = T::AggregateResult;

    fn encode_measurement(&self, raw: &Vec<T::Field>) -> Result<Vec<T::Field>, FlpError> {
        if raw.len() != self.0.input_len() {
            return Err(FlpError::Encode(format!(
                "{} elements for an input of {}",
                raw.len(),
                self.0.input_len()
            )));
        }
        Ok(raw.clone())
    }

    fn truncate(&self, input: Vec<T::Field>) -> Result<Vec<T::Field>, FlpError> {
        self.0.truncate(input)
    }

    fn decode_result(
        &self,
        data: &[T::Field],
        num_measurements: usize,
    ) -> Result<T::AggregateResult, FlpError> {
        self.0.decode_result(data, num_measurements)
    }

    fn output_len(&self) -> usize {
        self.0.output_len()
    }
}
