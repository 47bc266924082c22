//! `mcloud analytics`: the collector role running DEBS 2014 Q1 and Q2 against a running
//! deployment's RANGE sums.

use crate::config::Deployment;
use crate::queries::{EmitArg, QueryKind};
use anyhow::{Context, Result};
use clap::Args;
use mcloud_analytics::{run, Emit, RunOptions};
use mcloud_collector::{CloudSource, Collector};
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
    /// Write DIR/q1.csv and DIR/q2.csv; without it the rows go to stdout.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

pub async fn run_command(args: AnalyticsArgs) -> Result<()> {
    let deployment = Deployment::load(&args.deployment)?;
    let collector = Arc::new(Collector::new(
        deployment.client()?,
        deployment.cloud_urls(),
    ));
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
    let started = Instant::now();
    let (output, requests) = tokio::task::spawn_blocking(move || {
        let mut source = CloudSource::new(collector, runtime);
        run(&mut source, from, to, options).map(|out| (out, source.requests))
    })
    .await
    .context("analytics task")??;
    let elapsed = started.elapsed();
    crate::queries::write(&output, args.query, args.out_dir.as_deref())?;
    eprintln!(
        "analytics: {} Q1 rows, {} Q2 rows in {:.2} s ({} RANGE rounds)",
        output.q1.len(),
        output.q2.len(),
        elapsed.as_secs_f64(),
        requests
    );
    if let Some(kb) = peak_rss_kb() {
        eprintln!("peak_rss_kb={kb}");
    }
    Ok(())
}

/// This process's peak resident memory, from the kernel.
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
