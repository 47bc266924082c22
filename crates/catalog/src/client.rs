//! The catalog as seen from a sensor or a cloud: a `FlagTable` over HTTPS. The client knows
//! every catalog node; any node routes a request to the leader of each partition, so the
//! client only has to move on to the next node when one is unreachable or has no quorum, and
//! it stays with the node that answered last.

use crate::service::{CREATE_PATH, GET_PATH, SET_PATH};
use crate::{CatalogError, FlagTable};
use mcloud_core::http::{post, CallError};
use mcloud_core::wire::{
    CreateFlag, CreateFlagsRequest, Flag, FlagIds, FlagsResponse, GetFlagsResponse,
};
use mcloud_core::BatchId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct CatalogClient {
    http: reqwest::Client,
    nodes: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
}

impl CatalogClient {
    /// `base` is a catalog node's `https://host:port`.
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> CatalogClient {
        Self::with_nodes(http, vec![base.into()])
    }

    /// A client that knows every catalog node (`https://host:port` each) and fails over
    /// between them.
    pub fn with_nodes(http: reqwest::Client, nodes: Vec<String>) -> CatalogClient {
        let nodes = nodes
            .into_iter()
            .map(|b| b.trim_end_matches('/').to_string())
            .collect();
        CatalogClient {
            http,
            nodes: Arc::new(nodes),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The node the client talks to now.
    pub fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.nodes.len().max(1);
        self.nodes.get(i).map(String::as_str).unwrap_or("")
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Tries each node once, starting with the current one; a retryable failure moves on.
    /// Every request is idempotent, so sending it again to another node is safe.
    async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        request: &Q,
    ) -> Result<R, CatalogError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.nodes.len() {
            let i = (start + k) % self.nodes.len();
            let url = format!("{}{path}", self.nodes[i]);
            match post(&self.http, &url, request).await {
                Ok(r) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) if e.is_retryable() => {
                    tracing::debug!("catalog node {url}: {e}; trying the next one");
                    // A node that answered says more (no quorum, no leader) than one that
                    // could not be reached.
                    let answered = matches!(e, CallError::Rejected { .. });
                    if answered || !matches!(last, Some(CallError::Rejected { .. })) {
                        last = Some(e);
                    }
                }
                Err(e) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Err(e.into());
                }
            }
        }
        self.current
            .store((start + 1) % self.nodes.len().max(1), Ordering::Relaxed);
        Err(last
            .map(CatalogError::from)
            .unwrap_or_else(|| CatalogError::Unavailable("no catalog node configured".into())))
    }
}

impl FlagTable for CatalogClient {
    async fn create(&self, flags: Vec<CreateFlag>) -> Result<Vec<Flag>, CatalogError> {
        let r: FlagsResponse = self
            .call(CREATE_PATH, &CreateFlagsRequest { flags })
            .await?;
        Ok(r.flags)
    }

    async fn set(&self, ids: Vec<BatchId>) -> Result<Vec<Flag>, CatalogError> {
        let r: FlagsResponse = self.call(SET_PATH, &FlagIds { ids }).await?;
        Ok(r.flags)
    }

    async fn get(&self, ids: Vec<BatchId>) -> Result<Vec<Option<Flag>>, CatalogError> {
        let r: GetFlagsResponse = self.call(GET_PATH, &FlagIds { ids }).await?;
        Ok(r.flags)
    }
}
