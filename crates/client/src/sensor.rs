//! A sensor (or a gateway for many plugs): batches readings, keeps every batch in the outbox
//! until its fate is known, runs several transactions at once so the per-record cost is never
//! a round trip, and retries an expired batch under a new flag while its window is open.

use crate::batcher::Batcher;
use crate::outbox::{Cursor, Outbox, PlainBatch};
use crate::transaction::{Fate, Outcome, Uploader};
use crate::SensorError;
use mcloud_core::{BatchId, Reading};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Readings per batch unless configured. Each batch costs one flag (a catalog transaction
/// through Raft) and a commit at every cloud whatever its size, so larger batches cost less per
/// reading; the batcher still cuts a batch whose body would pass
/// [`mcloud_core::wire::UPLOAD_TARGET_BYTES`], which binds first for a gateway of many plugs
/// with histograms. (At 4,096 the default `bench --debs` spent 15 % of its CPU on flags.)
pub const DEFAULT_BATCH_SIZE: usize = 16_384;

#[derive(Clone, Debug)]
pub struct SensorConfig {
    /// Readings per batch (and so per flag).
    pub batch_size: usize,
    /// Transactions running at once.
    pub in_flight: usize,
    /// Attempts per readings batch, each under its own flag.
    pub max_attempts: u32,
    /// How long to wait for unreachable clouds before giving up (batches stay in the outbox).
    pub wait_for_clouds: Duration,
    /// Also share each plug's load histogram per 30 s window (for median-based analytics).
    pub histograms: bool,
    /// Replay at this multiple of real time (by the readings' timestamps); `None`: as fast
    /// as possible.
    pub speedup: Option<f64>,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            batch_size: DEFAULT_BATCH_SIZE,
            in_flight: 8,
            max_attempts: 5,
            wait_for_clouds: Duration::from_secs(600),
            histograms: false,
            speedup: None,
        }
    }
}

/// A batch that did not commit, and why.
#[derive(Clone, Debug)]
pub struct Unsettled {
    pub id: BatchId,
    pub readings: Vec<Reading>,
    pub reason: String,
}

/// What a run delivered.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub committed_batches: u64,
    pub committed_readings: u64,
    /// Flags that ended ERROR and were retried under a new flag.
    pub retried_batches: u64,
    /// Too late for their window: reported, never silently dropped.
    pub missed: Vec<Unsettled>,
    /// Refused as invalid, or out of attempts.
    pub rejected: Vec<Unsettled>,
    /// Stopped on purpose before SET (fault injection).
    pub crashed: Vec<Unsettled>,
    /// Upload body bytes sent to all clouds, retries included.
    pub upload_bytes: u64,
    /// Each committed batch's timing, in the order they settled.
    pub commits: Vec<Commit>,
    /// Batches of this input that an earlier run had already taken into the outbox, and so
    /// were not cut again.
    pub skipped_batches: u64,
}

/// When one batch committed and how long its transaction took, from the moment it was free
/// to leave (its pacing release, or at once) to its flag TRUE, retries included.
#[derive(Clone, Copy, Debug)]
pub struct Commit {
    /// The wall-clock time it committed at: a restarted sensor's commits continue the
    /// earlier run's on the same time line.
    pub at: std::time::SystemTime,
    pub latency: Duration,
    pub readings: u64,
}

pub struct Sensor {
    uploader: Arc<Uploader>,
    outbox: Arc<Outbox>,
    config: SensorConfig,
}

impl Sensor {
    pub fn new(uploader: Uploader, outbox: Outbox, config: SensorConfig) -> Sensor {
        Sensor {
            uploader: Arc::new(uploader),
            outbox: Arc::new(outbox),
            config,
        }
    }

    pub fn uploader(&self) -> &Uploader {
        &self.uploader
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Sends every batch left in the outbox by an earlier run; `progress` hears of each as
    /// it settles.
    pub async fn resume(&self, progress: impl FnMut(&Settled)) -> Result<Report, SensorError> {
        let pending = self.outbox.pending()?;
        if !pending.is_empty() {
            tracing::info!(batches = pending.len(), "resuming batches from the outbox");
        }
        // Outbox order is not time order, so these batches report no progress.
        self.run(
            pending.into_iter().map(|b| (b, Fate::Complete, None, None)),
            false,
            progress,
        )
        .await
    }

    /// Batches `readings` and sends them; `fate` decides per batch index whether the
    /// transaction completes (fault injection uses it), `progress` hears of settled batches.
    /// While the input is in timestamp order the clouds hear the sensor's low watermark, so
    /// windows close as the stream moves on.
    ///
    /// If an earlier run with this outbox took batches from the same input (the same first
    /// readings), those are skipped: a restarted sensor continues where it stopped.
    pub async fn send(
        &self,
        readings: impl IntoIterator<Item = Reading>,
        mut fate: impl FnMut(usize) -> Fate,
        progress: impl FnMut(&Settled),
    ) -> Result<Report, SensorError> {
        let mut readings = readings.into_iter();
        let head: Vec<Reading> = readings.by_ref().take(INPUT_NAMED_BY).collect();
        let mut cursor = Cursor {
            input: input_digest(&head)?,
            batch_size: self.config.batch_size as u64,
            histograms: self.config.histograms,
            cuts: 0,
        };
        let skip = match self.outbox.cursor()? {
            Some(taken) if taken.input == cursor.input => {
                if (taken.batch_size, taken.histograms) != (cursor.batch_size, cursor.histograms) {
                    let settings = |c: &Cursor| {
                        format!("batch size {}, histograms {}", c.batch_size, c.histograms)
                    };
                    return Err(SensorError::CursorSettings {
                        taken: settings(&taken),
                        asked: settings(&cursor),
                    });
                }
                taken.cuts
            }
            Some(_) => {
                tracing::info!("the outbox last took batches from another input; this one starts at its beginning");
                0
            }
            None => 0,
        };
        if skip > 0 {
            tracing::info!(
                batches = skip,
                "skipping the batches an earlier run took from this input"
            );
        }
        let mut index = 0;
        let batches = Batcher::new(
            self.uploader.sensor(),
            head.into_iter().chain(readings),
            self.config.batch_size,
            self.config.histograms,
        )
        .robust(self.uploader.is_robust())
        // Cut again, so the batcher's open windows hold what they held before; not sent again.
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .map(move |cut| {
            let f = fate(index);
            index += 1;
            cursor.cuts = skip + index as u64;
            (cut.batch, f, cut.held_back, Some(cursor))
        });
        let mut report = self.run(batches, true, progress).await?;
        report.skipped_batches = skip;
        Ok(report)
    }

    /// Sends `batches`: each with its fate, the oldest window the batcher still holds back,
    /// and, for a batch newly cut from the input, the cursor just past it.
    async fn run(
        &self,
        batches: impl IntoIterator<Item = (PlainBatch, Fate, Option<u64>, Option<Cursor>)>,
        report_progress: bool,
        mut progress: impl FnMut(&Settled),
    ) -> Result<Report, SensorError> {
        let mut report = Report::default();
        let sent_before = self.uploader.sent_bytes();
        type Joined = (PlainBatch, Outcome, u32, u64, Duration);
        let mut tasks: JoinSet<Result<Joined, SensorError>> = JoinSet::new();
        let mut batches = batches.into_iter();
        let mut low = LowWatermark::new(report_progress);
        let mut pace = Pace::new(self.config.speedup.filter(|_| report_progress));
        let mut settled = 0u64;
        loop {
            while tasks.len() < self.config.in_flight {
                let Some((batch, fate, held_back, cursor)) = batches.next() else {
                    break;
                };
                let min_ts = low.started(&batch, held_back);
                let release = pace.release(&batch);
                match cursor {
                    Some(cursor) => self.outbox.put_cut(&batch, &cursor)?,
                    None => self.outbox.put(&batch, None)?,
                }
                let (uploader, outbox, config) = (
                    self.uploader.clone(),
                    self.outbox.clone(),
                    self.config.clone(),
                );
                tasks.spawn(async move {
                    if let Some(at) = release {
                        tokio::time::sleep_until(at).await;
                    }
                    let free = tokio::time::Instant::now();
                    let (batch, outcome, attempts) =
                        deliver(&uploader, &outbox, &config, batch, fate).await?;
                    Ok((batch, outcome, attempts, min_ts, free.elapsed()))
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (batch, outcome, attempts, min_ts, latency) =
                joined.map_err(|e| SensorError::Outbox(format!("sensor task failed: {e}")))??;
            low.settled(min_ts);
            settled += 1;
            if settled % PROGRESS_EVERY == 0 {
                if let Some(ts) = low.value() {
                    let uploader = self.uploader.clone();
                    tokio::spawn(async move {
                        if let Err(e) = uploader.advance_watermark(ts, false).await {
                            tracing::warn!("reporting progress: {e}");
                        }
                    });
                }
            }
            report.retried_batches += attempts.saturating_sub(1) as u64;
            let n = batch.readings.len() as u64;
            let unsettled = |reason: String| Unsettled {
                id: batch.id,
                readings: batch.readings.clone(),
                reason,
            };
            let mut commit = None;
            match outcome {
                Outcome::Committed => {
                    report.committed_batches += 1;
                    report.committed_readings += n;
                    let c = Commit {
                        at: std::time::SystemTime::now(),
                        latency,
                        readings: n,
                    };
                    report.commits.push(c);
                    commit = Some(c);
                }
                Outcome::Missed(reason) => report.missed.push(unsettled(reason)),
                Outcome::Expired(reason) | Outcome::Rejected(reason) => {
                    report.rejected.push(unsettled(reason))
                }
                Outcome::Crashed => report
                    .crashed
                    .push(unsettled("sensor stopped before SET".into())),
            }
            progress(&Settled {
                readings: n,
                commit,
            });
        }
        report.upload_bytes = self.uploader.sent_bytes() - sent_before;
        Ok(report)
    }
}

/// One batch settled, as `progress` hears of it.
pub struct Settled {
    pub readings: u64,
    /// Its timing, if it committed.
    pub commit: Option<Commit>,
}

/// How many of the first readings name an input (see [`Cursor`]).
const INPUT_NAMED_BY: usize = 64;

fn input_digest(head: &[Reading]) -> Result<[u8; 32], SensorError> {
    let bytes = postcard::to_stdvec(head)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    Ok(out)
}

/// Replay pacing: a batch leaves once the wall clock, scaled by the speedup, has reached its
/// newest reading, counting from the first batch's oldest reading.
struct Pace {
    speedup: Option<f64>,
    origin: Option<(tokio::time::Instant, u64)>,
}

impl Pace {
    fn new(speedup: Option<f64>) -> Pace {
        Pace {
            speedup: speedup.filter(|s| s.is_finite() && *s > 0.0),
            origin: None,
        }
    }

    fn release(&mut self, batch: &PlainBatch) -> Option<tokio::time::Instant> {
        let speedup = self.speedup?;
        let newest = batch.readings.iter().map(|r| r.ts).max()?;
        let oldest = batch.readings.iter().map(|r| r.ts).min()?;
        let (start, t0) = *self
            .origin
            .get_or_insert((tokio::time::Instant::now(), oldest));
        let offset = newest.saturating_sub(t0) as f64 / speedup;
        Some(start + Duration::from_secs_f64(offset))
    }
}

/// Settled batches between two progress reports.
const PROGRESS_EVERY: u64 = 16;

/// The oldest timestamp the sensor may still send: the minimum over unsettled batches and
/// histograms the batcher still holds, or, with none in flight, the newest timestamp read so
/// far (later readings are not older while the input is sorted). Disabled for good once the
/// input turns out not to be sorted.
struct LowWatermark {
    enabled: bool,
    unsettled: std::collections::BTreeMap<u64, usize>,
    newest: Option<u64>,
    /// Oldest window start of completed histograms not yet in a batch.
    held_back: Option<u64>,
}

impl LowWatermark {
    fn new(enabled: bool) -> LowWatermark {
        LowWatermark {
            enabled,
            unsettled: Default::default(),
            newest: None,
            held_back: None,
        }
    }

    /// Registers a batch about to be sent, and what the batcher still holds back; returns the
    /// batch's oldest timestamp.
    fn started(&mut self, batch: &PlainBatch, held_back: Option<u64>) -> u64 {
        self.held_back = held_back;
        let mut min = u64::MAX;
        for r in &batch.readings {
            if self.newest.is_some_and(|n| r.ts < n) {
                self.enabled = false;
            }
            self.newest = Some(self.newest.map_or(r.ts, |n| n.max(r.ts)));
            min = min.min(r.ts);
        }
        // A histogram's window must stay open until the histogram arrived.
        for h in &batch.histograms {
            min = min.min(h.window_start);
        }
        *self.unsettled.entry(min).or_default() += 1;
        min
    }

    fn settled(&mut self, min_ts: u64) {
        if let Some(n) = self.unsettled.get_mut(&min_ts) {
            *n -= 1;
            if *n == 0 {
                self.unsettled.remove(&min_ts);
            }
        }
    }

    fn value(&self) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let sent = match self.unsettled.keys().next() {
            Some(&oldest) => Some(oldest),
            None => self.newest,
        };
        match (sent, self.held_back) {
            (Some(sent), Some(held)) => Some(sent.min(held)),
            (sent, held) => sent.or(held),
        }
    }
}

/// Runs a batch's transactions until it settles; returns the batch as last sent.
async fn deliver(
    uploader: &Uploader,
    outbox: &Outbox,
    config: &SensorConfig,
    mut batch: PlainBatch,
    fate: Fate,
) -> Result<(PlainBatch, Outcome, u32), SensorError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        uploader
            .wait_until_reachable(config.wait_for_clouds)
            .await?;
        let outcome = uploader.transact(&batch, fate).await?;
        tracing::debug!(batch = %batch.id, attempts, ?outcome, "transaction settled");
        match outcome {
            Outcome::Expired(ref reason) if attempts < config.max_attempts => {
                tracing::info!(batch = %batch.id, attempts, "flag expired ({reason}); retrying under a new flag");
                let next = batch.rekeyed();
                outbox.put(&next, Some(batch.id))?;
                batch = next;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            outcome => {
                outbox.remove(batch.id)?;
                return Ok((batch, outcome, attempts));
            }
        }
    }
}
