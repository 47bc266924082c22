//! What apps send the masters, and what they answer. One route per kind of caller takes
//! every request: apps show a token, clouds (keeping their archives) a peer certificate; each
//! request names the object it is about.

use crate::master::{
    Begin, FileAccess, Kind, MasterError, ObjectInfo, ObjectKey, Reader, RefreshBegin, Version,
};
use crate::packet::PacketRecord;
use serde::{Deserialize, Serialize};

/// Where apps reach the masters (every catalog node serves it and forwards to the leader).
pub const STORE_PATH: &str = "/v1/store";
/// Where clouds reach the masters with their peer certificate, as user
/// [`crate::master::cloud_user`] of their party.
pub const STORE_CLOUD_PATH: &str = "/v1/store/cloud";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreRequest {
    /// Reserves a new version of one of the caller's files, or a message to `recipient`.
    Begin(BeginRequest),
    Commit {
        key: ObjectKey,
        id: u64,
        records: Vec<PacketRecord>,
    },
    /// Starts a refresh of a version of one of the caller's files.
    RefreshBegin {
        key: ObjectKey,
        version: u32,
    },
    RefreshCommit {
        key: ObjectKey,
        id: u64,
        records: Vec<PacketRecord>,
    },
    /// A version the caller may read, with its records and keys (newest when None).
    Get {
        key: ObjectKey,
        version: Option<u32>,
    },
    /// Files the caller may read (of one owner, or all), or the caller's messages.
    List {
        kind: Kind,
        owner: Option<String>,
    },
    /// Deletes a file of the caller's, or consumes a message to the caller (`readmessage`).
    Delete {
        key: ObjectKey,
    },
    /// The caller's mailbox public key (X25519).
    SetMailboxKey {
        public_key: [u8; 32],
    },
    MailboxKey {
        user: String,
    },
    /// A version of one of the caller's files with its copies repaired: its full new
    /// record list.
    Repair {
        key: ObjectKey,
        id: u64,
        records: Vec<PacketRecord>,
    },
    /// The owners whose mailboxes take alerts about these houses, of those the caller's token
    /// covers (at most `MAX_HOUSES_PER_MAILBOX`).
    HouseOwners {
        houses: Vec<u32>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BeginRequest {
    pub target: Target,
    pub len: u64,
    pub packet_bytes: u32,
    pub replicas: u8,
    pub sources: Vec<u8>,
    pub lifetime_secs: u64,
    pub access: FileAccess,
}

impl BeginRequest {
    /// The plan the request asks for, drawn for `caller`: a new version of the caller's
    /// file, or a message to the recipient under a random id.
    pub fn draw(self, caller: Reader, rng: &mut impl rand::Rng) -> Result<Begin, MasterError> {
        let key = match self.target {
            Target::File { name } => ObjectKey::file(&caller.user, &name),
            Target::Message { recipient } => ObjectKey::message(&recipient, rng.gen()),
        };
        Begin::draw(
            key,
            caller,
            self.len,
            self.packet_bytes,
            self.replicas,
            self.sources,
            self.lifetime_secs,
            self.access,
            rng,
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Target {
    File { name: String },
    Message { recipient: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreResponse {
    Done,
    Plan(Box<Begin>),
    Refresh {
        plan: Box<RefreshBegin>,
        version: Box<Version>,
    },
    Version(Box<Version>),
    List(Vec<ObjectInfo>),
    MailboxKey(Option<[u8; 32]>),
    HouseOwners(Vec<(u32, String)>),
}
