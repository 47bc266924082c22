//! Errors of the data plane: sources, placement and the file operations on them.

use crate::packet::PacketError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A source's configuration (or the set of them) is unusable; `field` names the culprit.
    #[error("source config: `{field}` {reason}")]
    BadConfig { field: String, reason: String },
    /// A record or request names a source this process has no configuration for.
    #[error("source {0} is not configured here")]
    UnknownSource(u8),
    /// The source could not be reached or refused the operation.
    #[error("source {source_id} is unavailable: {reason}")]
    SourceUnavailable { source_id: u8, reason: String },
    /// The source answered, but does not hold the blob.
    #[error("source {source_id} does not hold blob {name}")]
    BlobMissing { source_id: u8, name: String },
    /// A copy does not open under its place and key: changed, swapped or truncated.
    #[error("packet {packet}.{sub} is corrupt: its blob does not open at its place")]
    PacketCorrupt { packet: u32, sub: u8 },
    /// Not a blob name (32 lowercase hex digits); refused before it reaches a source.
    #[error("{0:?} is not a blob name")]
    BadName(String),
    /// A write plan that cannot be carried out as given.
    #[error("bad write plan: {0}")]
    BadPlan(String),
    /// A read grant (or refresh request) whose records, keys or length do not fit together.
    #[error("bad read grant: {0}")]
    BadGrant(String),
    /// Fewer usable sources than copies wanted.
    #[error("packet {packet} needs {wanted} copies but only {placed} sources took it")]
    NotEnoughSources {
        packet: u32,
        wanted: usize,
        placed: usize,
    },
    #[error(transparent)]
    Packet(PacketError),
    /// A worker task died (a bug, or the runtime shutting down).
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// A stable code callers match on.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::BadConfig { .. } => "bad_config",
            StoreError::UnknownSource(_) => "unknown_source",
            StoreError::SourceUnavailable { .. } => "source_unavailable",
            StoreError::BlobMissing { .. } => "blob_missing",
            StoreError::PacketCorrupt { .. } => "packet_corrupt",
            StoreError::BadName(_) => "bad_name",
            StoreError::BadPlan(_) => "bad_plan",
            StoreError::BadGrant(_) => "bad_grant",
            StoreError::NotEnoughSources { .. } => "not_enough_sources",
            StoreError::Packet(e) => e.code(),
            StoreError::Internal(_) => "internal",
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> StoreError {
        StoreError::BadConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// How telling this error is about a copy, when every copy of a packet failed and one
    /// error must stand for all: a corrupt copy means a source misbehaves; an unavailable
    /// source may come back with its copy (worth retrying); a missing blob is lost.
    pub(crate) fn severity(&self) -> u8 {
        match self {
            StoreError::PacketCorrupt { .. } => 3,
            StoreError::SourceUnavailable { .. } | StoreError::UnknownSource(_) => 2,
            StoreError::BlobMissing { .. } => 1,
            _ => 0,
        }
    }

    /// Whether the source did not answer at all (as opposed to answering badly).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StoreError::SourceUnavailable { .. } | StoreError::UnknownSource(_)
        )
    }
}

impl From<PacketError> for StoreError {
    fn from(e: PacketError) -> StoreError {
        match e {
            PacketError::Open { packet, sub } => StoreError::PacketCorrupt { packet, sub },
            other => StoreError::Packet(other),
        }
    }
}
