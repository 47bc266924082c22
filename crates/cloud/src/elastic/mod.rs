//! Elastic pre-aggregation. The node's plugs hash into a fixed number of buckets; each bucket
//! is owned by one worker, which sums the shares of the bucket's records. The bucket → worker
//! map carries an epoch, lives in a [`MapStore`] (the catalog, for a node) and is replaced as
//! a whole, stored first: a batch is routed under one map, so every record is aggregated by
//! exactly one worker. An elastic manager samples the workers' busy
//! fraction and adds, removes and rebalances workers, moving buckets at a clean cut.

pub mod buckets;
pub mod catalog_map;
mod checkpoint;
pub mod manager;
pub mod map_store;
mod migration;
pub mod provisioner;
mod recent;
mod recovery;
pub mod remote;
pub mod worker;

pub use crate::sums::WindowSums;
pub use buckets::{bucket_of, BucketState};
pub use checkpoint::{Checkpoint, CheckpointInfo};
pub use manager::{Action, Thresholds};
pub use map_store::{MapStore, MapStoreError};
pub use provisioner::{InProcess, Provisioner, WorkerHandle};
pub use recovery::ReplaySource;
pub use worker::WorkerId;

use crate::CloudError;
use manager::Sample;
use mcloud_core::wire::UploadBatch;
use mcloud_core::BatchId;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use worker::Msg;

#[derive(Clone, Debug)]
pub struct ElasticConfig {
    /// Buckets (key groups) the plugs hash into; fixed for the life of the node's data.
    pub buckets: usize,
    /// Workers at start.
    pub workers: usize,
    /// How often the manager samples and decides; None: no manager (fixed workers).
    pub period: Option<Duration>,
    pub thresholds: Thresholds,
    /// How often the node checkpoints the buckets' state; None: never (a failed worker's
    /// buckets are then rebuilt from every stored batch).
    pub checkpoint_period: Option<Duration>,
    /// Simulated per-record operator cost (demos only).
    pub record_cost: Duration,
    /// Run workers as `<program> worker` processes instead of threads.
    pub worker_program: Option<std::path::PathBuf>,
}

impl Default for ElasticConfig {
    fn default() -> Self {
        ElasticConfig {
            buckets: 1024,
            workers: 1,
            period: Some(Duration::from_secs(1)),
            thresholds: Thresholds::default(),
            checkpoint_period: Some(Duration::from_secs(2)),
            record_cost: Duration::ZERO,
            worker_program: None,
        }
    }
}

/// The routing map at one epoch.
#[derive(Clone)]
struct Routing {
    epoch: u64,
    owners: Arc<Vec<WorkerId>>,
    workers: BTreeMap<WorkerId, WorkerHandle>,
}

/// A bucket → worker map and its epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapVersion {
    pub epoch: u64,
    pub owners: Arc<Vec<WorkerId>>,
}

/// A map stored by an earlier run of the node: where the pool starts from.
#[derive(Clone, Debug)]
pub struct StoredMap {
    pub epoch: u64,
    pub owners: Vec<WorkerId>,
}

/// One manager period, as logged and shown in the status API.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// Seconds since the pool started.
    pub at: f64,
    pub epoch: u64,
    pub workers: usize,
    pub utilisation: BTreeMap<WorkerId, f64>,
    pub average: f64,
    pub std_dev: f64,
    pub records: u64,
    pub action: Action,
}

/// Counters of what the pool did.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Counters {
    pub migrations: u64,
    pub scale_out_steps: u64,
    pub scale_in_steps: u64,
    pub balance_rounds: u64,
    pub workers_recovered: u64,
    pub workers_started: u64,
    pub workers_stopped: u64,
}

const DECISIONS_KEPT: usize = 240;
const PAUSES_KEPT: usize = 4096;

pub struct Pool {
    config: ElasticConfig,
    window_secs: u64,
    provisioner: Arc<dyn Provisioner>,
    routing: RwLock<Arc<Routing>>,
    /// Held while bucket state is in transit and while windows are taken, so a take never
    /// misses a bucket that is between two owners.
    cut: tokio::sync::Mutex<()>,
    /// Serialises whole scaling and balancing operations.
    control: tokio::sync::Mutex<ControlState>,
    next_id: AtomicU64,
    started: Instant,
    decisions: Mutex<VecDeque<Decision>>,
    counters: Mutex<Counters>,
    pauses_ms: Mutex<VecDeque<f64>>,
    /// Every pause, for the metrics (the recent ones above are for the status page).
    pause_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Records aggregated by workers that have since stopped.
    retired_records: AtomicU64,
    /// Batches in the order they were routed since the latest checkpoint: what a rebuild
    /// replays on top of it, up to the cut at which it took over.
    routed: Mutex<Vec<BatchId>>,
    last_checkpoint: Mutex<Option<CheckpointInfo>>,
    /// Buckets whose state was lost in transit (the old owner died before handing it over).
    orphans: Arc<Mutex<Vec<usize>>>,
    /// Where every map is stored before it is routed by (None: the map lives only here).
    store: Option<Arc<dyn MapStore>>,
    /// The newest epoch the store holds for this pool's map (0: none yet).
    persisted_epoch: AtomicU64,
}

#[derive(Default)]
struct ControlState {
    last_scaling: Option<Instant>,
    previous: HashMap<WorkerId, (u64, Vec<u64>)>,
    previous_at: Option<Instant>,
    /// All records aggregated up to the previous period, stopped workers included.
    previous_records: u64,
    /// Buckets moved in the last period: its figures describe the old layout, so the next
    /// decision waits a period.
    settling: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guarded sections never panic half-way; a poisoned lock still holds a usable value.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// Starts a pool whose map lives only in memory.
    pub fn start(
        config: ElasticConfig,
        window_secs: u64,
        provisioner: Arc<dyn Provisioner>,
    ) -> Result<Arc<Pool>, CloudError> {
        let pool = Self::create(config, window_secs, provisioner, None, None)?;
        pool.spawn_manager();
        Ok(pool)
    }

    /// Starts a pool whose map lives in `store`, continuing from the map stored there by an
    /// earlier run (read for up to `patience` while the store is unavailable): epochs go on
    /// above its epoch, the workers it names are started again (when their number is within
    /// the configured limits) and each bucket stays with its stored owner. Without a usable
    /// stored map, `workers` workers start and the buckets are spread evenly. Returns once the
    /// store holds the starting map, however long that takes.
    pub async fn start_stored(
        config: ElasticConfig,
        window_secs: u64,
        provisioner: Arc<dyn Provisioner>,
        store: Arc<dyn MapStore>,
        patience: Duration,
    ) -> Result<Arc<Pool>, CloudError> {
        let stored = map_store::load_map(store.as_ref(), patience).await;
        let pool = Self::create(config, window_secs, provisioner, stored, Some(store))?;
        pool.store_initial().await?;
        pool.spawn_manager();
        Ok(pool)
    }

    fn create(
        config: ElasticConfig,
        window_secs: u64,
        provisioner: Arc<dyn Provisioner>,
        stored: Option<StoredMap>,
        store: Option<Arc<dyn MapStore>>,
    ) -> Result<Arc<Pool>, CloudError> {
        config.thresholds.check().map_err(CloudError::Workers)?;
        if config.buckets == 0 {
            return Err(CloudError::Workers("need at least one bucket".into()));
        }
        let t = &config.thresholds;
        let n = config.workers.clamp(t.min_workers, t.max_workers);
        let named: std::collections::BTreeSet<WorkerId> = stored
            .iter()
            .filter(|s| s.owners.len() == config.buckets)
            .flat_map(|s| s.owners.iter().copied())
            .collect();
        let resume = !named.is_empty()
            && (t.min_workers..=t.max_workers).contains(&named.len())
            && named.iter().all(|&id| id < WorkerId::MAX);
        let ids: Vec<WorkerId> = if resume {
            named.into_iter().collect()
        } else {
            (0..n as WorkerId).collect()
        };
        let mut workers = BTreeMap::new();
        for &id in &ids {
            workers.insert(id, provisioner.start(id, config.buckets, window_secs)?);
        }
        let epoch = stored.as_ref().map_or(1, |s| s.epoch.saturating_add(1));
        let owners: Vec<WorkerId> = match &stored {
            Some(s) if resume => s.owners.clone(),
            _ => (0..config.buckets).map(|b| ids[b % ids.len()]).collect(),
        };
        let next_id = ids.last().map_or(0, |&id| u64::from(id) + 1);
        let n = ids.len();
        let owners = Arc::new(owners);
        Ok(Arc::new(Pool {
            window_secs,
            provisioner,
            routing: RwLock::new(Arc::new(Routing {
                epoch,
                owners,
                workers,
            })),
            cut: tokio::sync::Mutex::new(()),
            control: tokio::sync::Mutex::new(ControlState::default()),
            next_id: AtomicU64::new(next_id),
            started: Instant::now(),
            decisions: Mutex::new(VecDeque::new()),
            counters: Mutex::new(Counters {
                workers_started: n as u64,
                ..Counters::default()
            }),
            pauses_ms: Mutex::new(VecDeque::new()),
            pause_seconds: mcloud_core::metrics::seconds_histogram(),
            retired_records: AtomicU64::new(0),
            routed: Mutex::new(Vec::new()),
            last_checkpoint: Mutex::new(None),
            orphans: Arc::new(Mutex::new(Vec::new())),
            store,
            persisted_epoch: AtomicU64::new(0),
            config,
        }))
    }

    fn spawn_manager(self: &Arc<Self>) {
        if let Some(period) = self.config.period {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { break };
                    if let Err(e) = pool.manage().await {
                        tracing::warn!("elastic manager: {e}");
                    }
                }
            });
        }
    }

    fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Seconds since the pool started (the clock of [`Decision::at`]).
    pub fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn config(&self) -> &ElasticConfig {
        &self.config
    }

    pub fn workers(&self) -> usize {
        self.routing().workers.len()
    }

    pub fn epoch(&self) -> u64 {
        self.routing().epoch
    }

    /// The current map and its epoch.
    pub fn map(&self) -> MapVersion {
        let routing = self.routing();
        MapVersion {
            epoch: routing.epoch,
            owners: routing.owners.clone(),
        }
    }

    /// The next epoch's routing: `change` applied to a copy of the current one, stored
    /// before it is returned (the epoch may rise above a newer stored one). The caller holds
    /// the control lock, so the map cannot change until it installs the result.
    async fn prepare(
        &self,
        change: impl FnOnce(&mut Routing) -> Result<(), CloudError>,
    ) -> Result<Routing, CloudError> {
        let mut next = (*self.routing()).clone();
        change(&mut next)?;
        let mut map = MapVersion {
            epoch: next.epoch + 1,
            owners: next.owners.clone(),
        };
        self.store_next(&mut map).await?;
        next.epoch = map.epoch;
        Ok(next)
    }

    /// Replaces the routing map (the caller holds the write lock).
    fn publish(&self, slot: &mut Arc<Routing>, next: Routing) {
        *slot = Arc::new(next);
    }

    fn note_persisted(&self, epoch: u64) {
        self.persisted_epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// The newest epoch the store holds (None without a store or before the first write).
    pub fn persisted_epoch(&self) -> Option<u64> {
        Some(self.persisted_epoch.load(Ordering::Relaxed)).filter(|e| *e > 0)
    }

    /// Sends `msg(worker)` to every worker of the current map, with the map held so no cut
    /// falls between two of the sends.
    fn broadcast(&self, msg: impl Fn(&Arc<Vec<WorkerId>>) -> Msg) {
        let routing = self.routing.read().unwrap_or_else(|p| p.into_inner());
        for w in routing.workers.values() {
            if w.tx.send(msg(&routing.owners)).is_err() {
                tracing::warn!(worker = w.id, "worker queue closed: left to recovery");
            }
        }
    }

    /// Routes a stored batch to the workers owning its buckets: every worker gets the batch
    /// and the map, and aggregates the records of the buckets the map gives it.
    pub fn dispatch(&self, batch: Arc<UploadBatch>) {
        let routing = self.routing.read().unwrap_or_else(|p| p.into_inner());
        // Logged under the map, so the log's order against a cut is the routing order.
        lock(&self.routed).push(batch.batch_id);
        for w in routing.workers.values() {
            let msg = Msg::Process {
                batch: batch.clone(),
                owners: routing.owners.clone(),
            };
            if w.tx.send(msg).is_err() {
                tracing::warn!(worker = w.id, "worker queue closed: left to recovery");
            }
        }
    }

    /// Waits until every worker has handled what was sent to it before (a worker answers
    /// messages in order); a worker that stops meanwhile is left to recovery.
    pub async fn settle(&self) {
        let replies: Vec<_> = {
            let routing = self.routing.read().unwrap_or_else(|p| p.into_inner());
            routing
                .workers
                .values()
                .filter_map(|w| {
                    let (reply, rx) = tokio::sync::oneshot::channel();
                    let take = Msg::Take {
                        windows: Arc::new(Vec::new()),
                        reply,
                    };
                    w.tx.send(take).ok().map(|()| rx)
                })
                .collect()
        };
        for rx in replies {
            let _ = rx.await;
        }
    }

    /// A batch's flag is final. Call in the same order relative to `dispatch` as the node
    /// learnt of the batch: after it.
    pub fn decide(&self, id: BatchId, committed: bool) {
        self.broadcast(|_| Msg::Decide { id, committed });
    }

    /// Returns the workers' sums of closed, decided windows, or None while some bucket's
    /// state is not held by any live worker (a worker died, or state was lost in transit):
    /// the windows are then gathered after recovery. The sums stay with the workers until
    /// [`Pool::forget`], so a take that fails half-way loses nothing either.
    pub async fn take(&self, windows: Vec<u64>) -> Option<HashMap<u64, WindowSums>> {
        if windows.is_empty() {
            return Some(HashMap::new());
        }
        let _cut = self.cut.lock().await;
        // Checked under the cut: orphans are only recorded under it, so none can appear
        // between this check and the replies.
        if self.needs_recovery() {
            tracing::debug!("take deferred: buckets await recovery");
            return None;
        }
        let windows = Arc::new(windows);
        let mut replies = Vec::new();
        {
            let routing = self.routing.read().unwrap_or_else(|p| p.into_inner());
            for w in routing.workers.values() {
                let (reply, rx) = tokio::sync::oneshot::channel();
                let sent = w.tx.send(Msg::Take {
                    windows: windows.clone(),
                    reply,
                });
                if sent.is_err() {
                    tracing::debug!(worker = w.id, "take deferred: worker is gone");
                    return None;
                }
                replies.push(rx);
            }
        }
        let mut out: HashMap<u64, WindowSums> = HashMap::new();
        for rx in replies {
            let Ok(part) = rx.await else {
                tracing::debug!("take deferred: a worker stopped during it");
                return None;
            };
            for (start, w) in part {
                out.entry(start).or_default().merge(w);
            }
        }
        Some(out)
    }

    /// The workers may drop these windows' sums: the node holds them.
    pub fn forget(&self, windows: Vec<u64>) {
        let windows = Arc::new(windows);
        self.broadcast(|_| Msg::Forget {
            windows: windows.clone(),
        });
    }

    /// Fault injection for tests and demos: worker `id` dies without handing anything over.
    pub fn crash_worker(&self, id: WorkerId) -> bool {
        self.routing()
            .workers
            .get(&id)
            .is_some_and(|w| w.tx.send(Msg::Crash).is_ok())
    }

    /// Workers of the current map whose loop has ended.
    pub fn dead_workers(&self) -> Vec<WorkerId> {
        self.routing()
            .workers
            .values()
            .filter(|w| !w.shared.alive.load(Ordering::Acquire))
            .map(|w| w.id)
            .collect()
    }

    /// Records aggregated so far by all workers, present and past.
    pub fn records(&self) -> u64 {
        self.retired_records.load(Ordering::Relaxed)
            + self
                .routing()
                .workers
                .values()
                .map(|w| w.shared.records.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    /// Records aggregated by the workers started after the pool's first ones (those the
    /// manager or an operator provisioned).
    pub fn records_by_new_workers(&self) -> u64 {
        let first = self.config.workers as WorkerId;
        self.routing()
            .workers
            .values()
            .filter(|w| w.id >= first)
            .map(|w| w.shared.records.load(Ordering::Relaxed))
            .sum()
    }

    pub fn counters(&self) -> Counters {
        lock(&self.counters).clone()
    }

    pub fn decisions(&self) -> Vec<Decision> {
        lock(&self.decisions).iter().cloned().collect()
    }

    /// Every handover pause, in seconds (the handle shares its counts with the pool).
    pub fn pause_histogram(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.pause_seconds.clone()
    }

    /// Handover pauses measured so far (milliseconds, most recent last).
    pub fn pauses_ms(&self) -> Vec<f64> {
        lock(&self.pauses_ms).iter().copied().collect()
    }

    /// Moves buckets to new owners at a clean cut. Each move is (bucket, new owner).
    pub async fn migrate(&self, moves: Vec<(usize, WorkerId)>) -> Result<usize, CloudError> {
        let _control = self.control.lock().await;
        self.migrate_locked(moves).await
    }

    /// Scales to `n` workers (within the configured limits) and spreads the buckets.
    pub async fn scale_to(&self, n: usize) -> Result<(), CloudError> {
        let mut control = self.control.lock().await;
        let t = &self.config.thresholds;
        let n = n.clamp(t.min_workers, t.max_workers);
        let have = self.workers();
        if n > have {
            self.provision_locked(n - have).await?;
        } else if n < have {
            let remove: Vec<WorkerId> = self
                .routing()
                .workers
                .keys()
                .rev()
                .take(have - n)
                .copied()
                .collect();
            self.decommission_locked(&remove).await?;
        }
        control.last_scaling = Some(Instant::now());
        Ok(())
    }

    async fn provision_locked(&self, add: usize) -> Result<(), CloudError> {
        let mut new = Vec::new();
        for _ in 0..add {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) as WorkerId;
            new.push(
                self.provisioner
                    .start(id, self.config.buckets, self.window_secs)?,
            );
        }
        // Should the map not be stored, the new workers are dropped with `new`, which ends them.
        let next = self
            .prepare(|next| {
                for w in &new {
                    next.workers.insert(w.id, w.clone());
                }
                Ok(())
            })
            .await?;
        {
            let mut routing = self.routing.write().unwrap_or_else(|p| p.into_inner());
            self.publish(&mut routing, next);
        }
        {
            let mut c = lock(&self.counters);
            c.workers_started += add as u64;
            c.scale_out_steps += 1;
        }
        let moves = self.spread_moves();
        self.migrate_locked(moves).await?;
        Ok(())
    }

    async fn decommission_locked(&self, remove: &[WorkerId]) -> Result<(), CloudError> {
        let routing = self.routing();
        let keep: Vec<WorkerId> = routing
            .workers
            .keys()
            .filter(|w| !remove.contains(w))
            .copied()
            .collect();
        if keep.is_empty() {
            return Err(CloudError::Workers("cannot remove every worker".into()));
        }
        // Offload first, to the remaining workers least loaded by bucket count.
        let mut counts: BTreeMap<WorkerId, usize> = keep.iter().map(|w| (*w, 0)).collect();
        for o in routing.owners.iter() {
            if let Some(c) = counts.get_mut(o) {
                *c += 1;
            }
        }
        let mut moves = Vec::new();
        for (b, o) in routing.owners.iter().enumerate() {
            if remove.contains(o) {
                let (&to, _) = counts
                    .iter()
                    .min_by_key(|(w, c)| (**c, **w))
                    .ok_or_else(|| CloudError::Workers("no worker left".into()))?;
                *counts.entry(to).or_default() += 1;
                moves.push((b, to));
            }
        }
        self.migrate_locked(moves).await?;
        let mut leaving = Vec::new();
        let mut stranded = Vec::new();
        let next = self
            .prepare(|next| {
                for id in remove {
                    if let Some(w) = next.workers.remove(id) {
                        leaving.push(w);
                    }
                }
                // A bucket the offload could not move (its owner died meanwhile) must not stay
                // with a worker that leaves the map: it goes to a remaining worker, rebuilt
                // there by recovery.
                let mut owners = (*next.owners).clone();
                for (b, o) in owners.iter_mut().enumerate() {
                    if remove.contains(o) {
                        *o = keep[b % keep.len()];
                        stranded.push(b);
                    }
                }
                next.owners = Arc::new(owners);
                Ok(())
            })
            .await?;
        // Held until the leaving workers have stopped, so no take runs while state they might
        // still hold is on its way to a remaining worker.
        let _cut = self.cut.lock().await;
        {
            let mut routing = self.routing.write().unwrap_or_else(|p| p.into_inner());
            if !stranded.is_empty() {
                tracing::warn!(
                    buckets = stranded.len(),
                    "buckets stranded by a failed worker"
                );
                lock(&self.orphans).extend(stranded);
            }
            self.publish(&mut routing, next);
        }
        for w in leaving {
            let (reply, rx) = tokio::sync::oneshot::channel();
            if w.tx.send(Msg::Stop { reply }).is_err() {
                continue;
            }
            self.retired_records
                .fetch_add(w.shared.records.load(Ordering::Relaxed), Ordering::Relaxed);
            // A worker that owned no bucket any more holds nothing; should anything be left,
            // it goes to the bucket's current owner rather than being lost.
            if let Ok(left) = rx.await {
                for (bucket, state) in left {
                    tracing::warn!(worker = w.id, bucket, "state left at a stopped worker");
                    self.install_locked(bucket, state).await?;
                }
            }
        }
        let mut c = lock(&self.counters);
        c.workers_stopped += remove.len() as u64;
        c.scale_in_steps += 1;
        Ok(())
    }

    /// Bucket moves that give every worker an equal share of the buckets, taking from the
    /// workers holding most.
    fn spread_moves(&self) -> Vec<(usize, WorkerId)> {
        let routing = self.routing();
        let n = routing.workers.len();
        let buckets = routing.owners.len();
        let mut held: BTreeMap<WorkerId, Vec<usize>> =
            routing.workers.keys().map(|w| (*w, Vec::new())).collect();
        for (b, o) in routing.owners.iter().enumerate() {
            held.entry(*o).or_default().push(b);
        }
        let fair = |i: usize| buckets / n + usize::from(i < buckets % n);
        let ids: Vec<WorkerId> = held.keys().copied().collect();
        let mut spare = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let list = held.entry(*id).or_default();
            while list.len() > fair(i) {
                if let Some(b) = list.pop() {
                    spare.push(b);
                }
            }
        }
        let mut moves = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let list = held.entry(*id).or_default();
            while list.len() < fair(i) {
                let Some(b) = spare.pop() else { break };
                list.push(b);
                moves.push((b, *id));
            }
        }
        moves
    }

    /// Installs `state` at the current owner of `bucket`. The caller holds the cut.
    async fn install_locked(&self, bucket: usize, state: BucketState) -> Result<(), CloudError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        {
            let routing = self.routing.read().unwrap_or_else(|p| p.into_inner());
            let owner = routing.owners[bucket];
            let w = routing
                .workers
                .get(&owner)
                .ok_or_else(|| CloudError::Workers(format!("owner {owner} is gone")))?;
            w.tx.send(Msg::Install {
                bucket,
                state,
                done,
            })
            .map_err(|_| CloudError::Workers(format!("worker {owner} is gone")))?;
        }
        rx.await
            .map_err(|_| CloudError::Workers("worker stopped during an install".into()))
    }

    /// One manager period: sample, decide, act, log.
    pub async fn manage(&self) -> Result<Action, CloudError> {
        if self.needs_recovery() {
            // Decisions wait for the node to rebuild what a failed worker held.
            return Ok(Action::None);
        }
        let mut control = self.control.lock().await;
        let now = Instant::now();
        let routing = self.routing();
        let mut sample = Sample::default();
        let mut current = HashMap::new();
        let wall = control
            .previous_at
            .map(|t| now.duration_since(t).as_nanos() as f64);
        for (id, w) in &routing.workers {
            let busy = w.shared.busy_ns.load(Ordering::Relaxed);
            let per_bucket: Vec<u64> = w
                .shared
                .bucket_records
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect();
            // A worker first seen this period has no baseline yet: it is judged next period.
            if let (Some(wall), Some((pb, pbk))) = (wall, control.previous.get(id)) {
                let u = ((busy.saturating_sub(*pb)) as f64 / wall.max(1.0)).clamp(0.0, 1.0);
                sample.utilisation.insert(*id, u);
                let owned: Vec<(usize, u64)> = routing
                    .owners
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| *o == id)
                    .map(|(b, _)| (b, per_bucket[b].saturating_sub(pbk[b])))
                    .collect();
                sample.bucket_load.insert(*id, owned);
            }
            current.insert(*id, (busy, per_bucket));
        }
        control.previous = current;
        control.previous_at = Some(now);
        let total = self.records();
        let records = total.saturating_sub(std::mem::replace(&mut control.previous_records, total));
        let complete = sample.utilisation.len() == routing.workers.len() && wall.is_some();
        let settling = std::mem::take(&mut control.settling);
        let action = if complete && !settling {
            manager::decide(
                &sample,
                &self.config.thresholds,
                control.last_scaling.map(|t| now.duration_since(t)),
            )
        } else {
            Action::None
        };
        let (average, std_dev) = manager::mean_std(sample.utilisation.values().copied());
        let decision = Decision {
            at: self.started.elapsed().as_secs_f64(),
            epoch: routing.epoch,
            workers: routing.workers.len(),
            utilisation: sample.utilisation.clone(),
            average,
            std_dev,
            records,
            action: action.clone(),
        };
        if action == Action::None {
            tracing::debug!(?decision, "elastic manager");
        } else {
            tracing::info!(
                workers = decision.workers,
                average,
                std_dev,
                uut = self.config.thresholds.uut,
                lut = self.config.thresholds.lut,
                tut = self.config.thresholds.tut,
                uit = self.config.thresholds.uit,
                action = ?action,
                "elastic manager"
            );
        }
        {
            let mut log = lock(&self.decisions);
            log.push_back(decision);
            while log.len() > DECISIONS_KEPT {
                log.pop_front();
            }
        }
        match &action {
            Action::Provision { add } => {
                self.provision_locked(*add).await?;
                control.last_scaling = Some(Instant::now());
            }
            Action::Decommission { remove } => {
                self.decommission_locked(remove).await?;
                control.last_scaling = Some(Instant::now());
            }
            Action::Balance { moves } => {
                let moves = moves.iter().map(|(b, _, to)| (*b, *to)).collect();
                self.migrate_locked(moves).await?;
                lock(&self.counters).balance_rounds += 1;
            }
            Action::None | Action::CoolingDown { .. } => {}
        }
        if action != Action::None && !matches!(action, Action::CoolingDown { .. }) {
            control.settling = true;
        }
        Ok(action)
    }

    pub fn status(&self) -> serde_json::Value {
        let routing = self.routing();
        let mut held: BTreeMap<WorkerId, usize> = BTreeMap::new();
        for o in routing.owners.iter() {
            *held.entry(*o).or_default() += 1;
        }
        let pauses = self.pauses_ms();
        let decisions = self.decisions();
        let pids: BTreeMap<WorkerId, u32> = routing
            .workers
            .values()
            .filter_map(|w| w.pid.map(|p| (w.id, p)))
            .collect();
        let recent: Vec<&Decision> = decisions.iter().rev().take(20).collect();
        // Every kept period, compact, so a console opened mid-run draws the run so far.
        let history: Vec<[f64; 5]> = decisions
            .iter()
            .map(|d| {
                [
                    d.at,
                    d.workers as f64,
                    d.average,
                    d.std_dev,
                    d.records as f64,
                ]
            })
            .collect();
        serde_json::json!({
            "provisioner": self.provisioner.name(),
            "epoch": routing.epoch,
            "catalog_epoch": self.persisted_epoch(),
            "buckets": routing.owners.len(),
            "workers": held,
            "pids": pids,
            "thresholds": self.config.thresholds,
            "period_secs": self.config.period.map(|p| p.as_secs_f64()),
            "counters": self.counters(),
            "checkpoint": self.last_checkpoint(),
            "uncheckpointed_batches": self.uncheckpointed(),
            "migration_pause_ms": {
                "count": pauses.len(),
                "p50": percentile(&pauses, 0.50),
                "p99": percentile(&pauses, 0.99),
            },
            "decisions": recent,
            "history": history,
        })
    }
}

/// The p-quantile (nearest rank) of `values`; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
