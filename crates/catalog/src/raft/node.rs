//! A catalog node: one Raft instance per partition of the flags keyspace, the batching
//! proposers in front of them, and the forwarding that lets a client talk to any node.

use super::log_store::LogStore;
use super::network::{Clients, Faults, Network};
use super::placement::{partition_of, voters_for};
use super::proposer::{
    run_proposer, run_reader, AssignmentAnswer, LocalError, OpAnswer, Proposal, ReadAnswer,
    ReadRequest, Timeouts,
};
use super::state_machine::{read, Shared, StateMachine};
use super::types::{Assignment, NodeId, Op, Peer, Raft, WireError};
use crate::rules::{check_request, check_ttls, FlagCounts};
use crate::{now_ms, CatalogError, FlagTable};
use mcloud_core::http::post;
use mcloud_core::wire::{CreateFlag, Flag, MAX_FLAGS_PER_REQUEST};
use mcloud_core::BatchId;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a catalog node runs.
#[derive(Clone, Debug)]
pub struct CatalogConfig {
    pub node_id: NodeId,
    /// Where the node keeps each partition's log and state machine.
    pub dir: PathBuf,
    /// Number of partitions (Raft groups) of the flags keyspace; every node of a catalog must
    /// agree on it.
    pub partitions: u32,
    /// The catalog's initial voters, this node included: each partition's voters are chosen
    /// among them by rendezvous hashing, and the first of them creates the group.
    pub peers: BTreeMap<NodeId, Peer>,
    /// Voters per partition (at most the number of peers).
    pub replicas: usize,
    /// Never create groups: the node waits to be added by an administrator.
    pub join: bool,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// Log entries between snapshots (after which the log is compacted).
    pub snapshot_every: u64,
    /// How long a write or read may wait for a quorum before it fails with 503.
    pub commit_timeout: Duration,
    /// The voter's certificate, presented to its peers.
    pub identity: mcloud_core::tls::NodeIdentity,
    /// How long a TRUE or ERROR flag is kept past both its deadline and the time every cloud
    /// confirmed it settled (so a sensor still learns its batch's fate, and clocks may differ).
    pub keep_decided_ms: u64,
}

/// Default of [`CatalogConfig::keep_decided_ms`]: an hour.
pub const KEEP_DECIDED_MS: u64 = 3_600_000;
/// Most flags in one log entry. openraft gives every AppendEntries one heartbeat interval
/// (100 ms) and retries a timed-out one unchanged, and one entry cannot be split across
/// requests: an entry of a whole 100,000-flag request (about 2.5 MB) that a slow follower
/// cannot take in 100 ms would stall it for good. 4096 flags are about 100 KB.
const ITEMS_PER_ENTRY: usize = 4096;
/// How far ahead of this node's clock a cloud's settled time may lie.
const SETTLED_AHEAD_MS: u64 = 600_000;

impl CatalogConfig {
    pub fn new(
        node_id: NodeId,
        dir: PathBuf,
        peers: BTreeMap<NodeId, Peer>,
        identity: mcloud_core::tls::NodeIdentity,
    ) -> CatalogConfig {
        CatalogConfig {
            identity,
            node_id,
            dir,
            partitions: 1,
            replicas: 3,
            peers,
            join: false,
            heartbeat_ms: 100,
            election_timeout_ms: (500, 1000),
            snapshot_every: 5000,
            commit_timeout: Duration::from_secs(3),
            keep_decided_ms: KEEP_DECIDED_MS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("catalog node {0} is not among its own peers")]
    NotAPeer(NodeId),
    #[error("catalog partitions must be at least 1")]
    NoPartitions,
    #[error("catalog storage: {0}")]
    Storage(String),
    #[error("catalog raft config: {0}")]
    Config(String),
}

struct Partition {
    raft: Raft,
    /// Tells the log's failing writes to stop retrying, so a shutdown is not held up.
    log_closing: Arc<std::sync::atomic::AtomicBool>,
    sm: Shared,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<ReadRequest>,
}

pub struct CatalogNode {
    id: NodeId,
    partitions: Vec<Partition>,
    clients: Clients,
    faults: Faults,
    peers: BTreeMap<NodeId, Peer>,
    incoming_snapshots: super::snapshot_transfer::Assembler,
    keep_decided_ms: u64,
    /// How long each Raft write took to commit, for the metrics.
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// A forwarded operation, run by the receiving node itself (never forwarded again).
#[derive(Serialize, Deserialize)]
pub enum Forwarded {
    Op(Op),
    Read(Vec<BatchId>),
    ReadAssignment(u16),
    ReadStore(mcloud_store::master::StoreRead),
}

#[derive(Serialize, Deserialize)]
pub enum ForwardedAnswer {
    Flags(Vec<Flag>),
    Read(Vec<Option<Flag>>),
    Assignment(Option<Assignment>),
    Store(mcloud_store::master::StoreAnswer),
}

/// The partition that keeps every cloud's bucket → worker map: one fixed group, so a map's
/// epochs are ordered by one log whatever the number of partitions.
pub const ASSIGNMENT_PARTITION: u32 = 0;

/// A membership change, as the admin API takes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipChange {
    AddLearner { id: NodeId, peer: Peer },
    AddVoter { id: NodeId, peer: Peer },
    Remove { id: NodeId },
}

pub fn forward_path(partition: u32) -> String {
    format!("/v1/catalog/{partition}/local")
}

pub fn membership_path(partition: u32) -> String {
    format!("/v1/catalog/{partition}/membership")
}

/// One partition's view, for status pages and tests.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    pub state: String,
    pub leader: Option<NodeId>,
    /// Where the leader serves, so clients can send it this partition's requests directly.
    pub leader_url: Option<String>,
    pub term: u64,
    pub last_applied: Option<u64>,
    /// Last log index covered by this node's snapshot.
    pub snapshot: Option<u64>,
    /// Last log index removed by compaction.
    pub purged: Option<u64>,
    /// Bytes of the last snapshot this node received from a leader.
    pub received_snapshot_bytes: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub flags: FlagCounts,
}

impl CatalogNode {
    pub async fn start(config: CatalogConfig) -> Result<Arc<CatalogNode>, StartError> {
        if config.partitions == 0 {
            return Err(StartError::NoPartitions);
        }
        if !config.peers.contains_key(&config.node_id) {
            return Err(StartError::NotAPeer(config.node_id));
        }
        let raft_config = openraft::Config {
            cluster_name: "mcloud-catalog".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every.min(1000),
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let raft_config = Arc::new(raft_config);
        let clients = Clients::new(config.identity.clone());
        let faults = Faults::default();
        let timeouts = Timeouts {
            commit: config.commit_timeout,
        };
        let commit_seconds = mcloud_core::metrics::seconds_histogram();
        let mut partitions = Vec::new();
        for p in 0..config.partitions {
            let dir = config.dir.join(format!("p{p}"));
            let log = LogStore::open(&dir).map_err(|e| StartError::Storage(e.to_string()))?;
            let log_closing = log.closing();
            let sm = StateMachine::open(&dir, log_closing.clone())
                .map_err(|e| StartError::Storage(e.to_string()))?;
            let shared = sm.shared();
            let network = Network {
                partition: p,
                from: config.node_id,
                clients: clients.clone(),
                faults: faults.clone(),
            };
            let raft = Raft::new(config.node_id, raft_config.clone(), network, log, sm)
                .await
                .map_err(|e| StartError::Storage(e.to_string()))?;
            let (ptx, prx) = mpsc::channel(4096);
            let (rtx, rrx) = mpsc::channel(4096);
            tokio::spawn(run_proposer(
                p,
                raft.clone(),
                timeouts.clone(),
                commit_seconds.clone(),
                prx,
            ));
            tokio::spawn(run_reader(
                p,
                raft.clone(),
                shared.clone(),
                ptx.clone(),
                timeouts.clone(),
                rrx,
            ));
            let voters = voters_for(p, config.peers.keys().copied(), config.replicas);
            if !config.join && voters.first() == Some(&config.node_id) {
                let initialized = raft
                    .is_initialized()
                    .await
                    .map_err(|e| StartError::Storage(e.to_string()))?;
                if !initialized {
                    let members: BTreeMap<NodeId, Peer> = voters
                        .iter()
                        .filter_map(|id| config.peers.get(id).map(|p| (*id, p.clone())))
                        .collect();
                    if let Err(e) = raft.initialize(members).await {
                        tracing::warn!(partition = p, "initializing the catalog group: {e}");
                    }
                }
            }
            partitions.push(Partition {
                raft,
                log_closing,
                sm: shared,
                proposals: ptx,
                reads: rtx,
            });
        }
        let node = Arc::new(CatalogNode {
            id: config.node_id,
            partitions,
            clients,
            faults,
            peers: config.peers,
            incoming_snapshots: Default::default(),
            keep_decided_ms: config.keep_decided_ms,
            commit_seconds,
        });
        spawn_sweeper(Arc::downgrade(&node));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn raft(&self, partition: u32) -> Option<&Raft> {
        self.partitions.get(partition as usize).map(|p| &p.raft)
    }

    /// Stops every Raft instance; the node answers 503 afterwards.
    pub async fn shutdown(&self) {
        for p in &self.partitions {
            p.log_closing
                .store(true, std::sync::atomic::Ordering::Release);
            if let Err(e) = p.raft.shutdown().await {
                tracing::warn!("stopping a catalog partition: {e}");
            }
        }
    }

    /// Snapshot chunks from leaders, assembled until a snapshot is whole.
    pub fn incoming_snapshots(&self) -> &super::snapshot_transfer::Assembler {
        &self.incoming_snapshots
    }

    /// Every Raft write's time to commit, in seconds (shared with the proposers).
    pub fn commit_histogram(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commit_seconds.clone()
    }

    pub fn status(&self) -> Vec<PartitionStatus> {
        let now = now_ms();
        self.partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let m = p.raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                PartitionStatus {
                    partition: i as u32,
                    state: format!("{:?}", m.state),
                    leader: m.current_leader,
                    leader_url: m.current_leader.and_then(|l| {
                        membership
                            .get_node(&l)
                            .or_else(|| self.peers.get(&l))
                            .map(|p| p.url.clone())
                    }),
                    term: m.current_term,
                    last_applied: m.last_applied.map(|l| l.index),
                    snapshot: m.snapshot.map(|l| l.index),
                    purged: m.purged.map(|l| l.index),
                    received_snapshot_bytes: self.incoming_snapshots.last_received(i as u32),
                    voters: membership.voter_ids().collect(),
                    learners: membership.learner_ids().collect(),
                    flags: read(&p.sm).table.counts(now),
                }
            })
            .collect()
    }

    fn leader_of(&self, partition: u32) -> Option<(NodeId, Peer)> {
        let p = self.partitions.get(partition as usize)?;
        let m = p.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let peer = m
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .or_else(|| self.peers.get(&leader).cloned())?;
        Some((leader, peer))
    }

    fn unavailable(partition: u32, what: &str) -> CatalogError {
        CatalogError::Unavailable(format!(
            "catalog partition {partition} has no leader / no quorum: {what}"
        ))
    }

    fn partition(&self, partition: u32) -> Result<&Partition, LocalError> {
        self.partitions.get(partition as usize).ok_or_else(|| {
            LocalError::Failed(WireError::Unavailable(format!(
                "no catalog partition {partition} on node {}",
                self.id
            )))
        })
    }

    /// Queues `message` for one of a partition's tasks and waits for the answer on `rx`.
    async fn ask<M, T>(
        partition: u32,
        queue: &mpsc::Sender<M>,
        message: M,
        rx: oneshot::Receiver<Result<T, LocalError>>,
    ) -> Result<T, LocalError> {
        let gone = || {
            LocalError::Failed(WireError::Unavailable(format!(
                "catalog partition {partition} is shutting down"
            )))
        };
        if queue.send(message).await.is_err() {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    async fn local_op(&self, partition: u32, op: Option<Op>) -> OpAnswer {
        let p = self.partition(partition)?;
        let (reply, rx) = oneshot::channel();
        Self::ask(partition, &p.proposals, Proposal { op, reply }, rx).await
    }

    async fn local_read(&self, partition: u32, ids: Vec<BatchId>) -> ReadAnswer {
        let p = self.partition(partition)?;
        let (reply, rx) = oneshot::channel();
        Self::ask(partition, &p.reads, ReadRequest::Flags { ids, reply }, rx).await
    }

    async fn local_assignment(&self, partition: u32, party: u16) -> AssignmentAnswer {
        let p = self.partition(partition)?;
        let (reply, rx) = oneshot::channel();
        Self::ask(
            partition,
            &p.reads,
            ReadRequest::Assignment { party, reply },
            rx,
        )
        .await
    }

    async fn run_here(
        &self,
        partition: u32,
        request: Forwarded,
    ) -> Result<ForwardedAnswer, LocalError> {
        match request {
            Forwarded::Op(op) => self
                .local_op(partition, Some(op))
                .await
                .map(ForwardedAnswer::Flags),
            Forwarded::Read(ids) => self
                .local_read(partition, ids)
                .await
                .map(ForwardedAnswer::Read),
            Forwarded::ReadAssignment(party) => self
                .local_assignment(partition, party)
                .await
                .map(ForwardedAnswer::Assignment),
            Forwarded::ReadStore(read) => {
                let p = self.partition(partition)?;
                let (reply, rx) = oneshot::channel();
                Self::ask(partition, &p.reads, ReadRequest::Store { read, reply }, rx)
                    .await
                    .map(ForwardedAnswer::Store)
            }
        }
    }

    /// Applies a storage or mailbox operation of the masters, through partition 0's leader.
    pub async fn store_write(&self, op: mcloud_store::master::StoreOp) -> Result<(), CatalogError> {
        self.write_register(Op::Store(op)).await
    }

    /// Reads the masters' state on partition 0's leader, after everything it committed.
    pub async fn store_read(
        &self,
        read: mcloud_store::master::StoreRead,
    ) -> Result<mcloud_store::master::StoreAnswer, CatalogError> {
        match self
            .on_leader(ASSIGNMENT_PARTITION, Forwarded::ReadStore(read))
            .await?
        {
            ForwardedAnswer::Store(a) => Ok(a),
            _ => Err(CatalogError::Storage(
                "catalog answered a storage read with something else".into(),
            )),
        }
    }

    /// Whether this node leads partition 0 (the masters' metadata) now.
    pub fn leads_masters(&self) -> bool {
        self.leader_of(ASSIGNMENT_PARTITION)
            .is_some_and(|(id, _)| id == self.id)
    }

    /// Stores cloud `party`'s bucket → worker map unless the catalog holds one with an equal
    /// or greater epoch.
    pub async fn put_assignment(
        &self,
        party: u16,
        assignment: Assignment,
    ) -> Result<(), CatalogError> {
        assignment.check()?;
        // Epochs only grow, so a map stale against what this node has applied is stale at
        // the leader too: it is refused here rather than as a log entry.
        let stored = self.read_registers(|r| r.assignments.get(&party).map(|a| a.epoch))?;
        if let Some(stored) = stored.filter(|&s| assignment.epoch <= s) {
            return Err(CatalogError::StaleEpoch {
                party,
                epoch: assignment.epoch,
                stored,
            });
        }
        self.write_register(Op::Assign { party, assignment }).await
    }

    /// Appends one register operation to partition 0's log, through its leader.
    async fn write_register(&self, op: Op) -> Result<(), CatalogError> {
        match self
            .on_leader(ASSIGNMENT_PARTITION, Forwarded::Op(op))
            .await?
        {
            ForwardedAnswer::Flags(_) => Ok(()),
            _ => Err(CatalogError::Storage(
                "catalog answered a register write with a read".into(),
            )),
        }
    }

    /// Reads partition 0's registers as this node has applied them.
    fn read_registers<T>(
        &self,
        f: impl FnOnce(&super::state_machine::Registers) -> T,
    ) -> Result<T, CatalogError> {
        let p = self
            .partitions
            .get(ASSIGNMENT_PARTITION as usize)
            .ok_or_else(|| CatalogError::Unavailable("no catalog partition 0".into()))?;
        Ok(f(&read(&p.sm).registers))
    }

    /// Cloud `party` confirms it holds no unsettled batch received before `before_ms`; the
    /// catalog then may forget decided flags older than that (see [`CatalogConfig::keep_decided_ms`]).
    /// A time no later than the stored one changes nothing and writes no log entry.
    pub async fn report_settled(&self, party: u16, before_ms: u64) -> Result<(), CatalogError> {
        let ahead = now_ms().saturating_add(SETTLED_AHEAD_MS);
        if before_ms > ahead {
            return Err(CatalogError::BadSettled(format!(
                "{before_ms} ms is more than {SETTLED_AHEAD_MS} ms ahead of the catalog's clock"
            )));
        }
        let stored = self.read_registers(|r| r.settled.get(&party).copied())?;
        if stored.is_some_and(|s| s >= before_ms) {
            return Ok(());
        }
        self.write_register(Op::Settled { party, before_ms }).await
    }

    /// Revokes app tokens: every cloud refuses a token carrying one of `ids` once it has read
    /// them (clouds poll the catalog).
    pub async fn revoke(&self, ids: Vec<String>) -> Result<(), CatalogError> {
        super::types::check_revocations(&ids)?;
        self.write_register(Op::Revoke(ids)).await
    }

    /// The revoked app tokens' ids as this node has applied them. Not linearizable: the set
    /// only grows, and a cloud that reads it a moment late refuses the token a moment later.
    pub fn revocations(&self) -> Result<Vec<String>, CatalogError> {
        self.read_registers(|r| r.revoked.iter().cloned().collect())
    }

    /// Forgets cloud `party` (it left the deployment for good): its bucket map and settled
    /// time, so decided flags no longer wait for it.
    pub async fn forget_cloud(&self, party: u16) -> Result<(), CatalogError> {
        self.write_register(Op::ForgetCloud { party }).await
    }

    /// Revokes sensors: every node refuses their sessions once it has read the list.
    pub async fn revoke_sensors(&self, ids: Vec<u32>) -> Result<(), CatalogError> {
        super::types::check_sensor_revocations(&ids)?;
        self.write_register(Op::RevokeSensors(ids)).await
    }

    /// The revoked sensors as this node has applied them.
    pub fn revoked_sensors(&self) -> Result<Vec<u32>, CatalogError> {
        self.read_registers(|r| r.revoked_sensors.iter().copied().collect())
    }

    /// Replaces a house owner's access rules.
    pub async fn set_access(&self, rules: super::types::AccessRules) -> Result<(), CatalogError> {
        rules.check().map_err(CatalogError::BadAccess)?;
        self.write_register(Op::SetAccess(rules)).await
    }

    /// Every owner's access rules as this node has applied them (not linearizable: clouds
    /// poll them, as they poll revocations).
    pub fn access_rules(&self) -> Result<Vec<super::types::AccessRules>, CatalogError> {
        self.read_registers(|r| r.access.values().cloned().collect())
    }

    /// Cloud `party`'s stored bucket → worker map, read linearizably.
    pub async fn get_assignment(&self, party: u16) -> Result<Option<Assignment>, CatalogError> {
        match self
            .on_leader(ASSIGNMENT_PARTITION, Forwarded::ReadAssignment(party))
            .await?
        {
            ForwardedAnswer::Assignment(a) => Ok(a),
            _ => Err(CatalogError::Storage(
                "catalog answered a bucket map read with something else".into(),
            )),
        }
    }

    /// Runs a forwarded request here, without forwarding it again.
    pub async fn run_local(
        &self,
        partition: u32,
        request: Forwarded,
    ) -> Result<ForwardedAnswer, WireError> {
        let answer = self.run_here(partition, request).await;
        answer.map_err(|e| match e {
            LocalError::Failed(w) => w,
            LocalError::NotLeader(_) => WireError::Unavailable(format!(
                "catalog partition {partition}: node {} is no longer the leader; retry",
                self.id
            )),
        })
    }

    /// Runs `request` on the partition's leader: here if this node leads, else forwarded.
    async fn on_leader(
        &self,
        partition: u32,
        request: Forwarded,
    ) -> Result<ForwardedAnswer, CatalogError> {
        let leader = self.leader_of(partition);
        let target = match leader {
            Some((id, _)) if id == self.id => {
                match self.run_here(partition, request).await {
                    Ok(a) => return Ok(a),
                    Err(LocalError::Failed(w)) => return Err(w.into()),
                    Err(LocalError::NotLeader(Some((id, peer)))) if id != self.id => {
                        // Leadership moved while the request waited; the request was not
                        // committed, so it goes to the new leader instead.
                        return Err(CatalogError::Unavailable(format!(
                            "catalog partition {partition}: leadership moved to node {id} ({}); retry",
                            peer.url
                        )));
                    }
                    Err(LocalError::NotLeader(_)) => {
                        return Err(Self::unavailable(partition, "leader election in progress"))
                    }
                }
            }
            Some((_, peer)) => peer,
            None => return Err(Self::unavailable(partition, "no leader elected")),
        };
        let http = self
            .clients
            .for_peer(&target)
            .map_err(|e| CatalogError::Storage(e.to_string()))?;
        let url = format!(
            "{}{}",
            target.url.trim_end_matches('/'),
            forward_path(partition)
        );
        let answer: Result<ForwardedAnswer, WireError> =
            post(&http, &url, &request).await.map_err(|e| {
                Self::unavailable(
                    partition,
                    &format!("leader {} unreachable: {e}", target.url),
                )
            })?;
        answer.map_err(CatalogError::from)
    }

    /// Splits ids by partition, keeping each id's position.
    fn split<T>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> BatchId,
    ) -> Vec<(u32, Vec<usize>, Vec<T>)> {
        let n = self.partitions();
        let mut groups: BTreeMap<u32, (Vec<usize>, Vec<T>)> = BTreeMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let g = groups.entry(partition_of(id(&item), n)).or_default();
            g.0.push(i);
            g.1.push(item);
        }
        groups
            .into_iter()
            .map(|(p, (pos, items))| (p, pos, items))
            .collect()
    }

    /// Cuts a write into log entries of at most [`ITEMS_PER_ENTRY`] flags each, per partition.
    async fn write_split<T: Clone>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> BatchId,
        make: impl Fn(Vec<T>) -> Op,
    ) -> Result<Vec<Flag>, CatalogError> {
        let total = items.len();
        let groups = self
            .split(items, id)
            .into_iter()
            .flat_map(|(p, pos, items)| {
                let mut items = items.into_iter();
                pos.chunks(ITEMS_PER_ENTRY)
                    .map(|pos| (p, pos.to_vec(), items.by_ref().take(pos.len()).collect()))
                    .collect::<Vec<(u32, Vec<usize>, Vec<T>)>>()
            });
        let calls = groups.map(|(p, pos, items)| {
            let op = make(items);
            async move { (pos, self.on_leader(p, Forwarded::Op(op)).await) }
        });
        let mut out = vec![None; total];
        for (pos, answer) in futures::future::join_all(calls).await {
            match answer? {
                ForwardedAnswer::Flags(flags) => {
                    for (i, f) in pos.into_iter().zip(flags) {
                        out[i] = Some(f);
                    }
                }
                ForwardedAnswer::Read(_)
                | ForwardedAnswer::Assignment(_)
                | ForwardedAnswer::Store(_) => {
                    return Err(CatalogError::Storage(
                        "catalog answered a read to a write".into(),
                    ))
                }
            }
        }
        out.into_iter()
            .map(|f| {
                f.ok_or_else(|| CatalogError::Storage("catalog answered too few flags".into()))
            })
            .collect()
    }

    /// Applies a membership change to one partition, on its leader.
    pub async fn change_membership(
        &self,
        partition: u32,
        change: MembershipChange,
    ) -> Result<(), CatalogError> {
        let Some(p) = self.partitions.get(partition as usize) else {
            return Err(CatalogError::Storage(format!(
                "no catalog partition {partition}"
            )));
        };
        match self.leader_of(partition) {
            Some((id, _)) if id == self.id => {}
            Some((_, peer)) => {
                let http = self
                    .clients
                    .for_peer(&peer)
                    .map_err(|e| CatalogError::Storage(e.to_string()))?;
                let url = format!(
                    "{}{}",
                    peer.url.trim_end_matches('/'),
                    membership_path(partition)
                );
                let answer: Result<(), WireError> = post(&http, &url, &change).await?;
                return answer.map_err(CatalogError::from);
            }
            None => {
                return Err(Self::unavailable(
                    partition,
                    "no leader to change membership",
                ))
            }
        }
        let fail =
            |e: String| CatalogError::Unavailable(format!("catalog partition {partition}: {e}"));
        let membership = p
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        match change {
            MembershipChange::AddLearner { id, peer } | MembershipChange::AddVoter { id, peer }
                if membership.voter_ids().any(|v| v == id) =>
            {
                let _ = peer;
                Err(CatalogError::NoChange(format!(
                    "node {id} is already a voter of partition {partition}"
                )))
            }
            MembershipChange::AddLearner { id, peer } => {
                self.probe(id, &peer).await?;
                p.raft
                    .add_learner(id, peer, true)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                Ok(())
            }
            MembershipChange::AddVoter { id, peer } => {
                self.probe(id, &peer).await?;
                // As a learner first, so the new voter has caught up before it counts
                // towards the quorum.
                p.raft
                    .add_learner(id, peer, true)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                p.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                Ok(())
            }
            MembershipChange::Remove { id } => {
                let is_voter = membership.voter_ids().any(|v| v == id);
                if !is_voter && !membership.learner_ids().any(|l| l == id) {
                    return Err(CatalogError::NoChange(format!(
                        "node {id} is not a member of partition {partition}"
                    )));
                }
                if is_voter && membership.voter_ids().count() == 1 {
                    return Err(CatalogError::Membership(format!(
                        "node {id} is the last voter of partition {partition}; add another first"
                    )));
                }
                if is_voter {
                    p.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                }
                p.raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                Ok(())
            }
        }
    }

    /// A node about to join must answer as catalog node `id` behind the CA it was given, or
    /// the group would wait on a peer it can never reach.
    async fn probe(&self, id: NodeId, peer: &Peer) -> Result<(), CatalogError> {
        let bad =
            |why: String| CatalogError::Membership(format!("new node {id} at {}: {why}", peer.url));
        let http = self
            .clients
            .for_peer(peer)
            .map_err(|e| bad(format!("its CA certificate is unusable: {e}")))?;
        let url = format!("{}/v1/status", peer.url.trim_end_matches('/'));
        let status: serde_json::Value = async {
            http.get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e| bad(format!("unreachable with the CA given: {e}")))?;
        match status["node_id"].as_u64() {
            Some(found) if found == id => Ok(()),
            found => Err(bad(format!("it says it is node {found:?}"))),
        }
    }

    pub fn is_leader(&self, partition: u32) -> bool {
        self.partitions
            .get(partition as usize)
            .is_some_and(|p| p.raft.metrics().borrow().state == ServerState::Leader)
    }
}

/// The leader of each partition proposes a sweep entry when some FALSE flag passed its
/// deadline, so ERROR is decided through the log.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

fn spawn_sweeper(node: std::sync::Weak<CatalogNode>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut pruned = std::time::Instant::now();
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else { break };
            let now = now_ms();
            // Decided flags every cloud is done with are forgotten, at most once a second.
            // Only a leader prunes, and it never waits for the state machine's lock: applying
            // a large entry holds it, and a blocked sweeper would hold a runtime thread too.
            let leads = (0..node.partitions.len()).any(|i| node.is_leader(i as u32));
            let prune_before = (leads && pruned.elapsed() >= PRUNE_EVERY)
                .then(|| {
                    let p = node.partitions.get(ASSIGNMENT_PARTITION as usize)?;
                    let state = p.sm.try_read().ok()?;
                    state.registers.prune_before(now, node.keep_decided_ms)
                })
                .flatten();
            if prune_before.is_some() {
                pruned = std::time::Instant::now();
            }
            for (i, p) in node.partitions.iter().enumerate() {
                let leader = node.is_leader(i as u32);
                if let Some(before_ms) = prune_before
                    .filter(|&b| leader && p.sm.try_read().is_ok_and(|st| st.table.has_prunable(b)))
                {
                    let (tx, _rx) = oneshot::channel();
                    let _ = p.proposals.try_send(Proposal {
                        op: Some(Op::Prune { before_ms }),
                        reply: tx,
                    });
                }
                if leader && read(&p.sm).table.has_expired(now) {
                    let (tx, _rx) = oneshot::channel();
                    // A full queue means entries are being proposed anyway, and each of them
                    // sweeps too.
                    let _ = p.proposals.try_send(Proposal {
                        op: None,
                        reply: tx,
                    });
                }
            }
        }
    });
}

impl FlagTable for Arc<CatalogNode> {
    async fn create(&self, flags: Vec<CreateFlag>) -> Result<Vec<Flag>, CatalogError> {
        check_request(flags.iter().map(|r| r.id), flags.len())?;
        check_ttls(&flags)?;
        self.write_split(flags, |r| r.id, Op::Create).await
    }

    async fn set(&self, ids: Vec<BatchId>) -> Result<Vec<Flag>, CatalogError> {
        check_request(ids.iter().copied(), ids.len())?;
        self.write_split(ids, |id| *id, Op::Set).await
    }

    async fn verdict(&self, ids: Vec<BatchId>, valid: bool) -> Result<Vec<Flag>, CatalogError> {
        check_request(ids.iter().copied(), ids.len())?;
        self.write_split(ids, |id| *id, |ids| Op::Verdict { ids, valid })
            .await
    }

    async fn get(&self, ids: Vec<BatchId>) -> Result<Vec<Option<Flag>>, CatalogError> {
        if ids.len() > MAX_FLAGS_PER_REQUEST {
            return Err(CatalogError::TooMany(ids.len()));
        }
        let total = ids.len();
        let groups = self.split(ids, |id| *id);
        let calls = groups.into_iter().map(|(p, pos, ids)| async move {
            (pos, self.on_leader(p, Forwarded::Read(ids)).await)
        });
        let mut out = vec![None; total];
        for (pos, answer) in futures::future::join_all(calls).await {
            match answer? {
                ForwardedAnswer::Read(flags) => {
                    for (i, f) in pos.into_iter().zip(flags) {
                        out[i] = f;
                    }
                }
                ForwardedAnswer::Flags(_)
                | ForwardedAnswer::Assignment(_)
                | ForwardedAnswer::Store(_) => {
                    return Err(CatalogError::Storage(
                        "catalog answered a write to a read".into(),
                    ))
                }
            }
        }
        Ok(out)
    }
}
