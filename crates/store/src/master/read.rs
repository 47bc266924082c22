//! Reads of the masters' state, in a form that travels: a node that does not lead the
//! catalog forwards them to the leader, which answers from what it has applied.

use super::access::Reader;
use super::state::{Garbage, Masters, ObjectInfo, Version};
use super::{Kind, MasterError, ObjectKey};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreRead {
    /// A version `reader` may read (the newest when `version` is None).
    Version {
        key: ObjectKey,
        reader: Reader,
        version: Option<u32>,
    },
    /// The objects of a kind `reader` may read, of one owner or all.
    List {
        kind: Kind,
        owner: Option<String>,
        reader: Reader,
    },
    /// Which packets a refresh of a version rewrites, and its new key id.
    RefreshChoice {
        key: ObjectKey,
        version: u32,
    },
    MailboxKey(String),
    /// The owners whose mailboxes take alerts about these houses.
    HouseOwners(Vec<u32>),
    Garbage(usize),
    /// Whether anything expired by this time.
    Due(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreAnswer {
    Version(Box<Version>),
    List(Vec<ObjectInfo>),
    RefreshChoice {
        id: u64,
        packets: Vec<u32>,
        key_id: u8,
    },
    MailboxKey(Option<[u8; 32]>),
    HouseOwners(Vec<(u32, String)>),
    Garbage(Vec<Garbage>),
    Due(bool),
}

/// Most garbage sets one read returns.
pub const MAX_GARBAGE_READ: usize = 256;

impl Masters {
    pub fn read(&self, read: &StoreRead) -> Result<StoreAnswer, MasterError> {
        Ok(match read {
            StoreRead::Version {
                key,
                reader,
                version,
            } => StoreAnswer::Version(Box::new(self.readable(key, reader, *version)?.clone())),
            StoreRead::List {
                kind,
                owner,
                reader,
            } => StoreAnswer::List(self.list(*kind, owner.as_deref(), reader)),
            StoreRead::RefreshChoice { key, version } => {
                let (id, packets, key_id) = self.refresh_choice(key, *version)?;
                StoreAnswer::RefreshChoice {
                    id,
                    packets,
                    key_id,
                }
            }
            StoreRead::MailboxKey(user) => StoreAnswer::MailboxKey(self.mailbox_key(user)),
            StoreRead::HouseOwners(houses) => {
                let asked = &houses[..houses.len().min(super::MAX_HOUSES_PER_MAILBOX)];
                StoreAnswer::HouseOwners(self.house_owners(asked))
            }
            StoreRead::Garbage(limit) => {
                StoreAnswer::Garbage(self.garbage((*limit).min(MAX_GARBAGE_READ)))
            }
            StoreRead::Due(now) => StoreAnswer::Due(self.due(*now)),
        })
    }
}
