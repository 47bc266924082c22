//! The clouds as the analytics' `AggregateSource`: every range Q1 or Q2 asks for becomes a
//! RANGE request to every cloud, checked for agreement, added and decoded. The ranges of one
//! boundary are fetched together in one round trip (`prefetch`), and the round trips of the
//! next [`LOOKAHEAD`] boundaries are under way while one is computed, so the collector waits
//! on the clouds' work rather than on the network. The collector never receives
//! anything finer than the ranges it asked for, and each cloud refuses histogram ranges
//! shorter than its minimum (an hour by default), so per-30 s histograms never leave the
//! clouds even to a collector that asks for them.

use crate::combine::{Collector, PlugTotals};
use crate::CollectError;
use mcloud_analytics::{AggregateSource, CountSum, SourceError, Wanted};
use mcloud_core::wire::RangeSpec;
use mcloud_core::GroupKey;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Boundaries whose ranges are requested ahead of the one being computed.
pub const LOOKAHEAD: usize = 4;

/// One boundary's ranges, requested and not yet taken in.
struct InFlight {
    seq: u64,
    specs: Vec<RangeSpec>,
    answers: JoinHandle<Result<Vec<PlugTotals>, CollectError>>,
}

pub struct CloudSource {
    collector: Arc<Collector>,
    runtime: tokio::runtime::Handle,
    /// Prefetches under way, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Answers taken in, with the prefetch they came with, until a call takes them. Q1 may
    /// have announced a range it then answers from its cache: such answers are dropped once
    /// older than every prefetch in flight.
    fetched: HashMap<RangeSpec, (u64, PlugTotals)>,
    prefetches: u64,
    /// Round trips so far (each goes to every cloud).
    pub requests: u64,
    /// How long a range may wait for the clouds to close its windows (see `waiting`).
    wait: Duration,
}

impl Drop for CloudSource {
    fn drop(&mut self) {
        for f in &self.in_flight {
            f.answers.abort();
        }
    }
}

impl CloudSource {
    /// `runtime` drives the requests; call the source from a thread outside the runtime's
    /// workers (e.g. `spawn_blocking`), because the analytics operators are synchronous.
    pub fn new(collector: Arc<Collector>, runtime: tokio::runtime::Handle) -> CloudSource {
        CloudSource {
            collector,
            runtime,
            in_flight: VecDeque::new(),
            fetched: HashMap::new(),
            prefetches: 0,
            requests: 0,
            wait: Duration::ZERO,
        }
    }

    /// Waits up to `wait` for the windows of each boundary to close instead of failing on
    /// one still open: the operators then follow a stream while the sensors upload it.
    pub fn waiting(mut self, wait: Duration) -> CloudSource {
        self.wait = wait;
        self
    }

    /// Waits for the oldest prefetch and keeps its answers; false when none is under way.
    fn take_in_oldest(&mut self) -> Result<bool, SourceError> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(false);
        };
        let answers = self
            .runtime
            .block_on(oldest.answers)
            .map_err(|e| SourceError::Backend(Box::new(e)))?
            .map_err(|e| SourceError::Backend(Box::new(e)))?;
        let stale_before = oldest.seq.saturating_sub(2 * LOOKAHEAD as u64 + 2);
        self.fetched.retain(|_, (seq, _)| *seq >= stale_before);
        for (spec, totals) in oldest.specs.into_iter().zip(answers) {
            self.fetched.insert(spec, (oldest.seq, totals));
        }
        Ok(true)
    }

    fn range(&mut self, from: u64, to: u64, histograms: bool) -> Result<PlugTotals, SourceError> {
        let spec = RangeSpec {
            from,
            to,
            histograms,
        };
        loop {
            if let Some((_, answer)) = self.fetched.remove(&spec) {
                return Ok(answer);
            }
            if !self.take_in_oldest()? {
                break;
            }
        }
        self.requests += 1;
        self.runtime
            .block_on(self.collector.ranges_when_ready(&[spec], self.wait))
            .map(|mut answers| answers.pop().unwrap_or_default())
            .map_err(|e| SourceError::Backend(Box::new(e)))
    }
}

impl AggregateSource for CloudSource {
    fn prefetch(&mut self, wanted: &Wanted) -> Result<(), SourceError> {
        let spec = |histograms| {
            move |&(from, to): &(u64, u64)| RangeSpec {
                from,
                to,
                histograms,
            }
        };
        let specs: Vec<RangeSpec> = wanted
            .count_sums
            .iter()
            .map(spec(false))
            .chain(wanted.histograms.iter().map(spec(true)))
            .collect();
        if specs.is_empty() {
            return Ok(());
        }
        self.requests += 1;
        self.prefetches += 1;
        let collector = self.collector.clone();
        let asked = specs.clone();
        let wait = self.wait;
        let answers = self
            .runtime
            .spawn(async move { collector.ranges_when_ready(&asked, wait).await });
        self.in_flight.push_back(InFlight {
            seq: self.prefetches,
            specs,
            answers,
        });
        Ok(())
    }

    fn lookahead(&self) -> usize {
        LOOKAHEAD
    }

    fn count_sum(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, CountSum>, SourceError> {
        Ok(self
            .range(from, to, false)?
            .into_iter()
            .filter(|(_, (t, _))| t.count > 0)
            .map(|(plug, (t, _))| {
                (
                    plug,
                    CountSum {
                        count: t.count,
                        sum: t.sum,
                    },
                )
            })
            .collect())
    }

    fn histograms(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<GroupKey, Vec<u64>>, SourceError> {
        Ok(self
            .range(from, to, true)?
            .into_iter()
            .filter(|(_, (_, h))| h.iter().any(|&c| c > 0))
            .map(|(plug, (_, h))| (plug, h))
            .collect())
    }
}
