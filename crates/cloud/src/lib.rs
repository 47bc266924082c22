//! A cloud node: one independent party of an mcloud deployment. It stores its shares of
//! every upload batch durably (the values table), pre-aggregates them per window and group,
//! learns from the catalog which batches committed, and answers COMPUTE for closed windows
//! with its partial aggregate over committed batches only. It never sees another party's
//! share, so nothing it holds depends on any single reading.

pub mod audit;
pub mod disclosure;
pub mod elastic;
pub mod error;
mod metrics;
pub mod node;
mod reopen;
pub mod robust;
pub mod service;
pub mod store;
pub mod sums;
pub mod windows;

pub use error::CloudError;
pub use node::{CloudConfig, CloudNode, DEFAULT_RETENTION_SECS, MIN_RETENTION_SECS};
