//! End-to-end throughput of the data plane on local-directory sources, next to the raw AEAD
//! throughput of the machine. `cargo bench -p mcloud-store --bench data_plane`; the size
//! (MiB), copies and rounds come from MCLOUD_BENCH_MIB, MCLOUD_BENCH_REPLICAS and
//! MCLOUD_BENCH_ROUNDS.

use mcloud_store::data::{
    aead_throughput, aead_throughput_of, read_file, write_file, ReadGrant, WritePlan,
};
use mcloud_store::packet::{Cipher, KeySecret, DEFAULT_PACKET_BYTES};
use mcloud_store::source::{SourceConfig, Sources};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn plan(file: u64, len: usize, replicas: u8) -> WritePlan {
    let n = (len as u64)
        .div_ceil(u64::from(DEFAULT_PACKET_BYTES))
        .max(1) as u32;
    let mut rng = rand::thread_rng();
    let mut order: Vec<u32> = (0..n).collect();
    order.shuffle(&mut rng);
    WritePlan {
        file,
        len: len as u64,
        packet_bytes: DEFAULT_PACKET_BYTES,
        order,
        ciphers: (0..n)
            .map(|_| Cipher::ALL[rng.gen_range(0..Cipher::ALL.len())].id())
            .collect(),
        key: KeySecret::random(1),
        replicas,
    }
}

/// CPU seconds this process used so far (user and system, all threads), from /proc; 0 where
/// there is no /proc.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which ends with the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; the clock
    // ticks 100 times a second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib = env("MCLOUD_BENCH_MIB", 64);
    let replicas = env("MCLOUD_BENCH_REPLICAS", 2) as u8;
    let rounds = env("MCLOUD_BENCH_ROUNDS", 5).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (seal, open) = aead_throughput(mib << 20).await;
        println!("aead (16 KiB packets, one core, both AEADs in turn): seal {seal:.0} MB/s, open {open:.0} MB/s");
        for cipher in Cipher::ALL {
            let (seal, open) = aead_throughput_of(cipher, mib << 20);
            println!("  {}: seal {seal:.0} MB/s, open {open:.0} MB/s", cipher.name());
        }

        let dir = tempfile::tempdir()?;
        let configs: Vec<SourceConfig> = (1..=replicas.max(2))
            .map(|id| SourceConfig::local(id, dir.path().join(format!("s{id}"))))
            .collect();
        let sources = Sources::open(&configs)?;
        let mut data = vec![0u8; mib << 20];
        rand::thread_rng().fill_bytes(&mut data);
        let mb = data.len() as f64 / 1e6;
        let (mut writes, mut reads) = (Vec::new(), Vec::new());
        let (mut write_wall, mut write_cpu, mut read_wall, mut read_cpu) = (0.0, 0.0, 0.0, 0.0);
        for round in 0..rounds {
            let plan = plan(round as u64 + 1, data.len(), replicas);
            let (started, cpu) = (Instant::now(), cpu_secs());
            let records = write_file(&sources, &plan, &data).await?;
            let wall = started.elapsed().as_secs_f64();
            writes.push(mb / wall);
            write_wall += wall;
            write_cpu += cpu_secs() - cpu;
            let grant = ReadGrant {
                file: plan.file,
                len: plan.len,
                packet_bytes: plan.packet_bytes,
                records,
                keys: vec![plan.key.clone()],
            };
            let (started, cpu) = (Instant::now(), cpu_secs());
            let back = read_file(&sources, &grant).await?;
            let wall = started.elapsed().as_secs_f64();
            reads.push(mb / wall);
            read_wall += wall;
            read_cpu += cpu_secs() - cpu;
            if back != data {
                return Err("the file read back differs".into());
            }
            // Each round starts from empty sources, as a fresh file would.
            for s in &configs {
                if let Some(path) = &s.path {
                    std::fs::remove_dir_all(path)?;
                    std::fs::create_dir_all(path)?;
                }
            }
        }
        println!(
            "store ({mib} MiB, r={replicas}, {} local sources, {rounds} rounds): write {:.0} MB/s (median; best {:.0}), read {:.0} MB/s (median; best {:.0})",
            configs.len(),
            median(writes.clone()),
            writes.iter().copied().fold(0.0, f64::max),
            median(reads.clone()),
            reads.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "cores busy: {:.2} while writing, {:.2} while reading (of {})",
            write_cpu / write_wall,
            read_cpu / read_wall,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        Ok(())
    })
}
