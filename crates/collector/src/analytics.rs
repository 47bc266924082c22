//! The clouds as the analytics' `AggregateSource`: every range Q1 or Q2 asks for becomes a
//! RANGE request to every cloud, checked for agreement, added and decoded. The ranges of one
//! boundary are fetched together in one round trip (`prefetch`). The collector never receives
//! anything finer than the ranges it asked for, and each cloud refuses histogram ranges
//! shorter than its minimum (an hour by default), so per-30 s histograms never leave the
//! clouds even to a collector that asks for them.

use crate::combine::{Collector, PlugTotals};
use mcloud_analytics::{AggregateSource, CountSum, SourceError, Wanted};
use mcloud_core::wire::RangeSpec;
use mcloud_core::GroupKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub struct CloudSource {
    collector: Arc<Collector>,
    runtime: tokio::runtime::Handle,
    /// Answers fetched ahead by `prefetch`, taken by the calls that follow.
    fetched: HashMap<RangeSpec, PlugTotals>,
    /// Round trips so far (each goes to every cloud).
    pub requests: u64,
}

impl CloudSource {
    /// `runtime` drives the requests; call the source from a thread outside the runtime's
    /// workers (e.g. `spawn_blocking`), because the analytics operators are synchronous.
    pub fn new(collector: Arc<Collector>, runtime: tokio::runtime::Handle) -> CloudSource {
        CloudSource {
            collector,
            runtime,
            fetched: HashMap::new(),
            requests: 0,
        }
    }

    fn range(&mut self, from: u64, to: u64, histograms: bool) -> Result<PlugTotals, SourceError> {
        let spec = RangeSpec {
            from,
            to,
            histograms,
        };
        if let Some(answer) = self.fetched.remove(&spec) {
            return Ok(answer);
        }
        self.requests += 1;
        self.runtime
            .block_on(self.collector.range(spec))
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
        self.fetched.clear();
        if specs.is_empty() {
            return Ok(());
        }
        self.requests += 1;
        let answers = self
            .runtime
            .block_on(self.collector.ranges(&specs))
            .map_err(|e| SourceError::Backend(Box::new(e)))?;
        self.fetched.extend(specs.into_iter().zip(answers));
        Ok(())
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
