//! Shared vocabulary of mcloud: readings and their fixed-point encoding, additive secret
//! shares in a prime field, time windows, the wire messages every role speaks, the HTTP error
//! convention and the TLS identities that protect every share in transit.

pub mod csv;
pub mod fixed;
pub mod histogram;
pub mod http;
pub mod reading;
pub mod samples;
pub mod server;
pub mod share;
pub mod stats;
pub mod synthetic;
pub mod tls;
pub mod window;
pub mod wire;

pub use fixed::{FixedError, SCALE};
pub use reading::{GroupKey, GroupLevel, Metric, Reading};
pub use share::{split_record, RecordShares, ShareStream, SHARES_PER_RECORD};
pub use stats::{Partial, Revealed};
pub use window::Window;
pub use wire::BatchId;

/// The prime field every share lives in (p ≈ 2^128, big enough that sums of squares of a
/// month of readings never wrap).
pub type Field = prio::field::Field128;
