//! `mcloud bench`: the same synthetic input through the private pipeline (N clouds) and
//! through the same code with sharing off (one server, plain values), in one run.

use crate::cluster::{ClusterSpec, LocalCluster};
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
    /// Measure the replicated catalog alone (flag transitions per second, commit latency).
    #[arg(long)]
    pub catalog: bool,
    #[command(flatten)]
    pub catalog_args: crate::catalog_bench::CatalogBenchArgs,
    /// Benchmark the elastic pre-aggregation workers instead: scaling, handover pause,
    /// reaction to a load step.
    #[arg(long)]
    pub elastic: bool,
}

async fn measure(parties: u16, readings: &[Reading], args: &BenchArgs) -> Result<f64> {
    let temp = tempfile::tempdir()?;
    let cluster = LocalCluster::start(ClusterSpec {
        parties,
        window_secs: 60,
        grace_secs: 60,
        dir: temp.path().to_path_buf(),
    })
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
        "{} cloud(s): {} readings in {:.2} s, {} batches committed, check OK",
        parties,
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
    let (readings, description) = args.input.load()?;
    eprintln!(
        "bench: {description}: {} readings, batches of {}, {} in flight, durable clouds over TLS",
        readings.len(),
        args.pipeline.batch_size,
        args.pipeline.in_flight
    );
    let private = measure(args.clouds, &readings, &args).await?;
    let plaintext = measure(1, &readings, &args).await?;
    println!("private_records_per_s={private:.0}");
    println!("plaintext_records_per_s={plaintext:.0}");
    println!("ratio={:.3}", private / plaintext);
    Ok(())
}
