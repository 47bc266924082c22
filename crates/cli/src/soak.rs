//! `mcloud soak`: the three-party deployment as separate processes under a steady synthetic
//! load for a number of minutes, with one catalog voter, cloud or the sensor SIGKILLed and
//! restarted every `--kill-every` seconds (the roles in turn; a restarted sensor resumes its
//! outbox and continues its input after the batches it had taken). Event time runs faster than real time,
//! so the clouds' retention horizon (three hours of windows) is passed within minutes and
//! memory and disk should stop growing; every few seconds it records each process's resident
//! memory, open files and data directory size, the sensor reports each batch's commit
//! latency, and at the end it checks every window the clouds still hold against the plaintext
//! reference.

use crate::input::InputArgs;
use crate::plot::{CommitPoint, ProcessSeries};
use crate::processes::{Owned, ProcessCluster, ProcessSpec, Role};
use anyhow::{bail, Context, Result};
use clap::Args;
use mcloud_cloud::elastic::percentile;
use mcloud_collector::Reference;
use mcloud_core::reading::GroupLevel;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// How long the load runs.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Readings per second the sensor sends (100 plugs, each reading load and work every
    /// second of event time, so event time runs `rate / 200` times faster than real time).
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seconds between two SIGKILLs (voter 0, cloud 0, voter 1, cloud 1, voter 2, cloud 2,
    /// the sensor, in turn).
    #[arg(long, default_value_t = 60)]
    pub kill_every: u64,
    /// Where the samples go: `<out>.csv` and `<out>.png`.
    #[arg(long, default_value = "soak")]
    pub out: PathBuf,
    /// The deployment's directory (a temporary one if not given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const PARTIES: usize = 3;
const VOTERS: usize = 3;
const PLUGS: u64 = 100;
/// Load and work.
const READINGS_PER_STEP: u64 = 2;
const WINDOW: u64 = 30;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const DOWN_FOR: Duration = Duration::from_secs(2);
/// The voters keep decided flags this long (the default is an hour), so their files level
/// off within a run of an hour too.
const KEEP_DECIDED: Duration = Duration::from_secs(600);
/// The interval over which committed throughput and latency percentiles are taken.
const LATENCY_EVERY: Duration = Duration::from_secs(30);

/// One process's figures at one moment.
struct Sample {
    secs: f64,
    role: String,
    rss_kb: u64,
    open_files: u64,
    disk_bytes: u64,
}

pub async fn run(args: SoakArgs) -> Result<bool> {
    let min_rate = PLUGS * READINGS_PER_STEP;
    if args.minutes == 0 || args.rate < min_rate || args.kill_every == 0 {
        bail!("--minutes and --kill-every must be at least 1 and --rate at least {min_rate}");
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let bin = std::env::current_exe().context("locating the mcloud binary")?;
    let mut cluster = ProcessCluster::write(ProcessSpec {
        parties: PARTIES,
        voters: VOTERS,
        window_secs: WINDOW,
        grace_secs: WINDOW,
        retention_secs: Some(mcloud_cloud::MIN_RETENTION_SECS),
        keep_decided_secs: Some(KEEP_DECIDED.as_secs()),
        // The soak's figures (docs/reliability.md) are of retention that drops old windows.
        archive: false,
        ..ProcessSpec::new(bin.clone(), dir.clone())
    })?;
    cluster.start_all()?;
    let http = cluster.wait_ready(Duration::from_secs(60)).await?;

    let speedup = args.rate as f64 / (PLUGS * READINGS_PER_STEP) as f64;
    let input = InputArgs {
        input: None,
        houses: 10,
        households: 2,
        plugs: 5,
        hours: Some(args.minutes as f64 * 60.0 * speedup / 3600.0),
        days: None,
        interval: 1,
        seed: 2014,
    };
    eprintln!(
        "mcloud soak: {PARTIES} clouds and {VOTERS} catalog voters as processes in {}; {} readings/s for {} min ({:.1} h of event time at {speedup:.0}x), a SIGKILL every {} s",
        dir.display(),
        args.rate,
        args.minutes,
        input.duration_hours(),
        args.kill_every
    );
    let deployment = cluster.deployment_path();
    let sensor_command = || -> Result<Command> {
        let mut c = Command::new(&bin);
        c.arg("sensor")
            .arg("--deployment")
            .arg(&deployment)
            .arg("--outbox")
            .arg(dir.join("sensor/outbox.redb"))
            .args(input.to_args())
            .args(["--speedup", &speedup.to_string()])
            .arg("--commits-csv")
            .arg(dir.join("sensor/commits.csv"))
            .stdout(Stdio::null())
            // Appended: a restarted sensor's log follows the killed one's.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("logs/sensor.log"))?,
            );
        Ok(c)
    };
    let spawn_sensor = || -> Result<Owned> {
        Ok(Owned(
            sensor_command()?
                .spawn()
                .context("starting the sensor process")?,
        ))
    };
    let mut sensor = Some(spawn_sensor()?);
    // Voter 0, cloud 0, voter 1, cloud 1, voter 2, cloud 2, the sensor, and again.
    let mut victims: Vec<Option<Role>> = (0..VOTERS)
        .flat_map(|i| [Some(Role::Catalog(i)), Some(Role::Cloud(i % PARTIES))])
        .collect();
    victims.push(None);
    let roles: Vec<Role> = victims.iter().flatten().copied().collect();
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut kills = Vec::new();
    let mut down: Option<(Option<Role>, Instant)> = None;
    let status = loop {
        if let Some(running) = sensor.as_mut() {
            if let Some(status) = running.0.try_wait()? {
                break status;
            }
        }
        let exited = cluster.exited();
        if !exited.is_empty() {
            bail!("a process died on its own:\n{}", exited.join("\n"));
        }
        let now = started.elapsed();
        if let Some((victim, at)) = down {
            if at.elapsed() >= DOWN_FOR {
                match victim {
                    Some(role) => cluster.start(role)?,
                    None => sensor = Some(spawn_sensor()?),
                }
                down = None;
            }
        } else if now >= Duration::from_secs(args.kill_every * (kills.len() as u64 + 1)) {
            let victim = victims[kills.len() % victims.len()];
            let name = match victim {
                Some(role) => {
                    cluster.kill(role)?;
                    role.to_string()
                }
                None => {
                    // Dropping the handle SIGKILLs the process and reaps it.
                    sensor = None;
                    "the sensor".into()
                }
            };
            eprintln!("soak: {:>7.1} s  SIGKILL {name}", now.as_secs_f64());
            down = Some((victim, Instant::now()));
            kills.push(now.as_secs_f64());
        }
        if now >= next_sample {
            next_sample += SAMPLE_EVERY;
            let pid = sensor.as_ref().map(|s| s.0.id());
            sample(&mut cluster, &roles, &dir, pid, now, &mut samples);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some((Some(role), _)) = down {
        cluster.start(role)?;
    }
    let streamed = started.elapsed();
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let mut problems = Vec::new();
    if !status.success() {
        problems.push(format!(
            "the sensor failed ({status}):\n{}",
            cluster.log_tail("sensor", 10)
        ));
    }

    // Every window the clouds still hold, against the reference over the same windows.
    let query = Command::new(&bin)
        .arg("query")
        .arg("--deployment")
        .arg(cluster.deployment_path())
        .args(["--group", "plug", "--min-count", "1"])
        .args(["--output", "csv", "--wait-secs", "120"])
        .stderr(std::fs::File::create(dir.join("logs/collector.log"))?)
        .output()
        .context("running the collector")?;
    if !query.status.success() {
        problems.push(format!(
            "the collector failed ({}):\n{}",
            query.status,
            cluster.log_tail("collector", 10)
        ));
    }
    let mut horizon = 0;
    for party in 0..PARTIES {
        let url = format!("{}/v1/status", cluster.cloud_url(party));
        let status: serde_json::Value = http.get(url).send().await?.json().await?;
        horizon = horizon.max(status["retention"]["retained_from"].as_u64().unwrap_or(0));
    }
    let mut reference = Reference::new(WINDOW, GroupLevel::Plug);
    mcloud_core::synthetic::Synthetic::new(input.synthetic_config())
        .filter(|r| r.ts >= horizon)
        .for_each(|r| reference.add(&r));
    let mut expected = Vec::new();
    mcloud_collector::output::write_csv(&mut expected, &reference.expected(1))?;
    let (matched, mismatches) = crate::process_demo::compare_csv(
        &String::from_utf8_lossy(&query.stdout),
        &String::from_utf8_lossy(&expected),
    );
    problems.extend(mismatches);

    let commits = match std::fs::read_to_string(dir.join("sensor/commits.csv")) {
        Ok(text) => commit_intervals(&text, started_unix),
        Err(e) => {
            problems.push(format!("the sensor wrote no commit timings: {e}"));
            Vec::new()
        }
    };
    write_samples(&args.out, &samples, &commits, args.rate as f64, &kills)?;
    report(&samples, &commits, streamed, args.rate, kills.len());
    if problems.is_empty() {
        eprintln!(
            "check: OK, all {matched} rows of the windows kept (from {horizon}) equal the plaintext reference"
        );
    } else {
        eprintln!("check: FAILED");
        for p in problems.iter().take(20) {
            eprintln!("  {p}");
        }
        eprintln!("process logs: {}", dir.join("logs").display());
    }
    Ok(problems.is_empty())
}

/// Resident memory, open files and data directory size of every running process.
fn sample(
    cluster: &mut ProcessCluster,
    roles: &[Role],
    dir: &Path,
    sensor: Option<u32>,
    at: Duration,
    out: &mut Vec<Sample>,
) {
    let mut procs: Vec<(String, Option<u32>, PathBuf)> = roles
        .iter()
        .map(|&role| {
            let data = match role {
                Role::Catalog(i) => dir.join(format!("catalog{i}")),
                Role::Cloud(p) => dir.join(format!("cloud{p}")),
            };
            (role.name(), cluster.pid(role), data)
        })
        .collect();
    procs.push(("sensor".into(), sensor, dir.join("sensor")));
    for (role, pid, data) in procs {
        let Some(pid) = pid else { continue };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let open_files = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        out.push(Sample {
            secs: at.as_secs_f64(),
            role,
            rss_kb,
            open_files,
            disk_bytes: du(&data),
        });
    }
}

fn du(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The sensor's commits (`unix_secs,readings,latency_ms` per batch), on the soak's time line
/// from `start_unix`, cut into intervals of `LATENCY_EVERY`: readings committed per second
/// and latency percentiles in each.
fn commit_intervals(csv: &str, start_unix: f64) -> Vec<CommitPoint> {
    let mut intervals: std::collections::BTreeMap<u64, (u64, Vec<f64>)> = Default::default();
    let mut last = 0.0f64;
    for line in csv.lines().skip(1) {
        let mut fields = line.split(',');
        let (Some(secs), Some(readings), Some(ms)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(unix), Ok(readings), Ok(ms)) = (
            secs.parse::<f64>(),
            readings.parse::<u64>(),
            ms.parse::<f64>(),
        ) else {
            continue;
        };
        let secs = (unix - start_unix).max(0.0);
        last = last.max(secs);
        let slot = intervals
            .entry((secs / LATENCY_EVERY.as_secs_f64()) as u64)
            .or_default();
        slot.0 += readings;
        slot.1.push(ms);
    }
    let every = LATENCY_EVERY.as_secs_f64();
    // The last interval ends with the last commit, so its rate is not diluted by time after.
    intervals
        .into_iter()
        .map(|(slot, (readings, ms))| {
            let start = slot as f64 * every;
            let end = (start + every).min(last.max(start + 1.0));
            CommitPoint {
                secs: end,
                readings_per_s: readings as f64 / (end - start),
                p50_ms: percentile(&ms, 0.5),
                p99_ms: percentile(&ms, 0.99),
            }
        })
        .collect()
}

fn write_samples(
    out: &Path,
    samples: &[Sample],
    commits: &[CommitPoint],
    offered: f64,
    kills: &[f64],
) -> Result<()> {
    let csv = out.with_extension("csv");
    let mut f = std::fs::File::create(&csv).with_context(|| format!("{}", csv.display()))?;
    writeln!(f, "secs,role,rss_kb,open_files,disk_bytes")?;
    for s in samples {
        writeln!(
            f,
            "{:.1},{},{},{},{}",
            s.secs, s.role, s.rss_kb, s.open_files, s.disk_bytes
        )?;
    }
    let latency_csv = out.with_file_name(format!(
        "{}-commits.csv",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("soak")
    ));
    let mut f = std::fs::File::create(&latency_csv)
        .with_context(|| format!("{}", latency_csv.display()))?;
    writeln!(f, "secs,committed_readings_per_s,p50_ms,p99_ms")?;
    for c in commits {
        writeln!(
            f,
            "{:.0},{:.1},{:.1},{:.1}",
            c.secs, c.readings_per_s, c.p50_ms, c.p99_ms
        )?;
    }
    let mut by_role: std::collections::BTreeMap<&str, Vec<(f64, f64, f64, f64)>> =
        Default::default();
    for s in samples {
        by_role.entry(&s.role).or_default().push((
            s.secs,
            s.rss_kb as f64 / 1024.0,
            s.disk_bytes as f64 / (1 << 20) as f64,
            s.open_files as f64,
        ));
    }
    let processes: Vec<ProcessSeries> = by_role
        .into_iter()
        .map(|(name, points)| ProcessSeries {
            name: name.to_string(),
            points,
        })
        .collect();
    let png = out.with_extension("png");
    crate::plot::soak(&png, &processes, commits, offered, kills)?;
    eprintln!(
        "samples: {}, {} and {}",
        csv.display(),
        latency_csv.display(),
        png.display()
    );
    Ok(())
}

/// Per process: memory and disk in the first and the last quarter of the run, so growth
/// shows as a difference.
fn report(
    samples: &[Sample],
    commits: &[CommitPoint],
    streamed: Duration,
    rate: u64,
    kills: usize,
) {
    let end = streamed.as_secs_f64();
    eprintln!(
        "ran {:.0} s at {rate} readings/s offered, {kills} processes killed and restarted",
        end
    );
    if !commits.is_empty() {
        let rates: Vec<f64> = commits.iter().map(|c| c.readings_per_s).collect();
        let p99s: Vec<f64> = commits.iter().map(|c| c.p99_ms).collect();
        let p50s: Vec<f64> = commits.iter().map(|c| c.p50_ms).collect();
        eprintln!(
            "committed readings/s per {} s: median {:.0}, lowest {:.0}; commit latency p50 (median interval) {:.0} ms, p99 median {:.0} ms, worst interval {:.0} ms",
            LATENCY_EVERY.as_secs(),
            percentile(&rates, 0.5),
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            percentile(&p50s, 0.5),
            percentile(&p99s, 0.5),
            p99s.iter().copied().fold(0.0, f64::max)
        );
    }
    let mut roles: Vec<&str> = samples.iter().map(|s| s.role.as_str()).collect();
    roles.sort_unstable();
    roles.dedup();
    eprintln!("process      RSS MB (2nd quarter → last)   disk MB (2nd quarter → last)   open files (max)");
    for role in roles {
        let of = |from: f64, to: f64| {
            let v: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.role == role && s.secs >= from * end && s.secs < to * end)
                .collect();
            let n = v.len().max(1) as f64;
            (
                v.iter().map(|s| s.rss_kb as f64).sum::<f64>() / n / 1024.0,
                v.iter().map(|s| s.disk_bytes as f64).sum::<f64>() / n / (1 << 20) as f64,
            )
        };
        let (rss_a, disk_a) = of(0.25, 0.5);
        let (rss_b, disk_b) = of(0.75, 1.01);
        let files = samples
            .iter()
            .filter(|s| s.role == role)
            .map(|s| s.open_files)
            .max()
            .unwrap_or(0);
        eprintln!(
            "{role:<12} {rss_a:>8.1} → {rss_b:>8.1}            {disk_a:>8.1} → {disk_b:>8.1}            {files}"
        );
    }
}
