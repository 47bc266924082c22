//! The sensor side of mcloud: split readings into one additive share per cloud and upload them
//! inside the flags transaction (CREATE flag → UPLOAD shares to every cloud → SET flag), with a
//! durable outbox so that a sensor that loses its network or crashes loses no reading.

pub mod batcher;
pub mod error;
pub mod histograms;
pub mod outbox;
pub mod sensor;
pub mod session;
pub mod transaction;

pub use error::SensorError;
pub use outbox::{Outbox, PlainBatch, PlainHistogram, Received};
pub use sensor::{Commit, Report, Sensor, SensorConfig, Settled};
pub use session::SensorSessions;
pub use transaction::{Fate, Outcome, Uploader};
