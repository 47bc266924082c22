//! DEBS 2014 smart-grid analytics over revealed aggregates.
//!
//! The operators ([`Q1`], load prediction, and [`Q2`], outliers) read data only through
//! [`AggregateSource`]: per-plug counts, sums and load histograms over ranges of whole 30 s
//! windows, which is what the clouds can reveal as sums of shares. [`reference`] computes
//! the same queries from raw readings to check them.

pub mod check;
pub mod csv_out;
pub mod driver;
pub use mcloud_core::histogram;
pub mod q1;
pub mod q2;
pub mod recent;
pub mod reference;
pub mod source;

pub use check::q1_mismatches;
pub use csv_out::{q2_agreement, write_q1, write_q2, Agreement, CsvSink, Q1_HEADER, Q2_HEADER};
pub use driver::{
    boundaries, run, run_into, run_readings, run_reference, run_since, run_windows, Output,
    RowSink, RunOptions,
};
pub use q1::{Q1Row, Q1, SLICE_MINUTES};
pub use q2::{changes_only, Emit, Q2Row, Q2Window, Q2};
pub use source::{
    windows_from_readings, AggregateSource, CountSum, MemorySource, PlugWindow, SourceError,
    Wanted, WINDOW_SECS,
};

use mcloud_core::GroupKey;
use thiserror::Error;

/// Why a query could not be answered.
#[derive(Debug, Error)]
pub enum AnalyticsError {
    /// The source failed or its windows were malformed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Outputs happen at positive multiples of 30 s only.
    #[error("boundary {0} is not a positive multiple of {WINDOW_SECS} seconds")]
    UnalignedBoundary(u64),
    /// A revealed histogram does not use the shared bucket scheme.
    #[error("histogram of plug {plug:?} has {found} buckets, expected {expected}", expected = histogram::BUCKETS)]
    HistogramLength { plug: GroupKey, found: usize },
    /// Rows could not be written where they go.
    #[error("writing rows: {0}")]
    Sink(#[from] std::io::Error),
}
