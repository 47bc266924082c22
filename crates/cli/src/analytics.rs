//! `mcloud analytics`: the collector role running DEBS 2014 Q1 and Q2 against a running
//! deployment's RANGE sums.

use crate::config::Deployment;
use crate::queries::{EmitArg, QueryKind};
use anyhow::{Context, Result};
use clap::Args;
use mcloud_analytics::{run_into, AnalyticsError, CsvSink, Emit, RunOptions};
use mcloud_collector::{CloudSource, Collector};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct AnalyticsArgs {
    /// The deployment file naming the clouds.
    #[arg(long)]
    pub deployment: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    pub query: QueryKind,
    /// First reading's timestamp (Unix seconds).
    #[arg(long)]
    pub from: u64,
    /// Last reading's timestamp (Unix seconds).
    #[arg(long)]
    pub to: u64,
    #[arg(long, value_enum, default_value = "changes")]
    pub emit: EmitArg,
    /// Wait up to this many seconds for each boundary's windows to close instead of failing
    /// on one still open: the queries then follow sensors that are still uploading. At most a
    /// day.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait_secs: u64,
    /// Write DIR/q1.csv and DIR/q2.csv; without it the rows go to stdout.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Also store the tables as NAME/q1.csv and NAME/q2.csv in the storage.
    #[command(flatten)]
    pub archive: crate::store::ArchiveArgs,
    /// Send each house with Q2 outliers a mailbox message to its owner: the user whose
    /// mailbox key (`mcloud mailbox keygen` with the owner's token) names the house.
    #[arg(long)]
    pub alert_owners: bool,
    /// Send this user the alert of each house with Q2 outliers (with `--alert-owners`: of
    /// each house that has no owner with a mailbox).
    #[arg(long)]
    pub alert_to: Option<String>,
    /// A Q2 row is an outlier when at least this percentage of the house's plugs is above the
    /// global median.
    #[arg(long, default_value_t = 50.0)]
    pub alert_percent: f64,
}

pub async fn run_command(args: AnalyticsArgs) -> Result<()> {
    let deployment = Deployment::load(&args.deployment)?;
    let collector = Arc::new(Collector::new(deployment.app_cloud_endpoints()?));
    let runtime = tokio::runtime::Handle::current();
    let options = RunOptions {
        q1: args.query.q1(),
        q2: args.query.q2(),
        emit: match args.emit {
            EmitArg::Changes => Emit::Changes,
            EmitArg::Every => Emit::Every,
        },
    };
    let (from, to) = (args.from, args.to);
    let wait = std::time::Duration::from_secs(args.wait_secs);
    let archive = args.archive.open(&args.deployment)?;
    if !(0.0..=100.0).contains(&args.alert_percent) {
        anyhow::bail!("--alert-percent must be between 0 and 100");
    }
    if let Some(user) = &args.alert_to {
        mcloud_store::master::check_name("--alert-to user", user)?;
    }
    let alerts = if args.alert_owners || args.alert_to.is_some() {
        Some(crate::store::client(&args.deployment, None)?)
    } else {
        None
    };
    let (mut q1_out, mut q2_out) = outputs(&args)?;
    if archive.is_some() {
        q1_out.archived = Some(Vec::new());
        q2_out.archived = Some(Vec::new());
    }
    let mut outliers = crate::alerts::Outliers::new(args.alert_percent);
    let counter = collector.clone();
    let started = Instant::now();
    let (q1_rows, q2_rows, requests, finished, outliers) = tokio::task::spawn_blocking(move || {
        let mut source = CloudSource::new(collector, runtime).waiting(wait);
        let mut sink = CsvSink::new(q1_out, q2_out)?;
        let mut noting = crate::alerts::Noting {
            inner: &mut sink,
            outliers: &mut outliers,
        };
        match run_into(&mut source, from, to, options, &mut noting) {
            // A reader that stopped early (`| head`) is not an error of ours.
            Err(AnalyticsError::Sink(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                let counts = (sink.q1_rows, sink.q2_rows, source.requests);
                return anyhow::Ok((counts.0, counts.1, counts.2, None, outliers));
            }
            other => other?,
        }
        let (q1_rows, q2_rows) = (sink.q1_rows, sink.q2_rows);
        let outputs = sink.finish()?;
        anyhow::Ok((q1_rows, q2_rows, source.requests, Some(outputs), outliers))
    })
    .await
    .context("analytics task")??;
    let elapsed = started.elapsed();
    let (q1_archived, q2_archived, q2_buffered) = match finished {
        Some((q1, q2)) => (q1.archived, q2.archived, q2.buffered),
        None => (None, None, None),
    };
    if let Some(archive) = &archive {
        match (q1_archived, q2_archived) {
            (Some(q1), Some(q2)) => {
                if args.query.q1() {
                    archive.put(Some("q1.csv"), &q1).await?;
                }
                if args.query.q2() {
                    archive.put(Some("q2.csv"), &q2).await?;
                }
            }
            _ => eprintln!("analytics: output cut short; nothing archived"),
        }
    }
    if let Some(store) = &alerts {
        let messages = outliers.messages();
        let owners: std::collections::BTreeMap<u32, String> = if args.alert_owners {
            let houses: Vec<u32> = messages.iter().map(|(house, _)| *house).collect();
            let found = store.house_owners(&houses).await;
            found
                .context("looking up the houses' owners")?
                .into_iter()
                .collect()
        } else {
            Default::default()
        };
        for (house, text) in &messages {
            let Some(user) = owners.get(house).or(args.alert_to.as_ref()) else {
                eprintln!("analytics: house {house} has no owner with a mailbox; no alert sent");
                continue;
            };
            let id = store
                .send(user, text.as_bytes())
                .await
                .with_context(|| format!("alerting {user} about house {house}"))?;
            eprintln!("analytics: alert {id} about house {house} sent to {user}");
        }
        if messages.is_empty() {
            eprintln!(
                "analytics: no Q2 outliers at {}%; no alert sent",
                args.alert_percent
            );
        }
    }
    if let Some(q2) = q2_buffered {
        let written = std::io::stdout().lock().write_all(&q2);
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other?,
        }
    }
    eprintln!(
        "analytics: {q1_rows} Q1 rows, {q2_rows} Q2 rows in {:.2} s ({requests} RANGE rounds)",
        elapsed.as_secs_f64(),
    );
    eprintln!("range_bytes={}", counter.range_bytes());
    let implausible = counter.implausible();
    if !implausible.is_empty() {
        // The queries ran without these plugs in these ranges.
        eprintln!(
            "analytics: {} plug ranges withheld as implausible",
            implausible.len()
        );
        for withheld in implausible.iter().take(10) {
            eprintln!("  withheld: {withheld}");
        }
    }
    if let Some(kb) = peak_rss_kb() {
        eprintln!("peak_rss_kb={kb}");
    }
    Ok(())
}

/// Where a query's rows go: a file in the output directory, stdout, or nowhere (not run).
/// Q2 rows for stdout wait in memory until Q1's are written, so the two tables do not mix;
/// they are a few per house and boundary.
struct Output {
    to: Box<dyn Write + Send>,
    buffered: Option<Vec<u8>>,
    /// A copy of everything written, for `--archive`.
    archived: Option<Vec<u8>>,
}

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = match &mut self.buffered {
            Some(buffer) => buffer.write(bytes)?,
            None => self.to.write(bytes)?,
        };
        if let Some(copy) = &mut self.archived {
            copy.extend_from_slice(&bytes[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.to.flush()
    }
}

fn outputs(args: &AnalyticsArgs) -> Result<(Output, Output)> {
    let nowhere = || Output {
        to: Box::new(std::io::sink()),
        buffered: None,
        archived: None,
    };
    let file = |dir: &std::path::Path, name: &str| -> Result<Output> {
        let path = dir.join(name);
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Output {
            to: Box::new(std::io::BufWriter::new(file)),
            buffered: None,
            archived: None,
        })
    };
    let (q1, q2) = (args.query.q1(), args.query.q2());
    Ok(match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (
                if q1 { file(dir, "q1.csv")? } else { nowhere() },
                if q2 { file(dir, "q2.csv")? } else { nowhere() },
            )
        }
        None => {
            let stdout = || Output {
                to: Box::new(std::io::BufWriter::new(std::io::stdout())),
                buffered: None,
                archived: None,
            };
            (
                if q1 { stdout() } else { nowhere() },
                match (q1, q2) {
                    (true, true) => Output {
                        to: Box::new(std::io::sink()),
                        buffered: Some(Vec::new()),
                        archived: None,
                    },
                    (false, true) => stdout(),
                    _ => nowhere(),
                },
            )
        }
    })
}

/// This process's peak resident memory, from the kernel.
pub fn peak_rss_kb() -> Option<u64> {
    peak_rss_kb_at("/proc/self/status")
}

/// Peak resident memory of the running process `pid` (none once it has exited).
pub fn peak_rss_kb_of(pid: u32) -> Option<u64> {
    peak_rss_kb_at(&format!("/proc/{pid}/status"))
}

fn peak_rss_kb_at(path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
