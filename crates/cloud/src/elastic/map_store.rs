//! Where the bucket → worker map lives. A pool with a store routes only by maps the store
//! holds: every new map (a migration, a scaling step, a recovery) is stored first and switched
//! to after, so the stored map is never behind the one ingest uses. Storing happens before
//! the cut, while batches still flow under the old map, so it does not lengthen a handover's
//! pause; when the store cannot be reached the change is not made (a recovery is retried).

use super::{MapVersion, Pool, StoredMap, WorkerId};
use crate::CloudError;
use futures::future::BoxFuture;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum MapStoreError {
    /// The store holds a newer epoch; the map must go above it.
    #[error("the stored map has the newer epoch {stored}")]
    Stale { stored: u64 },
    /// Worth retrying (no leader, connection lost).
    #[error("map store unavailable: {0}")]
    Unavailable(String),
    #[error("map store refused the map: {0}")]
    Refused(String),
}

/// The durable, shared home of one pool's map.
pub trait MapStore: Send + Sync {
    /// The map stored last, if any.
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredMap>, MapStoreError>>;
    /// Stores `owners` under `epoch`, which must be above the stored epoch.
    fn store<'a>(
        &'a self,
        epoch: u64,
        owners: &'a [WorkerId],
    ) -> BoxFuture<'a, Result<(), MapStoreError>>;
}

/// How long a map change waits for an unavailable store before it is given up.
const PATIENCE: Duration = Duration::from_secs(5);
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How often a starting pool that waits for its store says so.
const WAITING_NOTE: Duration = Duration::from_secs(5);

/// Stores `map`, raising its epoch above a newer stored one; waits up to `patience` (None:
/// without end) while the store is unavailable.
pub(super) async fn store_map(
    store: &dyn MapStore,
    map: &mut MapVersion,
    patience: Option<Duration>,
) -> Result<(), CloudError> {
    let started = Instant::now();
    let mut noted = started;
    loop {
        match store.store(map.epoch, &map.owners).await {
            Ok(()) => return Ok(()),
            Err(MapStoreError::Stale { stored }) if stored >= mcloud_catalog::MAX_EPOCH => {
                // No epoch above it is allowed: retrying would spin forever.
                return Err(CloudError::Workers(format!(
                    "the stored bucket map's epoch {stored} is at or beyond the bound of {}; \
                     no newer map can be stored",
                    mcloud_catalog::MAX_EPOCH
                )));
            }
            Err(MapStoreError::Stale { stored }) => {
                tracing::info!(
                    epoch = map.epoch,
                    stored,
                    "stored bucket map is newer; continuing above its epoch"
                );
                map.epoch = stored.saturating_add(1);
            }
            Err(MapStoreError::Unavailable(e))
                if patience.is_none_or(|p| started.elapsed() < p) =>
            {
                if noted.elapsed() >= WAITING_NOTE {
                    tracing::warn!(epoch = map.epoch, "waiting to store the bucket map: {e}");
                    noted = Instant::now();
                }
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(e) => {
                return Err(CloudError::Workers(format!(
                    "storing the bucket map of epoch {}: {e}",
                    map.epoch
                )))
            }
        }
    }
}

/// Reads the stored map, waiting up to `patience` while the store is unavailable; None when
/// there is none or it could not be read (the first store then learns its epoch).
pub(super) async fn load_map(store: &dyn MapStore, patience: Duration) -> Option<StoredMap> {
    let started = Instant::now();
    loop {
        match store.load().await {
            Ok(stored) => return stored,
            Err(MapStoreError::Unavailable(e)) if started.elapsed() < patience => {
                tracing::debug!("reading the stored bucket map: {e}; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(e) => {
                tracing::warn!("reading the stored bucket map: {e}; starting afresh");
                return None;
            }
        }
    }
}

impl Pool {
    /// Stores `next` before the pool routes by it (a no-op without a store); its epoch may
    /// rise above a newer stored one. The caller holds the control lock.
    pub(super) async fn store_next(&self, next: &mut MapVersion) -> Result<(), CloudError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        store_map(store.as_ref(), next, Some(PATIENCE)).await?;
        self.note_persisted(next.epoch);
        Ok(())
    }

    /// Stores the map the pool started with, waiting for the store as long as it takes: a
    /// pool with a store routes nothing by a map the store does not hold.
    pub(super) async fn store_initial(&self) -> Result<(), CloudError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _control = self.control.lock().await;
        let mut map = self.map();
        store_map(store.as_ref(), &mut map, None).await?;
        self.note_persisted(map.epoch);
        let mut routing = self.routing.write().unwrap_or_else(|p| p.into_inner());
        if routing.epoch != map.epoch {
            let mut next = (**routing).clone();
            next.epoch = map.epoch;
            *routing = std::sync::Arc::new(next);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A store that holds a map at `stored` and counts the writes it is sent.
    struct Holding {
        stored: u64,
        writes: AtomicU64,
    }

    impl MapStore for Holding {
        fn load(&self) -> BoxFuture<'_, Result<Option<StoredMap>, MapStoreError>> {
            Box::pin(async { Ok(None) })
        }
        fn store<'a>(
            &'a self,
            epoch: u64,
            _: &'a [WorkerId],
        ) -> BoxFuture<'a, Result<(), MapStoreError>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let stored = self.stored;
            Box::pin(async move {
                if epoch <= stored {
                    Err(MapStoreError::Stale { stored })
                } else {
                    Ok(())
                }
            })
        }
    }

    fn map(epoch: u64) -> MapVersion {
        MapVersion {
            epoch,
            owners: Arc::new(vec![0; 4]),
        }
    }

    #[tokio::test]
    async fn a_newer_stored_map_is_overtaken_once() {
        let store = Holding {
            stored: 41,
            writes: AtomicU64::new(0),
        };
        let mut next = map(3);
        store_map(&store, &mut next, None).await.unwrap();
        assert_eq!(next.epoch, 42);
        assert_eq!(store.writes.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_epoch_at_the_bound_is_an_error_not_a_retry_loop() {
        for stored in [mcloud_catalog::MAX_EPOCH, u64::MAX] {
            let store = Holding {
                stored,
                writes: AtomicU64::new(0),
            };
            let e = store_map(&store, &mut map(1), None).await.unwrap_err();
            assert!(e.to_string().contains("beyond the bound"), "{e}");
            assert_eq!(store.writes.load(Ordering::Relaxed), 1);
        }
    }
}
