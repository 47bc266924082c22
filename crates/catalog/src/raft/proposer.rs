//! Batching: concurrent requests for one partition become one Raft entry, and concurrent
//! GETs share one leadership check, so throughput is not one round trip per request.

use super::state_machine::{read, Shared};
use super::types::{Assignment, Batch, NodeId, Op, Peer, Raft, WireError};
use crate::now_ms;
use mcloud_core::wire::{Flag, FlagState};
use mcloud_core::BatchId;
use mcloud_store::master::{StoreAnswer, StoreRead};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How many flags one entry may carry.
const MAX_ENTRY_FLAGS: usize = 8192;
/// Entries in flight at once per partition: later requests gather while earlier ones commit.
const MAX_IN_FLIGHT: usize = 4;

/// Why this node could not run an operation itself.
#[derive(Debug)]
pub enum LocalError {
    /// Another node leads the partition (if known): forward there.
    NotLeader(Option<(NodeId, Peer)>),
    Failed(WireError),
}

pub type OpAnswer = Result<Vec<Flag>, LocalError>;
pub type ReadAnswer = Result<Vec<Option<Flag>>, LocalError>;
pub type AssignmentAnswer = Result<Option<Assignment>, LocalError>;
pub type StoreReadAnswer = Result<StoreAnswer, LocalError>;

/// `None` proposes an entry with no operation: the deadline sweep.
pub struct Proposal {
    pub op: Option<Op>,
    pub reply: oneshot::Sender<OpAnswer>,
}

pub enum ReadRequest {
    Flags {
        ids: Vec<BatchId>,
        reply: oneshot::Sender<ReadAnswer>,
    },
    Assignment {
        party: u16,
        reply: oneshot::Sender<AssignmentAnswer>,
    },
    Store {
        read: StoreRead,
        reply: oneshot::Sender<StoreReadAnswer>,
    },
}

impl ReadRequest {
    fn fail(self, e: &LocalError) {
        match self {
            ReadRequest::Flags { reply, .. } => {
                let _ = reply.send(Err(copy(e)));
            }
            ReadRequest::Assignment { reply, .. } => {
                let _ = reply.send(Err(copy(e)));
            }
            ReadRequest::Store { reply, .. } => {
                let _ = reply.send(Err(copy(e)));
            }
        }
    }
}

#[derive(Clone)]
pub struct Timeouts {
    /// How long a write may wait for a quorum before the client hears 503.
    pub commit: Duration,
}

fn no_quorum(partition: u32, what: &str, after: Duration) -> LocalError {
    LocalError::Failed(WireError::Unavailable(format!(
        "catalog partition {partition} has no leader / no quorum: {what} not confirmed by a \
         majority of catalog voters within {} ms; retry later",
        after.as_millis()
    )))
}

fn write_error(partition: u32, e: RaftError<NodeId, ClientWriteError<NodeId, Peer>>) -> LocalError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            LocalError::NotLeader(f.leader_id.zip(f.leader_node))
        }
        other => LocalError::Failed(WireError::Unavailable(format!(
            "catalog partition {partition}: {other}"
        ))),
    }
}

/// Collects proposals into entries until the channel closes.
pub async fn run_proposer(
    partition: u32,
    raft: Raft,
    timeouts: Timeouts,
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
    mut rx: mpsc::Receiver<Proposal>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut pending = vec![first];
        let mut flags = pending[0].op.as_ref().map_or(0, Op::len);
        while flags < MAX_ENTRY_FLAGS {
            match rx.try_recv() {
                Ok(p) => {
                    flags += p.op.as_ref().map_or(0, Op::len);
                    pending.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let timeouts = timeouts.clone();
        let commit_seconds = commit_seconds.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut ops = Vec::with_capacity(pending.len());
            let mut replies = Vec::with_capacity(pending.len());
            let mut sweeps = Vec::new();
            for p in pending {
                match p.op {
                    Some(op) => {
                        ops.push(op);
                        replies.push(p.reply);
                    }
                    None => sweeps.push(p.reply),
                }
            }
            let batch = Batch {
                now_ms: now_ms(),
                ops,
            };
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(timeouts.commit, raft.client_write(batch)).await;
            let answers: Vec<OpAnswer> = match result {
                Ok(Ok(response)) => {
                    commit_seconds.observe(started.elapsed().as_secs_f64());
                    response
                        .data
                        .0
                        .into_iter()
                        .map(|r| r.map_err(LocalError::Failed))
                        .collect()
                }
                Ok(Err(e)) => {
                    let e = write_error(partition, e);
                    return reply_all(replies.into_iter().chain(sweeps), &e);
                }
                Err(_) => {
                    let e = no_quorum(partition, "write", timeouts.commit);
                    return reply_all(replies.into_iter().chain(sweeps), &e);
                }
            };
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            for reply in sweeps {
                let _ = reply.send(Ok(Vec::new()));
            }
        });
    }
}

fn reply_all(replies: impl Iterator<Item = oneshot::Sender<OpAnswer>>, e: &LocalError) {
    for reply in replies {
        let _ = reply.send(Err(copy(e)));
    }
}

fn copy(e: &LocalError) -> LocalError {
    match e {
        LocalError::NotLeader(l) => LocalError::NotLeader(l.clone()),
        LocalError::Failed(w) => LocalError::Failed(w.clone()),
    }
}

/// Answers GETs in groups: one read-index confirmation per group, then a local read.
pub async fn run_reader(
    partition: u32,
    raft: Raft,
    sm: Shared,
    proposals: mpsc::Sender<Proposal>,
    timeouts: Timeouts,
    mut rx: mpsc::Receiver<ReadRequest>,
) {
    let mut caught_up = false;
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        let confirmed = tokio::time::timeout(timeouts.commit, async {
            raft.ensure_linearizable().await?;
            if !caught_up {
                // The commit index is not stored, so a node restarted as leader of its old term
                // knows only its snapshot as committed and would confirm reads before the
                // committed entries after that snapshot are applied again. Its whole log as of
                // now was proposed by this or an earlier leader and is committed before any
                // newer entry: the first read waits for all of it once.
                let last = raft.metrics().borrow().last_log_index;
                if let Some(last) = last {
                    if raft
                        .wait(None)
                        .applied_index_at_least(Some(last), "catalog read after start")
                        .await
                        .is_err()
                    {
                        return Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
                    }
                }
            }
            Ok(())
        })
        .await;
        let failure = match confirmed {
            Ok(Ok(())) => {
                caught_up = true;
                None
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Some(LocalError::NotLeader(f.leader_id.zip(f.leader_node)))
            }
            Ok(Err(e)) => Some(LocalError::Failed(WireError::Unavailable(format!(
                "catalog partition {partition}: {e}"
            )))),
            Err(_) => Some(no_quorum(partition, "read", timeouts.commit)),
        };
        if let Some(e) = failure {
            for r in pending {
                r.fail(&e);
            }
            continue;
        }
        // A FALSE flag past its deadline on this leader's clock is not reported as ERROR until
        // the log says so: the sweep entry makes that decision for every replica at once.
        let now = now_ms();
        let needs_sweep = {
            let state = read(&sm);
            let ids = pending.iter().flat_map(|r| match r {
                ReadRequest::Flags { ids, .. } => ids.as_slice(),
                ReadRequest::Assignment { .. } | ReadRequest::Store { .. } => &[],
            });
            ids.into_iter().any(|id| {
                state
                    .table
                    .stored(id)
                    .is_some_and(|f| f.state == FlagState::False && f.deadline_ms < now)
            })
        };
        if needs_sweep {
            let (tx, rx) = oneshot::channel();
            let swept = match proposals
                .send(Proposal {
                    op: None,
                    reply: tx,
                })
                .await
            {
                Ok(()) => rx.await.unwrap_or_else(|_| {
                    Err(LocalError::Failed(WireError::Unavailable(format!(
                        "catalog partition {partition} is shutting down"
                    ))))
                }),
                Err(_) => Err(LocalError::Failed(WireError::Unavailable(format!(
                    "catalog partition {partition} is shutting down"
                )))),
            };
            if let Err(e) = swept {
                for r in pending {
                    r.fail(&e);
                }
                continue;
            }
        }
        let state = read(&sm);
        for r in pending {
            match r {
                ReadRequest::Flags { ids, reply } => {
                    let flags = ids.iter().map(|id| state.table.stored(id)).collect();
                    let _ = reply.send(Ok(flags));
                }
                ReadRequest::Assignment { party, reply } => {
                    let _ = reply.send(Ok(state.registers.assignments.get(&party).cloned()));
                }
                ReadRequest::Store { read, reply } => {
                    let answer = state.registers.store.read(&read);
                    let _ = reply.send(answer.map_err(|e| LocalError::Failed(WireError::Store(e))));
                }
            }
        }
    }
}
