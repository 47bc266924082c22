//! A catalog voter's Prometheus metrics: each Raft write's commit time (recorded by the
//! proposers) and every partition's Raft state and flags, read at each scrape.

use super::node::CatalogNode;
use mcloud_core::metrics::{gauge_family, Labels, Metrics};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;
use std::sync::{Arc, Weak};

/// The voter's registry, for its server's `/metrics`.
pub fn register(node: &Arc<CatalogNode>) -> Metrics {
    let metrics = Metrics::new();
    metrics.register_with_unit(
        "mcloud_catalog_commit_duration",
        "Time for a Raft write (a batch of proposals) to commit on a quorum",
        Unit::Seconds,
        node.commit_histogram(),
    );
    metrics.register_collector(Box::new(CatalogCollector(Arc::downgrade(node))));
    metrics
}

#[derive(Debug)]
struct CatalogCollector(Weak<CatalogNode>);

impl Collector for CatalogCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.0.upgrade() else {
            return Ok(());
        };
        let status = node.status();
        let partition = |p: u32| -> Labels { vec![("partition", p.to_string())] };
        let mut leader = Vec::new();
        let mut term = Vec::new();
        let mut applied = Vec::new();
        let mut flags = Vec::new();
        for s in &status {
            leader.push((
                partition(s.partition),
                f64::from(u8::from(s.state == "Leader")),
            ));
            term.push((partition(s.partition), s.term as f64));
            applied.push((partition(s.partition), s.last_applied.unwrap_or(0) as f64));
            for (state, n) in [
                ("open", s.flags.open),
                ("committed", s.flags.committed),
                ("error", s.flags.errored),
            ] {
                let mut labels = partition(s.partition);
                labels.push(("state", state.to_string()));
                flags.push((labels, n as f64));
            }
        }
        gauge_family(
            &mut e,
            "mcloud_catalog_raft_leader",
            "1 where this voter leads the partition's Raft group",
            None,
            &leader,
        )?;
        gauge_family(
            &mut e,
            "mcloud_catalog_raft_term",
            "The partition's current Raft term at this voter",
            None,
            &term,
        )?;
        gauge_family(
            &mut e,
            "mcloud_catalog_raft_last_applied_index",
            "The last log index this voter applied, per partition",
            None,
            &applied,
        )?;
        gauge_family(
            &mut e,
            "mcloud_catalog_flags",
            "Flags this voter holds, per partition and state",
            None,
            &flags,
        )
    }
}
