//! `mcloud query`: asks every cloud for COMPUTE and prints the combined aggregates.

use crate::config::Deployment;
use crate::input::{write_output, OutputFormat};
use anyhow::Result;
use clap::Args;
use mcloud_collector::{Collector, Query};
use mcloud_core::reading::GroupLevel;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct QueryArgs {
    /// The deployment file naming the clouds.
    #[arg(long)]
    pub deployment: PathBuf,
    /// First window start (Unix seconds) to reveal.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Reveal windows starting before this (Unix seconds).
    #[arg(long, default_value_t = u64::MAX)]
    pub to: u64,
    /// Group by house, household or plug.
    #[arg(long, default_value = "house")]
    pub group: GroupLevel,
    /// Withhold groups with fewer records than this.
    #[arg(long, default_value_t = 1)]
    pub min_count: u64,
    /// Wait up to this many seconds for windows that are not computable yet.
    #[arg(long, default_value_t = 0)]
    pub wait_secs: u64,
    #[arg(long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub archive: crate::store::ArchiveArgs,
}

pub async fn run(args: QueryArgs) -> Result<()> {
    let deployment = Deployment::load(&args.deployment)?;
    let archive = args.archive.open(&args.deployment)?;
    let collector = Collector::new(deployment.app_cloud_endpoints()?);
    let query = Query {
        from: args.from,
        to: args.to,
        level: args.group,
        min_count: args.min_count,
    };
    let revealed = collector
        .collect_when_ready(&query, Duration::from_secs(args.wait_secs))
        .await?;
    write_output(args.output, &revealed)?;
    if let Some(archive) = &archive {
        let mut rendered = Vec::new();
        crate::input::render_output(args.output, &revealed, &mut rendered)?;
        archive.put(None, &rendered).await?;
    }
    let groups: usize = revealed.windows.iter().map(|w| w.groups.len()).sum();
    eprintln!(
        "query: {} windows revealed, {} groups, {} withheld below the minimum count, {} withheld as implausible, {} windows not ready",
        revealed.windows.len(),
        groups,
        revealed.withheld(),
        revealed.implausible.len(),
        revealed.not_ready.len()
    );
    for withheld in revealed.implausible.iter().take(10) {
        eprintln!("  withheld: {withheld}");
    }
    for (w, why) in revealed.not_ready.iter().take(10) {
        eprintln!("  window [{}, {}) not ready: {why}", w.start, w.end);
    }
    Ok(())
}
