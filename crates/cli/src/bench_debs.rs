//! `mcloud bench --debs`: events/s through the private pipeline with Q1 and Q2 (upload,
//! commit, then the collector's queries over the clouds' range sums), against the plaintext
//! reference queries over the same readings.
//!
//! Every role is its own process, as in a deployment: three catalog voters and the clouds
//! (`mcloud node`), the sensor (`mcloud sensor`, which generates or reads the input as it sends
//! it) and the collector (`mcloud analytics`), so each role's peak memory is its own. The bench
//! process holds no reading while they run; the plaintext reference reads the input again after
//! the deployment has stopped.

use crate::analytics::{peak_rss_kb, peak_rss_kb_of};
use crate::bench::BenchArgs;
use crate::process_demo::compare_csv;
use crate::processes::{Owned, ProcessCluster, ProcessSpec, Role};
use anyhow::{bail, Context, Result};
use mcloud_analytics::{run_reference, Emit, RunOptions};
use mcloud_collector::Reference;
use mcloud_core::metrics::METRICS_PATH;
use mcloud_core::paths::UPLOAD_PATH;
use mcloud_core::reading::GroupLevel;
use mcloud_core::wire::HISTOGRAM_WINDOW_SECS;
use mcloud_core::Metric;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the collector waits for a boundary's windows to close before it gives up.
const COLLECTOR_WAIT_SECS: u64 = 600;

pub async fn run(mut args: BenchArgs) -> Result<()> {
    if !args.input.duration_given() && args.input.input.is_none() {
        args.input.days = Some(2.0);
    }
    crate::input::check_speedup(args.pipeline.speedup)?;
    // One pass over the input for what the upload check needs: its size, its span and each
    // house's window sums (a few numbers per house and window, not the readings).
    let input = args.input.stream()?;
    let completion = input.completion();
    let description = input.description;
    let mut events = 0u64;
    let mut span: Option<(u64, u64)> = None;
    let mut houses = Reference::new(HISTOGRAM_WINDOW_SECS, GroupLevel::House);
    for r in input.readings {
        events += 1;
        houses.add(&r);
        if r.metric == Metric::Load {
            span = Some(span.map_or((r.ts, r.ts), |(a, b)| (a.min(r.ts), b.max(r.ts))));
        }
    }
    completion.check()?;
    let Some((first, last)) = span else {
        bail!("the input has no load readings");
    };
    eprintln!("bench --debs: {description}: {events} events");

    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let bin = std::env::current_exe().context("locating the mcloud binary")?;
    let mut cluster = ProcessCluster::write(ProcessSpec {
        parties: usize::from(args.clouds),
        window_secs: HISTOGRAM_WINDOW_SECS,
        archive: false,
        ..ProcessSpec::new(bin.clone(), dir.to_path_buf())
    })?;
    cluster.start_all()?;
    let http = cluster.wait_ready(Duration::from_secs(60)).await?;
    let mut peaks = Peaks::default();
    let deployment = cluster.deployment_path();

    // The sensor and the collector start together: the queries follow the stream, each
    // boundary computed once the clouds have closed its windows.
    let mut sensor = Command::new(&bin);
    sensor
        .arg("sensor")
        .arg("--deployment")
        .arg(&deployment)
        .arg("--outbox")
        .arg(dir.join("sensor/outbox.redb"))
        .args(args.input.to_args())
        .arg("--histograms")
        .args(["--batch-size", &args.pipeline.batch_size.to_string()])
        .args(["--in-flight", &args.pipeline.in_flight.to_string()])
        .args(["--ttl-ms", &args.pipeline.ttl_ms.to_string()])
        .stdout(Stdio::null())
        .stderr(log_file(dir, "sensor")?);
    if let Some(s) = args.pipeline.speedup {
        sensor.args(["--speedup", &s.to_string()]);
    }
    let out_dir = dir.join("queries");
    let mut analytics = Command::new(&bin);
    analytics
        .arg("analytics")
        .arg("--deployment")
        .arg(&deployment)
        .args(["--query", "all", "--emit", "every"])
        .args(["--from", &first.to_string(), "--to", &last.to_string()])
        .args(["--wait-secs", &COLLECTOR_WAIT_SECS.to_string()])
        .arg("--out-dir")
        .arg(&out_dir)
        .stdout(Stdio::null())
        .stderr(log_file(dir, "collector")?);
    let started = Instant::now();
    let ended = run_sampled(
        &mut cluster,
        vec![("sensor", sensor), ("collector", analytics)],
        &mut peaks,
    )
    .await?;
    let (upload_secs, queries_secs) = (ended[0].as_secs_f64(), ended[1].as_secs_f64());
    // Every window revealed (per house) must equal the input's sums: part of the timed run.
    let revealed_path = dir.join("logs/revealed.csv");
    let mut check = Command::new(&bin);
    check
        .arg("query")
        .arg("--deployment")
        .arg(&deployment)
        .args(["--group", "house", "--output", "csv", "--wait-secs", "120"])
        .stdout(File::create(&revealed_path)?)
        .stderr(log_file(dir, "check")?);
    run_sampled(&mut cluster, vec![("check", check)], &mut peaks).await?;
    let elapsed = started.elapsed();
    let mut expected = Vec::new();
    mcloud_collector::output::write_csv(&mut expected, &houses.expected(1))?;
    let (matched, problems) = compare_csv(
        &std::fs::read_to_string(&revealed_path)?,
        &String::from_utf8_lossy(&expected),
    );
    if !problems.is_empty() {
        bail!("upload check failed: {}", problems.join("; "));
    }
    let collector_log = std::fs::read_to_string(dir.join("logs/collector.log"))?;
    let figure = |name: &str| -> u64 {
        collector_log
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // The collector's own figure is exact; sampling may miss its last moments.
    peaks.record("collector", figure("peak_rss_kb="));
    let range_bytes = figure("range_bytes=");
    peaks.sample_cluster(&mut cluster);
    let (policy_secs, upload_bytes) = scrape_clouds(&cluster, &http).await?;
    let disk = disk_per_role(dir);
    drop(cluster);

    let events = events as f64;
    let private = events / elapsed.as_secs_f64();
    let check_secs = elapsed.as_secs_f64() - upload_secs.max(queries_secs);
    eprintln!(
        "private: upload and commit {upload_secs:.2} s, Q1 and Q2 done {queries_secs:.2} s after the start, {matched} house windows checked in {check_secs:.2} s"
    );
    eprintln!("peak memory per process: {}", peaks.describe());
    println!("private_events_per_s={private:.0}");
    println!(
        "private_events_per_s_without_policy={:.0}",
        events / (elapsed.as_secs_f64() - policy_secs)
    );
    println!("upload_s={upload_secs:.2}");
    println!("queries_s={queries_secs:.2}");
    println!("check_s={check_secs:.2}");
    println!("policy_s={policy_secs:.3}");
    println!(
        "policy_share_of_run={:.4}",
        policy_secs / elapsed.as_secs_f64()
    );
    for (role, prefix) in [
        ("catalog_voter", "catalog"),
        ("cloud", "cloud"),
        ("sensor", "sensor"),
        ("collector", "collector"),
    ] {
        println!("peak_rss_mb_{role}={:.1}", mb(peaks.largest(prefix)));
    }
    println!("peak_rss_mb_all_roles={:.1}", mb(peaks.sum()));
    for role in ["catalog", "cloud", "sensor", "collector"] {
        println!("cpu_s_{role}={:.1}", peaks.cpu(role));
    }
    println!("upload_bytes_per_event={:.1}", upload_bytes / events);
    println!("query_bytes_per_event={:.1}", range_bytes as f64 / events);
    for (role, bytes) in disk {
        println!("disk_{role}_mb={:.1}", bytes as f64 / (1 << 20) as f64);
    }
    if args.no_reference {
        eprintln!("plaintext reference: skipped (--no-reference)");
        return Ok(());
    }

    let reference_started = Instant::now();
    let (readings, _) = args.input.load()?;
    let reference = run_reference(
        &readings,
        RunOptions {
            q1: true,
            q2: true,
            emit: Emit::Every,
        },
    );
    let reference_elapsed = reference_started.elapsed();
    drop(readings);
    let private_q1 = std::fs::read_to_string(out_dir.join("q1.csv"))?
        .lines()
        .count()
        - 1;
    if private_q1 != reference.q1.len() {
        bail!(
            "private Q1 wrote {private_q1} rows, the reference {}",
            reference.q1.len()
        );
    }
    let plaintext = events / reference_elapsed.as_secs_f64();
    eprintln!(
        "plaintext reference {:.2} s, {private_q1} Q1 rows as the private run",
        reference_elapsed.as_secs_f64()
    );
    println!("plaintext_events_per_s={plaintext:.0}");
    println!("ratio={:.3}", private / plaintext);
    println!(
        "peak_rss_mb_plaintext_reference={:.1}",
        mb(peak_rss_kb().unwrap_or(0))
    );
    Ok(())
}

/// User and system CPU time of the running process `pid`, from `/proc/<pid>/stat`.
fn cpu_secs_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from the third on.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are the 14th and 15th fields of the line; clock ticks are 100 a second
    // on every Linux this runs on (USER_HZ).
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn log_file(dir: &Path, name: &str) -> Result<File> {
    let path = dir.join(format!("logs/{name}.log"));
    File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// Each process's peak resident memory (the kernel's VmHWM), in kB, and the CPU time it used
/// (as last sampled), by process name.
#[derive(Default)]
struct Peaks(BTreeMap<String, u64>, BTreeMap<String, f64>);

impl Peaks {
    fn record(&mut self, name: &str, kb: u64) {
        let peak = self.0.entry(name.to_string()).or_default();
        *peak = (*peak).max(kb);
    }

    fn sample(&mut self, name: &str, pid: u32) {
        if let Some(kb) = peak_rss_kb_of(pid) {
            self.record(name, kb);
        }
        if let Some(secs) = cpu_secs_of(pid) {
            self.1.insert(name.to_string(), secs);
        }
    }

    /// CPU seconds of the processes whose name starts with `prefix`, added up.
    fn cpu(&self, prefix: &str) -> f64 {
        self.1
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, secs)| secs)
            .sum()
    }

    fn sample_cluster(&mut self, cluster: &mut ProcessCluster) {
        let voters = cluster.spec().voters;
        let parties = cluster.spec().parties;
        for role in (0..voters)
            .map(Role::Catalog)
            .chain((0..parties).map(Role::Cloud))
        {
            if let Some(pid) = cluster.pid(role) {
                self.sample(&role.name(), pid);
            }
        }
    }

    /// The largest peak among processes whose name starts with `prefix`.
    fn largest(&self, prefix: &str) -> u64 {
        self.0
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, kb)| *kb)
            .max()
            .unwrap_or(0)
    }

    /// The roles' peaks added up: what they would hold if every peak fell at the same moment.
    fn sum(&self) -> u64 {
        self.0
            .iter()
            .filter(|(name, _)| name.as_str() != "check")
            .map(|(_, kb)| *kb)
            .sum()
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(name, kb)| format!("{name} {:.0} MB", mb(*kb)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `commands` side by side to their ends, sampling their memory and the deployment's
/// every 100 ms; returns when each ended, from the call. Fails if one of them fails (the others
/// are killed) or a process of the deployment dies meanwhile.
async fn run_sampled(
    cluster: &mut ProcessCluster,
    commands: Vec<(&str, Command)>,
    peaks: &mut Peaks,
) -> Result<Vec<Duration>> {
    let started = Instant::now();
    let mut running = Vec::new();
    for (name, mut command) in commands {
        let child = command
            .spawn()
            .with_context(|| format!("starting the {name} process"))?;
        running.push((name, Owned(child), None));
    }
    loop {
        for (name, child, ended) in running.iter_mut().filter(|r| r.2.is_none()) {
            peaks.sample(name, child.0.id());
            if let Some(status) = child.0.try_wait()? {
                if !status.success() {
                    bail!(
                        "the {name} process failed ({status}):\n{}",
                        cluster.log_tail(name, 20)
                    );
                }
                *ended = Some(started.elapsed());
            }
        }
        peaks.sample_cluster(cluster);
        if running.iter().all(|r| r.2.is_some()) {
            return Ok(running.iter().filter_map(|r| r.2).collect());
        }
        let exited = cluster.exited();
        if !exited.is_empty() {
            bail!(
                "a process of the deployment died on its own:\n{}",
                exited.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// From the clouds' metrics: the largest cloud's time deciding disclosure (the clouds answer
/// each request in parallel, so a request waits for the slowest one's policy work), and the
/// upload bodies all clouds received, retries included.
async fn scrape_clouds(cluster: &ProcessCluster, http: &reqwest::Client) -> Result<(f64, f64)> {
    let mut policy: f64 = 0.0;
    let mut upload = 0.0;
    for party in 0..cluster.spec().parties {
        let url = format!("{}{METRICS_PATH}", cluster.cloud_url(party));
        let text = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("scraping {url}"))?
            .text()
            .await?;
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        policy = policy.max(value("mcloud_cloud_policy_seconds_total").unwrap_or(0.0));
        upload += value(&format!(
            "mcloud_http_request_body_bytes_total{{route=\"{UPLOAD_PATH}\"}}"
        ))
        .unwrap_or(0.0);
    }
    Ok((policy, upload))
}

/// Bytes on disk under `dir`, per role: the catalog voters, the clouds and the sensor.
fn disk_per_role(dir: &std::path::Path) -> Vec<(&'static str, u64)> {
    let mut roles = vec![("catalog", 0), ("clouds", 0), ("sensor", 0)];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return roles;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let role = if name.starts_with("catalog") {
            0
        } else if name.starts_with("cloud") {
            1
        } else if name == "sensor" {
            2
        } else {
            continue;
        };
        roles[role].1 += tree_bytes(&entry.path());
    }
    roles
}

fn tree_bytes(path: &std::path::Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
