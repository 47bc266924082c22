//! The replicated catalog's types: what a log entry carries, what applying it answers, and
//! how a catalog node is named in the Raft membership.

use crate::CatalogError;
use mcloud_core::wire::{CreateFlag, Flag, FlagState};
use mcloud_core::BatchId;
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A catalog voter or learner as the membership records it: where it serves and the CA its
/// peers pin, so a node added at run time is reachable without reconfiguring anyone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub url: String,
    pub ca_pem: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// One client operation inside an entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    Create(Vec<CreateFlag>),
    Set(Vec<BatchId>),
    /// A cloud's verdict on robust batches: TRUE for `valid`, ERROR otherwise.
    Verdict {
        ids: Vec<BatchId>,
        valid: bool,
    },
    /// Replaces a cloud's bucket → worker map if `assignment` is newer than the stored one.
    Assign {
        party: u16,
        assignment: Assignment,
    },
    /// Adds app token revocation ids: tokens carrying any of them no longer count anywhere.
    Revoke(Vec<String>),
    /// Adds sensors whose keys no longer count: their sessions are refused everywhere.
    RevokeSensors(Vec<u32>),
    /// Replaces a house owner's access rules.
    SetAccess(AccessRules),
    /// Cloud `party` holds no unsettled batch it received before `before_ms` (its wall
    /// clock): it needs no flag whose deadline is earlier. Only ever moves forward.
    Settled {
        party: u16,
        before_ms: u64,
    },
    /// Forgets the TRUE and ERROR flags whose deadline is before `before_ms`; proposed by a
    /// partition's leader from the clouds' settled times, so every replica prunes the same.
    Prune {
        before_ms: u64,
    },
    /// Cloud `party` has left the deployment for good: its bucket map and settled time go,
    /// and decided flags stop waiting for it to report.
    ForgetCloud {
        party: u16,
    },
    /// A storage or mailbox operation of the masters (partition 0).
    Store(mcloud_store::master::StoreOp),
}

pub use mcloud_core::auth::access::AccessRules;

/// Most owners the catalog keeps rules for: every cloud holds them all in memory.
pub const MAX_OWNERS: usize = 100_000;

/// Most revocation ids one request adds.
pub const MAX_REVOCATIONS_PER_REQUEST: usize = 256;
/// Longest revocation id (a biscuit block signature in hex is 128 characters).
pub const MAX_REVOCATION_ID_CHARS: usize = 256;
/// Most revocation ids the catalog keeps: every cloud holds them all in memory.
pub const MAX_REVOCATIONS: usize = 100_000;

/// Refuses sensor revocations the catalog will not store, before they reach the log.
pub fn check_sensor_revocations(ids: &[u32]) -> Result<(), CatalogError> {
    if ids.is_empty() || ids.len() > MAX_REVOCATIONS_PER_REQUEST {
        return Err(CatalogError::BadRevocation(format!(
            "{} sensors in one request; between 1 and {MAX_REVOCATIONS_PER_REQUEST}",
            ids.len()
        )));
    }
    Ok(())
}

/// Refuses revocation ids the catalog will not store, before they reach the log.
pub fn check_revocations(ids: &[String]) -> Result<(), CatalogError> {
    if ids.is_empty() || ids.len() > MAX_REVOCATIONS_PER_REQUEST {
        return Err(CatalogError::BadRevocation(format!(
            "{} revocation ids in one request; between 1 and {MAX_REVOCATIONS_PER_REQUEST}",
            ids.len()
        )));
    }
    for id in ids {
        if id.is_empty()
            || id.len() > MAX_REVOCATION_ID_CHARS
            || !id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(CatalogError::BadRevocation(format!(
                "revocation id {:?} is not 1 to {MAX_REVOCATION_ID_CHARS} hex digits",
                id.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Most buckets a stored bucket → worker map may have.
pub const MAX_ASSIGNMENT_BUCKETS: usize = 65536;
/// Largest epoch a bucket → worker map may carry. A cloud raises its epoch by one per map
/// change (a few per second at most), so no honest cloud comes near; a stored epoch at
/// `u64::MAX` would leave every later map stale forever.
pub const MAX_EPOCH: u64 = 1 << 48;

/// A cloud's bucket → worker map as the catalog keeps it: the worker id of each bucket, under
/// the epoch the cloud gave that map. Epochs only grow, so a late write of an older map never
/// replaces a newer one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub epoch: u64,
    pub owners: Vec<u32>,
}

impl Assignment {
    /// Refuses a map the catalog will not store, before it reaches the log.
    pub fn check(&self) -> Result<(), CatalogError> {
        if self.owners.len() > MAX_ASSIGNMENT_BUCKETS {
            return Err(CatalogError::BadAssignment(format!(
                "{} buckets in one map; the limit is {MAX_ASSIGNMENT_BUCKETS}",
                self.owners.len()
            )));
        }
        if self.epoch == 0 || self.epoch > MAX_EPOCH {
            return Err(CatalogError::BadAssignment(format!(
                "epoch {} is outside 1..={MAX_EPOCH}",
                self.epoch
            )));
        }
        Ok(())
    }
}

impl Op {
    pub fn len(&self) -> usize {
        match self {
            Op::Create(v) => v.len(),
            Op::Set(v) => v.len(),
            Op::Verdict { ids, .. } => ids.len(),
            Op::Assign { .. } => 1,
            Op::Revoke(v) => v.len(),
            Op::RevokeSensors(v) => v.len(),
            Op::SetAccess(_)
            | Op::Settled { .. }
            | Op::Prune { .. }
            | Op::ForgetCloud { .. }
            | Op::Store(_) => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A log entry's payload: the operations batched by the leader and the leader's clock when it
/// proposed them. Every replica decides deadlines by this time, never by its own clock, and an
/// entry with no operations is the deadline sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Batch {
    pub now_ms: u64,
    pub ops: Vec<Op>,
}

/// The answer to each operation of an applied batch, in order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BatchResult(pub Vec<Result<Vec<Flag>, WireError>>);

/// A `CatalogError` that travels between catalog nodes and through the log, so a forwarded
/// request fails with the same status it would have had on the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireError {
    Unknown(BatchId),
    AlreadyFinal { id: BatchId, state: FlagState },
    DeadlineMissed { id: BatchId, late_ms: u64 },
    DecidedByClouds(BatchId),
    NotRobust(BatchId),
    BadTtl { id: BatchId, ttl_ms: u64, max: u64 },
    DuplicateId(BatchId),
    TooMany(usize),
    Storage(String),
    Unavailable(String),
    Membership(String),
    NoChange(String),
    StaleEpoch { party: u16, epoch: u64, stored: u64 },
    BadAssignment(String),
    BadRevocation(String),
    BadAccess(String),
    BadSettled(String),
    Store(mcloud_store::master::MasterError),
}

impl From<CatalogError> for WireError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Unknown(id) => WireError::Unknown(id),
            CatalogError::AlreadyFinal { id, state } => WireError::AlreadyFinal { id, state },
            CatalogError::DeadlineMissed { id, late_ms } => {
                WireError::DeadlineMissed { id, late_ms }
            }
            CatalogError::BadTtl { id, ttl_ms, max } => WireError::BadTtl { id, ttl_ms, max },
            CatalogError::DuplicateId(id) => WireError::DuplicateId(id),
            CatalogError::DecidedByClouds(id) => WireError::DecidedByClouds(id),
            CatalogError::NotRobust(id) => WireError::NotRobust(id),
            CatalogError::TooMany(n) => WireError::TooMany(n),
            CatalogError::Storage(m) => WireError::Storage(m),
            CatalogError::Membership(m) => WireError::Membership(m),
            CatalogError::NoChange(m) => WireError::NoChange(m),
            CatalogError::Unavailable(m) => WireError::Unavailable(m),
            CatalogError::StaleEpoch {
                party,
                epoch,
                stored,
            } => WireError::StaleEpoch {
                party,
                epoch,
                stored,
            },
            CatalogError::BadAssignment(m) => WireError::BadAssignment(m),
            CatalogError::BadRevocation(m) => WireError::BadRevocation(m),
            CatalogError::BadAccess(m) => WireError::BadAccess(m),
            CatalogError::BadSettled(m) => WireError::BadSettled(m),
            CatalogError::Store(m) => WireError::Store(m),
            CatalogError::Call(e) if e.is_retryable() => WireError::Unavailable(e.to_string()),
            CatalogError::Call(e) => WireError::Storage(e.to_string()),
        }
    }
}

impl From<WireError> for CatalogError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Unknown(id) => CatalogError::Unknown(id),
            WireError::AlreadyFinal { id, state } => CatalogError::AlreadyFinal { id, state },
            WireError::DeadlineMissed { id, late_ms } => {
                CatalogError::DeadlineMissed { id, late_ms }
            }
            WireError::BadTtl { id, ttl_ms, max } => CatalogError::BadTtl { id, ttl_ms, max },
            WireError::DuplicateId(id) => CatalogError::DuplicateId(id),
            WireError::DecidedByClouds(id) => CatalogError::DecidedByClouds(id),
            WireError::NotRobust(id) => CatalogError::NotRobust(id),
            WireError::TooMany(n) => CatalogError::TooMany(n),
            WireError::Storage(m) => CatalogError::Storage(m),
            WireError::Unavailable(m) => CatalogError::Unavailable(m),
            WireError::Membership(m) => CatalogError::Membership(m),
            WireError::NoChange(m) => CatalogError::NoChange(m),
            WireError::StaleEpoch {
                party,
                epoch,
                stored,
            } => CatalogError::StaleEpoch {
                party,
                epoch,
                stored,
            },
            WireError::BadAssignment(m) => CatalogError::BadAssignment(m),
            WireError::BadRevocation(m) => CatalogError::BadRevocation(m),
            WireError::BadAccess(m) => CatalogError::BadAccess(m),
            WireError::BadSettled(m) => CatalogError::BadSettled(m),
            WireError::Store(m) => CatalogError::Store(m),
        }
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = u64,
        Node = Peer,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Peer>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Peer>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// A storage failure in the form openraft wants: reading or writing `what` failed.
pub fn io_error(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        openraft::ErrorSubject::Store,
        openraft::ErrorVerb::Write,
        std::io::Error::other(format!("{what}: {e}")),
    )
}
