//! DEBS 2014 Q1 (load prediction) and Q2 (outliers) on the private pipeline: the collector
//! runs the operators against the clouds' RANGE sums; the plaintext reference runs on the same
//! readings; Q1 must agree to the fixed-point unit, Q2 agreement is measured.

use crate::cluster::LocalCluster;
use anyhow::{Context, Result};
use clap::ValueEnum;
use mcloud_analytics::{
    changes_only, q1_mismatches, q2_agreement, run, run_reference, Emit, Output, RunOptions,
};
use mcloud_collector::CloudSource;
use mcloud_core::{Metric, Reading};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueryKind {
    Q1,
    Q2,
    All,
}

impl QueryKind {
    pub fn q1(self) -> bool {
        matches!(self, QueryKind::Q1 | QueryKind::All)
    }
    pub fn q2(self) -> bool {
        matches!(self, QueryKind::Q2 | QueryKind::All)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmitArg {
    Changes,
    Every,
}

/// What the queries produced and how they compare.
pub struct QueryRun {
    pub private: Output,
    pub reference: Output,
    pub q1_problems: Vec<String>,
    pub q2_identical: usize,
    pub q2_total: usize,
    pub elapsed: Duration,
    pub reference_elapsed: Duration,
    pub range_requests: u64,
}

impl QueryRun {
    pub fn q2_ratio(&self) -> f64 {
        if self.q2_total == 0 {
            1.0
        } else {
            self.q2_identical as f64 / self.q2_total as f64
        }
    }
}

/// Runs the queries on the (already uploaded and revealed) data of `cluster`; `readings` are
/// the committed readings, for the reference.
pub async fn run_queries(
    cluster: &LocalCluster,
    readings: &[Reading],
    kind: QueryKind,
    emit: EmitArg,
) -> Result<QueryRun> {
    let loads = || readings.iter().filter(|r| r.metric == Metric::Load);
    let (Some(first), Some(last)) = (loads().map(|r| r.ts).min(), loads().map(|r| r.ts).max())
    else {
        anyhow::bail!("the input has no load readings: Q1 and Q2 need some");
    };
    // Agreement is measured row by row at every boundary; `changes` is derived from that.
    let options = RunOptions {
        q1: kind.q1(),
        q2: kind.q2(),
        emit: Emit::Every,
    };
    let owner = cluster.owner_token(crate::demo::houses_of(readings))?;
    let collector = Arc::new(cluster.collector_as(&owner)?);
    let runtime = tokio::runtime::Handle::current();
    let started = Instant::now();
    let (private, requests) = tokio::task::spawn_blocking(move || {
        let mut source = CloudSource::new(collector, runtime);
        run(&mut source, first, last, options).map(|out| (out, source.requests))
    })
    .await
    .context("analytics task")??;
    let elapsed = started.elapsed();
    let started = Instant::now();
    let reference = run_reference(readings, options);
    let reference_elapsed = started.elapsed();
    let q1_problems = q1_mismatches(&private.q1, &reference.q1, 1);
    let agreement = q2_agreement(&private.q2, &reference.q2);
    let finish = |mut out: Output| {
        if emit == EmitArg::Changes {
            out.q2 = changes_only(&out.q2);
        }
        out
    };
    Ok(QueryRun {
        private: finish(private),
        reference: finish(reference),
        q1_problems,
        q2_identical: agreement.identical,
        q2_total: agreement.total,
        elapsed,
        reference_elapsed,
        range_requests: requests,
    })
}

/// Writes `q1.csv` and `q2.csv` into `dir`, or both tables to stdout when `dir` is `None`.
pub fn write(rows: &Output, kind: QueryKind, dir: Option<&Path>) -> Result<()> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if kind.q1() {
                let file = std::fs::File::create(dir.join("q1.csv"))?;
                mcloud_analytics::write_q1(std::io::BufWriter::new(file), &rows.q1)?;
            }
            if kind.q2() {
                let file = std::fs::File::create(dir.join("q2.csv"))?;
                mcloud_analytics::write_q2(std::io::BufWriter::new(file), &rows.q2)?;
            }
        }
        None => {
            let stdout = std::io::stdout();
            let written = (|| {
                if kind.q1() {
                    mcloud_analytics::write_q1(stdout.lock(), &rows.q1)?;
                }
                if kind.q2() {
                    mcloud_analytics::write_q2(stdout.lock(), &rows.q2)?;
                }
                Ok::<(), std::io::Error>(())
            })();
            match written {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
    }
    Ok(())
}

pub fn print_summary(run: &QueryRun, kind: QueryKind) {
    if kind.q1() {
        if run.q1_problems.is_empty() {
            eprintln!(
                "Q1: {} predictions, all equal the plaintext reference (within 0.001 W)",
                run.private.q1.len()
            );
        } else {
            eprintln!(
                "Q1: FAILED, {} differences from the plaintext reference:",
                run.q1_problems.len()
            );
            for p in run.q1_problems.iter().take(10) {
                eprintln!("  {p}");
            }
        }
    }
    if kind.q2() {
        eprintln!(
            "Q2: agreement with the exact plaintext query {}/{} rows = {:.4} ({} rows written)",
            run.q2_identical,
            run.q2_total,
            run.q2_ratio(),
            run.private.q2.len()
        );
    }
    eprintln!(
        "queries: {:.2} s on the clouds' range sums ({} RANGE rounds), plaintext reference {:.2} s",
        run.elapsed.as_secs_f64(),
        run.range_requests,
        run.reference_elapsed.as_secs_f64()
    );
}
