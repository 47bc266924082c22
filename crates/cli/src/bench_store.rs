//! `mcloud bench --store`: user data written to and read back from the encrypted storage the
//! way an app does it (plans and keys from three catalog voters over TLS, packets sealed and
//! sent to local-directory sources, two copies each), next to the raw AEAD throughput of the
//! same machine measured in the same run.

use crate::cluster::{ClusterOptions, ClusterSpec, LocalCluster};
use anyhow::{bail, Context, Result};
use clap::Args;
use mcloud_store::master::FileAccess;
use mcloud_store::source::SourceConfig;
use rand::RngCore;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct StoreBenchArgs {
    /// Size of each file, in MiB.
    #[arg(long, default_value_t = 64)]
    pub store_file_mib: usize,
    /// Files written, then read.
    #[arg(long, default_value_t = 8)]
    pub store_files: usize,
    /// Packet size, in KiB (the storage's default is 16).
    #[arg(long, default_value_t = 16)]
    pub store_packet_kib: u32,
    /// Where the sources' directories go (default: the system's temporary directory); the
    /// figures are as much the file system's as the store's.
    #[arg(long)]
    pub store_dir: Option<PathBuf>,
}

/// Local-directory sources the bench writes to; each packet goes to two of them.
const SOURCES: u8 = 3;

pub async fn run(args: StoreBenchArgs) -> Result<()> {
    if args.store_file_mib == 0 || args.store_file_mib > 1024 || args.store_files == 0 {
        bail!("--store-file-mib must be 1 to 1024 and --store-files at least 1");
    }
    let temp = match &args.store_dir {
        Some(dir) => tempfile::tempdir_in(dir)
            .with_context(|| format!("--store-dir {}: a directory to write in", dir.display()))?,
        None => tempfile::tempdir()?,
    };
    let storage: Vec<SourceConfig> = (0..SOURCES)
        .map(|id| SourceConfig::local(id, temp.path().join(format!("source{id}"))))
        .collect();
    let cluster = LocalCluster::start_with(
        ClusterSpec {
            parties: 1,
            window_secs: 60,
            grace_secs: 60,
            dir: temp.path().join("cluster"),
        },
        ClusterOptions {
            storage,
            ..ClusterOptions::default()
        },
    )
    .await?;
    let mut store = cluster.store_client(&cluster.owner_token(0..1)?)?;
    store.options.packet_bytes = args.store_packet_kib.saturating_mul(1024);
    let bytes = args.store_file_mib << 20;
    let mut data = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut data);
    eprintln!(
        "bench --store: {} files of {} MiB in {} KiB packets, 2 copies on {SOURCES} local-directory sources in {}, 3 catalog voters",
        args.store_files,
        args.store_file_mib,
        args.store_packet_kib,
        temp.path().display()
    );

    let started = Instant::now();
    for i in 0..args.store_files {
        store
            .put(&format!("bench/{i}"), &data, FileAccess::default())
            .await?;
    }
    let write_secs = started.elapsed().as_secs_f64();
    // Each read is timed alone: the comparison with what was written is not the store's.
    let mut read_secs = 0.0;
    for i in 0..args.store_files {
        let started = Instant::now();
        let read = store.get("", &format!("bench/{i}"), None).await?;
        read_secs += started.elapsed().as_secs_f64();
        if read != data {
            bail!("file bench/{i} read back different from what was written");
        }
    }
    cluster.shutdown().await;

    let total_mb = (bytes * args.store_files) as f64 / 1e6;
    let write = total_mb / write_secs.max(1e-9);
    let read = total_mb / read_secs.max(1e-9);
    let (seal, open) = mcloud_store::data::aead_throughput(bytes).await;
    if seal == 0.0 || open == 0.0 {
        bail!("the AEAD measurement failed to open what it sealed");
    }
    println!("store_write_mb_s={write:.0}");
    println!("store_read_mb_s={read:.0}");
    println!("aead_seal_mb_s={seal:.0}");
    println!("aead_open_mb_s={open:.0}");
    println!("write_to_seal_ratio={:.3}", write / seal);
    println!("read_to_open_ratio={:.3}", read / open);
    Ok(())
}
