//! `mcloud demo --processes [--chaos]`: every role as its own OS process over loopback TLS —
//! catalog voters and clouds (`mcloud node`), the sensor (`mcloud sensor`) and the collector
//! (`mcloud query`) — checked against the plaintext reference. With `--chaos` the catalog
//! leader and one cloud are SIGKILLed mid-run and restarted.

use crate::demo::DemoArgs;
use crate::processes::{Owned, ProcessCluster, ProcessSpec, Role};
use anyhow::{bail, Context, Result};
use mcloud_collector::Reference;
use mcloud_core::Reading;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a chaos run's stream lasts when `--speedup` is not given, so the kills land
/// while batches are in flight.
const CHAOS_STREAM_SECS: f64 = 30.0;
/// How long a killed process stays dead.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// One thing chaos did, for the summary.
struct Event {
    at: Duration,
    what: String,
}

struct Chaos {
    /// Fractions of the expected stream time at which to kill the catalog leader and a cloud.
    kill_leader_at: Duration,
    kill_cloud_at: Duration,
    cloud: usize,
    events: Vec<Event>,
    leader_killed: Option<(usize, Instant)>,
    cloud_killed: Option<Instant>,
    leaderless: Option<Duration>,
    leader_done: bool,
    cloud_done: bool,
}

impl Chaos {
    fn new(expected: Duration, parties: usize, seed: u64) -> Chaos {
        Chaos {
            kill_leader_at: expected.mul_f64(0.25),
            kill_cloud_at: expected.mul_f64(0.55),
            cloud: (seed % parties as u64) as usize,
            events: Vec::new(),
            leader_killed: None,
            cloud_killed: None,
            leaderless: None,
            leader_done: false,
            cloud_done: false,
        }
    }

    fn log(&mut self, start: Instant, what: String) {
        eprintln!("chaos: {:>6.2} s  {what}", start.elapsed().as_secs_f64());
        self.events.push(Event {
            at: start.elapsed(),
            what,
        });
    }

    /// Advances the schedule; called every few tens of milliseconds while the sensor runs.
    async fn step(
        &mut self,
        cluster: &mut ProcessCluster,
        http: &reqwest::Client,
        start: Instant,
    ) -> Result<()> {
        let now = start.elapsed();
        if !self.leader_done && self.leader_killed.is_none() && now >= self.kill_leader_at {
            if let Some(leader) = cluster.catalog_leader(http, 0).await {
                cluster.kill(Role::Catalog(leader))?;
                self.leader_killed = Some((leader, Instant::now()));
                self.log(
                    start,
                    format!("SIGKILL {} (leader of partition 0)", Role::Catalog(leader)),
                );
            }
        }
        if let Some((killed, at)) = self.leader_killed {
            if self.leaderless.is_none() {
                if let Some(new) = cluster.catalog_leader(http, 0).await {
                    let gap = at.elapsed();
                    self.leaderless = Some(gap);
                    self.log(
                        start,
                        format!(
                            "{} leads partition 0; the catalog had no leader for {:.0} ms",
                            Role::Catalog(new),
                            gap.as_secs_f64() * 1000.0
                        ),
                    );
                }
            }
            if at.elapsed() >= DOWN_FOR && !cluster.is_running(Role::Catalog(killed)) {
                cluster.start(Role::Catalog(killed))?;
                self.log(start, format!("restarted {}", Role::Catalog(killed)));
            }
            if self.leaderless.is_some() && cluster.is_running(Role::Catalog(killed)) {
                self.leader_killed = None;
                self.leader_done = true;
            }
        }
        if !self.cloud_done && self.cloud_killed.is_none() && now >= self.kill_cloud_at {
            cluster.kill(Role::Cloud(self.cloud))?;
            self.cloud_killed = Some(Instant::now());
            self.log(start, format!("SIGKILL {}", Role::Cloud(self.cloud)));
        }
        if let Some(at) = self.cloud_killed {
            if at.elapsed() >= DOWN_FOR {
                cluster.start(Role::Cloud(self.cloud))?;
                self.cloud_killed = None;
                self.cloud_done = true;
                self.log(start, format!("restarted {}", Role::Cloud(self.cloud)));
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.leader_done && self.cloud_done
    }
}

fn log_file(dir: &Path, name: &str) -> Result<File> {
    let path = dir.join(format!("logs/{name}.log"));
    File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// Runs the demo with every role in its own process under `dir`; returns whether the check
/// passed.
pub async fn run(args: &DemoArgs, readings: &[Reading], window: u64, dir: &Path) -> Result<bool> {
    if args.crash_fraction > 0.0 {
        bail!("--crash-fraction simulates sensor crashes in one process; with --processes, use --chaos to kill real processes");
    }
    let bin = std::env::current_exe().context("locating the mcloud binary")?;
    let parties = args.clouds as usize;
    let mut cluster = ProcessCluster::write(ProcessSpec {
        parties,
        partitions: args.partitions,
        window_secs: window,
        grace_secs: args.grace,
        robust: args.robust,
        ..ProcessSpec::new(bin.clone(), dir.to_path_buf())
    })?;
    cluster.start_all()?;
    let http = cluster.wait_ready(Duration::from_secs(60)).await?;
    eprintln!(
        "mcloud demo --processes: 3 catalog voters ({} partition(s)) and {parties} clouds as separate processes in {}",
        args.partitions,
        dir.display()
    );

    let span = readings.iter().map(|r| r.ts).max().unwrap_or(0)
        - readings.iter().map(|r| r.ts).min().unwrap_or(0);
    let speedup = match (args.pipeline.speedup, args.chaos) {
        (Some(s), _) => Some(s),
        (None, true) => Some((span as f64 / CHAOS_STREAM_SECS).max(1.0)),
        (None, false) => None,
    };
    let mut sensor = Command::new(&bin);
    sensor
        .arg("sensor")
        .arg("--deployment")
        .arg(cluster.deployment_path())
        .arg("--outbox")
        .arg(dir.join("sensor/outbox.redb"))
        .args(args.input.to_args())
        .args(["--batch-size", &args.pipeline.batch_size.to_string()])
        .args(["--in-flight", &args.pipeline.in_flight.to_string()])
        .args(["--ttl-ms", &args.pipeline.ttl_ms.to_string()]);
    if let Some(s) = speedup {
        sensor.args(["--speedup", &s.to_string()]);
    }
    let started = Instant::now();
    let mut sensor = Owned(
        sensor
            .stdout(Stdio::null())
            .stderr(log_file(dir, "sensor")?)
            .spawn()
            .context("starting the sensor process")?,
    );
    let mut chaos = args.chaos.then(|| {
        Chaos::new(
            Duration::from_secs_f64(span as f64 / speedup.unwrap_or(1.0)),
            parties,
            args.input.seed,
        )
    });
    let sensor_status = loop {
        if let Some(status) = sensor.0.try_wait()? {
            break status;
        }
        let exited = cluster.exited();
        if !exited.is_empty() {
            bail!(
                "a process of the deployment died on its own:\n{}",
                exited.join("\n")
            );
        }
        if let Some(chaos) = &mut chaos {
            chaos.step(&mut cluster, &http, started).await?;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let streamed = started.elapsed();
    // Chaos that had not finished when the stream ended still restarts what it killed.
    if let Some(chaos) = &mut chaos {
        while !chaos.finished() {
            chaos.step(&mut cluster, &http, started).await?;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        cluster.wait_ready(Duration::from_secs(60)).await?;
    }
    let mut problems = Vec::new();
    if !sensor_status.success() {
        problems.push(format!(
            "the sensor process failed ({sensor_status}):\n{}",
            cluster.log_tail("sensor", 20)
        ));
    }

    let mut collector = Command::new(&bin);
    collector
        .arg("query")
        .arg("--deployment")
        .arg(cluster.deployment_path())
        .args(["--group", args.group.name()])
        .args(["--min-count", &args.min_count.to_string()])
        .args(["--output", "csv", "--wait-secs", "60"])
        .stderr(log_file(dir, "collector")?);
    let output = tokio::task::spawn_blocking(move || collector.output())
        .await?
        .context("running the collector process")?;
    let revealed_csv = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        problems.push(format!(
            "the collector process failed ({}):\n{}",
            output.status,
            cluster.log_tail("collector", 20)
        ));
    }
    let elapsed = started.elapsed();

    let mut reference = Reference::new(window, args.group);
    readings.iter().for_each(|r| reference.add(r));
    let mut expected = Vec::new();
    mcloud_collector::output::write_csv(&mut expected, &reference.expected(args.min_count))?;
    let expected = String::from_utf8_lossy(&expected).into_owned();
    let (matched, mismatches) = compare_csv(&revealed_csv, &expected);
    problems.extend(mismatches);
    problems.extend(catalog_agreement(&cluster, &http).await);

    match args.output {
        crate::input::OutputFormat::Csv => print!("{revealed_csv}"),
        _ => eprintln!(
            "revealed aggregates: {} CSV rows (use --output csv to print them)",
            matched
        ),
    }
    eprintln!("{}", cluster.log_tail("sensor", 3));
    eprintln!(
        "throughput: {} readings in {:.2} s = {:.0} readings/s (stream {:.2} s{}, then the collector process)",
        readings.len(),
        elapsed.as_secs_f64(),
        readings.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        streamed.as_secs_f64(),
        speedup.map(|s| format!(", paced at {s:.0}x real time")).unwrap_or_default()
    );
    if let Some(chaos) = &chaos {
        eprintln!("chaos summary:");
        for e in &chaos.events {
            eprintln!("  at {:>6.2} s: {}", e.at.as_secs_f64(), e.what);
        }
        if let Some(gap) = chaos.leaderless {
            eprintln!(
                "  the catalog had no leader for {:.0} ms after the leader was killed",
                gap.as_secs_f64() * 1000.0
            );
        }
    }
    if problems.is_empty() {
        eprintln!(
            "check: OK, all {matched} revealed rows from the collector process equal the plaintext reference; the catalog voters agree on every flag"
        );
    } else {
        eprintln!("check: FAILED, {} problems:", problems.len());
        for p in problems.iter().take(20) {
            eprintln!("  {p}");
        }
        eprintln!("process logs: {}", dir.join("logs").display());
    }
    Ok(problems.is_empty())
}

/// Compares the collector's CSV with the reference's, row by row (order aside).
pub(crate) fn compare_csv(revealed: &str, expected: &str) -> (usize, Vec<String>) {
    let rows = |csv: &str| -> BTreeSet<String> { csv.lines().skip(1).map(str::to_owned).collect() };
    let (got, want) = (rows(revealed), rows(expected));
    let mut problems = Vec::new();
    for row in want.difference(&got).take(10) {
        problems.push(format!("reference row not revealed: {row}"));
    }
    for row in got.difference(&want).take(10) {
        problems.push(format!("revealed row not in the reference: {row}"));
    }
    let missing = want.difference(&got).count();
    let extra = got.difference(&want).count();
    if missing + extra > 20 {
        problems.push(format!("{missing} rows missing, {extra} rows extra in all"));
    }
    (got.intersection(&want).count(), problems)
}

/// Every running voter must hold the same flag counts, none left open.
async fn catalog_agreement(cluster: &ProcessCluster, http: &reqwest::Client) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = Vec::new();
        for i in 0..cluster.spec().voters {
            if let Some(s) = cluster.catalog_status(http, i).await {
                all.push(s["partitions"].clone());
            }
        }
        let counts: Vec<_> = all
            .iter()
            .map(|parts| {
                parts
                    .as_array()
                    .map(|ps| ps.iter().map(|p| p["flags"].clone()).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        let open: u64 = counts
            .first()
            .map(|c| c.iter().filter_map(|f| f["open"].as_u64()).sum())
            .unwrap_or(0);
        let agree =
            counts.len() == cluster.spec().voters && counts.windows(2).all(|w| w[0] == w[1]);
        if agree && open == 0 {
            return Vec::new();
        }
        if Instant::now() > until {
            return vec![format!(
                "catalog voters do not agree on the flags (or flags stay open): {counts:?}"
            )];
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
