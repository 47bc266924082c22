//! The catalog: the flags table of the m-cloud transaction. A sensor CREATEs a batch's flag
//! (FALSE, with a deadline) before any share leaves, SETs it TRUE once every cloud acknowledged
//! its share, and clouds GET it to learn whether the batch counts. A flag still FALSE at its
//! deadline is ERROR; TRUE and ERROR are final.
//!
//! `FlagTable` is the contract; `FlagStore` keeps the table durably in one process, `service`
//! serves any `FlagTable` over HTTPS and `CatalogClient` is the remote `FlagTable`.

pub mod client;
pub mod error;
pub mod masters;
pub mod raft;
pub mod rules;
pub mod service;
pub mod store;

pub use client::CatalogClient;
pub use error::CatalogError;
pub use raft::{Assignment, CatalogConfig, CatalogNode, Peer, MAX_ASSIGNMENT_BUCKETS, MAX_EPOCH};
pub use store::FlagStore;

use mcloud_core::wire::{CreateFlag, Flag};
use mcloud_core::BatchId;
use std::future::Future;

/// The flags table. Every call is atomic: it succeeds for all ids or changes nothing.
pub trait FlagTable: Send + Sync + 'static {
    /// CREATE: new ids become FALSE with deadline now + ttl. Re-creating a FALSE flag is an
    /// idempotent retry and keeps its deadline; re-creating a final flag is an error.
    fn create(
        &self,
        flags: Vec<CreateFlag>,
    ) -> impl Future<Output = Result<Vec<Flag>, CatalogError>> + Send;

    /// SET: FALSE flags before their deadline become TRUE; TRUE stays TRUE (idempotent).
    fn set(
        &self,
        ids: Vec<BatchId>,
    ) -> impl Future<Output = Result<Vec<Flag>, CatalogError>> + Send;

    /// VERDICT (a cloud, on robust flags only): TRUE for `valid` (before the deadline), ERROR
    /// otherwise, at once.
    fn verdict(
        &self,
        ids: Vec<BatchId>,
        valid: bool,
    ) -> impl Future<Output = Result<Vec<Flag>, CatalogError>> + Send;

    /// GET: the flags as they are now (a FALSE flag past its deadline reads ERROR).
    fn get(
        &self,
        ids: Vec<BatchId>,
    ) -> impl Future<Output = Result<Vec<Option<Flag>>, CatalogError>> + Send;
}

/// Wall-clock Unix milliseconds: deadlines are on the catalog's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
