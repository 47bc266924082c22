//! `mcloud demo --load-profile ramp`: offered load rising linearly from low to ten times as
//! much and back, through the private pipeline, while each cloud's elastic manager follows it.
//! Writes `elasticity.csv` and `elasticity.png` (cloud 0's view) and checks the revealed
//! aggregates against the plaintext reference like every demo.

use crate::cluster::{ClusterOptions, ClusterSpec, LocalCluster};
use crate::demo::{cluster_sensor, finish_pipeline, print_summary, DemoArgs};
use crate::plot;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use mcloud_client::{Fate, Report};
use mcloud_cloud::elastic::{Action, Decision, ElasticConfig, Thresholds};
use mcloud_collector::Query;
use mcloud_core::synthetic::Synthetic;
use mcloud_core::Reading;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LoadProfile {
    /// Everything as fast as possible (the default demo).
    #[default]
    Steady,
    /// Low load, a linear ramp to 10× and back down, low load again.
    Ramp,
}

#[derive(Args, Clone, Debug)]
pub struct RampArgs {
    /// Offered load over time.
    #[arg(long, value_enum, default_value = "steady")]
    pub load_profile: LoadProfile,
    /// Ramp profile: seconds the whole profile lasts.
    #[arg(long, default_value_t = 80)]
    pub ramp_secs: u64,
    /// Ramp profile: readings per second at the low end (the peak is ten times this).
    #[arg(long, default_value_t = 1500)]
    pub base_rate: u64,
    /// Ramp profile: simulated operator cost per record in the workers, in microseconds, so
    /// that a load a laptop can generate keeps several workers busy.
    #[arg(long, default_value_t = 150)]
    pub record_cost_us: u64,
    /// Ramp profile: elastic manager period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub period_ms: u64,
    /// Ramp profile: cool-down between two scaling steps, in seconds.
    #[arg(long, default_value_t = 3)]
    pub cooldown_secs: u64,
    /// Ramp profile: where elasticity.csv and elasticity.png go.
    #[arg(long, default_value = ".")]
    pub plot_dir: PathBuf,
}

/// Offered load at `t` seconds into a profile of `total` seconds, as a multiple of the base.
fn multiple(t: f64, total: f64) -> f64 {
    let x = t / total;
    let up = if x < 0.1 {
        0.0
    } else if x < 0.5 {
        (x - 0.1) / 0.4
    } else if x < 0.9 {
        (0.9 - x) / 0.4
    } else {
        0.0
    };
    1.0 + 9.0 * up
}

const TICK: Duration = Duration::from_millis(250);

pub async fn run(args: DemoArgs) -> Result<bool> {
    let ramp = &args.ramp;
    if ramp.ramp_secs < 10 || ramp.base_rate == 0 {
        bail!("--ramp-secs must be at least 10 and --base-rate at least 1");
    }
    let total_secs = ramp.ramp_secs as f64;
    // Readings the profile needs: the average multiple is 1 + 9 × 0.4 = 4.6.
    let needed = (ramp.base_rate as f64 * total_secs * 4.7) as u64 + 1;
    let mut config = args.input.synthetic_config();
    config.duration_secs = (needed / config.plugs().max(1) + 1) * config.interval_secs;
    let mut source = Synthetic::new(config);

    let temp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let elastic = ElasticConfig {
        workers: 1,
        period: Some(Duration::from_millis(ramp.period_ms.max(10))),
        thresholds: Thresholds {
            cooldown: Duration::from_secs(ramp.cooldown_secs),
            ..Thresholds::default()
        },
        record_cost: Duration::from_micros(ramp.record_cost_us),
        ..ElasticConfig::default()
    };
    let thresholds = elastic.thresholds.clone();
    let cluster = LocalCluster::start_with(
        ClusterSpec {
            parties: args.clouds,
            window_secs: args.window,
            grace_secs: args.grace,
            dir,
        },
        ClusterOptions {
            elastic,
            ..Default::default()
        },
    )
    .await?;
    let pool = cluster
        .cloud(0)
        .context("cloud 0 is not running")?
        .pool()
        .clone();
    eprintln!(
        "mcloud demo --load-profile ramp: {} clouds, {} s, {} to {} readings/s, {} µs per record in the workers",
        args.clouds,
        ramp.ramp_secs,
        ramp.base_rate,
        ramp.base_rate * 10,
        ramp.record_cost_us
    );
    if args.console {
        // Printed before the load starts, so the consoles can follow the whole ramp.
        crate::demo::print_consoles(&cluster);
    }
    let mut pipeline = args.pipeline.clone();
    pipeline.batch_size = pipeline.batch_size.min(250);
    let sensor = cluster_sensor(&cluster, &pipeline)?;
    let mut report = Report::default();
    let mut readings: Vec<Reading> = Vec::new();
    // (seconds on the pool's clock, readings offered in the tick)
    let mut offered: Vec<(f64, u64)> = Vec::new();
    let start = Instant::now();
    let pool_start = pool.uptime();
    let mut owed = 0.0;
    while start.elapsed().as_secs_f64() < total_secs {
        let tick_start = Instant::now();
        owed += ramp.base_rate as f64
            * multiple(start.elapsed().as_secs_f64(), total_secs)
            * TICK.as_secs_f64();
        let n = owed.floor() as usize;
        owed -= n as f64;
        let chunk: Vec<Reading> = source.by_ref().take(n).collect();
        if chunk.is_empty() {
            break;
        }
        offered.push((pool.uptime(), chunk.len() as u64));
        let part = sensor
            .send(chunk.iter().copied(), |_| Fate::Complete, |_| {})
            .await?;
        merge(&mut report, part);
        readings.extend(chunk);
        if let Some(rest) = TICK.checked_sub(tick_start.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    // Let the manager see the quiet end and scale in.
    tokio::time::sleep(Duration::from_secs(ramp.cooldown_secs + 2)).await;
    let decisions: Vec<Decision> = pool
        .decisions()
        .into_iter()
        .filter(|d| d.at >= pool_start)
        .collect();
    let counters = pool.counters();
    let query = Query {
        from: 0,
        to: u64::MAX,
        level: args.group,
        min_count: args.min_count,
    };
    let run = finish_pipeline(&cluster, &readings, report, &pipeline, &query, start).await?;

    let rows = rows(&decisions, &offered, pool_start);
    std::fs::create_dir_all(&ramp.plot_dir)?;
    let csv = ramp.plot_dir.join("elasticity.csv");
    write_csv(&csv, &rows)?;
    let png = ramp.plot_dir.join("elasticity.png");
    plot::elasticity(&png, &rows, &thresholds)?;
    print_summary(&run, readings.len());
    let (mut max_workers, mut in_band, mut loaded) = (0, 0, 0);
    for r in &rows {
        max_workers = max_workers.max(r.workers);
        if r.average > 0.05 {
            loaded += 1;
            if (thresholds.lut..=thresholds.uut).contains(&r.average) {
                in_band += 1;
            }
        }
    }
    eprintln!(
        "elasticity: {} periods, up to {max_workers} workers, {} scale-out and {} scale-in steps, {} buckets moved; average utilisation within [LUT, UUT] in {in_band} of {loaded} loaded periods",
        rows.len(),
        counters.scale_out_steps,
        counters.scale_in_steps,
        counters.migrations
    );
    eprintln!("wrote {} and {}", csv.display(), png.display());
    if args.console {
        eprintln!("the ramp is over; the consoles stay up until Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
    }
    cluster.shutdown().await;
    Ok(run.check.ok())
}

fn merge(total: &mut Report, part: Report) {
    total.committed_batches += part.committed_batches;
    total.committed_readings += part.committed_readings;
    total.retried_batches += part.retried_batches;
    total.missed.extend(part.missed);
    total.rejected.extend(part.rejected);
    total.crashed.extend(part.crashed);
}

/// One manager period as plotted.
pub struct Row {
    pub time: f64,
    pub offered: f64,
    pub throughput: f64,
    pub workers: usize,
    pub average: f64,
    pub std_dev: f64,
    pub action: String,
}

fn rows(decisions: &[Decision], offered: &[(f64, u64)], start: f64) -> Vec<Row> {
    let mut out = Vec::new();
    let mut previous = start;
    for d in decisions {
        let span = (d.at - previous).max(1e-3);
        let sent: u64 = offered
            .iter()
            .filter(|(t, _)| *t > previous && *t <= d.at)
            .map(|(_, n)| n)
            .sum();
        let action = match &d.action {
            Action::Provision { add } => format!("provision+{add}"),
            Action::Decommission { remove } => format!("decommission-{}", remove.len()),
            Action::Balance { moves } => format!("balance:{}", moves.len()),
            other => other.name().to_string(),
        };
        out.push(Row {
            time: d.at - start,
            offered: sent as f64 / span,
            throughput: d.records as f64 / span,
            workers: d.workers,
            average: d.average,
            std_dev: d.std_dev,
            action,
        });
        previous = d.at;
    }
    out
}

fn write_csv(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    writeln!(
        f,
        "time_s,offered_per_s,throughput_per_s,workers,avg_utilisation,std_utilisation,action"
    )?;
    for r in rows {
        writeln!(
            f,
            "{:.2},{:.0},{:.0},{},{:.3},{:.3},{}",
            r.time, r.offered, r.throughput, r.workers, r.average, r.std_dev, r.action
        )?;
    }
    f.flush()?;
    Ok(())
}
