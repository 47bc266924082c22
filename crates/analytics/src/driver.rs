//! Runs the queries over every 30 s boundary of a data set, privately (from aggregates) or
//! with the plaintext references.

use crate::q1::{Q1Row, Q1};
use crate::q2::{Emit, Q2Row, Q2};
use crate::reference;
use crate::source::Wanted;
use crate::source::{
    windows_from_readings, AggregateSource, MemorySource, PlugWindow, WINDOW_SECS,
};
use crate::AnalyticsError;
use mcloud_core::{Metric, Reading};

/// Which queries to run, and how Q2 writes rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// Run Q1 (load prediction).
    pub q1: bool,
    /// Run Q2 (outliers).
    pub q2: bool,
    /// Q2 row emission.
    pub emit: Emit,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            q1: true,
            q2: true,
            emit: Emit::Changes,
        }
    }
}

/// Rows of both queries, in boundary order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// Q1 rows.
    pub q1: Vec<Q1Row>,
    /// Q2 rows.
    pub q2: Vec<Q2Row>,
}

/// Every 30 s boundary from the first after `first_ts` to the first after `last_ts`: the
/// boundaries at which some reading of `[first_ts, last_ts]` has just been accounted for.
pub fn boundaries(first_ts: u64, last_ts: u64) -> impl Iterator<Item = u64> {
    let first = (first_ts / WINDOW_SECS + 1) * WINDOW_SECS;
    let last = (last_ts / WINDOW_SECS + 1) * WINDOW_SECS;
    (first..=last).step_by(WINDOW_SECS as usize)
}

/// Runs the private operators over the boundaries of `[first_ts, last_ts]`, asking `source`.
pub fn run<S: AggregateSource + ?Sized>(
    source: &mut S,
    first_ts: u64,
    last_ts: u64,
    options: RunOptions,
) -> Result<Output, AnalyticsError> {
    let mut q1 = Q1::new(first_ts - first_ts % WINDOW_SECS);
    let mut q2 = Q2::new(options.emit);
    let mut output = Output::default();
    for t in boundaries(first_ts, last_ts) {
        let mut wanted = Wanted::default();
        if options.q1 {
            q1.wanted(t, &mut wanted.count_sums);
        }
        if options.q2 {
            Q2::wanted(t, &mut wanted.histograms);
        }
        source.prefetch(&wanted)?;
        if options.q1 {
            output.q1.extend(q1.at(source, t)?);
        }
        if options.q2 {
            output.q2.extend(q2.at(source, t)?);
        }
    }
    Ok(output)
}

/// Runs the private operators over plaintext windows (as the clouds would sum them).
pub fn run_windows(
    windows: Vec<PlugWindow>,
    options: RunOptions,
) -> Result<Output, AnalyticsError> {
    let span = windows
        .iter()
        .filter(|w| w.count > 0)
        .map(|w| w.window_start)
        .fold(None, |span: Option<(u64, u64)>, start| {
            Some(span.map_or((start, start), |(a, b)| (a.min(start), b.max(start))))
        });
    let mut source = MemorySource::new(windows)?;
    match span {
        // A window's readings lie anywhere in its 30 s, so its last second stands for them.
        Some((first, last)) => run(&mut source, first, last + WINDOW_SECS - 1, options),
        None => Ok(Output::default()),
    }
}

/// The span of load readings' timestamps.
fn load_span(readings: &[Reading]) -> Option<(u64, u64)> {
    let mut ts = readings
        .iter()
        .filter(|r| r.metric == Metric::Load)
        .map(|r| r.ts);
    let first = ts.next()?;
    Some(ts.fold((first, first), |(a, b), t| (a.min(t), b.max(t))))
}

/// Runs the private operators over readings: each sensor's windows, then the operators.
pub fn run_readings(readings: &[Reading], options: RunOptions) -> Result<Output, AnalyticsError> {
    let Some((first, last)) = load_span(readings) else {
        return Ok(Output::default());
    };
    let mut source = MemorySource::new(windows_from_readings(readings))?;
    run(&mut source, first, last, options)
}

/// Runs the plaintext references over the same boundaries as [`run_readings`].
pub fn run_reference(readings: &[Reading], options: RunOptions) -> Output {
    let Some((first, last)) = load_span(readings) else {
        return Output::default();
    };
    Output {
        q1: if options.q1 {
            reference::q1_reference(readings, boundaries(first, last))
        } else {
            Vec::new()
        },
        q2: if options.q2 {
            reference::q2_reference(readings, boundaries(first, last), options.emit)
        } else {
            Vec::new()
        },
    }
}
