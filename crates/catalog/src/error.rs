use axum::http::StatusCode;
use mcloud_core::http::{ApiError, CallError};
use mcloud_core::wire::{FlagState, MAX_FLAGS_PER_REQUEST};
use mcloud_core::BatchId;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("unknown flag {0}: it was never created")]
    Unknown(BatchId),
    #[error("flag {id} is already {state}: a final flag never changes")]
    AlreadyFinal { id: BatchId, state: FlagState },
    #[error("flag {id} missed its deadline ({late_ms} ms late) and is already ERROR: a final flag never changes")]
    DeadlineMissed { id: BatchId, late_ms: u64 },
    #[error("flag {0} is a robust batch's: its clouds set it once they verified its reports, never its sensor")]
    DecidedByClouds(BatchId),
    #[error("flag {0} is not a robust batch's: only its sensor sets it")]
    NotRobust(BatchId),
    #[error("ttl_ms {ttl_ms} for flag {id} is out of range 1..={max}")]
    BadTtl { id: BatchId, ttl_ms: u64, max: u64 },
    #[error("flag {0} appears twice in one request")]
    DuplicateId(BatchId),
    #[error("{0} flags in one request; the limit is {MAX_FLAGS_PER_REQUEST}")]
    TooMany(usize),
    #[error("catalog storage: {0}")]
    Storage(String),
    /// A membership change that cannot be made as asked (unknown node, unreachable new node,
    /// last voter).
    #[error("catalog membership: {0}")]
    Membership(String),
    /// The membership already is as asked (the node is a voter already, or not a member).
    #[error("catalog membership: {0}")]
    NoChange(String),
    /// The catalog cannot decide now (no leader, no quorum); the same request may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// A bucket → worker map no newer than the one stored: the stored map stays.
    #[error(
        "bucket map of cloud {party}: epoch {epoch} is stale, the catalog holds epoch {stored}"
    )]
    StaleEpoch { party: u16, epoch: u64, stored: u64 },
    /// A bucket → worker map request the catalog cannot take (bad party, too many buckets).
    #[error("bucket map: {0}")]
    BadAssignment(String),
    /// Revocation ids the catalog cannot take (malformed, too many).
    #[error("revocation: {0}")]
    BadRevocation(String),
    /// Access rules the catalog cannot take (malformed names, too many entries).
    #[error("access rules: {0}")]
    BadAccess(String),
    /// A cloud's settled time the catalog cannot take (in the future).
    #[error("settled time: {0}")]
    BadSettled(String),
    /// The masters refused a storage or mailbox operation.
    #[error("storage: {0}")]
    Store(#[from] mcloud_store::master::MasterError),
    #[error(transparent)]
    Call(#[from] CallError),
}

impl CatalogError {
    /// True when the operation may succeed if repeated (the catalog was unreachable).
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::Call(e) => e.is_retryable(),
            CatalogError::Unavailable(_) => true,
            _ => false,
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        if let CatalogError::Store(m) = &e {
            let status = StatusCode::from_u16(m.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return ApiError::coded(status, m.code(), m.to_string());
        }
        let status = match &e {
            CatalogError::Unknown(_) => StatusCode::NOT_FOUND,
            CatalogError::AlreadyFinal { .. } | CatalogError::DeadlineMissed { .. } => {
                StatusCode::CONFLICT
            }
            CatalogError::DecidedByClouds(_) => StatusCode::FORBIDDEN,
            CatalogError::NotRobust(_) => StatusCode::CONFLICT,
            CatalogError::BadTtl { .. } | CatalogError::DuplicateId(_) => StatusCode::BAD_REQUEST,
            CatalogError::TooMany(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CatalogError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CatalogError::Membership(_) => StatusCode::BAD_REQUEST,
            CatalogError::NoChange(_) => StatusCode::CONFLICT,
            CatalogError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CatalogError::StaleEpoch { .. } => StatusCode::CONFLICT,
            CatalogError::BadAssignment(_)
            | CatalogError::BadRevocation(_)
            | CatalogError::BadAccess(_)
            | CatalogError::BadSettled(_) => StatusCode::BAD_REQUEST,
            CatalogError::Store(_) => StatusCode::BAD_REQUEST,
            CatalogError::Call(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            CatalogError::Call(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<redb::Error> for CatalogError {
    fn from(e: redb::Error) -> Self {
        CatalogError::Storage(e.to_string())
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for CatalogError {
            fn from(e: $t) -> Self {
                CatalogError::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
