//! Shared vocabulary of mcloud: readings and their fixed-point encoding, additive secret
//! shares in a prime field, time windows, the wire messages every role speaks, the HTTP error
//! convention and the TLS identities that protect every share in transit.

pub mod auth;
pub mod console;
pub mod csv;
pub mod database;
pub mod disclosure;
pub mod fixed;
pub mod histogram;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod noise;
pub mod paths;
pub mod reading;
pub mod robust;
pub mod samples;
pub mod server;
pub mod share;
pub mod stats;
pub mod synthetic;
pub mod tls;
pub mod upload;
pub mod window;
pub mod wire;

pub use fixed::{FixedError, SCALE};
pub use reading::{GroupKey, GroupLevel, Metric, Reading};
pub use share::{party_seed, RecordShares, ShareStream, SHARES_PER_RECORD};
pub use stats::{Partial, Revealed};
pub use window::Window;
pub use wire::BatchId;

/// The prime field every share lives in (p ≈ 2^128, big enough that sums of squares of a
/// month of readings never wrap).
pub type Field = prio::field::Field128;

/// The prime field histogram counts are shared in (p = 2^64 − 2^32 + 1). Half the bytes of
/// `Field`, and wide enough: a revealed count is a number of readings, and even a day of
/// readings of every plug of a deployment stays below 2^40, far from the 2^64 − 2^32 a count
/// would need to reach to wrap. Record shares stay in `Field`: sums of x² overflow 64 bits.
pub type CountField = prio::field::Field64;
