//! The replicated catalog as the home of a cloud's bucket → worker map: cloud `party`'s
//! register (`/v1/assignments/{party}`), which keeps a map only under a greater epoch.

use super::map_store::{MapStore, MapStoreError};
use super::{StoredMap, WorkerId};
use futures::future::BoxFuture;
use futures::FutureExt;
use mcloud_catalog::{Assignment, CatalogClient, CatalogError};

pub struct CatalogMaps {
    catalog: CatalogClient,
    party: u16,
}

impl CatalogMaps {
    pub fn new(catalog: CatalogClient, party: u16) -> CatalogMaps {
        CatalogMaps { catalog, party }
    }
}

fn classify(e: CatalogError) -> MapStoreError {
    match e {
        CatalogError::StaleEpoch { stored, .. } => MapStoreError::Stale { stored },
        e if e.is_retryable() => MapStoreError::Unavailable(e.to_string()),
        e => MapStoreError::Refused(e.to_string()),
    }
}

impl MapStore for CatalogMaps {
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredMap>, MapStoreError>> {
        async move {
            let stored = self
                .catalog
                .get_assignment(self.party)
                .await
                .map_err(classify)?;
            Ok(stored.map(|a| StoredMap {
                epoch: a.epoch,
                owners: a.owners,
            }))
        }
        .boxed()
    }

    fn store<'a>(
        &'a self,
        epoch: u64,
        owners: &'a [WorkerId],
    ) -> BoxFuture<'a, Result<(), MapStoreError>> {
        async move {
            let assignment = Assignment {
                epoch,
                owners: owners.to_vec(),
            };
            self.catalog
                .put_assignment(self.party, &assignment)
                .await
                .map_err(classify)
        }
        .boxed()
    }
}
