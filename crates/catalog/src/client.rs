//! The catalog as seen from a sensor or a cloud: a `FlagTable` over HTTPS. The client knows
//! every catalog node and learns from their status pages which one leads each partition, so a
//! request for one partition goes straight to its leader. Any node also routes a request to
//! the leaders itself: when the leader is unknown, gone or the request spans partitions, the
//! client moves through the nodes until one answers, staying with the node that answered
//! last.

use crate::raft::node::ASSIGNMENT_PARTITION;
use crate::raft::placement::partition_of;
use crate::raft::{assignment_path, Assignment};
use crate::service::{CREATE_PATH, GET_PATH, SET_PATH, VERDICT_PATH};
use crate::{CatalogError, FlagTable};
use mcloud_core::auth::CallCredentials;
use mcloud_core::http::{send, CallError, Endpoint};
use mcloud_core::wire::{
    CreateFlag, CreateFlagsRequest, Flag, FlagIds, FlagsResponse, GetFlagsResponse, VerdictRequest,
};
use mcloud_core::BatchId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct CatalogClient {
    /// One client per node, each pinning that node's party's CA.
    clients: Arc<Vec<reqwest::Client>>,
    nodes: Arc<Vec<String>>,
    /// A sensor's sessions, and the party of each node (a session counts at one party only);
    /// peers need none: their client certificate is in `http`.
    credentials: Option<NodeCredentials>,
    current: Arc<AtomicUsize>,
    leaders: Arc<Leaders>,
}

/// A sensor's sessions and the party of each node, in node order.
type NodeCredentials = (Arc<dyn CallCredentials>, Arc<Vec<u16>>);

/// Which known node leads each partition, as last read from a status page.
#[derive(Default)]
struct Leaders {
    /// Index into `nodes` per partition; empty while unknown.
    by_partition: Mutex<Vec<Option<usize>>>,
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
}

/// How often a client may ask for the leaders while it does not know them.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

impl CatalogClient {
    /// A client of one catalog node.
    pub fn new(node: Endpoint) -> CatalogClient {
        Self::with_nodes(vec![node])
    }

    /// A client that knows every catalog node and fails over between them.
    pub fn with_nodes(nodes: Vec<Endpoint>) -> CatalogClient {
        let (nodes, clients) = nodes.into_iter().map(|e| (e.url, e.http)).unzip();
        CatalogClient {
            clients: Arc::new(clients),
            nodes: Arc::new(nodes),
            credentials: None,
            current: Arc::new(AtomicUsize::new(0)),
            leaders: Arc::new(Leaders::default()),
        }
    }

    /// Calls carry `credentials` for each node's party (`parties`, in node order).
    pub fn with_credentials(
        mut self,
        credentials: Arc<dyn CallCredentials>,
        parties: Vec<u16>,
    ) -> CatalogClient {
        self.credentials = Some((credentials, Arc::new(parties)));
        self
    }

    /// The node the client talks to now.
    pub fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.nodes.len().max(1);
        self.nodes.get(i).map(String::as_str).unwrap_or("")
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Every node with its client.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.nodes
            .iter()
            .zip(self.clients.iter())
            .map(|(url, http)| Endpoint::new(url.clone(), http.clone()))
            .collect()
    }

    /// The known leader of the one partition all `ids` fall in.
    fn leader_for(&self, ids: impl Iterator<Item = BatchId>) -> Option<usize> {
        let leaders = self.leaders.by_partition.lock().ok()?;
        if leaders.is_empty() {
            return None;
        }
        let mut partition = None;
        for id in ids {
            let p = partition_of(id, leaders.len() as u32);
            if partition.is_some_and(|q| q != p) {
                return None;
            }
            partition = Some(p);
        }
        leaders.get(partition? as usize).copied().flatten()
    }

    fn leader_of_partition(&self, partition: u32) -> Option<usize> {
        let leaders = self.leaders.by_partition.lock().ok()?;
        leaders.get(partition as usize).copied().flatten()
    }

    /// A POST with `body`, or a GET without one, to node `node`.
    async fn send<R: DeserializeOwned>(
        &self,
        node: usize,
        url: &str,
        body: Option<&[u8]>,
    ) -> Result<R, CallError> {
        let http = &self.clients[node];
        let mut request = match body {
            Some(b) => http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(b.to_vec()),
            None => http.get(url),
        };
        if let Some((credentials, parties)) = &self.credentials {
            let party = parties.get(node).copied().unwrap_or_default();
            request = request.header(
                reqwest::header::AUTHORIZATION,
                credentials.authorization(party).await?,
            );
        }
        send(url, request).await
    }

    fn forget_leaders(&self) {
        if let Ok(mut leaders) = self.leaders.by_partition.lock() {
            leaders.clear();
        }
    }

    /// Reads the leaders from the current node's status page, in the background and at most
    /// every `REFRESH_EVERY`.
    fn refresh_leaders(&self) {
        if let Ok(mut last) = self.leaders.last_refresh.lock() {
            if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        if self.leaders.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            let learned = client.read_leaders().await;
            if let (Some(learned), Ok(mut leaders)) = (learned, client.leaders.by_partition.lock())
            {
                *leaders = learned;
            }
            client.leaders.refreshing.store(false, Ordering::Release);
        });
    }

    async fn read_leaders(&self) -> Option<Vec<Option<usize>>> {
        let url = format!("{}{}", self.base(), mcloud_core::paths::STATUS_PATH);
        let i = self.current.load(Ordering::Relaxed) % self.nodes.len().max(1);
        let status: serde_json::Value = self
            .clients
            .get(i)?
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let partitions = status["partitions"].as_array()?;
        Some(
            partitions
                .iter()
                .map(|p| {
                    let url = p["leader_url"].as_str()?.trim_end_matches('/');
                    // Only a node whose CA this client pins can be asked directly.
                    self.nodes.iter().position(|n| n == url)
                })
                .collect(),
        )
    }

    /// Sends a request about `ids` to their partition's leader when it is known, else through
    /// the nodes in turn.
    async fn call_ids<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        request: &Q,
        ids: impl Iterator<Item = BatchId>,
    ) -> Result<R, CatalogError> {
        let body = postcard::to_stdvec(request).map_err(CallError::from)?;
        let leader = self.leader_for(ids);
        self.call_leader(path, Some(&body), leader).await
    }

    /// Sends a request to `leader` when it is known, else through the nodes in turn.
    async fn call_leader<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&[u8]>,
        leader: Option<usize>,
    ) -> Result<R, CatalogError> {
        match leader {
            Some(i) => {
                let url = format!("{}{path}", self.nodes[i]);
                match self.send(i, &url, body).await {
                    Ok(r) => return Ok(r),
                    Err(e) if e.is_retryable() => {
                        tracing::debug!("catalog leader {url}: {e}; asking the other nodes");
                        self.forget_leaders();
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => self.refresh_leaders(),
        }
        self.call(path, body).await
    }

    /// Tries each node once, starting with the current one; a retryable failure moves on.
    /// Every request is idempotent, so sending it again to another node is safe.
    async fn call<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<R, CatalogError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.nodes.len() {
            let i = (start + k) % self.nodes.len();
            let url = format!("{}{path}", self.nodes[i]);
            match self.send(i, &url, body).await {
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

impl CatalogClient {
    /// Stores cloud `party`'s bucket → worker map unless the catalog holds one with an equal
    /// or greater epoch; then the error is `StaleEpoch` with the stored epoch.
    /// Reports that cloud `party` holds no unsettled batch received before `before_ms`.
    pub async fn report_settled(&self, party: u16, before_ms: u64) -> Result<(), CatalogError> {
        let body = postcard::to_stdvec(&before_ms).map_err(CallError::from)?;
        let leader = self.leader_of_partition(ASSIGNMENT_PARTITION);
        let path = crate::raft::settled_path(party);
        self.call_leader::<()>(&path, Some(&body), leader).await
    }

    pub async fn put_assignment(
        &self,
        party: u16,
        assignment: &Assignment,
    ) -> Result<(), CatalogError> {
        assignment.check()?;
        let body = postcard::to_stdvec(assignment).map_err(CallError::from)?;
        let leader = self.leader_of_partition(ASSIGNMENT_PARTITION);
        let path = assignment_path(party);
        match self.call_leader::<()>(&path, Some(&body), leader).await {
            Err(CatalogError::Call(CallError::Rejected { status: 409, .. })) => {
                // The answer names the stored epoch only in words; reading it is exact.
                let stored = self.get_assignment(party).await?.map_or(0, |a| a.epoch);
                Err(CatalogError::StaleEpoch {
                    party,
                    epoch: assignment.epoch,
                    stored,
                })
            }
            Err(CatalogError::Call(CallError::Rejected {
                status: 400,
                message,
                ..
            })) => Err(CatalogError::BadAssignment(message)),
            other => other,
        }
    }

    /// Revokes app tokens by their revocation ids (an administrator's call).
    pub async fn revoke(&self, ids: Vec<String>) -> Result<(), CatalogError> {
        crate::raft::types::check_revocations(&ids)?;
        let body = postcard::to_stdvec(&ids).map_err(CallError::from)?;
        let leader = self.leader_of_partition(ASSIGNMENT_PARTITION);
        self.call_leader(mcloud_core::paths::REVOCATIONS_PATH, Some(&body), leader)
            .await
    }

    /// Forgets cloud `party`, which left the deployment for good (an administrator's call):
    /// decided flags stop waiting for its settled reports.
    pub async fn forget_cloud(&self, party: u16) -> Result<(), CatalogError> {
        let leader = self.leader_of_partition(ASSIGNMENT_PARTITION);
        self.call_leader(&crate::raft::forget_cloud_path(party), Some(&[]), leader)
            .await
    }

    /// Revokes sensors by id (an administrator's call).
    pub async fn revoke_sensors(&self, ids: Vec<u32>) -> Result<(), CatalogError> {
        crate::raft::types::check_sensor_revocations(&ids)?;
        let body = postcard::to_stdvec(&ids).map_err(CallError::from)?;
        let leader = self.leader_of_partition(ASSIGNMENT_PARTITION);
        self.call_leader(
            mcloud_core::paths::SENSOR_REVOCATIONS_PATH,
            Some(&body),
            leader,
        )
        .await
    }

    /// The revoked sensors, as the node asked has applied them.
    pub async fn revoked_sensors(&self) -> Result<Vec<u32>, CatalogError> {
        self.call(mcloud_core::paths::SENSOR_REVOCATIONS_PATH, None)
            .await
    }

    /// The revoked app tokens' ids, as the node asked has applied them.
    pub async fn revocations(&self) -> Result<Vec<String>, CatalogError> {
        self.call(mcloud_core::paths::REVOCATIONS_PATH, None).await
    }

    /// Every owner's access rules, as the node asked has applied them.
    pub async fn access_rules(&self) -> Result<Vec<crate::raft::AccessRules>, CatalogError> {
        self.call(mcloud_core::paths::ACCESS_PATH, None).await
    }

    /// Cloud `party`'s stored bucket → worker map, read linearizably.
    pub async fn get_assignment(&self, party: u16) -> Result<Option<Assignment>, CatalogError> {
        let leader = self.leader_of_partition(ASSIGNMENT_PARTITION);
        self.call_leader(&assignment_path(party), None, leader)
            .await
    }
}

impl FlagTable for CatalogClient {
    async fn create(&self, flags: Vec<CreateFlag>) -> Result<Vec<Flag>, CatalogError> {
        let ids: Vec<BatchId> = flags.iter().map(|f| f.id).collect();
        let r: FlagsResponse = self
            .call_ids(CREATE_PATH, &CreateFlagsRequest { flags }, ids.into_iter())
            .await?;
        Ok(r.flags)
    }

    async fn set(&self, ids: Vec<BatchId>) -> Result<Vec<Flag>, CatalogError> {
        let request = FlagIds { ids };
        let r: FlagsResponse = self
            .call_ids(SET_PATH, &request, request.ids.iter().copied())
            .await?;
        Ok(r.flags)
    }

    async fn verdict(&self, ids: Vec<BatchId>, valid: bool) -> Result<Vec<Flag>, CatalogError> {
        let request = VerdictRequest { ids, valid };
        let r: FlagsResponse = self
            .call_ids(VERDICT_PATH, &request, request.ids.iter().copied())
            .await?;
        Ok(r.flags)
    }

    async fn get(&self, ids: Vec<BatchId>) -> Result<Vec<Option<Flag>>, CatalogError> {
        let request = FlagIds { ids };
        let r: GetFlagsResponse = self
            .call_ids(GET_PATH, &request, request.ids.iter().copied())
            .await?;
        Ok(r.flags)
    }
}
