//! `mcloud sensor`: uploads a CSV or a synthetic stream to a running deployment.

use crate::config::Deployment;
use crate::input::{progress, InputArgs};
use anyhow::Result;
use clap::Args;
use mcloud_client::{Commit, Fate, Outbox, Report, Sensor, SensorConfig, Settled};
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
    /// Readings per upload batch (one flag each); a batch is also cut at 1 MiB of body.
    #[arg(long, default_value_t = mcloud_client::sensor::DEFAULT_BATCH_SIZE)]
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
    /// Also append each committed batch's timing here as CSV, as it commits (Unix time in
    /// seconds, readings, commit latency in ms): a restarted sensor continues the file.
    #[arg(long)]
    pub commits_csv: Option<PathBuf>,
}

/// Returns false when some readings did not commit (they are listed on stderr).
pub async fn run(args: SensorArgs) -> Result<bool> {
    crate::input::check_speedup(args.speedup)?;
    let deployment = Deployment::load(&args.deployment)?;
    let uploader = deployment.uploader(Duration::from_millis(args.ttl_ms))?;
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
    let mut commits = match &args.commits_csv {
        Some(path) => Some(CommitLog::open(path)?),
        None => None,
    };
    let mut failed_log = None;
    let mut log = |settled: &Settled| {
        if let (Some(log), Some(c)) = (commits.as_mut(), settled.commit) {
            if let Err(e) = log.append(&c) {
                failed_log.get_or_insert(e);
            }
        }
    };
    let resumed = sensor.resume(&mut log).await?;
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
    let completion = input.completion();
    let report = sensor
        .send(
            input.readings,
            |_| Fate::Complete,
            |settled: &Settled| {
                bar.inc(settled.readings);
                log(settled);
            },
        )
        .await?;
    bar.finish_and_clear();
    completion.check()?;
    if report.skipped_batches > 0 {
        eprintln!(
            "input: the first {} batches were taken by an earlier run with this outbox; continued after them",
            report.skipped_batches
        );
    }
    if let (Some(end), false) = (end, args.no_flush) {
        sensor.uploader().advance_watermark(end, true).await?;
    }
    if let Some(e) = failed_log {
        return Err(e);
    }
    Ok(print_report(&resumed, &report))
}

/// The commit timings file, one line per committed batch, flushed as each commits so a
/// killed sensor leaves what it committed.
struct CommitLog {
    file: std::fs::File,
}

impl CommitLog {
    fn open(path: &std::path::Path) -> Result<CommitLog> {
        use anyhow::Context;
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}", path.display()))?;
        if file.metadata()?.len() == 0 {
            writeln!(file, "unix_secs,readings,latency_ms")?;
        }
        Ok(CommitLog { file })
    }

    fn append(&mut self, c: &Commit) -> Result<()> {
        use std::io::Write;
        let at =
            c.at.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
        // One write per line, so lines of two runs never interleave mid-line.
        let line = format!(
            "{:.3},{},{:.2}\n",
            at.as_secs_f64(),
            c.readings,
            c.latency.as_secs_f64() * 1e3
        );
        self.file.write_all(line.as_bytes())?;
        Ok(())
    }
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
    // Both, even when the first already failed: every batch that did not commit is listed.
    report_failures(resumed) & report_failures(report)
}

/// Lists the batches of `r` that did not commit; returns whether every one did.
pub fn report_failures(r: &Report) -> bool {
    let mut clean = true;
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
    clean
}
