//! The masters' metadata: which packets make each stored object, in which order, under which
//! keys, until when, and who may read it. The catalog replicates it through Raft (a write
//! needs a majority of the voters); this module is the rules every replica applies, with no
//! I/O and no clock or randomness of its own: whatever is random (a version's id, key
//! secrets, the write order) is drawn by the node that proposes the operation and travels in
//! it, and time is the log entry's.
//!
//! Objects are files (named by their owner) and mailbox messages (named by their recipient);
//! both are stored as packets and both expire. A write is two steps: `Begin` reserves a
//! version and hands the writer its plan (random write order, one AEAD per packet, a fresh
//! key secret), `Commit` records where the packets went. A refresh is the same two steps over
//! a tenth of a version's packets, under a new key secret, and extends the version's expiry.
//! Whatever leaves the metadata (a deleted, replaced, expired or read object, an abandoned
//! write, a refreshed packet's old copies) goes to the garbage list, which whoever can reach
//! the sources empties (see [`Masters::garbage`]).

mod access;
mod ops;
mod read;
mod state;

pub use access::{FileAccess, Reader};
pub use ops::{
    check_shape, packets_for, Begin, Commit, RefreshBegin, RefreshCommit, Repair, StoreOp,
};
pub use read::{StoreAnswer, StoreRead, MAX_GARBAGE_READ};
pub use state::{Garbage, Masters, ObjectInfo, Pending, Version};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Versions of a file kept: a new one beyond this frees the oldest.
pub const MAX_VERSIONS: usize = 3;
/// Largest object a version may hold.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;
/// Most packets in one version (so its metadata stays small in every Raft entry).
pub const MAX_PACKETS: u32 = 1 << 16;
/// Most copies of a packet.
pub const MAX_REPLICAS: u8 = 4;
/// Most records one version may have (copies of sub-packets).
pub const MAX_RECORDS: usize = 1 << 18;
/// Most objects the masters keep, files and messages together (every voter holds them in
/// memory).
pub const MAX_OBJECTS: usize = 100_000;
/// Most messages waiting for one recipient.
pub const MAX_MESSAGES_PER_RECIPIENT: usize = 10_000;
/// Most houses one mailbox takes alerts about, and most asked about at once.
pub const MAX_HOUSES_PER_MAILBOX: usize = 4096;
/// Longest user, app or object name.
pub const MAX_NAME_CHARS: usize = 128;
/// Shortest and longest lifetime of a version: refreshes extend it by this much again.
pub const MIN_LIFETIME_SECS: u64 = 60;
pub const MAX_LIFETIME_SECS: u64 = 365 * 86_400;
/// How long a writer may take between `Begin` and `Commit`.
pub const WRITE_DEADLINE_MS: u64 = 10 * 60 * 1000;
/// Most garbage sets waiting to be freed; beyond it writes are refused until the sources
/// have been emptied (better than forgetting blobs a source would keep forever).
pub const MAX_GARBAGE: usize = 100_000;
/// The share of a version's packets one refresh rewrites: one in ten, at least one.
pub const REFRESH_DIVISOR: u32 = 10;

/// Files are named by their owner; messages by their recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    File,
    Message,
}

/// An object's key in the metadata.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    /// The file's owner or the message's recipient.
    pub owner: String,
    pub name: String,
}

impl ObjectKey {
    pub fn file(owner: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::File,
            owner: owner.into(),
            name: name.into(),
        }
    }

    /// A file named without an owner is `user`'s own.
    pub fn or_owner(mut self, user: &str) -> ObjectKey {
        if self.owner.is_empty() {
            self.owner = user.to_string();
        }
        self
    }

    pub fn message(recipient: &str, id: u64) -> ObjectKey {
        ObjectKey {
            kind: Kind::Message,
            owner: recipient.into(),
            name: format!("{id:016x}"),
        }
    }
}

/// The user a cloud of `party` is to the masters: a name no token can carry
/// (`mcloud_core::auth::app::ROLE_USER_PREFIX`), so its files are its own.
pub fn cloud_user(party: u16) -> String {
    format!("{}cloud-{party}", mcloud_core::auth::app::ROLE_USER_PREFIX)
}

/// The app name a cloud's archive writes and reads as.
pub const CLOUD_APP: &str = "archive";

/// Checks a user, app or object name: 1 to [`MAX_NAME_CHARS`] characters of letters, digits
/// and `._-/@`, so names print safely and cannot smuggle control characters into logs.
pub fn check_name(what: &str, name: &str) -> Result<(), MasterError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/@".contains(c))
        // Names read like paths to people, so they must not play path tricks even though
        // no name ever reaches a file system (blobs are named by HMAC).
        && name.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(MasterError::BadName(format!(
            "{what} {:?} is not 1 to {MAX_NAME_CHARS} letters, digits or ._-/@ in non-empty segments other than . and ..",
            name.chars().take(40).collect::<String>()
        )))
    }
}

/// Why the masters refused an operation. Each has a stable code clients match.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterError {
    #[error("{0}")]
    BadName(String),
    #[error("{0}")]
    BadPlan(String),
    #[error("{0}")]
    BadRecords(String),
    #[error("no {0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Expired(String),
}

impl MasterError {
    pub fn code(&self) -> &'static str {
        match self {
            MasterError::BadName(_) => "bad_name",
            MasterError::BadPlan(_) => "bad_plan",
            MasterError::BadRecords(_) => "bad_records",
            MasterError::NotFound(_) => "not_found",
            MasterError::Forbidden(_) => "store_forbidden",
            MasterError::Conflict(_) => "write_in_progress",
            MasterError::Full(_) => "store_full",
            MasterError::Expired(_) => "expired",
        }
    }

    /// The HTTP status the code goes with.
    pub fn status(&self) -> u16 {
        match self {
            MasterError::BadName(_) | MasterError::BadPlan(_) | MasterError::BadRecords(_) => 400,
            MasterError::NotFound(_) => 404,
            MasterError::Forbidden(_) => 403,
            MasterError::Conflict(_) => 409,
            MasterError::Full(_) => 507,
            MasterError::Expired(_) => 410,
        }
    }
}
