//! `mcloud demo --robust --malicious-fraction F`: houses whose sensors forge their reports,
//! and what the clouds did with them.

use crate::cluster::LocalCluster;
use crate::demo::PipelineArgs;
use anyhow::{bail, Result};
use mcloud_client::{Fate, Outcome, PlainBatch, PlainHistogram};
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::robust::Forgery;
use mcloud_core::wire::HISTOGRAM_WINDOW_SECS;
use mcloud_core::Reading;
use std::collections::BTreeMap;
use std::time::Duration;

/// A forging house's sensor id: far from the gateway's and from any enrolled house sensor's.
const FORGER_SENSOR_BASE: u32 = 1_000_000;
/// Readings per forged batch.
const FORGED_BATCH: usize = 500;

/// A forging house and its readings.
pub type ForgedHouse = (u32, Vec<Reading>);

/// The honest readings, and the readings of the houses whose sensors forge: the first
/// `fraction` of the houses (at least one), never all of them.
pub fn split(readings: &[Reading], fraction: f64) -> Result<(Vec<Reading>, Vec<ForgedHouse>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("--malicious-fraction must lie in (0, 1), got {fraction}");
    }
    let mut houses: BTreeMap<u32, Vec<Reading>> = BTreeMap::new();
    for r in readings {
        houses.entry(r.group.house).or_default().push(*r);
    }
    let forging = ((fraction * houses.len() as f64).ceil() as usize).max(1);
    if forging >= houses.len() {
        bail!(
            "--malicious-fraction {fraction} of {} houses leaves no honest house; the input needs more houses",
            houses.len()
        );
    }
    let forged: Vec<ForgedHouse> = houses.into_iter().take(forging).collect();
    let forging: std::collections::HashSet<u32> = forged.iter().map(|(h, _)| *h).collect();
    // In input order: a sensor's progress follows its readings' time.
    let honest = readings
        .iter()
        .filter(|r| !forging.contains(&r.group.house))
        .copied()
        .collect();
    Ok((honest, forged))
}

/// One forging sensor's run.
pub struct Forger {
    pub house: u32,
    pub sensor: u32,
    pub forgery: Forgery,
    pub batches: usize,
    pub readings: usize,
    /// Batches whose outcome was a refusal.
    pub refused: usize,
    /// Refused batches each cloud counted against the sensor, in party order.
    pub counted: Vec<u64>,
}

/// Every forging sensor's run.
pub struct Refused(pub Vec<Forger>);

impl Refused {
    /// True when every forged batch was refused and every cloud counted each refusal.
    pub fn all_refused(&self) -> bool {
        self.0
            .iter()
            .all(|f| f.refused == f.batches && f.counted.iter().all(|&c| c == f.batches as u64))
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let batches: usize = self.0.iter().map(|s| s.batches).sum();
        let refused: usize = self.0.iter().map(|s| s.refused).sum();
        let readings: usize = self.0.iter().map(|s| s.readings).sum();
        writeln!(
            f,
            "malicious sensors: {} houses sent {batches} batches of {readings} readings with forged reports; {refused} refused at every cloud (flags ERROR), {} counted",
            self.0.len(),
            batches - refused
        )?;
        for s in &self.0 {
            writeln!(
                f,
                "  house {} (sensor {}, {:?}): {} of {} batches refused; refusals counted per cloud: {:?}",
                s.house, s.sensor, s.forgery, s.refused, s.batches, s.counted
            )?;
        }
        Ok(())
    }
}

/// One histogram per forged batch, so a forgery of histograms has one to break.
fn histogram_of(readings: &[Reading]) -> Vec<PlainHistogram> {
    let Some(first) = readings.first() else {
        return Vec::new();
    };
    let mut counts = vec![0; mcloud_core::histogram::BUCKETS];
    counts[mcloud_core::histogram::bucket_of(first.value)] = 1;
    vec![PlainHistogram {
        plug: first.group,
        window_start: first.ts - first.ts % HISTOGRAM_WINDOW_SECS,
        counts,
    }]
}

/// Sends every forging house's readings through its own sensor, each with one kind of
/// forgery in turn, and reads what every cloud counted.
pub async fn send(
    cluster: &LocalCluster,
    forged: &[ForgedHouse],
    pipeline: &PipelineArgs,
) -> Result<Refused> {
    let ttl = Duration::from_millis(pipeline.ttl_ms);
    let mut forgers = Vec::new();
    for (i, (house, readings)) in forged.iter().enumerate() {
        let forgery = Forgery::ALL[i % Forgery::ALL.len()];
        let sensor = FORGER_SENSOR_BASE + house;
        let scope = SensorScope {
            sensor,
            house: Some(*house),
            plugs: None,
        };
        let uploader = cluster.uploader_for(scope, ttl)?.robust(Some(forgery))?;
        let mut forger = Forger {
            house: *house,
            sensor,
            forgery,
            batches: 0,
            readings: readings.len(),
            refused: 0,
            counted: Vec::new(),
        };
        for chunk in readings.chunks(FORGED_BATCH.min(pipeline.batch_size.max(1))) {
            let batch = PlainBatch::with_histograms(sensor, chunk.to_vec(), histogram_of(chunk));
            forger.batches += 1;
            match uploader.transact(&batch, Fate::Complete).await? {
                Outcome::Rejected(reason) => {
                    forger.refused += 1;
                    tracing::debug!(house, "forged batch refused: {reason}");
                }
                other => tracing::warn!(house, "forged batch not refused: {other:?}"),
            }
        }
        forger.counted = (0..cluster.spec.parties)
            .map(|p| cluster.cloud(p).map_or(0, |c| c.refused_batches(sensor)))
            .collect();
        forgers.push(forger);
    }
    Ok(Refused(forgers))
}
