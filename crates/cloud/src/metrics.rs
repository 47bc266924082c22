//! A cloud's Prometheus metrics: what happened to batches, checkpoint and handover times
//! (recorded as they happen), and the elastic pool and windows as they are at each scrape.

use crate::node::CloudNode;
use mcloud_core::metrics::{counter, gauge, gauge_family, Labels, Metrics};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;
use std::sync::Weak;

/// What a cloud records as it happens.
pub(crate) struct CloudMetrics {
    /// Batches by outcome: `stored` (acknowledged to the sensor), then `committed` or
    /// `aborted` when their flag is final; `late` (refused: a window they touch had closed).
    batches: Family<Labels, Counter>,
    checkpoint_seconds: Histogram,
}

impl CloudMetrics {
    pub(crate) fn register(metrics: &Metrics, pause_seconds: Histogram) -> CloudMetrics {
        let m = CloudMetrics {
            batches: Family::default(),
            checkpoint_seconds: mcloud_core::metrics::seconds_histogram(),
        };
        metrics.register(
            "mcloud_cloud_batches",
            "Batches by outcome: stored (acknowledged), committed or aborted (flag final), late (refused: a window had closed)",
            m.batches.clone(),
        );
        metrics.register_with_unit(
            "mcloud_cloud_checkpoint_duration",
            "Time to take and store a checkpoint of every bucket",
            Unit::Seconds,
            m.checkpoint_seconds.clone(),
        );
        metrics.register_with_unit(
            "mcloud_cloud_migration_pause",
            "How long a bucket moved between workers was paused",
            Unit::Seconds,
            pause_seconds,
        );
        m
    }

    pub(crate) fn batch(&self, outcome: &'static str) {
        self.batches
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    pub(crate) fn checkpoint_took(&self, seconds: f64) {
        self.checkpoint_seconds.observe(seconds);
    }
}

/// The pool and the windows, read at each scrape.
#[derive(Debug)]
pub(crate) struct CloudCollector(pub(crate) Weak<CloudNode>);

impl Collector for CloudCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.0.upgrade() else {
            return Ok(());
        };
        let pool = node.pool();
        gauge(
            &mut e,
            "mcloud_cloud_workers",
            "Workers aggregating this cloud's buckets",
            pool.workers() as i64,
        )?;
        if let Some(last) = pool.decisions().last() {
            let series: Vec<(Labels, f64)> = last
                .utilisation
                .iter()
                .map(|(w, u)| (vec![("worker", w.to_string())], *u))
                .collect();
            gauge_family(
                &mut e,
                "mcloud_cloud_worker_utilisation_ratio",
                "Each worker's busy share of the elastic manager's last period (0 to 1)",
                None,
                &series,
            )?;
        }
        let c = pool.counters();
        for (name, help, value) in [
            (
                "mcloud_cloud_bucket_migrations",
                "Buckets moved between workers",
                c.migrations,
            ),
            (
                "mcloud_cloud_scale_out_steps",
                "Elastic decisions that added workers",
                c.scale_out_steps,
            ),
            (
                "mcloud_cloud_scale_in_steps",
                "Elastic decisions that removed workers",
                c.scale_in_steps,
            ),
            (
                "mcloud_cloud_workers_recovered",
                "Failed workers whose buckets were rebuilt",
                c.workers_recovered,
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        counter(
            &mut e,
            "mcloud_cloud_records",
            "Records the workers aggregated",
            pool.records(),
        )?;
        // Seconds as a float counter: what `bench --debs` subtracts to show the policy's cost.
        let policy = ConstCounter::new(node.policy_time().as_secs_f64());
        let m = e.encode_descriptor(
            "mcloud_cloud_policy",
            "Time spent deciding disclosure on the request path (checks, contributors, cells, audit hand-off)",
            Some(&Unit::Seconds),
            policy.metric_type(),
        )?;
        policy.encode(m)?;
        let (windows, batches) = node.remembered();
        gauge(
            &mut e,
            "mcloud_cloud_windows",
            "Windows held in memory",
            windows as i64,
        )?;
        gauge(
            &mut e,
            "mcloud_cloud_batches_in_memory",
            "Batches remembered in memory",
            batches as i64,
        )?;
        let (watermark, closed_before) = node.event_time();
        for (name, help, value) in [
            (
                "mcloud_cloud_watermark_seconds",
                "The sensors' progress in event time (Unix seconds)",
                watermark,
            ),
            (
                "mcloud_cloud_closed_before_seconds",
                "Windows ending up to here (Unix seconds, event time) are closed",
                closed_before,
            ),
        ] {
            gauge(&mut e, name, help, i64::try_from(value).unwrap_or(i64::MAX))?;
        }
        Ok(())
    }
}
