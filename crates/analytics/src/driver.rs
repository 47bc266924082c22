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

/// Where rows go as they are computed, boundary by boundary, so that a long run holds no
/// more than one boundary's rows.
pub trait RowSink {
    fn q1_rows(&mut self, rows: Vec<Q1Row>) -> Result<(), AnalyticsError>;
    fn q2_rows(&mut self, rows: Vec<Q2Row>) -> Result<(), AnalyticsError>;
}

/// Keeps every row (for checks against a reference on data of test size).
impl RowSink for Output {
    fn q1_rows(&mut self, rows: Vec<Q1Row>) -> Result<(), AnalyticsError> {
        self.q1.extend(rows);
        Ok(())
    }
    fn q2_rows(&mut self, rows: Vec<Q2Row>) -> Result<(), AnalyticsError> {
        self.q2.extend(rows);
        Ok(())
    }
}

/// Runs the private operators over the boundaries of `[first_ts, last_ts]`, asking `source`,
/// and returns every row.
pub fn run<S: AggregateSource + ?Sized>(
    source: &mut S,
    first_ts: u64,
    last_ts: u64,
    options: RunOptions,
) -> Result<Output, AnalyticsError> {
    let mut output = Output::default();
    run_into(source, first_ts, last_ts, options, &mut output)?;
    Ok(output)
}

/// Runs the private operators over the boundaries of `[first_ts, last_ts]`, asking `source`,
/// and hands each boundary's rows to `sink`. The ranges of the next
/// [`AggregateSource::lookahead`] boundaries are announced before a boundary is computed, so a
/// remote source keeps that many round trips in flight.
pub fn run_into<S: AggregateSource + ?Sized>(
    source: &mut S,
    first_ts: u64,
    last_ts: u64,
    options: RunOptions,
    sink: &mut dyn RowSink,
) -> Result<(), AnalyticsError> {
    let history_from = first_ts - first_ts % WINDOW_SECS;
    run_since(source, history_from, first_ts, last_ts, options, sink)
}

/// [`run_into`] where Q1's history (earlier days' slices) goes back to `history_from`
/// rather than to `first_ts`: rows for a recent range, predicted from older data.
pub fn run_since<S: AggregateSource + ?Sized>(
    source: &mut S,
    history_from: u64,
    first_ts: u64,
    last_ts: u64,
    options: RunOptions,
    sink: &mut dyn RowSink,
) -> Result<(), AnalyticsError> {
    let mut q1 = Q1::new(history_from);
    let mut q2 = Q2::new(options.emit);
    let mut announced = boundaries(first_ts, last_ts).peekable();
    let lookahead = source.lookahead() as u64;
    for t in boundaries(first_ts, last_ts) {
        // Q1 asks only for earlier days' slices it has not cached yet; announcing a later
        // boundary before this one is computed may ask for one twice, never miss one.
        while let Some(next) = announced.next_if(|&n| n <= t + lookahead * WINDOW_SECS) {
            let mut wanted = Wanted::default();
            if options.q1 {
                q1.wanted(next, &mut wanted.count_sums);
            }
            if options.q2 {
                Q2::wanted(next, &mut wanted.histograms);
            }
            source.prefetch(&wanted)?;
        }
        if options.q1 {
            sink.q1_rows(q1.at(source, t)?)?;
        }
        if options.q2 {
            sink.q2_rows(q2.at(source, t)?)?;
        }
    }
    Ok(())
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
