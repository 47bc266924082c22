//! Additive secret sharing of readings over `Field`.
//!
//! A reading contributes three values: x, x² and 1, so that sums of shares reveal sum, sum of
//! squares and count (hence mean and variance) and nothing finer. Shares are drawn from a
//! seeded stream so that a sensor that retries a batch after a crash sends every cloud exactly
//! the shares it sent the first time: mixing shares of two different splittings would
//! reconstruct garbage. The same streams let a cloud expand its shares from a 32-byte seed
//! (see `upload`).

use crate::Field;
use prio::field::FieldElement;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// x, x², 1.
pub const SHARES_PER_RECORD: usize = 3;

/// One party's share of one reading's three values.
pub type RecordShares = [Field; SHARES_PER_RECORD];

/// The three field values a fixed-point reading contributes.
pub fn record_values(value: u64) -> RecordShares {
    let v = value as u128;
    [Field::from(v), Field::from(v * v), Field::one()]
}

/// A deterministic stream of uniformly random field elements.
///
/// ChaCha12 from `rand_chacha` (well kept, and the sensor's share generator already): a seed
/// party's shares are exactly this stream's output, so it must be a sound PRG whose output is
/// the same on every platform and release, which `rand_chacha` guarantees for a given seed;
/// 12 rounds keep a wide margin (the best known attacks reach 7) at 60 % of ChaCha20's cost.
pub struct ShareStream {
    rng: ChaCha12Rng,
}

impl ShareStream {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        ShareStream {
            rng: ChaCha12Rng::from_seed(seed),
        }
    }

    /// Draws a fresh seed from the operating system.
    pub fn fresh_seed() -> [u8; 32] {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        seed
    }

    /// A uniformly random element of `F`: as many random bytes as an encoded element, rejected
    /// when >= p (probability about 2^-62 for `Field`, 2^-32 for `CountField`), so the result
    /// is exactly uniform and the loop practically never repeats.
    pub fn next_element<F: FieldElement>(&mut self) -> F {
        // Room for any prio field's encoding (16 bytes at most today).
        let mut bytes = [0u8; 32];
        let bytes = &mut bytes[..F::ENCODED_SIZE];
        loop {
            self.rng.fill_bytes(bytes);
            if let Ok(element) = F::try_from_random(bytes) {
                return element;
            }
        }
    }
}

/// Stream ids under a batch's master seed that party seeds are read from: this tag in the
/// high half, the party in the low half, so any other use of the master seed can take a
/// stream of its own without ever producing a party's seed.
const PARTY_SEED_STREAMS: u64 = 0x6d63_6c64_0000_0000;

/// The seed party `party` of a batch expands its shares from: the first 32 bytes of the
/// ChaCha12 stream keyed with the batch's master seed, on a stream id of its own. Distinct
/// stream ids under one key give independent outputs, so a cloud that holds its own seed
/// learns nothing about the master seed or any other party's seed.
pub fn party_seed(master: &[u8; 32], party: u16) -> [u8; 32] {
    let mut rng = ChaCha12Rng::from_seed(*master);
    rng.set_stream(PARTY_SEED_STREAMS | u64::from(party));
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    seed
}

/// Adds shares back together.
pub fn reconstruct(shares: &[RecordShares]) -> RecordShares {
    let mut sum = [Field::zero(); SHARES_PER_RECORD];
    for share in shares {
        for (acc, s) in sum.iter_mut().zip(share) {
            *acc += *s;
        }
    }
    sum
}
