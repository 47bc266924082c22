//! Prometheus metrics of one role's server, served at `GET /metrics` in the Prometheus text
//! format (0.0.4) beside `/v1/status`, and as open as it: counts and timings of the service,
//! never a reading or a share.
//!
//! Each server has its own [`Metrics`] (several roles can share a process, as in the
//! in-process cluster), holding the request metrics every route records and whatever its role
//! registers. Names follow Prometheus' conventions: `mcloud_` and the subsystem first, the
//! unit last, counters ending in `_total`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

/// A histogram of durations in seconds, from 0.5 ms to about 33 s.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

type Seconds = Family<Labels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
struct Http {
    requests: Family<Labels, Counter>,
    duration: Seconds,
    bytes_in: Family<Labels, Counter>,
    bytes_out: Family<Labels, Counter>,
}

/// One server's metrics registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    http: Http,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry with the request metrics and the process's memory, files and threads.
    pub fn new() -> Metrics {
        let http = Http {
            requests: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
        };
        let metrics = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            http: http.clone(),
        };
        metrics.register(
            "mcloud_http_requests",
            "HTTP requests answered, by route, method and status code",
            http.requests,
        );
        metrics.register_with_unit(
            "mcloud_http_request_duration",
            "Time from a request's arrival to its answer's head, by route and method",
            Unit::Seconds,
            http.duration,
        );
        metrics.register_with_unit(
            "mcloud_http_request_body",
            "Request body bytes declared by Content-Length, by route",
            Unit::Bytes,
            http.bytes_in,
        );
        metrics.register_with_unit(
            "mcloud_http_response_body",
            "Response body bytes of answers of known length, by route",
            Unit::Bytes,
            http.bytes_out,
        );
        metrics.register_collector(Box::new(ProcessCollector));
        metrics
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Registration and encoding leave the registry whole even if they panic midway.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `metric` as `name` (a counter gets `_total` appended).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Registers `metric` as `name` with `unit` appended to the name.
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.registry().register_with_unit(name, help, unit, metric);
    }

    /// Registers metrics that are read at each scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry().register_collector(collector);
    }

    /// Everything registered, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry())
        {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }

    /// `router` with `GET /metrics` and every route's requests counted and timed.
    pub fn instrument(&self, router: Router) -> Router {
        let scrape = self.clone();
        let http = self.http.clone();
        router
            .route(
                METRICS_PATH,
                get(move || {
                    let text = scrape.encode();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            text,
                        )
                    }
                }),
            )
            .layer(axum::middleware::from_fn(move |req, next| {
                track(http.clone(), req, next)
            }))
    }
}

async fn track(http: Http, req: Request, next: Next) -> Response {
    // The route's pattern, not the path: `/v1/clouds/{party}/forget` is one series, however
    // many parties are asked for; an unknown path is one series too.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = req.method().as_str().to_string();
    let declared = content_length(req.headers());
    let start = Instant::now();
    let response = next.run(req).await.into_response();
    let labels: Labels = vec![("route", route.clone()), ("method", method.clone())];
    http.duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    let mut with_code = labels;
    with_code.push(("code", response.status().as_u16().to_string()));
    http.requests.get_or_create(&with_code).inc();
    let route_only: Labels = vec![("route", route)];
    if let Some(n) = declared {
        http.bytes_in.get_or_create(&route_only).inc_by(n);
    }
    if let Some(n) = content_length(response.headers())
        .or_else(|| axum::body::HttpBody::size_hint(response.body()).exact())
    {
        http.bytes_out.get_or_create(&route_only).inc_by(n);
    }
    response
}

fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The process's resident memory, open files and threads, from `/proc/self` (Linux), under
/// the names Prometheus' own clients use.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<i64>().ok())
        };
        if let Some(kb) = field("VmRSS:") {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                kb.saturating_mul(1024),
            )?;
        }
        if let Some(n) = field("Threads:") {
            gauge(&mut encoder, "process_threads", "OS threads", n)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let n = fds.count() as i64;
            gauge(&mut encoder, "process_open_fds", "Open file descriptors", n)?;
        }
        Ok(())
    }
}

/// Writes one gauge of a [`Collector`].
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// Writes one counter of a [`Collector`] (`name` without `_total`; it is appended).
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// Writes one gauge family of a [`Collector`]: a value per label set.
pub fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = encoder.encode_descriptor(
        name,
        help,
        unit,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in series {
        let g = ConstGauge::new(*value);
        g.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_end_in_total_and_units_come_last() {
        let m = Metrics::new();
        let c: Family<Labels, Counter> = Family::default();
        m.register("mcloud_test_batches", "test", c.clone());
        c.get_or_create(&vec![("outcome", "stored".into())]).inc();
        let text = m.encode();
        assert!(
            text.contains("# TYPE mcloud_test_batches_total counter"),
            "{text}"
        );
        assert!(
            text.contains("mcloud_test_batches_total{outcome=\"stored\"} 1"),
            "{text}"
        );
        let h = seconds_histogram();
        m.register_with_unit("mcloud_test_wait", "test", Unit::Seconds, h.clone());
        h.observe(0.003);
        let text = m.encode();
        assert!(
            text.contains("# TYPE mcloud_test_wait_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("mcloud_test_wait_seconds_count 1"), "{text}");
        assert!(text.contains("process_open_fds "), "{text}");
    }
}
