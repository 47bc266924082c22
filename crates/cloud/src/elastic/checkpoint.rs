//! Checkpoints of bucket state, so a failed worker's buckets are rebuilt from the latest
//! checkpoint plus the batches routed after it, not from the whole history.
//!
//! A checkpoint is a consistent cut across all workers: with the cut held (no bucket is
//! between two owners) and the routing map locked against dispatch, every worker is sent a
//! checkpoint request, queued behind every batch routed so far. Each worker copies its
//! buckets' state when it reaches the request, so the copies hold exactly the batches routed
//! before the cut. The caller stores the copies and the ids of those batches durably; only
//! then does the pool drop the ids from the log a rebuild replays. Checkpoints, scaling and
//! recovery are serialised by the control lock, so a rebuild always reads a stored
//! checkpoint together with the log that continues it.

use super::buckets::BucketState;
use super::worker::Msg;
use super::{lock, Pool};
use crate::CloudError;
use mcloud_core::BatchId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

/// Every bucket's state at one cut, and the batches routed before it.
pub struct Checkpoint {
    /// Buckets holding anything; a bucket not named is empty.
    pub states: Vec<(usize, BucketState)>,
    /// Batches routed before the cut since the previous checkpoint.
    pub covered: Vec<BatchId>,
}

/// The latest stored checkpoint, as shown in the status API.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointInfo {
    /// Seconds since the pool started.
    pub at: f64,
    pub buckets: usize,
    pub groups: usize,
    /// Batches it covered that the previous one did not.
    pub covered: usize,
    /// From the cut to the checkpoint being stored.
    pub ms: f64,
}

impl Pool {
    /// Takes a checkpoint and hands it to `save`, which must store it durably; returns None
    /// when no consistent checkpoint can be taken now (a worker is dead or some bucket awaits
    /// recovery: the previous checkpoint stays the one a rebuild starts from).
    pub async fn checkpoint<F, Fut>(&self, save: F) -> Result<Option<CheckpointInfo>, CloudError>
    where
        F: FnOnce(Checkpoint) -> Fut,
        Fut: Future<Output = Result<(), CloudError>>,
    {
        let _control = self.control.lock().await;
        if self.needs_recovery() {
            return Ok(None);
        }
        let started = Instant::now();
        let (position, replies) = {
            let _cut = self.cut.lock().await;
            // Exclusive against dispatch: a batch is in the log exactly when it is queued
            // ahead of the checkpoint requests.
            let routing = self.routing.write().unwrap_or_else(|p| p.into_inner());
            let position = lock(&self.routed).len();
            let mut replies = Vec::with_capacity(routing.workers.len());
            for w in routing.workers.values() {
                let (reply, rx) = tokio::sync::oneshot::channel();
                if w.tx.send(Msg::Checkpoint { reply }).is_err() {
                    return Ok(None);
                }
                replies.push(rx);
            }
            (position, replies)
        };
        let mut merged: BTreeMap<usize, BucketState> = BTreeMap::new();
        for rx in replies {
            let Ok(part) = rx.await else {
                return Ok(None);
            };
            for (bucket, state) in part {
                merged.entry(bucket).or_default().merge(state);
            }
        }
        let states: Vec<(usize, BucketState)> = merged.into_iter().collect();
        let covered: Vec<BatchId> = lock(&self.routed)[..position].to_vec();
        let (buckets, covered_count) = (states.len(), covered.len());
        let groups = states.iter().map(|(_, s)| s.groups()).sum();
        save(Checkpoint { states, covered }).await?;
        lock(&self.routed).drain(..position);
        let info = CheckpointInfo {
            at: self.uptime(),
            buckets,
            groups,
            covered: covered_count,
            ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        *lock(&self.last_checkpoint) = Some(info.clone());
        Ok(Some(info))
    }

    /// The latest checkpoint taken by this pool.
    pub fn last_checkpoint(&self) -> Option<CheckpointInfo> {
        lock(&self.last_checkpoint).clone()
    }

    /// Batches a rebuild would replay now: those routed since the latest checkpoint.
    pub fn uncheckpointed(&self) -> usize {
        lock(&self.routed).len()
    }

    /// Gives each bucket of a stored checkpoint to its owner, when a node starts from one:
    /// before any batch is routed, so the batches after the checkpoint add to it.
    pub async fn restore(&self, states: Vec<(usize, BucketState)>) -> Result<(), CloudError> {
        let _control = self.control.lock().await;
        let _cut = self.cut.lock().await;
        for (bucket, state) in states {
            if bucket >= self.config.buckets {
                return Err(CloudError::Storage(format!(
                    "checkpoint names bucket {bucket} of {}",
                    self.config.buckets
                )));
            }
            self.install_locked(bucket, state).await?;
        }
        Ok(())
    }
}
