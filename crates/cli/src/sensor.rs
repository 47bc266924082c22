//! `mcloud sensor`: uploads a CSV or a synthetic stream to a running deployment.

use crate::config::Deployment;
use crate::input::{progress, InputArgs};
use anyhow::Result;
use clap::Args;
use mcloud_catalog::CatalogClient;
use mcloud_client::{Fate, Outbox, Report, Sensor, SensorConfig, Uploader};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct SensorArgs {
    /// The deployment file naming the catalog and the clouds.
    #[arg(long)]
    pub deployment: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// The durable outbox; batches left in it by an earlier run are sent first.
    #[arg(long, default_value = "mcloud-sensor/outbox.redb")]
    pub outbox: PathBuf,
    /// Readings per upload batch (one flag each).
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Upload transactions running at once.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Flag deadline in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub ttl_ms: u64,
    /// Seconds to wait for unreachable clouds before giving up (batches stay in the outbox).
    #[arg(long, default_value_t = 600)]
    pub wait_secs: u64,
    /// Do not close the windows the stream covered when it ends.
    #[arg(long)]
    pub no_flush: bool,
    /// Also share per-plug load histograms per 30 s window (needed by Q2; clouds must use
    /// 30 s windows).
    #[arg(long)]
    pub histograms: bool,
    /// Replay at this multiple of real time; default: as fast as possible.
    #[arg(long)]
    pub speedup: Option<f64>,
    /// Also write each committed batch's timing here as CSV (seconds since the start,
    /// readings, commit latency in ms).
    #[arg(long)]
    pub commits_csv: Option<PathBuf>,
}

/// Returns false when some readings did not commit (they are listed on stderr).
pub async fn run(args: SensorArgs) -> Result<bool> {
    crate::input::check_speedup(args.speedup)?;
    let deployment = Deployment::load(&args.deployment)?;
    let uploader = Uploader::new(
        deployment.cloud_endpoints()?,
        CatalogClient::with_nodes(deployment.catalog_endpoints()?),
        deployment.catalog_parties()?,
        deployment.sensor_credentials()?,
        Duration::from_millis(args.ttl_ms),
    );
    let sensor = Sensor::new(
        uploader,
        Outbox::open(&args.outbox)?,
        SensorConfig {
            batch_size: args.batch_size.max(1),
            in_flight: args.in_flight.max(1),
            wait_for_clouds: Duration::from_secs(args.wait_secs),
            histograms: args.histograms,
            speedup: args.speedup,
            ..SensorConfig::default()
        },
    );
    let resumed = sensor.resume().await?;
    if resumed.committed_batches > 0 {
        eprintln!(
            "outbox: {} batches ({} readings) from an earlier run committed",
            resumed.committed_batches, resumed.committed_readings
        );
    }
    let input = args.input.stream()?;
    eprintln!("input: {}: {} readings", input.description, input.len);
    let bar = progress(input.len, "uploading");
    let end = input.end;
    let report = sensor
        .send(input.readings, |_| Fate::Complete, |n| bar.inc(n))
        .await?;
    bar.finish_and_clear();
    if let (Some(end), false) = (end, args.no_flush) {
        sensor.uploader().advance_watermark(end, true).await?;
    }
    if let Some(path) = &args.commits_csv {
        write_commits(path, &report)?;
    }
    Ok(print_report(&resumed, &report))
}

fn write_commits(path: &std::path::Path, report: &Report) -> Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("{}", path.display()))?,
    );
    writeln!(f, "secs,readings,latency_ms")?;
    for c in &report.commits {
        writeln!(
            f,
            "{:.3},{},{:.2}",
            c.at.as_secs_f64(),
            c.readings,
            c.latency.as_secs_f64() * 1e3
        )?;
    }
    f.flush()?;
    Ok(())
}

fn print_report(resumed: &Report, report: &Report) -> bool {
    eprintln!(
        "sensor: {} batches ({} readings) committed, {} retried under a new flag",
        report.committed_batches, report.committed_readings, report.retried_batches
    );
    if !report.commits.is_empty() {
        let ms: Vec<f64> = report
            .commits
            .iter()
            .map(|c| c.latency.as_secs_f64() * 1e3)
            .collect();
        let pct = |p| mcloud_cloud::elastic::percentile(&ms, p);
        eprintln!(
            "sensor: commit latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    let mut clean = true;
    for r in [resumed, report] {
        for (what, list) in [("missed its window", &r.missed), ("rejected", &r.rejected)] {
            for b in list {
                clean = false;
                eprintln!(
                    "batch {} ({} readings) {what}: {}",
                    b.id,
                    b.readings.len(),
                    b.reason
                );
            }
        }
    }
    clean
}
