//! Moving buckets between workers at a clean cut.
//!
//! The next epoch's map is stored first (batches still flow under the old one meanwhile).
//! Then, under the routing lock, the map is replaced by it and a release is queued at each old
//! owner. Every batch routed under the old map was queued before the release, so the
//! old owner applies it and then hands the bucket's state over; every batch routed under the
//! new map goes to the new owner, which sums it into a fresh piece of the bucket. Both pieces
//! are sums, and the install adds them: nothing is dropped, nothing counted twice. A flag
//! decided while the state was in transit is known to the new owner (every worker hears every
//! decision), which applies it when the pending partial arrives.

use super::worker::{Msg, WorkerId};
use super::{lock, Pool, PAUSES_KEPT};
use crate::CloudError;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

impl Pool {
    /// Moves each (bucket, new owner); returns how many buckets moved. A bucket named more
    /// than once goes to the last owner named. The caller holds the control lock, so the set
    /// of workers does not change underneath.
    pub(super) async fn migrate_locked(
        &self,
        moves: Vec<(usize, WorkerId)>,
    ) -> Result<usize, CloudError> {
        // One handover per bucket per cut. Chaining two (a → b, then b → c) would queue b's
        // release before the install coming from a, so b would hand on an empty state and keep
        // the real one for a bucket it no longer owns, where nothing takes it over if b dies.
        let moves: BTreeMap<usize, WorkerId> = moves.into_iter().collect();
        let current = self.routing();
        let planned: Vec<(usize, WorkerId, WorkerId)> = moves
            .into_iter()
            .filter_map(|(bucket, to)| {
                let from = *current.owners.get(bucket)?;
                let live = |w: &WorkerId| {
                    current
                        .workers
                        .get(w)
                        .is_some_and(|h| h.shared.alive.load(Ordering::Acquire))
                };
                // A dead old owner's bucket is recovery's to rebuild, not ours to move.
                (from != to && live(&from) && live(&to)).then_some((bucket, from, to))
            })
            .collect();
        if planned.is_empty() {
            return Ok(0);
        }
        // Stored while batches still flow under the old map: the pause starts at the cut.
        let next = self
            .prepare(|next| {
                let mut owners = (*next.owners).clone();
                for &(bucket, _, to) in &planned {
                    owners[bucket] = to;
                }
                next.owners = Arc::new(owners);
                Ok(())
            })
            .await?;
        let _cut = self.cut.lock().await;
        let mut transfers = JoinSet::new();
        {
            let mut routing = self.routing.write().unwrap_or_else(|p| p.into_inner());
            for (bucket, from, to) in planned {
                let (Some(old), Some(new)) = (routing.workers.get(&from), routing.workers.get(&to))
                else {
                    continue;
                };
                let (reply, state) = oneshot::channel();
                if old.tx.send(Msg::Release { bucket, reply }).is_err() {
                    // The old owner died since the plan: the bucket's state is lost, and
                    // recovery rebuilds it at its new owner.
                    lock(&self.orphans).push(bucket);
                    continue;
                }
                let (cut_at, new_tx) = (Instant::now(), new.tx.clone());
                let orphans = self.orphans_handle();
                transfers.spawn(async move {
                    let Ok(state) = state.await else {
                        // The old owner died holding the bucket: recovery rebuilds it.
                        lock(&orphans).push(bucket);
                        return Err(CloudError::Workers(format!(
                            "worker {from} died before handing bucket {bucket} over"
                        )));
                    };
                    let (done, installed) = oneshot::channel();
                    new_tx
                        .send(Msg::Install {
                            bucket,
                            state,
                            done,
                        })
                        .map_err(|_| CloudError::Workers(format!("worker {to} is gone")))?;
                    installed.await.map_err(|_| {
                        CloudError::Workers(format!("worker {to} stopped during an install"))
                    })?;
                    Ok::<_, CloudError>(cut_at.elapsed().as_secs_f64() * 1000.0)
                });
            }
            self.publish(&mut routing, next);
        }
        let mut moved = 0;
        let mut failure = None;
        while let Some(joined) = transfers.join_next().await {
            match joined {
                Ok(Ok(pause)) => {
                    moved += 1;
                    self.pause_seconds.observe(pause / 1e3);
                    let mut pauses = lock(&self.pauses_ms);
                    pauses.push_back(pause);
                    while pauses.len() > PAUSES_KEPT {
                        pauses.pop_front();
                    }
                }
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(CloudError::Workers(format!("handover task: {e}"))),
            }
        }
        lock(&self.counters).migrations += moved as u64;
        match failure {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    fn orphans_handle(&self) -> Arc<Mutex<Vec<usize>>> {
        self.orphans.clone()
    }
}
