//! `mcloud bench --debs`: events/s through the private pipeline with Q1 and Q2 (upload,
//! commit, then the collector's queries over the clouds' range sums), against the plaintext
//! reference queries over the same readings. The collector runs as its own process
//! (`mcloud analytics`), so its peak memory is its own.

use crate::bench::BenchArgs;
use crate::cluster::{ClusterSpec, LocalCluster};
use crate::demo::run_pipeline;
use anyhow::{bail, Context, Result};
use mcloud_analytics::{run_reference, Emit, RunOptions};
use mcloud_collector::Query;
use mcloud_core::reading::GroupLevel;
use mcloud_core::wire::HISTOGRAM_WINDOW_SECS;
use mcloud_core::Metric;
use std::time::{Duration, Instant};

pub async fn run(mut args: BenchArgs) -> Result<()> {
    if !args.input.duration_given() && args.input.input.is_none() {
        args.input.days = Some(2.0);
    }
    let (readings, description) = args.input.load()?;
    let loads = || {
        readings
            .iter()
            .filter(|r| r.metric == Metric::Load)
            .map(|r| r.ts)
    };
    let (Some(first), Some(last)) = (loads().min(), loads().max()) else {
        bail!("the input has no load readings");
    };
    eprintln!("bench --debs: {description}: {} events", readings.len());

    let temp = tempfile::tempdir()?;
    let cluster = LocalCluster::start(ClusterSpec {
        parties: args.clouds,
        window_secs: HISTOGRAM_WINDOW_SECS,
        grace_secs: 60,
        dir: temp.path().to_path_buf(),
    })
    .await?;
    let mut pipeline = args.pipeline.clone();
    pipeline.histograms = true;
    let query = Query {
        from: 0,
        to: u64::MAX,
        level: GroupLevel::House,
        min_count: 1,
    };
    let started = Instant::now();
    let upload = run_pipeline(&cluster, &readings, &pipeline, &query, 0.0, 0, true).await?;
    if !upload.check.ok() {
        bail!("upload check failed: {}", upload.check.problems.join("; "));
    }
    let uploaded = started.elapsed();
    let deployment = cluster.write_deployment()?;
    let out_dir = temp.path().join("queries");
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("analytics")
        .arg("--deployment")
        .arg(&deployment)
        .args(["--query", "all", "--emit", "every"])
        .args(["--from", &first.to_string(), "--to", &last.to_string()])
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .await
        .context("running the collector process")?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&child.stderr);
    if !child.status.success() {
        bail!("collector process failed: {stderr}");
    }
    let figure = |name: &str| -> u64 {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let peak_kb = figure("peak_rss_kb=");
    let range_bytes = figure("range_bytes=");
    let disk = disk_per_role(temp.path());
    // The whole run's policy work (the upload phase's COMPUTE polls and the queries). The
    // clouds answer each request in parallel, so a request waits for the slowest one's policy
    // work: at most the largest cloud's total.
    let policy_secs = cluster
        .policy_times()
        .iter()
        .map(Duration::as_secs_f64)
        .fold(0.0, f64::max);
    cluster.shutdown().await;

    let started = Instant::now();
    let reference = run_reference(
        &readings,
        RunOptions {
            q1: true,
            q2: true,
            emit: Emit::Every,
        },
    );
    let reference_elapsed = started.elapsed();
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
    let events = readings.len() as f64;
    let private = events / elapsed.as_secs_f64();
    let plaintext = events / reference_elapsed.as_secs_f64();
    eprintln!(
        "private: upload and commit {:.2} s, queries {:.2} s; plaintext reference {:.2} s",
        uploaded.as_secs_f64(),
        (elapsed - uploaded).as_secs_f64(),
        reference_elapsed.as_secs_f64()
    );
    let queries_secs = (elapsed - uploaded).as_secs_f64();
    println!("private_events_per_s={private:.0}");
    println!(
        "private_events_per_s_without_policy={:.0}",
        events / (elapsed.as_secs_f64() - policy_secs)
    );
    println!("query_phase_s={queries_secs:.2}");
    println!("policy_s={policy_secs:.3}");
    println!(
        "policy_share_of_run={:.4}",
        policy_secs / elapsed.as_secs_f64()
    );
    println!("plaintext_events_per_s={plaintext:.0}");
    println!("ratio={:.3}", private / plaintext);
    println!("collector_peak_rss_mb={:.1}", peak_kb as f64 / 1024.0);
    if let Some(kb) = crate::analytics::peak_rss_kb() {
        // Catalog, clouds and sensor share this process (and the input and the reference).
        println!("cluster_process_peak_rss_mb={:.1}", kb as f64 / 1024.0);
    }
    println!(
        "upload_bytes_per_event={:.1}",
        upload.report.upload_bytes as f64 / events
    );
    println!("query_bytes_per_event={:.1}", range_bytes as f64 / events);
    for (role, bytes) in disk {
        println!("disk_{role}_mb={:.1}", bytes as f64 / (1 << 20) as f64);
    }
    Ok(())
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
