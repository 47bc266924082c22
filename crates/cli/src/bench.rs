//! `mcloud bench`: the same synthetic input through the private pipeline (N clouds) and
//! through the same code with sharing off (one server, plain values), in one run.

use crate::cluster::{ClusterOptions, ClusterSpec, LocalCluster};
use crate::demo::{run_pipeline, PipelineArgs};
use crate::input::InputArgs;
use anyhow::{bail, Result};
use clap::Args;
use mcloud_collector::Query;
use mcloud_core::reading::GroupLevel;
use mcloud_core::Reading;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Clouds in the private run.
    #[arg(long, default_value_t = 3)]
    pub clouds: u16,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Benchmark the DEBS 2014 queries (Q1 + Q2) on the private pipeline instead.
    #[arg(long)]
    pub debs: bool,
    /// With --debs: skip the exact plaintext reference after the run. It holds every reading
    /// (a day at the full DEBS shape is over 30 GB); the upload check, which compares every
    /// house window with the input, still runs.
    #[arg(long, requires = "debs")]
    pub no_reference: bool,
    /// Measure the replicated catalog alone (flag transitions per second, commit latency).
    #[arg(long)]
    pub catalog: bool,
    #[command(flatten)]
    pub catalog_args: crate::catalog_bench::CatalogBenchArgs,
    /// Benchmark the elastic pre-aggregation workers instead: scaling, handover pause,
    /// reaction to a load step.
    #[arg(long)]
    pub elastic: bool,
    /// Benchmark the encrypted storage: write and read throughput of user data (two copies,
    /// local-directory sources) and the raw AEAD throughput, in one run.
    #[arg(long)]
    pub store: bool,
    #[command(flatten)]
    pub store_args: crate::bench_store::StoreBenchArgs,
    /// Robust mode against plain mode on the same input (records and load histograms), both
    /// among the same number of clouds: reports and readings per second.
    #[arg(long)]
    pub robust: bool,
}

async fn measure(
    parties: u16,
    readings: &[Reading],
    args: &BenchArgs,
    robust: bool,
) -> Result<f64> {
    let temp = tempfile::tempdir()?;
    let cluster = LocalCluster::start_with(
        ClusterSpec {
            parties,
            window_secs: 60,
            grace_secs: 60,
            dir: temp.path().to_path_buf(),
        },
        ClusterOptions {
            robust,
            ..ClusterOptions::default()
        },
    )
    .await?;
    let query = Query {
        from: 0,
        to: u64::MAX,
        level: GroupLevel::Plug,
        min_count: 1,
    };
    let run = run_pipeline(&cluster, readings, &args.pipeline, &query, 0.0, 0, true).await?;
    cluster.shutdown().await;
    if !run.check.ok() {
        bail!(
            "the {parties}-cloud run does not match the plaintext reference: {}",
            run.check.problems.join("; ")
        );
    }
    let rate = readings.len() as f64 / run.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "{} cloud(s){}: {} readings in {:.2} s, {} batches committed, check OK",
        parties,
        if robust { ", robust" } else { "" },
        readings.len(),
        run.elapsed.as_secs_f64(),
        run.report.committed_batches
    );
    Ok(rate)
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.elastic {
        return crate::bench_elastic::run().await;
    }
    if args.debs {
        return crate::bench_debs::run(args).await;
    }
    if args.catalog {
        return crate::catalog_bench::run(args.catalog_args).await;
    }
    if args.store {
        return crate::bench_store::run(args.store_args).await;
    }
    let (readings, description) = args.input.load()?;
    eprintln!(
        "bench: {description}: {} readings, batches of {}, {} in flight, durable clouds over TLS",
        readings.len(),
        args.pipeline.batch_size,
        args.pipeline.in_flight
    );
    if args.robust {
        return robust(args, &readings).await;
    }
    let private = measure(args.clouds, &readings, &args, false).await?;
    let plaintext = measure(1, &readings, &args, false).await?;
    println!("private_records_per_s={private:.0}");
    println!("plaintext_records_per_s={plaintext:.0}");
    println!("ratio={:.3}", private / plaintext);
    Ok(())
}

/// `bench --robust`: plain mode, then robust mode, on the same records and histograms.
async fn robust(mut args: BenchArgs, readings: &[Reading]) -> Result<()> {
    if args.clouds < 2 {
        bail!("--robust needs at least 2 clouds to verify among");
    }
    args.pipeline.histograms = true;
    // One report per record, and one per plug and 30 s window of load readings.
    let histograms = readings
        .iter()
        .filter(|r| r.metric == mcloud_core::Metric::Load)
        .map(|r| (r.group, r.ts / mcloud_core::wire::HISTOGRAM_WINDOW_SECS))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let reports = (readings.len() + histograms) as f64;
    let plain = measure(args.clouds, readings, &args, false).await?;
    let robust = measure(args.clouds, readings, &args, true).await?;
    println!(
        "robust_reports={reports:.0} ({} records, {histograms} histograms)",
        readings.len()
    );
    println!(
        "robust_reports_per_s={:.0}",
        robust * reports / readings.len().max(1) as f64
    );
    println!("robust_readings_per_s={robust:.0}");
    println!("plain_readings_per_s={plain:.0}");
    println!("ratio={:.3}", robust / plain);
    Ok(())
}
