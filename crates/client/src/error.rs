use thiserror::Error;

#[derive(Debug, Error)]
pub enum SensorError {
    #[error("outbox: {0}")]
    Outbox(String),
    #[error("encoding shares: {0}")]
    Encode(#[from] postcard::Error),
    #[error("splitting a batch: {0}")]
    Split(#[from] mcloud_core::upload::SplitError),
    #[error("the outbox holds a position in this input taken with {taken}; this run asks for {asked}. Run with the same settings, or with a fresh outbox once its batches are settled")]
    CursorSettings { taken: String, asked: String },
    #[error("robust reports: {0}")]
    Robust(String),
    #[error("{0} clouds configured; a batch is split for at most 65535")]
    TooManyClouds(usize),
    #[error("gave up after {waited_secs} s: {what} still unreachable ({last_error})")]
    Unreachable {
        what: String,
        waited_secs: u64,
        last_error: String,
    },
}

macro_rules! outbox_from {
    ($($t:ty),*) => {$(
        impl From<$t> for SensorError {
            fn from(e: $t) -> Self {
                SensorError::Outbox(e.to_string())
            }
        }
    )*};
}
outbox_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
