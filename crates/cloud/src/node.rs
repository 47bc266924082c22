//! The cloud node: upload validation, durable storage, flag polling and COMPUTE.

use crate::audit::AuditLog;
use crate::elastic::{
    catalog_map::CatalogMaps, BucketState, CheckpointInfo, ElasticConfig, InProcess, Pool,
    ReplaySource,
};
use crate::metrics::{CloudCollector, CloudMetrics};
use crate::store::{Archive, EncodedWindows, Store, StoredBatch, ARCHIVE_SECS};
use crate::windows::{touched, Needed, RangeError, Registered, View, Windows};
use crate::CloudError;
use axum::http::StatusCode;
use bytes::Bytes;
use mcloud_catalog::{CatalogClient, FlagTable};
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::disclosure::DisclosurePolicy;
use mcloud_core::http::{decode, ApiError};
use mcloud_core::metrics::Metrics;
use mcloud_core::reading::GroupLevel;
use mcloud_core::upload::expand;
use mcloud_core::wire::{
    ComputeResponse, FlagState, RangeResponse, RangeSpec, Shares, UploadAck, UploadBatch,
    UploadRequest, WatermarkRequest, HISTOGRAM_WINDOW_SECS, MAX_ANSWER_BYTES, MAX_BATCH_RECORDS,
    MAX_BODY_BYTES,
};
use mcloud_core::{BatchId, Window};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// This cloud's index, 0-based, among `parties`.
    pub party: u16,
    pub parties: u16,
    pub window_secs: u64,
    /// Event-time seconds a window stays open after its end, for late and reordered batches.
    pub grace_secs: u64,
    /// How far past the wall clock a record's timestamp may lie.
    pub max_future_secs: u64,
    /// How often undecided flags are read from the catalog.
    pub poll_interval: Duration,
    /// What each scope of caller may learn; the same at every cloud of a deployment.
    pub disclosure: DisclosurePolicy,
    /// Pre-aggregation workers and their manager.
    pub elastic: ElasticConfig,
    /// A sensor silent for this long no longer holds windows open (see `advance_watermark`).
    pub sensor_silence: Duration,
    /// How long sealed windows and the batches behind them are kept, counted back from the
    /// newest closed window; older ones are dropped from memory and disk, and ranges reaching
    /// before the horizon are refused.
    pub retention_secs: u64,
    /// Robust mode: every batch arrives as reports whose validity the clouds verify together
    /// before it counts (`crate::robust`); plain uploads are refused. None for plain mode.
    pub robust: Option<crate::robust::RobustConfig>,
    /// Where windows go when they pass the retention horizon, to be read back by ranges and
    /// COMPUTEs that reach that far. None: they are dropped.
    pub archive: Option<crate::store::Archive>,
}

/// Default retention: a week of windows, enough for load prediction over past days.
pub const DEFAULT_RETENTION_SECS: u64 = 7 * 86_400;
/// Shortest retention a cloud accepts: past the hot windows kept in memory
/// ([`crate::windows::HOT_SECS`]) and any flag's deadline, so nothing still open is dropped.
pub const MIN_RETENTION_SECS: u64 = 3 * 3600;

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            party: 0,
            parties: 3,
            window_secs: 60,
            grace_secs: 60,
            max_future_secs: 86_400,
            poll_interval: Duration::from_millis(20),
            disclosure: DisclosurePolicy::default(),
            elastic: ElasticConfig::default(),
            sensor_silence: Duration::from_secs(60),
            retention_secs: DEFAULT_RETENTION_SECS,
            robust: None,
            archive: None,
        }
    }
}

/// How long a starting node waits for the catalog to read its stored bucket map.
const STORED_MAP_WAIT: Duration = Duration::from_secs(5);

/// How often a cloud tells the catalog which flags it no longer needs.
const SETTLED_EVERY: Duration = Duration::from_secs(5);

/// How long a cloud waits to archive again after the storage failed: past the placement's
/// ten seconds of taking a failing source for down.
const ARCHIVE_RETRY: Duration = Duration::from_secs(15);

/// How often a cloud looks for archive files close to their expiry (they live a year).
const ARCHIVE_REFRESH_EVERY: Duration = Duration::from_secs(6 * 3600);

/// How often a cloud hands its freed heap back (`mcloud_core::memory`): rarely enough that
/// the walk costs nothing measurable, often enough that a burst's memory does not stay.
const RELEASE_HEAP_EVERY: Duration = Duration::from_secs(15);

/// Most flags asked about in one catalog call.
const POLL_CHUNK: usize = 10_000;

pub struct CloudNode {
    config: CloudConfig,
    store: Store,
    state: Mutex<Windows>,
    catalog: CatalogClient,
    pool: Arc<Pool>,
    /// One gathering of closed windows from the workers at a time.
    sealing: tokio::sync::Mutex<()>,
    /// Windows sealed in memory whose store failed, stored first by the next gathering.
    unstored: Mutex<Vec<u64>>,
    /// Each sensor's reported progress and when it last reported.
    progress: Mutex<HashMap<u32, (u64, std::time::Instant)>>,
    /// Every disclosure, and how often each cell was revealed to whom.
    audit: AuditLog,
    policy_hash: [u8; 32],
    policy_nanos: std::sync::atomic::AtomicU64,
    /// What `/metrics` serves for this cloud.
    metrics: Metrics,
    recorded: CloudMetrics,
    /// Robust mode's verifier, when on.
    robust: Option<crate::robust::Verifier>,
    /// After the archive failed: not tried again before this.
    archive_retry_at: Mutex<Option<std::time::Instant>>,
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CloudNode {
    /// Opens the values table in `dir`, rebuilds the undecided and committed state from it and
    /// starts polling the catalog for flags.
    pub async fn open(
        dir: &Path,
        config: CloudConfig,
        catalog: CatalogClient,
    ) -> Result<Arc<CloudNode>, CloudError> {
        let (store, recovered) = Store::open(dir)?;
        let provisioner: Arc<dyn crate::elastic::Provisioner> = match &config.elastic.worker_program
        {
            Some(program) => Arc::new(crate::elastic::remote::OsProcess {
                program: program.clone(),
                record_cost: config.elastic.record_cost,
            }),
            None => Arc::new(InProcess {
                record_cost: config.elastic.record_cost,
            }),
        };
        // The map lives in the catalog: the pool continues from an earlier run's map there
        // (epochs never go backwards across restarts) and stores every new one before it
        // routes by it.
        let pool = Pool::start_stored(
            config.elastic.clone(),
            config.window_secs,
            provisioner,
            Arc::new(CatalogMaps::new(catalog.clone(), config.party)),
            STORED_MAP_WAIT,
        )
        .await?;
        if config.retention_secs < MIN_RETENTION_SECS {
            return Err(CloudError::Config(format!(
                "retention_secs = {} is shorter than the minimum of {MIN_RETENTION_SECS}",
                config.retention_secs
            )));
        }
        let mut state = Windows::new(config.window_secs, config.grace_secs, recovered.watermark);
        state.restore_retained_from(recovered.retained_from);
        if let (Some(_), Some(from)) = (&config.archive, recovered.archived_from) {
            state.note_archived(from, recovered.archived);
        }
        // Only the recent windows' sums come back into memory (as `Windows::cool` leaves
        // them), one window at a time.
        let hot_from = recovered
            .newest_sealed
            .map_or(0, |newest| newest.saturating_sub(crate::windows::HOT_SECS));
        let mut sealed = Vec::new();
        store.each_sealed(|start, window| {
            state.restore_sealed(start, window, start < hot_from);
            sealed.push(start);
            Ok(())
        })?;
        // The checkpoint first, then the batches it does not cover: they add up to the state
        // the buckets had, whichever workers now own them.
        let checkpointed_pending: HashSet<BatchId> = recovered
            .checkpoint
            .iter()
            .flat_map(|(_, state)| state.pending.keys().copied())
            .collect();
        pool.restore(recovered.checkpoint).await?;
        let mut restored = 0;
        let mut uncovered = Vec::new();
        store.each_batch(|id, request| {
            restored += 1;
            if state.is_known(&id) {
                return Ok(());
            }
            let horizon = state.retained_from();
            let mut windows = windows_of(&request, config.window_secs);
            windows.retain(|&start| start >= horizon);
            state.restore(id, windows);
            // Only the batches the checkpoint lacks are replayed: the others' shares are in it.
            // Nor one whose windows are all sealed (restored as decided, with no flag to tell
            // the workers): its shares are in their stored sums, and a replayed partial would
            // wait in a worker for a decision that never comes, carried by every checkpoint.
            if !recovered.covered.contains(&id) && state.outcome(&id) != Some(false) {
                uncovered.push(id);
            }
            Ok(())
        })?;
        // A few at a time, each group aggregated before the next is read: dispatched all at
        // once, every expanded batch since the checkpoint would wait in the workers' queues
        // together, a peak that grows with the time between checkpoints. A replayed batch's
        // shares in windows already sealed are in those windows' stored sums: left out, so no
        // worker holds them again.
        let horizon = state.retained_from();
        let gathered: HashSet<u64> = sealed.iter().copied().collect();
        let keep = |start: u64| start >= horizon && !gathered.contains(&start);
        for group in uncovered.chunks(REPLAY_GROUP) {
            for batch in store.replay(group, config.window_secs, || keep)? {
                pool.dispatch(Arc::new(batch));
            }
            pool.settle().await;
        }
        // Partials the checkpoint kept waiting for a flag, of batches that no flag will reach
        // now: restored as decided because their windows were sealed since (their shares are
        // in the stored sums), or dropped by retention. Dropped here, or every later
        // checkpoint would carry them.
        for id in checkpointed_pending {
            if !state.is_known(&id) || state.outcome(&id) == Some(false) {
                pool.decide(id, false);
            }
        }
        // Folded batches: their windows are sealed and their shares gone; only a retry of
        // one must still be recognised.
        store.each_folded(|id, last| {
            restored += 1;
            state.restore_folded(id, last);
            Ok(())
        })?;
        let replayed = uncovered.len();
        // The burst of decoding and replay above is over; without this its freed memory stays
        // with the process for its lifetime.
        mcloud_core::memory::release_free_heap();
        // Every sealed window is in the values table: all but the recent ones leave memory.
        state.keep_cold_in(Box::new(store.clone()));
        let sealed_count = sealed.len();
        if sealed_count > 0 {
            pool.forget(sealed);
        }
        if restored > 0 {
            tracing::info!(
                party = config.party,
                restored,
                replayed,
                sealed = sealed_count,
                "recovered batches from the values table"
            );
        }
        config
            .disclosure
            .check()
            .map_err(|e| CloudError::Config(e.to_string()))?;
        let robust = match &config.robust {
            Some(r) => Some(crate::robust::Verifier::new(r.clone(), config.parties)?),
            None => None,
        };
        let audit = AuditLog::open(dir)?;
        let metrics = Metrics::new();
        let recorded = CloudMetrics::register(&metrics, pool.pause_histogram());
        let node = Arc::new(CloudNode {
            policy_hash: config.disclosure.hash(),
            policy_nanos: Default::default(),
            audit,
            config,
            store,
            state: Mutex::new(state),
            catalog,
            pool,
            sealing: tokio::sync::Mutex::new(()),
            unstored: Mutex::new(Vec::new()),
            progress: Mutex::new(HashMap::new()),
            metrics,
            recorded,
            robust,
            archive_retry_at: Mutex::new(None),
        });
        node.metrics
            .register_collector(Box::new(CloudCollector(Arc::downgrade(&node))));
        let weak = Arc::downgrade(&node);
        let interval = node.config.poll_interval;
        let checkpoint_period = node.config.elastic.checkpoint_period;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_checkpoint = std::time::Instant::now();
            let mut last_release = std::time::Instant::now();
            let mut last_settled = None::<std::time::Instant>;
            // What the catalog last took: the same time again would only be another log entry.
            let mut reported = None::<u64>;
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { break };
                if last_settled.is_none_or(|t| t.elapsed() >= SETTLED_EVERY) {
                    last_settled = Some(std::time::Instant::now());
                    let before_ms = node.state().settled_before();
                    if reported != Some(before_ms) {
                        match node
                            .catalog
                            .report_settled(node.config.party, before_ms)
                            .await
                        {
                            Ok(()) => reported = Some(before_ms),
                            Err(e) => {
                                tracing::debug!(party = node.config.party, "reporting settled: {e}")
                            }
                        }
                    }
                }
                if node.pool.needs_recovery() {
                    if let Err(e) = node.pool.recover(node.as_ref()).await {
                        tracing::error!(party = node.config.party, "recovering workers: {e}");
                    }
                }
                node.forget_expired(mcloud_catalog::now_ms());
                if let Err(e) = node.poll_flags().await {
                    tracing::warn!(party = node.config.party, "reading flags: {e}");
                }
                // Retention that waits for a failed archive is tried again even when no
                // new window seals.
                if node.archive_retry_due() {
                    if let Err(e) = node.seal().await {
                        tracing::warn!(party = node.config.party, "sealing: {e}");
                    }
                }
                if last_release.elapsed() >= RELEASE_HEAP_EVERY {
                    last_release = std::time::Instant::now();
                    mcloud_core::memory::release_free_heap();
                }
                if checkpoint_period.is_some_and(|p| last_checkpoint.elapsed() >= p) {
                    last_checkpoint = std::time::Instant::now();
                    if let Err(e) = node.checkpoint().await {
                        tracing::warn!(party = node.config.party, "checkpoint: {e}");
                    }
                }
            }
        });
        if let Some(archive) = node.config.archive.clone() {
            let weak = Arc::downgrade(&node);
            let party = node.config.party;
            tokio::spawn(async move {
                let first = tokio::time::Instant::now() + ARCHIVE_REFRESH_EVERY;
                let mut tick = tokio::time::interval_at(first, ARCHIVE_REFRESH_EVERY);
                loop {
                    tick.tick().await;
                    if weak.strong_count() == 0 {
                        break;
                    }
                    match archive.refresh_due(mcloud_catalog::now_ms()).await {
                        Ok(0) => {}
                        Ok(files) => tracing::info!(party, files, "archive files refreshed"),
                        Err(e) => tracing::warn!(party, "refreshing the archive: {e}"),
                    }
                }
            });
        }
        Ok(node)
    }

    /// Where windows past the retention horizon go, if anywhere.
    pub fn archive(&self) -> Option<&Archive> {
        self.config.archive.as_ref()
    }

    pub(crate) fn robust(&self) -> Option<&crate::robust::Verifier> {
        self.robust.as_ref()
    }

    /// Counts a batch event in `mcloud_cloud_batches_total`.
    pub(crate) fn record_batch(&self, outcome: &'static str) {
        self.recorded.batch(outcome);
    }

    pub(crate) fn catalog(&self) -> &CatalogClient {
        &self.catalog
    }

    pub(crate) fn is_known(&self, id: &BatchId) -> bool {
        self.state().is_known(id)
    }

    /// Refused robust batches of `sensor` so far (0 in plain mode).
    pub fn refused_batches(&self, sensor: u32) -> u64 {
        self.robust.as_ref().map_or(0, |r| r.refused(sensor))
    }

    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    /// This cloud's Prometheus registry, for its server's `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Windows and batches held in memory.
    pub(crate) fn remembered(&self) -> (usize, usize) {
        self.state().remembered()
    }

    /// The watermark and the end of the closed windows, in event time.
    pub(crate) fn event_time(&self) -> (u64, u64) {
        let state = self.state();
        (state.watermark(), state.closed_before())
    }

    fn state(&self) -> MutexGuard<'_, Windows> {
        // State is only mutated by short, panic-free sections; a poisoned lock still holds a
        // consistent value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks an upload's metadata before its shares are expanded, so a batch that is refused
    /// costs no PRG work; `expand` then checks the shares themselves.
    fn validate(&self, batch: &UploadRequest) -> Result<(), CloudError> {
        validate_upload(&self.config, batch, now_secs())
    }

    /// UPLOAD: validates, expands the shares, checks the flag, stores the body durably as
    /// received (a seed party's stays a seed), then acknowledges.
    /// Stores one share batch of the sensor whose session carries `scope`.
    pub async fn upload(
        self: &Arc<Self>,
        body: Bytes,
        scope: &SensorScope,
    ) -> Result<UploadAck, ApiError> {
        if self.robust.is_some() {
            return Err(ApiError::coded(
                StatusCode::BAD_REQUEST,
                "robust_deployment",
                format!(
                    "this deployment is robust: send robust reports to {}",
                    mcloud_core::paths::ROBUST_UPLOAD_PATH
                ),
            ));
        }
        let request: UploadRequest = decode(&body)?;
        if matches!(request.shares, Shares::Verified { .. }) {
            return Err(ApiError::bad_request(format!(
                "batch {}: verified shares come only from a cloud's own verification",
                request.batch_id
            )));
        }
        check_scope(&request, scope)?;
        let id = request.batch_id;
        if self.state().is_known(&id) {
            return Ok(UploadAck {
                batch_id: id,
                duplicate: true,
            });
        }
        self.validate(&request)?;
        let partial = windows_of(&request, self.config.window_secs);
        let batch = expand(request).map_err(CloudError::from)?;
        self.check_open_flag(id, false).await?;
        if let Registered::Duplicate = self.register(id, partial)? {
            return Ok(UploadAck {
                batch_id: id,
                duplicate: true,
            });
        }
        self.store(id, StoredBatch::received(body), batch).await?;
        Ok(UploadAck {
            batch_id: id,
            duplicate: false,
        })
    }

    /// The flag of batch `id` as an upload needs it: created, still FALSE, and robust exactly
    /// when the upload is.
    pub(crate) async fn check_open_flag(
        &self,
        id: BatchId,
        robust: bool,
    ) -> Result<mcloud_core::wire::Flag, ApiError> {
        let flag = self
            .catalog
            .get(vec![id])
            .await
            .map_err(|e| CloudError::Catalog(e.to_string()))?;
        match flag.first().copied().flatten() {
            None => Err(CloudError::UnknownFlag(id).into()),
            Some(f) if f.state != FlagState::False => Err(CloudError::FlagFinal {
                id,
                state: f.state.to_string(),
            }
            .into()),
            Some(f) if f.robust != robust => Err(ApiError::coded(
                StatusCode::BAD_REQUEST,
                "flag_kind",
                if f.robust {
                    format!("flag {id} is a robust batch's: upload its robust reports")
                } else {
                    format!("flag {id} is a plain batch's: create it robust for robust reports")
                },
            )),
            Some(f) => Ok(f),
        }
    }

    /// Claims batch `id` for the windows it touches, so none of them closes before the
    /// batch is decided; a window already closed refuses it.
    pub(crate) fn register(&self, id: BatchId, windows: Vec<u64>) -> Result<Registered, ApiError> {
        let registered = self.state().register(id, windows);
        if let Err(CloudError::WindowClosed { .. }) = registered {
            self.recorded.batch("late");
        }
        Ok(registered?)
    }

    /// Gives up a claimed batch that will not be stored.
    pub(crate) fn abort(&self, id: BatchId) {
        self.state().abort(id);
    }

    /// Stores a claimed batch's body durably, routes its shares to the workers, and marks it
    /// stored: from then on its flag decides it.
    pub(crate) async fn store(
        self: &Arc<Self>,
        id: BatchId,
        stored: StoredBatch,
        batch: UploadBatch,
    ) -> Result<(), ApiError> {
        // From the claim on, storing runs to its end in a task of its own. Cut short with the
        // request (a sensor that hangs up mid-upload drops it), the batch would stay claimed
        // but never stored: its retries would be refused as in progress, its flag never
        // polled, and every window it touches would wait for it forever.
        let node = self.clone();
        tokio::spawn(async move {
            if let Err(e) = node.store.put_batch(id, stored).await {
                node.state().abort(id);
                return Err(e);
            }
            // Routed before it is marked stored: the flag poller only decides stored
            // batches, so every worker hears of the batch before it hears of its flag.
            node.pool.dispatch(Arc::new(batch));
            node.state().stored(id);
            node.recorded.batch("stored");
            tracing::debug!(party = node.config.party, batch = %id, "batch stored");
            Ok(())
        })
        .await
        .map_err(|e| CloudError::Storage(format!("storing batch {id}: {e}")))??;
        Ok(())
    }

    /// Checkpoints the workers' bucket state durably, so a failed worker's buckets are
    /// rebuilt from it and the batches after it; returns None when no checkpoint could be
    /// taken now (some bucket awaits recovery).
    pub async fn checkpoint(&self) -> Result<Option<CheckpointInfo>, CloudError> {
        let started = std::time::Instant::now();
        let info = self
            .pool
            .checkpoint(|cp| self.store.save_checkpoint(cp))
            .await?;
        if let Some(info) = &info {
            self.recorded
                .checkpoint_took(started.elapsed().as_secs_f64());
            tracing::debug!(party = self.config.party, ?info, "checkpoint stored");
        }
        Ok(info)
    }

    /// Moves the watermark forward (never back), durably; returns the new watermark.
    /// Takes sensor `sensor`'s progress report. Each sensor moves only its own progress; the
    /// windows close by the slowest sensor that still reports (one silent for
    /// `sensor_silence` no longer counts), so a fast sensor cannot close a window on a slower
    /// one. The watermark never moves back.
    pub async fn advance_watermark(
        self: &Arc<Self>,
        req: WatermarkRequest,
        sensor: u32,
    ) -> Result<u64, CloudError> {
        let reported = watermark_progress(&self.config, &req, now_secs())?;
        let slowest = {
            let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            let entry = progress.entry(sensor).or_insert((reported, now));
            *entry = (entry.0.max(reported), now);
            let silence = self.config.sensor_silence;
            progress.retain(|_, (_, seen)| now.duration_since(*seen) < silence);
            progress
                .values()
                .map(|(ts, _)| *ts)
                .min()
                .unwrap_or(reported)
        };
        if slowest <= self.state().watermark() {
            return Ok(self.state().watermark());
        }
        self.store.set_watermark(slowest).await?;
        let now = {
            let mut state = self.state();
            state.advance(slowest);
            state.watermark()
        };
        self.seal().await?;
        Ok(now)
    }

    /// Reads undecided flags from the catalog and applies the final ones.
    pub async fn poll_flags(self: &Arc<Self>) -> Result<(), CloudError> {
        let ids = self.state().undecided_ids();
        for chunk in ids.chunks(POLL_CHUNK) {
            let flags = self
                .catalog
                .get(chunk.to_vec())
                .await
                .map_err(|e| CloudError::Catalog(e.to_string()))?;
            let mut state = self.state();
            for (id, flag) in chunk.iter().zip(flags) {
                let committed = match flag.map(|f| f.state) {
                    Some(FlagState::True) => true,
                    Some(FlagState::Error) => false,
                    Some(FlagState::False) => continue,
                    None => {
                        tracing::warn!(%id, "stored batch has no flag in the catalog");
                        continue;
                    }
                };
                // Under the state lock: a window cannot look decided to a concurrent seal
                // before the workers were told.
                self.pool.decide(*id, committed);
                state.decide(*id, committed);
                self.recorded
                    .batch(if committed { "committed" } else { "aborted" });
                tracing::debug!(party = self.config.party, batch = %id, committed, "flag final");
            }
        }
        self.seal().await
    }

    /// Gathers from the workers the sums of windows that are closed and fully decided; from
    /// then on they are answered from here.
    pub async fn seal(self: &Arc<Self>) -> Result<(), CloudError> {
        // Runs to its end in a task of its own: a caller cut short (a sensor or collector
        // that hangs up while its request seals windows) must not leave windows sealed in
        // memory but never stored, which the workers would then keep forever.
        let node = self.clone();
        tokio::spawn(async move { node.seal_now().await })
            .await
            .map_err(|e| CloudError::Storage(format!("sealing windows: {e}")))?
    }

    async fn seal_now(&self) -> Result<(), CloudError> {
        let _one = self.sealing.lock().await;
        // Windows sealed by an earlier call whose store failed (a full disk) go first: they
        // are answered from memory until stored, and must be stored before they cool.
        let mut windows =
            std::mem::take(&mut *self.unstored.lock().unwrap_or_else(|p| p.into_inner()));
        let ready = self.state().sealable();
        if !ready.is_empty() {
            if let Some(mut sums) = self.pool.take(ready.clone()).await {
                let mut state = self.state();
                for start in &ready {
                    state.seal(*start, sums.remove(start).unwrap_or_default());
                    tracing::debug!(party = self.config.party, window = *start, "window sealed");
                }
                windows.extend(ready);
            }
            // Else a worker's buckets are being rebuilt: the windows stay unanswered until then.
        }
        if windows.is_empty() {
            if self.archive_retry_due() {
                return self.retain_or_wait().await;
            }
            return Ok(());
        }
        let stored = {
            let state = self.state();
            let mut stored = EncodedWindows::default();
            for start in &windows {
                if let Some(window) = state.sealed_window(*start) {
                    stored.add(*start, &window)?;
                }
            }
            stored
        };
        // Stored before the workers drop them: checkpoints taken from now on lack these
        // windows, and a restart must still find their sums.
        if let Err(e) = self.store.save_sealed(stored).await {
            *self.unstored.lock().unwrap_or_else(|p| p.into_inner()) = windows;
            return Err(e);
        }
        self.state().cool();
        self.pool.forget(windows);
        self.fold_sealed_batches().await;
        self.retain_or_wait().await
    }

    /// Drops from the values table the shares of batches whose windows are now all sealed and
    /// stored, keeping their ids. A failure only leaves them for the next sealing.
    async fn fold_sealed_batches(&self) {
        let batches = self.state().take_foldable();
        if batches.is_empty() {
            return;
        }
        if let Err(e) = self.store.fold(batches.clone()).await {
            tracing::warn!(
                party = self.config.party,
                "folding batches into their windows: {e}"
            );
            self.state().untake(batches);
        }
    }

    /// Retention, which waits for the archive when it fails rather than failing the sealing:
    /// the windows stay in the values table and queries go on, and the archive is tried again
    /// [`ARCHIVE_RETRY`] later.
    async fn retain_or_wait(&self) -> Result<(), CloudError> {
        let retry_at = || {
            self.archive_retry_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if retry_at().is_some_and(|at| std::time::Instant::now() < at) {
            return Ok(());
        }
        match self.retain().await {
            Err(CloudError::Archive(e)) => {
                tracing::warn!(party = self.config.party, "archiving: {e}; retrying later");
                *retry_at() = Some(std::time::Instant::now() + ARCHIVE_RETRY);
                Ok(())
            }
            other => {
                *retry_at() = None;
                other
            }
        }
    }

    fn archive_retry_due(&self) -> bool {
        let retry_at = *self
            .archive_retry_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        retry_at.is_some_and(|at| std::time::Instant::now() >= at)
    }

    /// Drops the windows and batches that passed the retention horizon, from memory and then
    /// from the values table. The horizon is aligned to every scope's block, so a block is
    /// either whole or gone: a COMPUTE never answers a block with its first windows missing.
    /// With an archive, the sealed windows go there first, an hour a file; nothing is dropped
    /// until the files are committed.
    async fn retain(&self) -> Result<(), CloudError> {
        let (horizon, from) = {
            let state = self.state();
            let raw = state
                .closed_before()
                .saturating_sub(self.config.retention_secs);
            let align = self.retention_alignment();
            let unsealed = state.first_unsealed().unwrap_or(u64::MAX);
            let horizon = raw.min(unsealed);
            (horizon - horizon % align, state.retained_from())
        };
        if horizon <= from {
            return Ok(());
        }
        let archived = match &self.config.archive {
            Some(archive) => Some(self.archive_between(archive, from, horizon).await?),
            None => None,
        };
        let (windows, batches) = {
            let mut state = self.state();
            if let Some(hours) = &archived {
                state.note_archived(from, hours.iter().map(|(hour, _)| *hour));
            }
            state.forget_before(horizon)
        };
        if windows.is_empty() && batches.is_empty() && archived.as_ref().is_none_or(Vec::is_empty) {
            return Ok(());
        }
        tracing::debug!(
            party = self.config.party,
            horizon,
            windows = windows.len(),
            batches = batches.len(),
            "dropping what passed the retention horizon"
        );
        self.store.prune(horizon, batches, archived).await?;
        // The audit log keeps disclosures for as long as the data they were about, by the
        // wall clock (when they were made); reveal counts go with their windows.
        let at = mcloud_core::auth::now_secs().saturating_sub(self.config.retention_secs);
        self.audit.forget_before(horizon, at).await.map(|_| ())
    }

    /// Writes the sealed windows starting in [from, to) to the archive, one file per hour
    /// that has any, one hour in memory at a time; returns each file's (hour, windows).
    async fn archive_between(
        &self,
        archive: &Archive,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, u64)>, CloudError> {
        let mut written = Vec::new();
        let mut cursor = from;
        while let Some(first) = self.store.first_sealed_from(cursor)?.filter(|s| *s < to) {
            let hour = Archive::hour_of(first);
            let end = hour.saturating_add(ARCHIVE_SECS).min(to);
            let windows = self.store.sealed_between(first, end)?;
            let count = windows.len() as u64;
            archive.put(hour, windows).await?;
            tracing::debug!(party = self.config.party, hour, windows = count, "archived");
            written.push((hour, count));
            cursor = end;
        }
        Ok(written)
    }

    /// Reads back the archived hours a request needs.
    async fn read_back(&self, needed: &Needed) -> Result<(), ApiError> {
        let Some(archive) = &self.config.archive else {
            return Err(ApiError::internal("archived hours without an archive"));
        };
        let read = futures::future::try_join_all(
            needed
                .hours
                .iter()
                .map(|&hour| async move { archive.get(hour).await.map(|w| (hour, w)) }),
        )
        .await?;
        self.state().load_archived(read, needed);
        Ok(())
    }

    /// The least common multiple of the window, every scope's block and (when archiving)
    /// the archive's hour, in seconds.
    fn retention_alignment(&self) -> u64 {
        fn gcd(a: u64, b: u64) -> u64 {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let policy = &self.config.disclosure;
        let window = self.config.window_secs.max(1);
        let archive = self.config.archive.as_ref().map(|_| ARCHIVE_SECS);
        [&policy.owner, &policy.friend, &policy.other]
            .iter()
            .map(|rules| rules.block_secs(window))
            .chain(archive)
            .fold(window, |l, b| {
                let b = b.max(1);
                (l / gcd(l, b)).saturating_mul(b)
            })
    }

    /// Fault injection for tests: kills worker `id` of this node's pool; the node notices and
    /// rebuilds its buckets from the values table.
    pub fn crash_worker(&self, id: crate::elastic::WorkerId) -> bool {
        self.pool.crash_worker(id)
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn policy(&self) -> &DisclosurePolicy {
        &self.config.disclosure
    }

    pub fn policy_hash(&self) -> [u8; 32] {
        self.policy_hash
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn party(&self) -> u16 {
        self.config.party
    }

    pub fn window_secs(&self) -> u64 {
        self.config.window_secs
    }

    /// COMPUTE over windows starting in [from, to), as `view` may see it.
    pub async fn compute(
        self: &Arc<Self>,
        from: u64,
        to: u64,
        level: GroupLevel,
        view: &View<'_>,
    ) -> Result<(ComputeResponse, u64), ApiError> {
        self.seal().await?;
        let mut tries = 0;
        let (answer, fewest, policy) = loop {
            let needed = {
                let state = self.state();
                match state.compute_needs(from, to).map_err(range_error)? {
                    None => {
                        break state.compute(
                            self.config.party,
                            self.config.parties,
                            from,
                            to,
                            level,
                            view,
                        )?
                    }
                    Some(needed) => needed,
                }
            };
            tries += 1;
            if tries > READ_BACK_TRIES {
                return Err(read_back_gave_up());
            }
            self.read_back(&needed).await?;
        };
        let bytes = postcard::experimental::serialized_size(&answer).unwrap_or(usize::MAX);
        if bytes > MAX_ANSWER_BYTES {
            return Err(ApiError::too_large(format!(
                "the answer for windows in [{from}, {to}) would have {bytes} bytes, more than {MAX_ANSWER_BYTES}; ask for a narrower range"
            )));
        }
        self.add_policy_time(policy);
        Ok((answer, fewest))
    }

    /// Adds to the time this cloud spent deciding disclosure.
    pub(crate) fn add_policy_time(&self, spent: std::time::Duration) {
        self.policy_nanos.fetch_add(
            spent.as_nanos().min(u64::MAX as u128) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Time this cloud has spent deciding disclosure (policy checks, counting contributors,
    /// choosing cells, the audit log): what `bench --debs` compares with its query phase.
    pub fn policy_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(
            self.policy_nanos.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Several RANGEs (per-plug load sums, and histograms if asked), checked first, answered
    /// after one gathering of closed windows, as `view` may see them.
    pub async fn ranges(
        self: &Arc<Self>,
        specs: &[RangeSpec],
        view: &View<'_>,
    ) -> Result<Vec<RangeResponse>, ApiError> {
        check_range_specs(specs, self.config.window_secs)?;
        // Windows seal as the watermark moves and flags are decided, so a collector that
        // follows the stream mostly asks for sealed ones: those are answered at once, and
        // only a range reaching a window not sealed yet seals first (whose commits would
        // otherwise hold every answer up behind the uploads' own).
        let mut sealed = false;
        // Each try answers the ranges in order until one needs archived hours read back;
        // those answered stay kept for sliding, so a try after a read-back starts cheaply.
        for _ in 0..specs.len() + READ_BACK_TRIES + 1 {
            let tried = self.try_ranges(&mut self.state(), specs, view)?;
            match tried {
                Ok(answers) => return Ok(answers),
                Err(Blocked::ReadBack(needed)) => self.read_back(&needed).await?,
                Err(Blocked::NotSealed(e)) if sealed => return Err(range_error(e)),
                Err(Blocked::NotSealed(_)) => {
                    self.seal().await?;
                    sealed = true;
                }
            }
        }
        Err(read_back_gave_up())
    }

    /// The answers to `specs`, or what the first that cannot be answered yet waits for.
    fn try_ranges(
        &self,
        state: &mut Windows,
        specs: &[RangeSpec],
        view: &View<'_>,
    ) -> Result<Result<Vec<RangeResponse>, Blocked>, ApiError> {
        let mut bytes = 0usize;
        let mut answers = Vec::with_capacity(specs.len());
        for s in specs {
            let party = self.config.party;
            let answer =
                match state.range(party, self.config.parties, s.from, s.to, s.histograms, view) {
                    Ok(answer) => answer,
                    Err(RangeError::NotLoaded(needed)) => {
                        return Ok(Err(Blocked::ReadBack(needed)))
                    }
                    Err(e @ RangeError::NotReady(_)) => return Ok(Err(Blocked::NotSealed(e))),
                    Err(e) => return Err(range_error(e)),
                };
            bytes = bytes.saturating_add(answer.wire_bytes_max());
            if bytes > MAX_ANSWER_BYTES {
                return Err(ApiError::too_large(format!(
                    "the answer to {} ranges would pass {MAX_ANSWER_BYTES} bytes; ask for fewer ranges at once",
                    specs.len()
                )));
            }
            answers.push(answer);
        }
        Ok(Ok(answers))
    }

    pub fn status(&self) -> serde_json::Value {
        let mut status = self.state().summary();
        status["role"] = "cloud".into();
        status["party"] = self.config.party.into();
        status["parties"] = self.config.parties.into();
        status["window_secs"] = self.config.window_secs.into();
        status["elastic"] = self.pool.status();
        let (windows, batches) = self.state().remembered();
        let (stored_batches, folded_batches, stored_windows) =
            self.store.stored().unwrap_or((0, 0, 0));
        status["retention"] = serde_json::json!({
            "retention_secs": self.config.retention_secs,
            "retained_from": self.state().retained_from(),
            "windows_in_memory": windows,
            "batches_in_memory": batches,
            "stored_batches": stored_batches + folded_batches,
            "folded_batches": folded_batches,
            "stored_windows": stored_windows,
            "archive": self.state().archive_summary(self.config.archive.is_some()),
        });
        if let Some(robust) = &self.robust {
            status["robust"] = robust.status();
        }
        status
    }
}

/// Checks an upload's metadata at `now` (Unix seconds) for a cloud configured with `config`,
/// before its shares are expanded, so a batch that is refused costs no PRG work; `expand`
/// then checks the shares themselves. Public for the fuzz targets (`mcloud::fuzzing`).
pub fn validate_upload(
    config: &CloudConfig,
    batch: &UploadRequest,
    now: u64,
) -> Result<(), CloudError> {
    let id = batch.batch_id;
    if batch.parties != config.parties {
        return Err(CloudError::WrongShareCount {
            id,
            got: batch.parties,
            expected: config.parties,
        });
    }
    if batch.party != config.party {
        return Err(CloudError::WrongParty {
            id,
            got: batch.party,
            expected: config.party,
        });
    }
    if batch.records.is_empty() && batch.histograms.is_empty() {
        return Err(CloudError::EmptyBatch(id));
    }
    let items = batch.records.len() + batch.histograms.len();
    if items > MAX_BATCH_RECORDS {
        return Err(CloudError::TooManyRecords {
            id,
            records: items,
            limit: MAX_BATCH_RECORDS,
        });
    }
    // Every party refuses what its explicit party must refuse, so a seed party never
    // expands more shares than an explicit body could carry.
    let bytes = batch.explicit_share_bytes();
    if bytes > MAX_BODY_BYTES {
        return Err(CloudError::SharesTooLarge {
            id,
            bytes,
            limit: MAX_BODY_BYTES,
        });
    }
    // Every timestamp from outside is held to the horizon before any window arithmetic.
    let horizon = now.saturating_add(config.max_future_secs);
    let mut cells = HashSet::with_capacity(batch.histograms.len());
    for h in &batch.histograms {
        let problem = if h.window_start > horizon {
            format!(
                "window start {} is more than {} s in the future",
                h.window_start, config.max_future_secs
            )
        } else if h.window_start % HISTOGRAM_WINDOW_SECS != 0 {
            format!(
                "window start {} is not a multiple of {HISTOGRAM_WINDOW_SECS} s",
                h.window_start
            )
        } else if !cells.insert((h.plug, h.window_start)) {
            "appears twice".to_string()
        } else {
            continue;
        };
        return Err(CloudError::BadHistogram {
            id,
            plug: h.plug,
            problem,
        });
    }
    let mut keys = HashSet::with_capacity(batch.records.len());
    for r in &batch.records {
        if !keys.insert(r.key) {
            return Err(CloudError::DuplicateRecord { id, key: r.key });
        }
        if r.ts > horizon {
            return Err(CloudError::FromTheFuture {
                id,
                key: r.key,
                ts: r.ts,
                max_future_secs: config.max_future_secs,
            });
        }
    }
    Ok(())
}

/// The progress a sensor's watermark report stands for at `now` (Unix seconds), or why it is
/// refused. Public for the fuzz targets (`mcloud::fuzzing`).
pub fn watermark_progress(
    config: &CloudConfig,
    req: &WatermarkRequest,
    now: u64,
) -> Result<u64, CloudError> {
    // The same horizon as a reading's: progress past it would close windows that no
    // honest sensor has reached (every later upload to them would be refused).
    let horizon = now.saturating_add(config.max_future_secs);
    if req.ts > horizon {
        return Err(CloudError::FutureWatermark {
            ts: req.ts,
            max_future_secs: config.max_future_secs,
        });
    }
    Ok(if req.end_of_stream {
        let window = Window::containing(req.ts, config.window_secs);
        window.end.saturating_add(config.grace_secs)
    } else {
        req.ts
    })
}

/// Refuses RANGE specs whose bounds are not increasing multiples of the `window_secs`
/// window. Public for the fuzz targets (`mcloud::fuzzing`).
pub fn check_range_specs(specs: &[RangeSpec], window_secs: u64) -> Result<(), ApiError> {
    let w = window_secs;
    for &RangeSpec { from, to, .. } in specs {
        if from >= to || from % w != 0 || to % w != 0 {
            return Err(ApiError::bad_request(format!(
                "bad RANGE [{from}, {to}): bounds must be increasing multiples of the {w} s window"
            )));
        }
    }
    Ok(())
}

/// Batches replayed at a restart before waiting for the workers to aggregate them.
const REPLAY_GROUP: usize = 4;

/// The windows a batch touches, from its metadata.
pub fn windows_of(request: &UploadRequest, window_secs: u64) -> Vec<u64> {
    touched(
        request
            .records
            .iter()
            .map(|r| r.ts)
            .chain(request.histograms.iter().map(|h| h.window_start)),
        window_secs,
    )
}

impl ReplaySource for CloudNode {
    fn batches(&self, ids: &[BatchId]) -> Result<Vec<UploadBatch>, CloudError> {
        // Sealed windows are left to the `Forget` that follows a rebuild's replay.
        self.store.replay(ids, self.config.window_secs, || {
            let horizon = self.state().retained_from();
            move |start| start >= horizon
        })
    }

    fn outcome(&self, id: &BatchId) -> Option<bool> {
        self.state().outcome(id)
    }

    fn sealed(&self) -> Vec<u64> {
        self.state().sealed()
    }

    fn checkpointed(&self, buckets: &[usize]) -> Result<Vec<(usize, BucketState)>, CloudError> {
        self.store.read_checkpoint(buckets)
    }
}

/// Read-backs one request may take: more means other requests keep letting its hours go.
const READ_BACK_TRIES: usize = 4;

fn read_back_gave_up() -> ApiError {
    ApiError::unavailable("archived hours kept being let go while being read back; retry")
}

/// Why a RANGE cannot be answered from what this cloud holds right now.
enum Blocked {
    /// Archived hours must be read back first.
    ReadBack(Needed),
    /// A window it reaches is not sealed (maybe only not yet: a sealing may seal it).
    NotSealed(RangeError),
}

fn range_error(e: RangeError) -> ApiError {
    match e {
        // A stable code: a collector following a live stream waits on exactly this one.
        RangeError::NotReady(e) => ApiError::coded(
            axum::http::StatusCode::CONFLICT,
            mcloud_core::http::WINDOW_NOT_READY,
            e.to_string(),
        ),
        e @ RangeError::PastRetention { .. } => ApiError::coded(
            axum::http::StatusCode::GONE,
            "past_retention",
            e.to_string(),
        ),
        // The node reads archived hours back before it asks.
        e @ RangeError::NotLoaded(_) => ApiError::internal(e.to_string()),
        e @ RangeError::TooManyArchivedHours { .. } => ApiError::too_large(e.to_string()),
        RangeError::Storage(e) => ApiError::from(e),
    }
}

/// A sensor uploads only batches it made (the id names it) and only readings of its plugs;
/// anything else is refused before it is looked at further.
pub fn check_scope(batch: &UploadRequest, scope: &SensorScope) -> Result<(), ApiError> {
    let id = batch.batch_id;
    mcloud_core::auth::check_own(scope, id)?;
    let groups = batch
        .records
        .iter()
        .map(|r| &r.group)
        .chain(batch.histograms.iter().map(|h| &h.plug));
    for group in groups {
        if !scope.allows(group) {
            return Err(ApiError::forbidden(
                "out_of_scope",
                format!(
                    "batch {id} has a reading of house {} plug {}, outside sensor {}'s scope",
                    group.house, group.plug, scope.sensor
                ),
            ));
        }
    }
    Ok(())
}
