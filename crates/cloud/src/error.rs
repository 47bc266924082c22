use mcloud_core::http::ApiError;
use mcloud_core::window::Window;
use mcloud_core::BatchId;
use thiserror::Error;

/// Why a cloud refused an upload or a request.
#[derive(Debug, Error)]
pub enum CloudError {
    #[error("empty batch {0}: a batch carries at least one record")]
    EmptyBatch(BatchId),
    #[error("batch {id} has {records} records; the limit is {limit}")]
    TooManyRecords {
        id: BatchId,
        records: usize,
        limit: usize,
    },
    #[error("batch {id} is split into {got} shares, but this deployment has {expected} clouds")]
    WrongShareCount {
        id: BatchId,
        got: u16,
        expected: u16,
    },
    #[error("batch {id} carries the share for cloud {got}, but this is cloud {expected}")]
    WrongParty {
        id: BatchId,
        got: u16,
        expected: u16,
    },
    #[error(transparent)]
    Shares(#[from] mcloud_core::upload::ExpandError),
    #[error("batch {id} would carry {bytes} bytes of explicit shares at its explicit party; the body limit is {limit}")]
    SharesTooLarge {
        id: BatchId,
        bytes: usize,
        limit: usize,
    },
    #[error("batch {id}: histogram of plug {plug:?}: {problem}")]
    BadHistogram {
        id: BatchId,
        plug: mcloud_core::GroupKey,
        problem: String,
    },
    #[error("batch {id}: record key {key} appears twice")]
    DuplicateRecord { id: BatchId, key: u64 },
    #[error("watermark {ts} is more than {max_future_secs} s in the future")]
    FutureWatermark { ts: u64, max_future_secs: u64 },
    #[error("batch {id}: record key {key} has timestamp {ts}, more than {max_future_secs} s in the future")]
    FromTheFuture {
        id: BatchId,
        key: u64,
        ts: u64,
        max_future_secs: u64,
    },
    #[error("batch {id}: a share for window [{}, {}) arrived after the window closed (watermark {watermark})", window.start, window.end)]
    WindowClosed {
        id: BatchId,
        window: Window,
        watermark: u64,
    },
    #[error("batch {0} is being stored by a concurrent request; retry")]
    InProgress(BatchId),
    #[error("unknown flag {0}: CREATE it in the catalog before uploading")]
    UnknownFlag(BatchId),
    #[error("flag {id} is already {state}: the batch can no longer be uploaded")]
    FlagFinal { id: BatchId, state: String },
    #[error("catalog unreachable: {0}")]
    Catalog(String),
    #[error("values table: {0}")]
    Storage(String),
    #[error("archive: {0}")]
    Archive(String),
    #[error("elastic workers: {0}")]
    Workers(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl From<CloudError> for ApiError {
    fn from(e: CloudError) -> ApiError {
        let message = e.to_string();
        match e {
            CloudError::TooManyRecords { .. } | CloudError::SharesTooLarge { .. } => {
                ApiError::too_large(message)
            }
            CloudError::WindowClosed { .. } => ApiError::gone(message),
            CloudError::UnknownFlag(_) => ApiError::not_found(message),
            CloudError::FlagFinal { .. } => ApiError::conflict(message),
            CloudError::InProgress(_) | CloudError::Catalog(_) => ApiError::unavailable(message),
            // A failed write is refused, never acknowledged, and most such failures pass (a
            // full disk gets space back, the file is reopened): 503, so a sensor retries
            // within its flag's deadline and then under a new flag.
            CloudError::Storage(_) => ApiError::coded(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                message,
            ),
            // The encrypted storage may be down for a while; what the archive holds stays.
            CloudError::Archive(_) => ApiError::coded(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "archive_unavailable",
                message,
            ),
            CloudError::Workers(_) | CloudError::Config(_) => ApiError::internal(message),
            _ => ApiError::bad_request(message),
        }
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for CloudError {
            fn from(e: $t) -> Self {
                CloudError::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
