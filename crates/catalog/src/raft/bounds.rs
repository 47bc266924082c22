//! Bounds on the numbers inside a Raft message, checked before openraft sees it.
//!
//! openraft trusts its peers: a vote or log id near `u64::MAX` makes it panic (its term
//! arithmetic overflows), and since votes are durable the panic returns after every restart.
//! A peer is authenticated, but a buggy or hostile voter must not be able to take the others
//! down, so every term, index and node id that arrives is held to a bound no honest cluster
//! reaches: an election every millisecond would need 8,900 years to pass `MAX_TERM`, and a
//! million entries a second 570,000 years to pass `MAX_LOG_INDEX`.

use super::snapshot_transfer::SnapshotChunk;
use super::types::{Entry, LogId, NodeId, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{EntryPayload, RaftLogId};
use thiserror::Error;

/// Largest term a message may carry.
pub const MAX_TERM: u64 = 1 << 48;
/// Largest log index a message may carry.
pub const MAX_LOG_INDEX: u64 = 1 << 54;
/// Largest node id a message may name (ids are assigned by operators, from 1).
pub const MAX_NODE_ID: NodeId = 1 << 32;
/// Longest snapshot id (the sender's is the last log id and a counter, a few dozen bytes).
pub const MAX_SNAPSHOT_ID_CHARS: usize = 256;
/// How far ahead of the receiver's clock an entry's time may be. Every flag deadline is
/// measured against the entries' times, so one entry stamped in the far future would turn
/// every open flag ERROR at once; honest voters' clocks agree to well within this.
pub const MAX_CLOCK_AHEAD_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Error, PartialEq)]
pub enum BoundError {
    #[error("{what} term {term} is beyond the bound of {MAX_TERM}")]
    Term { what: &'static str, term: u64 },
    #[error("{what} index {index} is beyond the bound of {MAX_LOG_INDEX}")]
    Index { what: &'static str, index: u64 },
    #[error("{what} names node {node}, beyond the bound of {MAX_NODE_ID}")]
    Node { what: &'static str, node: NodeId },
    #[error("the message comes from node {from} but its vote is node {leader}'s")]
    NotTheSender { from: NodeId, leader: NodeId },
    #[error("entry {position} has index {index} where {expected} follows the previous one")]
    Gap {
        position: usize,
        index: u64,
        expected: u64,
    },
    #[error("snapshot id of {0} characters is longer than {MAX_SNAPSHOT_ID_CHARS}")]
    SnapshotId(usize),
    #[error("{what} time {time_ms} ms is more than {MAX_CLOCK_AHEAD_MS} ms ahead of this node's clock ({now_ms} ms)")]
    Clock {
        what: &'static str,
        time_ms: u64,
        now_ms: u64,
    },
}

impl BoundError {
    /// The stable code a refused sender sees.
    pub fn code(&self) -> &'static str {
        match self {
            BoundError::NotTheSender { .. } => "wrong_sender",
            _ => "raft_out_of_bounds",
        }
    }
}

fn term(what: &'static str, term: u64) -> Result<(), BoundError> {
    if term > MAX_TERM {
        return Err(BoundError::Term { what, term });
    }
    Ok(())
}

fn node(what: &'static str, node: NodeId) -> Result<(), BoundError> {
    if node > MAX_NODE_ID {
        return Err(BoundError::Node { what, node });
    }
    Ok(())
}

fn vote(vote: &Vote, from: NodeId) -> Result<(), BoundError> {
    term("vote", vote.leader_id.term)?;
    node("vote", vote.leader_id.node_id)?;
    // A voter speaks for itself: a message carrying another node's vote would let one peer
    // move the others' terms in a third one's name.
    if vote.leader_id.node_id != from {
        return Err(BoundError::NotTheSender {
            from,
            leader: vote.leader_id.node_id,
        });
    }
    Ok(())
}

fn log_id(what: &'static str, id: Option<&LogId>) -> Result<(), BoundError> {
    let Some(id) = id else { return Ok(()) };
    term(what, id.leader_id.term)?;
    node(what, id.leader_id.node_id)?;
    if id.index > MAX_LOG_INDEX {
        return Err(BoundError::Index {
            what,
            index: id.index,
        });
    }
    Ok(())
}

/// A time from another node, held to `now_ms` (this node's clock) plus [`MAX_CLOCK_AHEAD_MS`].
pub fn clock(what: &'static str, time_ms: u64, now_ms: u64) -> Result<(), BoundError> {
    if time_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(BoundError::Clock {
            what,
            time_ms,
            now_ms,
        });
    }
    Ok(())
}

/// An append from `from`, received at `now_ms`: its vote is the sender's, every log id is in
/// bounds, the entries' indexes run on from `prev_log_id` without a gap, and no entry's time
/// is far ahead of this node's clock.
pub fn check_append(
    rpc: &AppendEntriesRequest<TypeConfig>,
    from: NodeId,
    now_ms: u64,
) -> Result<(), BoundError> {
    vote(&rpc.vote, from)?;
    log_id("previous log id", rpc.prev_log_id.as_ref())?;
    log_id("commit log id", rpc.leader_commit.as_ref())?;
    // `prev_log_id` is in bounds, so the sum cannot overflow.
    let first = rpc.prev_log_id.map_or(0, |id| id.index + 1);
    for (position, entry) in rpc.entries.iter().enumerate() {
        let id: &LogId = Entry::get_log_id(entry);
        log_id("entry log id", Some(id))?;
        let expected = first + position as u64;
        if id.index != expected {
            return Err(BoundError::Gap {
                position,
                index: id.index,
                expected,
            });
        }
        if let EntryPayload::Normal(batch) = &entry.payload {
            clock("entry", batch.now_ms, now_ms)?;
        }
    }
    Ok(())
}

/// A vote request from `from`, for itself.
pub fn check_vote(rpc: &VoteRequest<NodeId>, from: NodeId) -> Result<(), BoundError> {
    vote(&rpc.vote, from)?;
    log_id("last log id", rpc.last_log_id.as_ref())
}

/// A snapshot chunk from `from`.
pub fn check_snapshot(chunk: &SnapshotChunk, from: NodeId) -> Result<(), BoundError> {
    vote(&chunk.vote, from)?;
    log_id("snapshot's last log id", chunk.meta.last_log_id.as_ref())?;
    log_id(
        "snapshot's membership log id",
        chunk.meta.last_membership.log_id().as_ref(),
    )?;
    if chunk.meta.snapshot_id.len() > MAX_SNAPSHOT_ID_CHARS {
        return Err(BoundError::SnapshotId(chunk.meta.snapshot_id.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Batch;
    use openraft::CommittedLeaderId;

    const NOW: u64 = 1_800_000_000_000;

    fn id(term: u64, node: NodeId, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn append(term: u64, entries: &[LogId]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: Some(id(1, 1, 4)),
            entries: entries
                .iter()
                .map(|&log_id| Entry {
                    log_id,
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(id(1, 1, 4)),
        }
    }

    #[test]
    fn an_honest_append_passes() {
        assert_eq!(
            check_append(&append(3, &[id(3, 1, 5), id(3, 1, 6)]), 1, NOW),
            Ok(())
        );
    }

    #[test]
    fn out_of_bound_numbers_are_named() {
        let e = check_append(&append(u64::MAX, &[]), 1, NOW).unwrap_err();
        assert!(
            e.to_string().contains("vote term 18446744073709551615"),
            "{e}"
        );
        let e = check_append(&append(3, &[id(3, 1, 5), id(3, 1, u64::MAX)]), 1, NOW).unwrap_err();
        assert_eq!(e.code(), "raft_out_of_bounds");
        let e = check_append(&append(3, &[id(3, 1, 5), id(3, 1, 9)]), 1, NOW).unwrap_err();
        assert!(matches!(e, BoundError::Gap { position: 1, .. }), "{e}");
        let e = check_append(&append(3, &[id(3, u64::MAX, 5)]), 1, NOW).unwrap_err();
        assert!(matches!(e, BoundError::Node { .. }), "{e}");
    }

    #[test]
    fn an_entry_stamped_far_ahead_is_refused() {
        let mut rpc = append(3, &[id(3, 1, 5)]);
        let stamped = |now_ms| {
            EntryPayload::Normal(Batch {
                now_ms,
                ops: Vec::new(),
            })
        };
        rpc.entries[0].payload = stamped(NOW + 1_000);
        assert_eq!(check_append(&rpc, 1, NOW), Ok(()));
        rpc.entries[0].payload = stamped(u64::MAX);
        let e = check_append(&rpc, 1, NOW).unwrap_err();
        assert!(matches!(e, BoundError::Clock { what: "entry", .. }), "{e}");
        assert_eq!(e.code(), "raft_out_of_bounds");
    }

    #[test]
    fn a_vote_in_another_nodes_name_is_refused() {
        let rpc = VoteRequest {
            vote: Vote::new(4, 2),
            last_log_id: None,
        };
        assert_eq!(check_vote(&rpc, 2), Ok(()));
        assert_eq!(check_vote(&rpc, 3).unwrap_err().code(), "wrong_sender");
    }
}
