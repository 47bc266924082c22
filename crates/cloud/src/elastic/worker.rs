//! A pre-aggregation worker: owns a set of buckets and applies, in arrival order, the
//! messages the node routes to it. Order is what makes handovers exact: a bucket's release
//! is queued behind every batch routed to the old owner before the cut, so the state it hands
//! over already contains them.

use super::buckets::{bucket_of, BucketOf, BucketState};
use super::recent::Recent;
use crate::sums::{BatchPartial, Cell, WindowSums};
use mcloud_core::reading::{GroupKey, Metric};
use mcloud_core::wire::UploadBatch;
use mcloud_core::{BatchId, CountField, Partial, Window};
use rustc_hash::FxBuildHasher;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub type WorkerId = u32;

pub enum Msg {
    /// Aggregate the records and histograms of `batch` whose bucket `owners` gives to this
    /// worker. Each worker finds its own records while it streams through the batch, which
    /// it has to read anyway, so the node's routing does no work per record.
    Process {
        batch: Arc<UploadBatch>,
        owners: Arc<Vec<WorkerId>>,
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
    /// Keyed by bucket index, which the node chooses, so a fast unkeyed hash is safe here.
    buckets: HashMap<usize, BucketState, FxBuildHasher>,
    /// Final flags seen, so a pending partial that arrives with a bucket after its flag was
    /// decided here is applied (or dropped) rather than left waiting forever.
    decided: Recent<BatchId, bool>,
    /// Buckets holding a pending partial of each batch (a bucket may be listed twice; the
    /// second visit finds nothing left).
    pending: HashMap<BatchId, Vec<usize>>,
    /// Windows the node has gathered. Anything that still reaches one of them (a bucket's
    /// state handed over across the gathering, a partial decided after it, a replay) was
    /// counted already or belongs to nothing: it is dropped rather than kept for ever.
    forgotten: Recent<u64, (), FxBuildHasher>,
    shared: Arc<WorkerShared>,
    /// Simulated operator cost per record (models a heavier operator in demos).
    record_cost: Duration,
    /// Scratch for grouping a batch, kept from one batch to the next.
    scratch: Scratch,
}

impl Worker {
    pub fn new(
        id: WorkerId,
        window_secs: u64,
        shared: Arc<WorkerShared>,
        record_cost: Duration,
    ) -> Worker {
        Worker {
            id,
            window_secs,
            buckets: HashMap::default(),
            decided: Recent::default(),
            pending: HashMap::new(),
            forgotten: Recent::default(),
            shared,
            record_cost,
            scratch: Scratch::default(),
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
            Msg::Process { batch, owners } => self.process(&batch, &owners),
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
                self.decided.age();
                self.forgotten.age();
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

    fn process(&mut self, batch: &UploadBatch, owners: &[WorkerId]) {
        let buckets = owners.len();
        self.scratch.group(batch, owners, self.id, self.window_secs);
        let id = batch.batch_id;
        // One flag look-up per batch, not one per bucket.
        let outcome = self.decided.get(&id).copied();
        let mut histograms: Vec<(usize, (u64, GroupKey), Vec<CountField>)> = Vec::new();
        for h in &batch.histograms {
            let b = bucket_of(&h.plug, buckets);
            if owners[b] == self.id {
                let counts: Vec<CountField> = h.counts.clone();
                histograms.push((b, (h.window_start, h.plug), counts));
            }
        }
        // Stable, so each bucket keeps its histograms in batch order.
        histograms.sort_by_key(|h| h.0);
        let mut histograms = histograms.into_iter().peekable();
        let mut waiting = Vec::new();
        let mut records = 0u64;
        for (b, owner) in owners.iter().enumerate() {
            if *owner != self.id {
                continue;
            }
            let (cells, n) = self.scratch.sum(batch, b);
            let mut hs = Vec::new();
            while let Some((_, cell, counts)) = histograms.next_if(|h| h.0 == b) {
                hs.push((cell, counts));
            }
            if cells.is_empty() && hs.is_empty() {
                continue;
            }
            if n > 0 {
                self.shared.bucket_records[b].fetch_add(n, Ordering::Relaxed);
                records += n;
            }
            let partial = BatchPartial::with_windows(cells, hs, self.window_secs);
            if self.add_decided(b, id, partial, outcome) {
                waiting.push(b);
            }
        }
        if !waiting.is_empty() {
            self.pending.entry(id).or_default().extend(waiting);
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
                        state.apply(partial, self.window_secs, |w| self.forgotten.contains(&w));
                    }
                }
            }
        }
    }

    /// Adds one batch's partial of `bucket`: applied if the batch committed, dropped if it
    /// ended ERROR, kept until its flag is final otherwise.
    fn add(&mut self, bucket: usize, id: BatchId, partial: BatchPartial) {
        let outcome = self.decided.get(&id).copied();
        if self.add_decided(bucket, id, partial, outcome) {
            self.pending.entry(id).or_default().push(bucket);
        }
    }

    /// [`Worker::add`] with the batch's flag (`outcome`) already looked up; returns true when
    /// the partial was kept pending, for the caller to list the bucket under the batch.
    fn add_decided(
        &mut self,
        bucket: usize,
        id: BatchId,
        partial: BatchPartial,
        outcome: Option<bool>,
    ) -> bool {
        let state = self.buckets.entry(bucket).or_default();
        match outcome {
            Some(true) => state.apply(partial, self.window_secs, |w| self.forgotten.contains(&w)),
            Some(false) => {}
            None => {
                state.pending.insert(id, partial);
                return true;
            }
        }
        false
    }

    fn release(&mut self, bucket: usize) -> BucketState {
        let state = self.buckets.remove(&bucket).unwrap_or_default();
        for id in state.pending.keys() {
            if let Some(list) = self.pending.get_mut(id) {
                list.retain(|b| *b != bucket);
                if list.is_empty() {
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
        for start in windows {
            let held = || self.buckets.values().filter_map(|s| s.windows.get(start));
            if held().next().is_none() {
                continue;
            }
            // Sized once, and summed from the buckets in place: no copy of each bucket's
            // window to be rehashed into the gathered one.
            let mut gathered = WindowSums::default();
            gathered
                .groups
                .reserve(held().map(|w| w.groups.len()).sum());
            for w in held() {
                gathered.add(w);
            }
            out.insert(*start, gathered);
        }
        out
    }

    /// Final flags and gathered windows remembered (see [`Recent`] for why they stay few).
    pub fn remembered(&self) -> (usize, usize) {
        (self.decided.len(), self.forgotten.len())
    }

    fn snapshot(&self) -> Vec<(usize, BucketState)> {
        self.buckets
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(b, s)| (*b, s.clone()))
            .collect()
    }

    fn forget(&mut self, windows: &[u64]) {
        for &start in windows {
            self.forgotten.insert(start, ());
        }
        for state in self.buckets.values_mut() {
            for start in windows {
                state.windows.remove(start);
            }
        }
        self.buckets.retain(|_, s| !s.is_empty());
    }
}

/// A worker's records of one batch, grouped by bucket.
#[derive(Default)]
struct Scratch {
    /// Each record's cell, in batch order (valid for the worker's records).
    cells: Vec<Cell>,
    /// The worker's records (index, bucket), in batch order (valid up to `own`).
    own: Vec<(u32, u32)>,
    /// The worker's records bucket after bucket: bucket b's are at
    /// `order[starts[b]..starts[b + 1]]`.
    order: Vec<u32>,
    starts: Vec<u32>,
    next: Vec<u32>,
    /// One bucket's records keyed by cell.
    keyed: Vec<(Cell, u32)>,
}

impl Scratch {
    /// Finds the records of `batch` whose bucket `owners` gives to `me` and groups them by
    /// bucket.
    fn group(&mut self, batch: &UploadBatch, owners: &[WorkerId], me: WorkerId, window_secs: u64) {
        let n = batch.records.len();
        if self.cells.len() < n {
            let blank = GroupKey {
                house: 0,
                household: 0,
                plug: 0,
            };
            self.cells.resize(n, (0, Metric::Load, blank));
            self.own.resize(n, (0, 0));
        }
        // In batch order, so the records stream in from memory once; skipping the other
        // workers' records would defeat the prefetcher for little gain, as they share cache
        // lines with this worker's. A record is kept without a branch, since with several
        // workers ownership alternates unpredictably from one record to the next. Records of
        // one batch mostly share a window: the division is done only when one leaves it.
        let bucket = BucketOf::new(owners.len());
        let mut own = 0;
        let (mut from, mut to) = (1, 0);
        for ((i, r), cell) in batch.records.iter().enumerate().zip(&mut self.cells) {
            if !(from..to).contains(&r.ts) {
                from = Window::containing(r.ts, window_secs).start;
                to = from.saturating_add(window_secs);
            }
            *cell = (from, r.metric, r.group);
            let b = bucket.of(&r.group);
            if let Some(slot) = self.own.get_mut(own) {
                *slot = (i as u32, b as u32);
            }
            own += usize::from(owners.get(b) == Some(&me));
        }
        // Then a counting sort by bucket: linear, where sorting would not be.
        let own = &self.own[..own];
        self.starts.clear();
        self.starts.resize(owners.len() + 1, 0);
        for &(_, b) in own {
            self.starts[b as usize + 1] += 1;
        }
        for b in 0..owners.len() {
            self.starts[b + 1] += self.starts[b];
        }
        self.next.clear();
        self.next.extend_from_slice(&self.starts);
        self.order.clear();
        self.order.resize(own.len(), 0);
        for &(i, b) in own {
            let slot = &mut self.next[b as usize];
            self.order[*slot as usize] = i;
            *slot += 1;
        }
    }

    /// Sums the worker's records of `bucket` per cell; returns the cells in cell order and
    /// how many records they hold.
    fn sum(&mut self, batch: &UploadBatch, bucket: usize) -> (Vec<(Cell, Partial)>, u64) {
        let run = match (self.starts.get(bucket), self.starts.get(bucket + 1)) {
            (Some(&from), Some(&to)) => self.order.get(from as usize..to as usize),
            _ => None,
        };
        self.keyed.clear();
        for &i in run.unwrap_or_default() {
            if let Some(cell) = self.cells.get(i as usize) {
                self.keyed.push((*cell, i));
            }
        }
        // One bucket's part of a batch is small: sorting it brings equal cells together more
        // cheaply than hashing every record into a map.
        self.keyed.sort_unstable_by_key(|k| k.0);
        let mut cells: Vec<(Cell, Partial)> = Vec::new();
        for &(cell, i) in &self.keyed {
            let Some(r) = batch.records.get(i as usize) else {
                continue;
            };
            match cells.last_mut() {
                Some((last, sum)) if *last == cell => sum.add_shares(&r.share),
                _ => {
                    let mut sum = Partial::default();
                    sum.add_shares(&r.share);
                    cells.push((cell, sum));
                }
            }
        }
        (cells, self.keyed.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcloud_core::share::record_values;
    use mcloud_core::wire::ShareRecord;

    /// Records over `plugs` plugs, in no particular order of time, window or plug.
    fn batch(id: u128, n: usize, plugs: u32, seed: u64) -> UploadBatch {
        let mut x = seed;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let records = (0..n)
            .map(|i| {
                let p = (next() % u64::from(plugs)) as u32;
                ShareRecord {
                    key: i as u64,
                    ts: next() % 600,
                    metric: if next() % 2 == 0 {
                        Metric::Load
                    } else {
                        Metric::Work
                    },
                    group: GroupKey {
                        house: p / 20,
                        household: (p / 5) % 4,
                        plug: p % 5,
                    },
                    share: record_values(next() % 100_000),
                }
            })
            .collect();
        UploadBatch::single_party(BatchId(id), records)
    }

    fn take(worker: &mut Worker, windows: &[u64]) -> HashMap<u64, WindowSums> {
        let (reply, mut rx) = oneshot::channel();
        worker.handle(Msg::Take {
            windows: Arc::new(windows.to_vec()),
            reply,
        });
        rx.try_recv().unwrap_or_default()
    }

    /// A worker under steady load remembers only the flags and gathered windows of the last
    /// two checkpoint periods, not every one it ever heard of.
    #[test]
    fn memory_of_flags_and_gathered_windows_stays_flat() {
        let buckets = 16;
        let owners: Arc<Vec<WorkerId>> = Arc::new(vec![0; buckets]);
        let mut w = Worker::new(0, 60, Arc::new(WorkerShared::new(buckets)), Duration::ZERO);
        let mut most = (0, 0);
        for round in 0..50u128 {
            for i in 0..20 {
                let id = round * 20 + i + 1;
                w.handle(Msg::Process {
                    batch: Arc::new(batch(id, 50, 30, id as u64)),
                    owners: owners.clone(),
                });
                w.handle(Msg::Decide {
                    id: BatchId(id),
                    committed: true,
                });
            }
            let windows: Vec<u64> = (0..10).map(|k| (round as u64 * 10 + k) * 60).collect();
            take(&mut w, &windows);
            w.handle(Msg::Forget {
                windows: Arc::new(windows),
            });
            let (reply, _rx) = oneshot::channel();
            w.handle(Msg::Checkpoint { reply });
            let (d, f) = w.remembered();
            most = (most.0.max(d), most.1.max(f));
        }
        // Two rounds' worth at most, after a thousand batches and five hundred windows.
        assert!(most.0 <= 40 && most.1 <= 20, "{most:?}");
    }

    #[test]
    fn bucket_of_many_matches_bucket_of() {
        for buckets in [1, 2, 7, 1000, 1024, 4096] {
            let of = BucketOf::new(buckets);
            for p in 0..5000u32 {
                let key = GroupKey {
                    house: p / 7,
                    household: p % 13,
                    plug: p % 5,
                };
                assert_eq!(of.of(&key), bucket_of(&key, buckets), "{buckets} buckets");
            }
        }
    }

    /// Workers splitting the buckets between them sum every record exactly once, whatever the
    /// order of windows and plugs in a batch, and whether its flag comes before or after it.
    #[test]
    fn workers_together_sum_each_record_once() {
        for buckets in [7, 1024] {
            let owners: Arc<Vec<WorkerId>> =
                Arc::new((0..buckets).map(|b| (b % 3) as u32 % 2).collect());
            let mut workers: Vec<Worker> = (0..2)
                .map(|id| Worker::new(id, 60, Arc::new(WorkerShared::new(buckets)), Duration::ZERO))
                .collect();
            let mut expected: HashMap<(u64, Metric, GroupKey), Partial> = HashMap::new();
            let mut total = 0;
            for id in 1..=6u128 {
                let b = Arc::new(batch(id, 3000, 300, id as u64 * 7919));
                // Batch 5 ends ERROR: nothing of it may show.
                let committed = id != 5;
                if committed {
                    total += b.records.len() as u64;
                    for (cell, p) in BatchPartial::of(&b.records, &[], 60).cells {
                        expected.entry(cell).or_default().merge(&p);
                    }
                }
                for w in &mut workers {
                    // Batch 3's flag is known before its records arrive.
                    if id == 3 {
                        w.handle(Msg::Decide {
                            id: b.batch_id,
                            committed,
                        });
                    }
                    w.handle(Msg::Process {
                        batch: b.clone(),
                        owners: owners.clone(),
                    });
                    if id != 3 {
                        w.handle(Msg::Decide {
                            id: b.batch_id,
                            committed,
                        });
                    }
                }
            }
            let windows: Vec<u64> = (0..10).map(|w| w * 60).collect();
            let mut got: HashMap<(u64, Metric, GroupKey), Partial> = HashMap::new();
            let mut records = 0;
            for w in &mut workers {
                records += w.shared.records.load(Ordering::Relaxed);
                for (start, window) in take(w, &windows) {
                    for ((metric, group), p) in window.groups {
                        // A plug belongs to one bucket, so to one worker.
                        assert!(got.insert((start, metric, group), p).is_none());
                    }
                }
            }
            assert_eq!(got, expected, "{buckets} buckets");
            // Every record of every batch was summed once, including the one that failed.
            assert_eq!(records, total + 3000, "{buckets} buckets");
        }
    }
}
