//! The collector: asks every cloud for its partial aggregates, checks that the clouds
//! aggregated the same committed batches, adds the partials and decodes them, and reveals only
//! groups that meet the disclosure policy. Also the plaintext reference the demo checks
//! against, and the output formats.

pub mod analytics;
pub mod combine;
pub mod output;
pub mod reference;

pub use analytics::CloudSource;
pub use combine::{
    CollectError, Collector, Implausible, Query, Revealed as RevealedResult, RevealedGroup,
    RevealedWindow,
};
pub use reference::{check, CheckReport, Reference};
