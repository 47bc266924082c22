//! Raft RPCs between catalog nodes: HTTPS POSTs with postcard bodies on each node's own TLS
//! server, every peer reached with a client that trusts exactly that peer's CA. A fault
//! switch drops the traffic towards chosen nodes, for partition tests.

use super::snapshot_transfer::{chunks, SnapshotChunk};
use super::types::{NodeId, Peer, TypeConfig, Vote};
use mcloud_core::http::{post, CallError};
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

/// Most bytes of entries in one AppendEntries request: far under the servers' body limit,
/// because openraft gives each request one heartbeat interval and resends a timed-out one
/// unchanged, so a request must move and be decoded in that time even on a loaded follower.
const APPEND_BODY_BYTES: usize = 512 << 10;

pub fn append_path(partition: u32) -> String {
    format!("/v1/raft/{partition}/append")
}
pub fn vote_path(partition: u32) -> String {
    format!("/v1/raft/{partition}/vote")
}
pub fn snapshot_path(partition: u32) -> String {
    format!("/v1/raft/{partition}/snapshot")
}

/// The follower's answer to a snapshot chunk: `None` while it waits for more, the install's
/// answer after the last chunk.
pub type SnapshotChunkAnswer = Result<Option<SnapshotResponse<NodeId>>, Fatal<NodeId>>;

/// Nodes this node does not talk to, in either direction: requests to them fail as
/// unreachable, and requests from them are refused by the RPC endpoints.
#[derive(Clone, Default)]
pub struct Faults(Arc<RwLock<HashSet<NodeId>>>);

impl Faults {
    pub fn isolate_from(&self, nodes: impl IntoIterator<Item = NodeId>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(nodes);
    }

    pub fn heal(&self) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn blocks(&self, node: NodeId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&node)
    }
}

/// HTTPS clients by pinned CA, shared by the Raft network and request forwarding; each
/// presents this voter's certificate, which is what lets it in at its peers.
#[derive(Clone)]
pub struct Clients {
    identity: mcloud_core::tls::NodeIdentity,
    by_ca: Arc<Mutex<HashMap<String, reqwest::Client>>>,
}

impl Clients {
    pub fn new(identity: mcloud_core::tls::NodeIdentity) -> Clients {
        Clients {
            identity,
            by_ca: Default::default(),
        }
    }

    pub fn for_peer(&self, peer: &Peer) -> Result<reqwest::Client, mcloud_core::tls::TlsError> {
        let mut cache = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&peer.ca_pem) {
            return Ok(c.clone());
        }
        let client = self.identity.client(std::slice::from_ref(&peer.ca_pem))?;
        cache.insert(peer.ca_pem.clone(), client.clone());
        Ok(client)
    }
}

pub struct Network {
    pub partition: u32,
    /// This node, sent along so the receiver can apply its own fault switch.
    pub from: NodeId,
    pub clients: Clients,
    pub faults: Faults,
}

/// A Raft RPC as sent: the sender's id and the request.
#[derive(Serialize, Deserialize)]
pub struct Envelope<T> {
    pub from: NodeId,
    pub body: T,
}

pub struct Connection {
    partition: u32,
    from: NodeId,
    target: NodeId,
    peer: Peer,
    http: Result<reqwest::Client, String>,
    faults: Faults,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Connection {
        Connection {
            partition: self.partition,
            from: self.from,
            target,
            peer: node.clone(),
            http: self.clients.for_peer(node).map_err(|e| e.to_string()),
            faults: self.faults.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl Connection {
    /// Sends one RPC; `Ok(Err(e))` is the peer's own answer `e`.
    async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: String,
        body: Q,
    ) -> Result<R, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        let (http, url) = self.target_url(path)?;
        let request = Envelope {
            from: self.from,
            body,
        };
        // openraft bounds every append and vote by the heartbeat interval itself (and drops
        // this future when it ends), which is why appends are kept small.
        post::<_, R>(&http, &url, &request)
            .await
            .map_err(call_error)
    }

    fn target_url(
        &self,
        path: String,
    ) -> Result<(reqwest::Client, String), RPCError<NodeId, Peer, RaftError<NodeId>>> {
        if self.faults.blocks(self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&Failure(format!(
                "node {} is cut off by the fault switch",
                self.target
            )))));
        }
        let http = self
            .http
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Failure(e))))?;
        Ok((
            http,
            format!("{}{path}", self.peer.url.trim_end_matches('/')),
        ))
    }
}

fn call_error<E: std::error::Error>(e: CallError) -> RPCError<NodeId, Peer, E> {
    if e.is_retryable() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    /// Retries an unreachable peer soon: a restarted voter should catch up without waiting.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(std::time::Duration::from_millis(100)))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        // Entries hold up to thousands of flags each: a follower far behind would be sent
        // more than one request may carry, be refused, and never catch up. openraft sends
        // fewer entries when told the payload is too large.
        let entries = rpc.entries.len() as u64;
        if entries > 1 {
            let bytes = postcard::experimental::serialized_size(&rpc).unwrap_or(usize::MAX) as u64;
            let budget = APPEND_BODY_BYTES as u64;
            if bytes > budget {
                let hint = (entries * budget / bytes.max(1)).clamp(1, entries - 1);
                return Err(PayloadTooLarge::new_entries_hint(hint).into());
            }
        }
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            self.call(append_path(self.partition), rpc).await?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            self.call(vote_path(self.partition), rpc).await?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let meta = snapshot.meta;
        let data = snapshot.snapshot.into_inner();
        let send = async {
            let (http, url) = self
                .target_url(snapshot_path(self.partition))
                .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
            let total = data.len() as u64;
            for (offset, piece) in chunks(&data) {
                let envelope = Envelope {
                    from: self.from,
                    body: SnapshotChunk {
                        vote,
                        meta: meta.clone(),
                        offset,
                        total,
                        data: piece.to_vec(),
                    },
                };
                let answer: SnapshotChunkAnswer =
                    post(&http, &url, &envelope).await.map_err(|e| {
                        if e.is_retryable() {
                            StreamingError::Unreachable(Unreachable::new(&e))
                        } else {
                            StreamingError::Network(NetworkError::new(&e))
                        }
                    })?;
                match answer {
                    Ok(None) => continue,
                    Ok(Some(installed)) => return Ok(installed),
                    Err(e) => {
                        return Err(StreamingError::RemoteError(RemoteError::new(
                            self.target,
                            e,
                        )))
                    }
                }
            }
            Err(StreamingError::Network(NetworkError::new(&Failure(
                "the follower took every chunk of the snapshot but did not install it".into(),
            ))))
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(option.hard_ttl().max(std::time::Duration::from_secs(10)), send) => match r {
                Ok(r) => r,
                Err(_) => Err(StreamingError::Unreachable(Unreachable::new(&Failure(
                    "snapshot not installed in time".into(),
                )))),
            },
        }
    }
}
