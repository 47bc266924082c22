//! The clouds as the analytics' `AggregateSource`: every range Q1 or Q2 asks for becomes one
//! RANGE request per cloud, checked for agreement, added and decoded. The collector never
//! receives anything finer than the range it asked for, and each cloud refuses histogram
//! ranges shorter than its minimum (an hour by default), so per-30 s histograms never leave
//! the clouds even to a collector that asks for them.

use crate::combine::Collector;
use mcloud_analytics::{AggregateSource, CountSum, SourceError};
use mcloud_core::GroupKey;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct CloudSource {
    collector: Arc<Collector>,
    runtime: tokio::runtime::Handle,
    /// RANGE rounds asked so far (each goes to every cloud).
    pub requests: u64,
}

impl CloudSource {
    /// `runtime` drives the requests; call the source from a thread outside the runtime's
    /// workers (e.g. `spawn_blocking`), because the analytics operators are synchronous.
    pub fn new(collector: Arc<Collector>, runtime: tokio::runtime::Handle) -> CloudSource {
        CloudSource {
            collector,
            runtime,
            requests: 0,
        }
    }

    fn range(
        &mut self,
        from: u64,
        to: u64,
        histograms: bool,
    ) -> Result<BTreeMap<GroupKey, (mcloud_core::Revealed, Vec<u64>)>, SourceError> {
        self.requests += 1;
        self.runtime
            .block_on(self.collector.range(from, to, histograms))
            .map_err(|e| SourceError::Backend(Box::new(e)))
    }
}

impl AggregateSource for CloudSource {
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
