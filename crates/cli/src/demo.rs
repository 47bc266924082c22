//! `mcloud demo`: the whole private pipeline in one process on loopback, checked against the
//! plaintext reference.

use crate::cluster::{CatalogSpec, ClusterOptions, ClusterSpec, LocalCluster};
use crate::input::{progress, write_output, InputArgs, OutputFormat};
use crate::queries::{run_queries, EmitArg, QueryKind};
use anyhow::{bail, Result};
use clap::Args;
use mcloud_client::{Fate, Outbox, Report, Sensor, SensorConfig, Settled};
use mcloud_collector::{check, CheckReport, Query, Reference, RevealedResult};
use mcloud_core::disclosure::{DisclosurePolicy, DpRules};
use mcloud_core::http::CallError;
use mcloud_core::reading::GroupLevel;
use mcloud_core::wire::HISTOGRAM_WINDOW_SECS;
use mcloud_core::Reading;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Number of independent clouds (shares per reading).
    #[arg(long, default_value_t = 3)]
    pub clouds: u16,
    /// Differential privacy for other users' apps: every cloud adds noise for ε = EPSILON per
    /// request (readings bounded by 10 kW); the demo reports what it costs in accuracy.
    #[arg(long, value_name = "EPSILON")]
    pub dp: Option<f64>,
    /// Tumbling window size in seconds.
    #[arg(long, default_value_t = 60)]
    pub window: u64,
    /// Event-time seconds a window stays open after its end.
    #[arg(long, default_value_t = 60)]
    pub grace: u64,
    /// Group revealed aggregates by house, household or plug.
    #[arg(long, default_value = "house")]
    pub group: GroupLevel,
    /// Withhold groups with fewer records than this.
    #[arg(long, default_value_t = 1)]
    pub min_count: u64,
    /// Fraction of batches whose sensor dies after some clouds acknowledged and before SET.
    #[arg(long, default_value_t = 0.0)]
    pub crash_fraction: f64,
    /// Robust mode: every record and histogram goes as a Prio3 report whose validity the
    /// clouds verify together before it counts.
    #[arg(long)]
    pub robust: bool,
    /// With --robust: this fraction of the houses' sensors send forged reports (each kind of
    /// forgery in turn); the demo shows every one of their batches refused at every cloud.
    #[arg(long, default_value_t = 0.0, requires = "robust")]
    pub malicious_fraction: f64,
    #[arg(long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Run the DEBS 2014 queries (Q1 load prediction, Q2 outliers) on the private aggregates;
    /// windows become 30 s.
    #[arg(long, value_enum)]
    pub query: Option<QueryKind>,
    /// Q2 rows: when a house's percentage changes, or at every 30 s boundary.
    #[arg(long, value_enum, default_value = "changes")]
    pub emit: EmitArg,
    /// Write the query rows to DIR/q1.csv and DIR/q2.csv instead of stdout.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub ramp: crate::ramp::RampArgs,
    /// Keep all state here instead of in a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// After the demo, keep the deployment running with every node's web console (their
    /// URLs are printed) until Ctrl-C. With `--load-profile ramp` the URLs are printed before
    /// the load starts.
    #[arg(long)]
    pub console: bool,
    /// Raft groups the catalog's flags keyspace is split into.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Run every role (each catalog voter, each cloud, the sensor, the collector) as its own
    /// OS process talking over loopback TLS.
    #[arg(long)]
    pub processes: bool,
    /// With --processes: SIGKILL the catalog leader and one cloud mid-run, restart them, and
    /// still check the result against the plaintext reference.
    #[arg(long, requires = "processes")]
    pub chaos: bool,
}

#[derive(Args, Clone, Debug)]
pub struct PipelineArgs {
    /// Readings per upload batch (one flag each); a batch is also cut at 1 MiB of body.
    #[arg(long, default_value_t = mcloud_client::sensor::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Upload transactions running at once.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Flag deadline in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub ttl_ms: u64,
    /// Replay at this multiple of real time; default: as fast as possible.
    #[arg(long)]
    pub speedup: Option<f64>,
    /// Share per-plug load histograms too (the queries set this).
    #[arg(skip)]
    pub histograms: bool,
}

/// What one run of the pipeline produced.
pub struct PipelineRun {
    pub report: Report,
    pub revealed: RevealedResult,
    pub check: CheckReport,
    /// From the first upload to the last window revealed.
    pub elapsed: Duration,
}

/// Sends `readings` through `cluster`, reveals every window and checks it.
pub async fn run_pipeline(
    cluster: &LocalCluster,
    readings: &[Reading],
    pipeline: &PipelineArgs,
    query: &Query,
    crash_fraction: f64,
    seed: u64,
    show_progress: bool,
) -> Result<PipelineRun> {
    let started = Instant::now();
    let report = send_readings(
        cluster,
        readings,
        pipeline,
        crash_fraction,
        seed,
        show_progress,
    )
    .await?;
    finish_pipeline(cluster, readings, report, pipeline, query, started).await
}

/// A sensor uploading to `cluster`, with its outbox in the cluster's directory.
pub fn cluster_sensor(cluster: &LocalCluster, pipeline: &PipelineArgs) -> Result<Sensor> {
    let uploader = cluster.uploader(Duration::from_millis(pipeline.ttl_ms))?;
    let outbox = Outbox::open(&cluster.dir().join("sensor/outbox.redb"))?;
    Ok(Sensor::new(
        uploader,
        outbox,
        SensorConfig {
            batch_size: pipeline.batch_size.max(1),
            in_flight: pipeline.in_flight.max(1),
            wait_for_clouds: Duration::from_secs(30),
            histograms: pipeline.histograms,
            speedup: pipeline.speedup,
            ..SensorConfig::default()
        },
    ))
}

/// The sensor side of a run: every reading uploaded, each batch's fate known.
pub async fn send_readings(
    cluster: &LocalCluster,
    readings: &[Reading],
    pipeline: &PipelineArgs,
    crash_fraction: f64,
    seed: u64,
    show_progress: bool,
) -> Result<Report> {
    if !(0.0..=1.0).contains(&crash_fraction) {
        bail!("--crash-fraction must lie in [0, 1], got {crash_fraction}");
    }
    let parties = cluster.spec.parties as usize;
    let sensor = cluster_sensor(cluster, pipeline)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let fate = move |_| {
        if crash_fraction > 0.0 && rng.gen_bool(crash_fraction) {
            Fate::DieAfter(rng.gen_range(1..=parties))
        } else {
            Fate::Complete
        }
    };
    let bar = progress(readings.len() as u64, "uploading");
    if !show_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let report = sensor
        .send(readings.iter().copied(), fate, |s: &Settled| {
            bar.inc(s.readings)
        })
        .await?;
    bar.finish_and_clear();
    Ok(report)
}

/// Closes every window the readings cover, reveals them and checks them against the
/// plaintext reference over the readings whose batch committed.
pub async fn finish_pipeline(
    cluster: &LocalCluster,
    readings: &[Reading],
    report: Report,
    pipeline: &PipelineArgs,
    query: &Query,
    started: Instant,
) -> Result<PipelineRun> {
    let end = readings.iter().map(|r| r.ts).max().unwrap_or(0);
    cluster
        .uploader(Duration::from_millis(pipeline.ttl_ms))?
        .advance_watermark(end, true)
        .await?;
    let wait = Duration::from_millis(pipeline.ttl_ms) + Duration::from_secs(30);
    let owner = cluster.owner_token(houses_of(readings))?;
    let revealed = cluster
        .collector_as(&owner)?
        .collect_when_ready(query, wait)
        .await?;
    let elapsed = started.elapsed();

    let crashed: HashSet<u64> = report
        .crashed
        .iter()
        .flat_map(|b| b.readings.iter().map(|r| r.id))
        .collect();
    let mut reference = Reference::new(cluster.spec.window_secs, query.level);
    for r in readings.iter().filter(|r| !crashed.contains(&r.id)) {
        reference.add(r);
    }
    let mut check = check(&revealed, &reference, query.min_count);
    for failed in report.missed.iter().chain(&report.rejected) {
        check.problems.push(format!(
            "batch {} ({} readings) did not commit: {}",
            failed.id,
            failed.readings.len(),
            failed.reason
        ));
    }
    Ok(PipelineRun {
        report,
        revealed,
        check,
        elapsed,
    })
}

/// The houses a data set holds: the houses its owner's token names.
pub fn houses_of(readings: &[Reading]) -> std::collections::BTreeSet<u32> {
    readings.iter().map(|r| r.group.house).collect()
}

pub async fn run(args: DemoArgs) -> Result<bool> {
    if args.clouds == 0 {
        bail!("--clouds must be at least 1");
    }
    if args.window == 0 {
        bail!("--window must be at least 1 second");
    }
    crate::input::check_speedup(args.pipeline.speedup)?;
    if args.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    if args.ramp.load_profile == crate::ramp::LoadProfile::Ramp {
        if args.processes {
            bail!("--load-profile ramp runs the elastic workers in one process; drop --processes");
        }
        return crate::ramp::run(args).await;
    }
    let (readings, description) = args.input.load()?;
    let temp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut pipeline = args.pipeline.clone();
    let mut window = args.window;
    if let Some(kind) = args.query {
        if window != HISTOGRAM_WINDOW_SECS {
            eprintln!(
                "queries run on {HISTOGRAM_WINDOW_SECS} s windows (the DEBS 2014 output period)"
            );
            window = HISTOGRAM_WINDOW_SECS;
        }
        pipeline.histograms = kind.q2();
    }
    if args.processes {
        if args.malicious_fraction > 0.0 {
            bail!("--malicious-fraction runs in one process; drop --processes");
        }
        if args.query.is_some() {
            bail!("--processes runs the aggregate pipeline; run the queries against a deployment of processes with `mcloud analytics`");
        }
        eprintln!("input: {description}: {} readings", readings.len());
        let ok = crate::process_demo::run(&args, &readings, window, &dir).await?;
        if !ok && args.data_dir.is_none() {
            // The process logs explain a failure; they outlive the run.
            let _ = temp.keep();
        }
        return Ok(ok);
    }
    let cluster = LocalCluster::start_with(
        ClusterSpec {
            parties: args.clouds,
            window_secs: window,
            grace_secs: args.grace,
            dir,
        },
        ClusterOptions {
            catalog: CatalogSpec {
                partitions: args.partitions,
                ..CatalogSpec::default()
            },
            disclosure: demo_policy(args.dp)?,
            robust: args.robust,
            ..ClusterOptions::default()
        },
    )
    .await?;
    eprintln!(
        "mcloud demo: {} clouds{}, catalog at {}, window {} s, grouped by {}, min count {}",
        args.clouds,
        if args.robust { " in robust mode" } else { "" },
        cluster.catalog_url(),
        window,
        args.group.name(),
        args.min_count
    );
    eprintln!("input: {description}: {} readings", readings.len());
    let (readings, malicious) = if args.malicious_fraction > 0.0 {
        let (honest, forged) = crate::malicious::split(&readings, args.malicious_fraction)?;
        let refused = crate::malicious::send(&cluster, &forged, &pipeline).await?;
        eprintln!("{refused}");
        (honest, Some(refused))
    } else {
        (readings, None)
    };
    let query = Query {
        from: 0,
        to: u64::MAX,
        level: args.group,
        min_count: args.min_count,
    };
    let run = run_pipeline(
        &cluster,
        &readings,
        &pipeline,
        &query,
        args.crash_fraction,
        args.input.seed,
        true,
    )
    .await?;
    let malicious_ok = malicious.as_ref().is_none_or(|m| m.all_refused());
    let Some(kind) = args.query else {
        let other = as_another_user(&cluster, &readings, args.group, false).await?;
        hold_for_console(&cluster, args.console).await;
        cluster.shutdown().await;
        write_output(args.output, &run.revealed)?;
        print_summary(&run, readings.len());
        eprintln!("{other}");
        return Ok(run.check.ok() && malicious_ok);
    };
    let crashed: HashSet<u64> = run
        .report
        .crashed
        .iter()
        .flat_map(|b| b.readings.iter().map(|r| r.id))
        .collect();
    let committed: Vec<Reading> = readings
        .iter()
        .filter(|r| !crashed.contains(&r.id))
        .copied()
        .collect();
    let queries = run_queries(&cluster, &committed, kind, args.emit).await?;
    let other = as_another_user(&cluster, &committed, args.group, true).await?;
    hold_for_console(&cluster, args.console).await;
    cluster.shutdown().await;
    if args.out_dir.is_some() || args.output == OutputFormat::Csv {
        crate::queries::write(&queries.private, kind, args.out_dir.as_deref())?;
    }
    print_summary(&run, readings.len());
    crate::queries::print_summary(&queries, kind);
    eprintln!("{other}");
    Ok(run.check.ok() && queries.q1_problems.is_empty() && malicious_ok)
}

/// The largest reading the demo's noise is calibrated to: 10 kW, in fixed-point units.
const DP_MAX_VALUE: u64 = 10_000 * mcloud_core::SCALE;

/// The default policy, with noise for other users' apps when `dp` names an ε.
fn demo_policy(dp: Option<f64>) -> Result<DisclosurePolicy> {
    let mut policy = DisclosurePolicy::default();
    if let Some(epsilon) = dp {
        policy.other.dp = Some(DpRules {
            epsilon,
            budget: 100.0 * epsilon,
            max_value: DP_MAX_VALUE,
        });
        policy.check()?;
    }
    Ok(policy)
}

/// How far noisy revealed sums and counts lie from the exact ones: the median relative
/// error over the revealed cells, for sums and for counts.
fn dp_error(revealed: &RevealedResult, readings: &[Reading], level: GroupLevel) -> (f64, f64) {
    let mut exact: std::collections::HashMap<_, mcloud_core::Revealed> = Default::default();
    let blocks: Vec<mcloud_core::Window> = revealed.windows.iter().map(|w| w.window).collect();
    for r in readings {
        if let Some(b) = blocks.iter().find(|b| (b.start..b.end).contains(&r.ts)) {
            exact
                .entry((b.start, r.metric, level.project(r.group)))
                .or_default()
                .add_value(r.value);
        }
    }
    let mut sums = Vec::new();
    let mut counts = Vec::new();
    for w in &revealed.windows {
        for g in &w.groups {
            let Some(e) = exact.get(&(w.window.start, g.metric, g.group)) else {
                continue;
            };
            let rel = |noisy: f64, exact: f64| (noisy - exact).abs() / exact.max(1.0);
            sums.push(rel(g.totals.sum as f64, e.sum as f64));
            counts.push(rel(g.totals.count as f64, e.count as f64));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    (median(sums), median(counts))
}

/// What the same questions give another user's app (the deployment's collector token, in the
/// disclosure policy's other-users scope): aggregates in the scope's blocks, or a refusal
/// naming the rule.
async fn as_another_user(
    cluster: &LocalCluster,
    readings: &[Reading],
    level: GroupLevel,
    ranges: bool,
) -> Result<String> {
    let collector = cluster.collector_as(&cluster.app_token()?)?;
    let policy = cluster.disclosure().other.clone();
    let refused = |e: &mcloud_collector::CollectError| match e {
        mcloud_collector::CollectError::Call(CallError::Rejected { status, code, .. }) => {
            Some(format!("refused ({status} {code})"))
        }
        _ => None,
    };
    let query = Query {
        from: 0,
        to: u64::MAX,
        level,
        min_count: 1,
    };
    let compute = match collector.collect(&query).await {
        Ok(revealed) => {
            let mut said = format!(
                "{} cells in {} blocks of {} windows revealed, {} withheld",
                revealed
                    .windows
                    .iter()
                    .map(|w| w.groups.len())
                    .sum::<usize>(),
                revealed.windows.len(),
                policy.stride_windows,
                revealed.withheld()
            );
            if let Some(dp) = &policy.dp {
                let (sums, counts) = dp_error(&revealed, readings, level);
                said += &format!(
                    "; with differential privacy (ε = {} per request at every cloud, readings up to {} W): sums off by {:.3} % and counts by {:.4} % (median over cells); variances are mostly noise",
                    dp.epsilon,
                    dp.max_value / mcloud_core::SCALE,
                    100.0 * sums,
                    100.0 * counts
                );
            }
            said
        }
        Err(e) => refused(&e).ok_or(e)?,
    };
    let mut out = format!(
        "as another user's app (at least {} plugs and {} windows of data behind a cell): COMPUTE by {}: {compute}",
        policy.min_contributors,
        policy.min_data_windows,
        level.name()
    );
    if ranges {
        let spec = mcloud_core::wire::RangeSpec {
            from: 0,
            to: cluster.spec.window_secs,
            histograms: false,
        };
        let answer = match collector.range(spec).await {
            Ok(plugs) => format!("{} plugs revealed", plugs.len()),
            Err(e) => refused(&e).ok_or(e)?,
        };
        out += &format!("; per-plug RANGE (Q1, Q2): {answer}");
    }
    Ok(out)
}

pub fn print_summary(run: &PipelineRun, readings: usize) {
    let r = &run.report;
    eprintln!(
        "batches: {} committed, {} ended ERROR (sensor stopped before SET), {} retried under a new flag, {} missed their window, {} rejected",
        r.committed_batches,
        r.crashed.len(),
        r.retried_batches,
        r.missed.len(),
        r.rejected.len()
    );
    let groups: usize = run.revealed.windows.iter().map(|w| w.groups.len()).sum();
    eprintln!(
        "revealed: {} windows, {} groups, {} withheld below the minimum count",
        run.revealed.windows.len(),
        groups,
        run.revealed.withheld()
    );
    eprintln!(
        "throughput: {readings} readings in {:.2} s = {:.0} readings/s (upload to last window revealed)",
        run.elapsed.as_secs_f64(),
        readings as f64 / run.elapsed.as_secs_f64().max(1e-9)
    );
    if run.check.ok() {
        eprintln!(
            "check: OK, all {} revealed groups equal the plaintext reference ({} withheld, as the reference expects)",
            run.check.matched, run.check.withheld
        );
    } else {
        eprintln!("check: FAILED, {} problems:", run.check.problems.len());
        for p in run.check.problems.iter().take(20) {
            eprintln!("  {p}");
        }
    }
}

/// With `--console`: prints every node's console and waits for Ctrl-C.
pub async fn hold_for_console(cluster: &LocalCluster, console: bool) {
    if !console {
        return;
    }
    print_consoles(cluster);
    let _ = tokio::signal::ctrl_c().await;
}

/// Every node's console URL and the `mcloud console` command for the whole deployment.
pub fn print_consoles(cluster: &LocalCluster) {
    let path = mcloud_core::console::CONSOLE_PATH;
    for url in cluster.catalog_urls() {
        eprintln!("console: {url}{path}  (catalog voter)");
    }
    for (party, url) in cluster.cloud_urls().iter().enumerate() {
        eprintln!("console: {url}{path}  (cloud {party})");
    }
    match cluster.write_deployment() {
        Ok(deployment) => eprintln!(
            "the whole deployment: mcloud console --deployment {}",
            deployment.display()
        ),
        Err(e) => tracing::warn!("writing the deployment file for `mcloud console`: {e:#}"),
    }
    eprintln!(
        "the browser must accept the parties' CAs (in {}); Ctrl-C stops the deployment",
        cluster.dir().join("trust").display()
    );
}
