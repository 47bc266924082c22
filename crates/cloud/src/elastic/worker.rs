//! A pre-aggregation worker: owns a set of buckets and applies, in arrival order, the
//! messages the node routes to it. Order is what makes handovers exact: a bucket's release
//! is queued behind every batch routed to the old owner before the cut, so the state it hands
//! over already contains them.

use super::buckets::{bucket_of, BucketState};
use crate::sums::WindowSums;
use crate::sums::{BatchPartial, Cell};
use mcloud_core::reading::GroupKey;
use mcloud_core::wire::UploadBatch;
use mcloud_core::{BatchId, CountField, Partial, Window};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub type WorkerId = u32;

pub enum Msg {
    /// Aggregate the records of `batch` at `records` (those whose bucket `owners` gives to
    /// this worker; the router found them, so each worker reads only its own) and the
    /// histograms whose bucket `owners` gives to this worker.
    Process {
        batch: Arc<UploadBatch>,
        owners: Arc<Vec<WorkerId>>,
        records: Vec<u32>,
    },
    /// A batch's flag is final.
    Decide { id: BatchId, committed: bool },
    /// Stop owning `bucket` and hand its state over.
    Release {
        bucket: usize,
        reply: oneshot::Sender<BucketState>,
    },
    /// Start owning `bucket` from `state` (added to whatever arrived for it meanwhile).
    Install {
        bucket: usize,
        state: BucketState,
        done: oneshot::Sender<()>,
    },
    /// Copy out the sums of these closed windows, which no batch can touch any more.
    Take {
        windows: Arc<Vec<u64>>,
        reply: oneshot::Sender<HashMap<u64, WindowSums>>,
    },
    /// The node holds these windows' sums now: drop them here.
    Forget { windows: Arc<Vec<u64>> },
    /// Copy out the state of every bucket held, for a checkpoint.
    Checkpoint {
        reply: oneshot::Sender<Vec<(usize, BucketState)>>,
    },
    /// Fault injection: die at once, handing nothing over, as a crashed worker would.
    Crash,
    /// Leave; whatever state is still held goes back in the reply.
    Stop {
        reply: oneshot::Sender<Vec<(usize, BucketState)>>,
    },
}

/// What the manager reads without queueing behind the work.
pub struct WorkerShared {
    /// Cleared when the worker's loop ends, however it ends.
    pub alive: std::sync::atomic::AtomicBool,
    pub busy_ns: AtomicU64,
    pub records: AtomicU64,
    pub bucket_records: Vec<AtomicU64>,
}

impl WorkerShared {
    pub fn new(buckets: usize) -> WorkerShared {
        WorkerShared {
            alive: std::sync::atomic::AtomicBool::new(true),
            busy_ns: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bucket_records: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

pub struct Worker {
    id: WorkerId,
    window_secs: u64,
    buckets: HashMap<usize, BucketState>,
    /// Final flags seen, so a pending partial that arrives with a bucket after its flag was
    /// decided here is applied (or dropped) rather than left waiting forever.
    decided: HashMap<BatchId, bool>,
    /// Buckets holding a pending partial of each batch.
    pending: HashMap<BatchId, HashSet<usize>>,
    /// Windows the node has gathered. Anything that still reaches one of them (a bucket's
    /// state handed over across the gathering, a partial decided after it, a replay) was
    /// counted already or belongs to nothing: it is dropped rather than kept for ever.
    forgotten: HashSet<u64>,
    shared: Arc<WorkerShared>,
    /// Simulated operator cost per record (models a heavier operator in demos).
    record_cost: Duration,
    counts: Vec<u32>,
}

/// One bucket's cells and histograms of a batch.
type BucketPart = (
    Vec<(Cell, Partial)>,
    Vec<((u64, GroupKey), Vec<CountField>)>,
);

impl Worker {
    pub fn new(
        id: WorkerId,
        window_secs: u64,
        shared: Arc<WorkerShared>,
        record_cost: Duration,
    ) -> Worker {
        let n = shared.bucket_records.len();
        Worker {
            id,
            window_secs,
            buckets: HashMap::new(),
            decided: HashMap::new(),
            pending: HashMap::new(),
            forgotten: HashSet::new(),
            shared,
            record_cost,
            counts: vec![0; n],
        }
    }

    /// Runs until told to stop or until the node drops the channel.
    pub fn run(mut self, queue: mpsc::Receiver<Msg>) {
        struct Alive(Arc<WorkerShared>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.alive.store(false, Ordering::Release);
            }
        }
        let _alive = Alive(self.shared.clone());
        while let Ok(msg) = queue.recv() {
            let started = Instant::now();
            let stop = self.handle(msg);
            let busy = started.elapsed().as_nanos() as u64;
            self.shared.busy_ns.fetch_add(busy, Ordering::Relaxed);
            if stop {
                break;
            }
        }
        tracing::debug!(worker = self.id, "worker stopped");
    }

    /// Returns true when the worker should leave.
    pub fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Process {
                batch,
                owners,
                records,
            } => self.process(&batch, &owners, &records),
            Msg::Decide { id, committed } => self.decide(id, committed),
            Msg::Release { bucket, reply } => {
                let state = self.release(bucket);
                // The migration waiting for it may have been dropped with its node.
                let _ = reply.send(state);
            }
            Msg::Install {
                bucket,
                state,
                done,
            } => {
                self.install(bucket, state);
                let _ = done.send(());
            }
            Msg::Take { windows, reply } => {
                let _ = reply.send(self.take(&windows));
            }
            Msg::Forget { windows } => self.forget(&windows),
            Msg::Checkpoint { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Msg::Crash => {
                tracing::warn!(worker = self.id, "worker crashing on request");
                return true;
            }
            Msg::Stop { reply } => {
                let left: Vec<(usize, BucketState)> = self
                    .buckets
                    .drain()
                    .filter(|(_, s)| !s.is_empty())
                    .collect();
                let _ = reply.send(left);
                return true;
            }
        }
        false
    }

    fn process(&mut self, batch: &UploadBatch, owners: &[WorkerId], mine: &[u32]) {
        let buckets = owners.len();
        let mut cells: HashMap<Cell, Partial> = HashMap::new();
        let records = mine.len() as u64;
        for r in mine.iter().filter_map(|&i| batch.records.get(i as usize)) {
            let b = bucket_of(&r.group, buckets);
            self.counts[b] += 1;
            let start = Window::containing(r.ts, self.window_secs).start;
            cells
                .entry((start, r.metric, r.group))
                .or_default()
                .add_shares(&r.share);
        }
        let mut split: HashMap<usize, BucketPart> = HashMap::new();
        for (cell, p) in cells {
            split
                .entry(bucket_of(&cell.2, buckets))
                .or_default()
                .0
                .push((cell, p));
        }
        for h in &batch.histograms {
            let b = bucket_of(&h.plug, buckets);
            if owners[b] != self.id {
                continue;
            }
            let counts: Vec<CountField> = h.counts.clone();
            split
                .entry(b)
                .or_default()
                .1
                .push(((h.window_start, h.plug), counts));
        }
        for (b, (cells, histograms)) in split {
            let partial = BatchPartial::with_windows(cells, histograms, self.window_secs);
            self.add(b, batch.batch_id, partial);
        }
        for (b, n) in self.counts.iter_mut().enumerate() {
            if *n > 0 {
                self.shared.bucket_records[b].fetch_add(u64::from(*n), Ordering::Relaxed);
                *n = 0;
            }
        }
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        if !self.record_cost.is_zero() && records > 0 {
            std::thread::sleep(self.record_cost * records as u32);
        }
    }

    fn decide(&mut self, id: BatchId, committed: bool) {
        self.decided.insert(id, committed);
        for b in self.pending.remove(&id).unwrap_or_default() {
            if let Some(state) = self.buckets.get_mut(&b) {
                if let Some(partial) = state.pending.remove(&id) {
                    if committed {
                        state.apply(partial, self.window_secs, &self.forgotten);
                    }
                }
            }
        }
    }

    /// Adds one batch's partial of `bucket`: applied if the batch committed, dropped if it
    /// ended ERROR, kept until its flag is final otherwise.
    fn add(&mut self, bucket: usize, id: BatchId, partial: BatchPartial) {
        let state = self.buckets.entry(bucket).or_default();
        match self.decided.get(&id) {
            Some(true) => state.apply(partial, self.window_secs, &self.forgotten),
            Some(false) => {}
            None => {
                state.pending.insert(id, partial);
                self.pending.entry(id).or_default().insert(bucket);
            }
        }
    }

    fn release(&mut self, bucket: usize) -> BucketState {
        let state = self.buckets.remove(&bucket).unwrap_or_default();
        for id in state.pending.keys() {
            if let Some(set) = self.pending.get_mut(id) {
                set.remove(&bucket);
                if set.is_empty() {
                    self.pending.remove(id);
                }
            }
        }
        state
    }

    fn install(&mut self, bucket: usize, incoming: BucketState) {
        let state = self.buckets.entry(bucket).or_default();
        for (start, w) in incoming.windows {
            if !self.forgotten.contains(&start) {
                state.windows.entry(start).or_default().merge(w);
            }
        }
        // One batch is routed under one map, so only one worker ever aggregated this
        // bucket's part of it: a pending partial arriving here has nothing to be added to.
        for (id, partial) in incoming.pending {
            self.add(bucket, id, partial);
        }
    }

    fn take(&self, windows: &[u64]) -> HashMap<u64, WindowSums> {
        let mut out: HashMap<u64, WindowSums> = HashMap::new();
        for state in self.buckets.values() {
            for start in windows {
                if let Some(w) = state.windows.get(start) {
                    out.entry(*start).or_default().merge(w.clone());
                }
            }
        }
        out
    }

    fn snapshot(&self) -> Vec<(usize, BucketState)> {
        self.buckets
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(b, s)| (*b, s.clone()))
            .collect()
    }

    fn forget(&mut self, windows: &[u64]) {
        self.forgotten.extend(windows.iter().copied());
        for state in self.buckets.values_mut() {
            for start in windows {
                state.windows.remove(start);
            }
        }
        self.buckets.retain(|_, s| !s.is_empty());
    }
}

/// Which records of `batch` each worker aggregates under `owners`.
pub fn route(batch: &UploadBatch, owners: &[WorkerId]) -> HashMap<WorkerId, Vec<u32>> {
    let mut out: HashMap<WorkerId, Vec<u32>> = HashMap::new();
    let buckets = owners.len();
    for (i, r) in batch.records.iter().enumerate() {
        let owner = owners[bucket_of(&r.group, buckets)];
        out.entry(owner).or_default().push(i as u32);
    }
    out
}
