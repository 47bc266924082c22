//! The pool's bucket → worker map in the catalog: a writer task keeps the catalog at the
//! pool's newest map, and a starting node reads the map an earlier run left there.
//!
//! Migrations never wait for the catalog: the pool only replaces a value in a watch channel,
//! and the writer sends whatever is newest when the catalog can take it. The catalog keeps a
//! map only under a greater epoch, so a late write never replaces a newer map.

use super::{MapVersion, Pool, StoredMap};
use mcloud_catalog::{Assignment, CatalogClient, CatalogError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause after a failure the catalog may recover from.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Pause after a refusal that a retry will not fix soon (a catalog without the maps API).
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Reads cloud `party`'s stored map, retrying while the catalog is unavailable for up to
/// `give_up`. None when there is none or the catalog could not be read: the writer then
/// learns the stored epoch from the refusal of its first write.
pub async fn read_stored(
    catalog: &CatalogClient,
    party: u16,
    give_up: Duration,
) -> Option<StoredMap> {
    let start = Instant::now();
    loop {
        match catalog.get_assignment(party).await {
            Ok(stored) => {
                return stored.map(|a| StoredMap {
                    epoch: a.epoch,
                    owners: a.owners,
                })
            }
            Err(e) if e.is_retryable() && start.elapsed() < give_up => {
                tracing::debug!(party, "reading the stored bucket map: {e}; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(e) => {
                tracing::warn!(party, "reading the stored bucket map: {e}; starting afresh");
                return None;
            }
        }
    }
}

/// Writes every map `pool` publishes to the catalog as cloud `party`'s, newest first, until
/// the pool is dropped.
pub fn spawn_writer(pool: &Arc<Pool>, catalog: CatalogClient, party: u16) {
    let mut updates = pool.map_updates();
    let pool = Arc::downgrade(pool);
    tokio::spawn(async move {
        loop {
            let current: MapVersion = updates.borrow_and_update().clone();
            let Some(p) = pool.upgrade() else { break };
            let persisted = p.persisted_epoch().unwrap_or(0);
            drop(p);
            if current.epoch > persisted {
                let assignment = Assignment {
                    epoch: current.epoch,
                    owners: current.owners.to_vec(),
                };
                match catalog.put_assignment(party, &assignment).await {
                    Ok(()) => {
                        if let Some(p) = pool.upgrade() {
                            p.note_persisted(current.epoch);
                        }
                        tracing::debug!(party, epoch = current.epoch, "bucket map stored");
                    }
                    Err(CatalogError::StaleEpoch { stored, .. }) => {
                        // The catalog holds a newer epoch than this pool knew of: the pool
                        // goes on above it, which publishes a map the catalog will take.
                        tracing::info!(
                            party,
                            epoch = current.epoch,
                            stored,
                            "stored bucket map is newer; continuing above its epoch"
                        );
                        match pool.upgrade() {
                            Some(p) => p.raise_epoch_above(stored),
                            None => break,
                        }
                        continue;
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(party, "storing the bucket map: {e}; retrying");
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(party, "storing the bucket map: {e}; retrying");
                        tokio::time::sleep(REFUSED_RETRY_AFTER).await;
                        continue;
                    }
                }
            }
            if updates.changed().await.is_err() {
                break;
            }
        }
    });
}
