//! `mcloud bench --catalog`: flag transitions per second and commit latency of a 3-voter
//! catalog on loopback, for one partition and for four, in the same run.

use crate::cluster::{CatalogSpec, ClusterOptions, ClusterSpec, LocalCluster, GATEWAY};
use anyhow::{bail, Result};
use clap::Args;
use mcloud_catalog::raft::placement::partition_of;
use mcloud_catalog::FlagTable;
use mcloud_core::wire::CreateFlag;
use mcloud_core::BatchId;
use std::time::{Duration, Instant};

#[derive(Args, Clone, Debug)]
pub struct CatalogBenchArgs {
    /// Seconds of load per partition count.
    #[arg(long, default_value_t = 5)]
    pub catalog_secs: u64,
    /// Concurrent clients (each a sensor doing CREATE then SET).
    #[arg(long, default_value_t = 64)]
    pub catalog_clients: usize,
    /// Flags per request.
    #[arg(long, default_value_t = 32)]
    pub catalog_batch: usize,
}

struct Figures {
    transitions_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure(partitions: u32, args: &CatalogBenchArgs) -> Result<Figures> {
    let temp = tempfile::tempdir()?;
    let cluster = LocalCluster::start_with(
        ClusterSpec {
            parties: 1,
            window_secs: 60,
            grace_secs: 60,
            dir: temp.path().to_path_buf(),
        },
        ClusterOptions {
            catalog: CatalogSpec {
                partitions,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let until = Instant::now() + Duration::from_secs(args.catalog_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.catalog_clients {
        let flags = cluster.catalog_client()?;
        let batch = args.catalog_batch;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut transitions = 0u64;
            let mut next = (c as u128) << 64;
            let mut round = c as u64;
            while Instant::now() < until {
                // One partition per request, as a sensor's request (one flag) has: the client
                // sends it straight to that partition's leader.
                let target = (round % partitions as u64) as u32;
                round += 1;
                let mut ids: Vec<BatchId> = Vec::with_capacity(batch);
                while ids.len() < batch {
                    next += 1;
                    // The gateway sensor's ids: its session is the one the client shows.
                    let mixed = next.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
                    let id = BatchId(((GATEWAY.sensor as u128) << 96) | (mixed >> 32));
                    if partition_of(id, partitions) == target {
                        ids.push(id);
                    }
                }
                let t = Instant::now();
                flags
                    .create(
                        ids.iter()
                            .map(|&id| CreateFlag {
                                id,
                                ttl_ms: 60_000,
                                robust: false,
                            })
                            .collect(),
                    )
                    .await?;
                latencies.push(t.elapsed());
                let t = Instant::now();
                flags.set(ids).await?;
                latencies.push(t.elapsed());
                transitions += 2 * batch as u64;
            }
            Ok::<_, mcloud_catalog::CatalogError>((transitions, latencies))
        }));
    }
    let mut transitions = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await??;
        transitions += n;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    cluster.shutdown().await;
    if latencies.is_empty() {
        bail!("no request completed");
    }
    latencies.sort();
    let pct = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let f = Figures {
        transitions_per_s: transitions as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    };
    eprintln!(
        "P={partitions}: {transitions} flag transitions in {elapsed:.2} s = {:.0}/s, \
         commit latency p50 {:.2} ms, p99 {:.2} ms ({} requests)",
        f.transitions_per_s,
        f.p50_ms,
        f.p99_ms,
        latencies.len()
    );
    Ok(f)
}

pub async fn run(args: CatalogBenchArgs) -> Result<()> {
    eprintln!(
        "bench --catalog: 3 voters over loopback TLS, {} clients, {} flags of one partition per request, {} s per run; \
         a transition is one flag's CREATE (to FALSE) or SET (to TRUE), committed by a majority",
        args.catalog_clients, args.catalog_batch, args.catalog_secs
    );
    let one = measure(1, &args).await?;
    let four = measure(4, &args).await?;
    println!(
        "P=1: flag_transitions_per_s={:.0} commit_p50_ms={:.2} commit_p99_ms={:.2}",
        one.transitions_per_s, one.p50_ms, one.p99_ms
    );
    println!(
        "P=4: flag_transitions_per_s={:.0} commit_p50_ms={:.2} commit_p99_ms={:.2}",
        four.transitions_per_s, four.p50_ms, four.p99_ms
    );
    println!(
        "ratio_p4_over_p1={:.3}",
        four.transitions_per_s / one.transitions_per_s
    );
    println!("flag_transitions_per_s={:.0}", one.transitions_per_s);
    println!("commit_p99_ms={:.2}", one.p99_ms);
    Ok(())
}
