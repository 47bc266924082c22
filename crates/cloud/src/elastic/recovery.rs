//! Replacing a failed worker.
//!
//! A worker that dies takes its buckets' state with it, and the messages queued for it. Under
//! the cut, its buckets get new owners, each new owner is told to discard whatever it holds of
//! such a bucket (before the new map is published) and then is given the bucket's state in the
//! latest checkpoint and sent, again, every batch routed between that checkpoint and this cut,
//! masked to the lost buckets, followed by the final flags known so far. Batches routed after
//! the cut reach the new owners through the new map; flags decided later reach every live
//! worker. The replayed batches come from the values table, which held every one of them
//! before it was routed, so a lost bucket ends up with exactly the sums it would have had.
//!
//! A bucket whose state was lost in transit (its old owner died before handing it over) is
//! rebuilt the same way at its current owner.

use super::buckets::BucketState;
use super::worker::{Msg, WorkerId};
use super::{lock, Pool};
use crate::CloudError;
use mcloud_core::wire::UploadBatch;
use mcloud_core::BatchId;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Marks a bucket no worker should aggregate in a masked replay.
const NOBODY: WorkerId = WorkerId::MAX;

/// What a replay needs from the node.
pub trait ReplaySource: Send + Sync {
    /// The stored batches with these ids, in any order.
    fn batches(&self, ids: &[BatchId]) -> Result<Vec<UploadBatch>, CloudError>;
    /// The final flag of a batch: Some(true) committed, Some(false) ERROR, None undecided.
    fn outcome(&self, id: &BatchId) -> Option<bool>;
    /// Windows whose sums the node already gathered.
    fn sealed(&self) -> Vec<u64>;
    /// These buckets' state in the latest stored checkpoint (a bucket not returned was empty
    /// there, or there is no checkpoint).
    fn checkpointed(&self, buckets: &[usize]) -> Result<Vec<(usize, BucketState)>, CloudError>;
}

/// Batches read from the values table at a time during a replay.
const REPLAY_CHUNK: usize = 64;

impl Pool {
    /// Whether a worker died or a bucket's state was lost in transit.
    pub fn needs_recovery(&self) -> bool {
        !self.dead_workers().is_empty() || !lock(&self.orphans).is_empty()
    }

    /// Rebuilds the buckets of dead workers (and buckets lost in transit) on live workers;
    /// returns how many buckets were rebuilt.
    pub async fn recover(&self, source: &dyn ReplaySource) -> Result<usize, CloudError> {
        let _control = self.control.lock().await;
        let _cut = self.cut.lock().await;
        let orphans: Vec<usize> = std::mem::take(&mut *lock(&self.orphans));
        let mut lost = Vec::new();
        let rebuilt = self.rebuild(source, &orphans, &mut lost).await;
        if let Err(e) = &rebuilt {
            // A rebuild that stopped half-way (a new owner died under it) may have left some
            // buckets partly replayed, and their dead owners are out of the map: every bucket
            // it touched is redone in full by the next recovery, and no take gathers a window
            // before that.
            tracing::warn!(
                buckets = lost.len(),
                "rebuild interrupted, to be redone: {e}"
            );
            let mut pending = lock(&self.orphans);
            pending.extend(orphans);
            pending.extend(lost);
            pending.sort_unstable();
            pending.dedup();
        }
        rebuilt
    }

    /// The body of [`Pool::recover`]; `lost` receives the buckets being rebuilt as soon as
    /// they are chosen, so a failure can hand them back.
    async fn rebuild(
        &self,
        source: &dyn ReplaySource,
        orphans: &[usize],
        lost_out: &mut Vec<usize>,
    ) -> Result<usize, CloudError> {
        let dead: Vec<WorkerId> = self
            .routing()
            .workers
            .values()
            .filter(|w| !w.shared.alive.load(Ordering::Acquire))
            .map(|w| w.id)
            .collect();
        if dead.is_empty() && orphans.is_empty() {
            return Ok(0);
        }
        let mut lost = Vec::new();
        let mut retired = Vec::new();
        let mut started = false;
        let next = self
            .prepare(|next| {
                for id in &dead {
                    retired.extend(next.workers.remove(id));
                }
                if next.workers.is_empty() {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed) as WorkerId;
                    let w = self
                        .provisioner
                        .start(id, self.config.buckets, self.window_secs)?;
                    next.workers.insert(id, w);
                    started = true;
                }
                let mut counts: BTreeMap<WorkerId, usize> =
                    next.workers.keys().map(|w| (*w, 0)).collect();
                for o in next.owners.iter() {
                    if let Some(c) = counts.get_mut(o) {
                        *c += 1;
                    }
                }
                let mut owners = (*next.owners).clone();
                for (b, owner) in owners.iter_mut().enumerate() {
                    if dead.contains(owner) {
                        let (&to, _) = counts
                            .iter()
                            .min_by_key(|(w, c)| (**c, **w))
                            .ok_or_else(|| CloudError::Workers("no live worker".into()))?;
                        *counts.entry(to).or_default() += 1;
                        *owner = to;
                        lost.push(b);
                    } else if orphans.contains(&b) {
                        lost.push(b);
                    }
                }
                next.owners = Arc::new(owners);
                Ok(())
            })
            .await?;
        lost_out.clone_from(&lost);
        let replay = {
            let mut routing = self.routing.write().unwrap_or_else(|p| p.into_inner());
            // Whatever the new owner holds of a lost bucket is rebuilt from scratch. The
            // discard is queued before the new map is published, so everything routed under
            // the new map lands after it and is kept.
            for &b in &lost {
                let to = next.owners[b];
                let w = next
                    .workers
                    .get(&to)
                    .ok_or_else(|| CloudError::Workers(format!("worker {to} is gone")))?;
                let (reply, _) = tokio::sync::oneshot::channel();
                send(w, Msg::Release { bucket: b, reply })?;
            }
            for w in retired {
                self.retired_records
                    .fetch_add(w.shared.records.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            if started {
                lock(&self.counters).workers_started += 1;
            }
            self.publish(&mut routing, next);
            lock(&self.routed).clone()
        };
        let routing = self.routing();
        let mut masks: BTreeMap<WorkerId, Vec<WorkerId>> = BTreeMap::new();
        for &b in &lost {
            let to = routing.owners[b];
            masks
                .entry(to)
                .or_insert_with(|| vec![NOBODY; routing.owners.len()])[b] = to;
        }
        // Installed after the discard queued above, so the checkpoint's state and whatever the
        // new map routes meanwhile add up.
        let mut decide: Vec<BatchId> = Vec::new();
        for (bucket, state) in source.checkpointed(&lost)? {
            if !lost.contains(&bucket) {
                continue;
            }
            let to = routing.owners[bucket];
            let w = routing
                .workers
                .get(&to)
                .ok_or_else(|| CloudError::Workers(format!("worker {to} is gone")))?;
            decide.extend(state.pending.keys().copied());
            let (done, _) = tokio::sync::oneshot::channel();
            send(
                w,
                Msg::Install {
                    bucket,
                    state,
                    done,
                },
            )?;
        }
        let mut targets = Vec::new();
        for (to, mask) in masks {
            let w = routing
                .workers
                .get(&to)
                .ok_or_else(|| CloudError::Workers(format!("worker {to} is gone")))?;
            targets.push((w.clone(), Arc::new(mask)));
        }
        let replay: Vec<BatchId> = replay
            .into_iter()
            .filter(|id| source.outcome(id) != Some(false))
            .collect();
        for ids in replay.chunks(REPLAY_CHUNK) {
            for batch in source.batches(ids)? {
                let batch = Arc::new(batch);
                for (w, mask) in &targets {
                    send(
                        w,
                        Msg::Process {
                            batch: batch.clone(),
                            owners: mask.clone(),
                        },
                    )?;
                }
            }
        }
        let sealed = Arc::new(source.sealed());
        decide.extend(replay.iter().copied());
        for (w, _) in &targets {
            for id in &decide {
                if let Some(committed) = source.outcome(id) {
                    send(w, Msg::Decide { id: *id, committed })?;
                }
            }
            send(
                w,
                Msg::Forget {
                    windows: sealed.clone(),
                },
            )?;
        }
        tracing::warn!(
            ?dead,
            buckets = lost.len(),
            batches = replay.len(),
            "rebuilt the buckets of failed workers from the checkpoint and the values table"
        );
        lock(&self.counters).workers_recovered += dead.len() as u64;
        Ok(lost.len())
    }
}

fn send(w: &super::WorkerHandle, msg: Msg) -> Result<(), CloudError> {
    w.tx.send(msg)
        .map_err(|_| CloudError::Workers(format!("worker {} is gone", w.id)))
}
