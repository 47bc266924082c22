//! An app's view of the storage: files and mailbox messages, written to and read from the
//! sources directly, with the masters (any catalog node) deciding plans, keys and access.

use crate::data::{read_file, repair, rewrite_packets, write_file, ReadGrant, WritePlan};
use crate::error::StoreError;
use crate::mailbox::{MailboxError, MailboxKeys};
use crate::master::{FileAccess, Kind, ObjectInfo, ObjectKey, Version};
use crate::packet::DEFAULT_PACKET_BYTES;
use crate::source::Sources;
use crate::wire::{
    BeginRequest, StoreRequest, StoreResponse, Target, STORE_CLOUD_PATH, STORE_PATH,
};
use mcloud_core::http::{post, CallError, Endpoint};
use std::sync::Arc;
use thiserror::Error;

/// Default lifetime of a stored version before it must be refreshed: 30 days.
pub const DEFAULT_LIFETIME_SECS: u64 = 30 * 86_400;
/// Default copies of each packet.
pub const DEFAULT_REPLICAS: u8 = 2;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The masters refused or could not be reached (the code says which).
    #[error(transparent)]
    Masters(#[from] CallError),
    #[error(transparent)]
    Data(#[from] StoreError),
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    #[error("the masters answered {0} with something else")]
    Unexpected(&'static str),
    #[error("no catalog node answered: {0}")]
    NoMaster(String),
}

impl ClientError {
    /// The stable code of the refusal, for callers that match on it.
    pub fn code(&self) -> String {
        match self {
            ClientError::Masters(CallError::Rejected { code, .. }) => code.clone(),
            ClientError::Masters(_) | ClientError::NoMaster(_) => "masters_unavailable".into(),
            ClientError::Data(e) => e.code().into(),
            ClientError::Mailbox(e) => e.code().into(),
            ClientError::Unexpected(_) => "unexpected_answer".into(),
        }
    }
}

/// How the client writes.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub replicas: u8,
    pub packet_bytes: u32,
    pub lifetime_secs: u64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            replicas: DEFAULT_REPLICAS,
            packet_bytes: DEFAULT_PACKET_BYTES,
            lifetime_secs: DEFAULT_LIFETIME_SECS,
        }
    }
}

/// One app's storage client: the catalog nodes to ask (each client carrying the app's
/// token) and the sources.
#[derive(Clone)]
pub struct StoreClient {
    masters: Vec<Endpoint>,
    /// The masters' route for this kind of caller.
    path: &'static str,
    sources: Arc<Sources>,
    pub options: WriteOptions,
}

fn grant_of(v: &Version) -> ReadGrant {
    ReadGrant {
        file: v.id,
        len: v.len,
        packet_bytes: v.packet_bytes,
        records: v.records.clone(),
        keys: v.keys.clone(),
    }
}

impl StoreClient {
    /// An app's client: each endpoint's HTTP client carries the app's token.
    pub fn new(masters: Vec<Endpoint>, sources: Arc<Sources>) -> StoreClient {
        StoreClient {
            masters,
            path: STORE_PATH,
            sources,
            options: WriteOptions::default(),
        }
    }

    /// A cloud's client: each endpoint's HTTP client presents the cloud's peer certificate,
    /// and the masters know it as [`crate::master::cloud_user`] of its party.
    pub fn for_cloud(masters: Vec<Endpoint>, sources: Arc<Sources>) -> StoreClient {
        StoreClient {
            path: STORE_CLOUD_PATH,
            ..StoreClient::new(masters, sources)
        }
    }

    pub fn sources(&self) -> &Arc<Sources> {
        &self.sources
    }

    /// Asks the catalog nodes in turn until one answers (a node that cannot reach the
    /// leader, or is down, passes the request on to the next).
    async fn call(&self, req: &StoreRequest) -> Result<StoreResponse, ClientError> {
        let mut last = None;
        for node in &self.masters {
            let url = format!("{}{}", node.url, self.path);
            match post::<_, StoreResponse>(&node.http, &url, req).await {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_retryable() => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClientError::NoMaster(
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "no catalog node configured".into()),
        ))
    }

    async fn write(
        &self,
        target: Target,
        data: &[u8],
        access: FileAccess,
    ) -> Result<ObjectKey, ClientError> {
        let started = std::time::Instant::now();
        let StoreResponse::Plan(begin) = self
            .call(&StoreRequest::Begin(BeginRequest {
                target,
                len: data.len() as u64,
                packet_bytes: self.options.packet_bytes,
                replicas: self.options.replicas,
                sources: self.sources.ids(),
                lifetime_secs: self.options.lifetime_secs,
                access,
            }))
            .await?
        else {
            return Err(ClientError::Unexpected("a write"));
        };
        let plan = WritePlan::of(&begin);
        let planned = started.elapsed();
        let records = write_file(&self.sources, &plan, data).await?;
        let written = started.elapsed();
        self.call(&StoreRequest::Commit {
            key: begin.key.clone(),
            id: begin.id,
            records,
        })
        .await?;
        tracing::debug!(
            bytes = data.len(),
            plan_ms = planned.as_millis() as u64,
            data_ms = (written - planned).as_millis() as u64,
            commit_ms = (started.elapsed() - written).as_millis() as u64,
            "stored a version"
        );
        Ok(begin.key)
    }

    /// Stores `data` as a new version of the caller's file `name`.
    pub async fn put(
        &self,
        name: &str,
        data: &[u8],
        access: FileAccess,
    ) -> Result<(), ClientError> {
        self.write(Target::File { name: name.into() }, data, access)
            .await
            .map(|_| ())
    }

    async fn version(&self, key: ObjectKey, version: Option<u32>) -> Result<Version, ClientError> {
        match self.call(&StoreRequest::Get { key, version }).await? {
            StoreResponse::Version(v) => Ok(*v),
            _ => Err(ClientError::Unexpected("a read")),
        }
    }

    /// What the masters hold about a version of `owner`'s file `name` that the caller may
    /// read (the newest when `version` is None; an empty owner is the caller): its
    /// packet records, keys and dates.
    pub async fn describe(
        &self,
        owner: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Version, ClientError> {
        self.version(ObjectKey::file(owner, name), version).await
    }

    /// A version of `owner`'s file `name` (the newest when `version` is None; an empty
    /// owner is the caller).
    pub async fn get(
        &self,
        owner: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Vec<u8>, ClientError> {
        let v = self.version(ObjectKey::file(owner, name), version).await?;
        Ok(read_file(&self.sources, &grant_of(&v)).await?)
    }

    /// The files the caller may read, of `owner` or of everyone.
    pub async fn list(&self, owner: Option<&str>) -> Result<Vec<ObjectInfo>, ClientError> {
        match self
            .call(&StoreRequest::List {
                kind: Kind::File,
                owner: owner.map(Into::into),
            })
            .await?
        {
            StoreResponse::List(l) => Ok(l),
            _ => Err(ClientError::Unexpected("a listing")),
        }
    }

    /// Deletes the caller's file `name`, every version; its packets are freed at the sources.
    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.call(&StoreRequest::Delete {
            key: ObjectKey::file("", name),
        })
        .await
        .map(|_| ())
    }

    /// Refreshes every version of the caller's file `name`: rewrites the tenth of its
    /// packets the masters choose under a new key, which extends its expiry. Returns
    /// (version, packets rewritten) for each.
    pub async fn refresh(&self, name: &str) -> Result<Vec<(u32, usize)>, ClientError> {
        let key = ObjectKey::file("", name);
        let newest = self.version(key.clone(), None).await?.number;
        let oldest = newest.saturating_sub(crate::master::MAX_VERSIONS as u32 - 1);
        let versions: Vec<u32> = (oldest..=newest).collect();
        let mut done = Vec::new();
        for number in versions {
            let answer = self
                .call(&StoreRequest::RefreshBegin {
                    key: key.clone(),
                    version: number,
                })
                .await;
            let (plan, version) = match answer {
                Ok(StoreResponse::Refresh { plan, version }) => (plan, version),
                // A version that expired or was replaced since: nothing to refresh.
                Err(e) if e.code() == "not_found" && number != newest => continue,
                Err(e) => return Err(e),
                Ok(_) => return Err(ClientError::Unexpected("a refresh")),
            };
            let records = rewrite_packets(
                &self.sources,
                &grant_of(&version),
                &plan.packets,
                &plan.secret,
                &plan.ciphers,
                version.replicas,
            )
            .await?;
            self.call(&StoreRequest::RefreshCommit {
                key: key.clone(),
                id: version.id,
                records,
            })
            .await?;
            done.push((number, plan.packets.len()));
        }
        Ok(done)
    }

    /// Repairs every version of the caller's file `name`: each copy that cannot be read is
    /// replaced from a good one on another source, and the masters record the new copies
    /// (the lost ones are freed if their source comes back). Returns (version, copies added,
    /// copies dropped) of each version that needed it.
    pub async fn repair(&self, name: &str) -> Result<Vec<(u32, usize, usize)>, ClientError> {
        let newest = self.describe("", name, None).await?.number;
        let oldest = newest.saturating_sub(crate::master::MAX_VERSIONS as u32 - 1);
        let mut done = Vec::new();
        for number in oldest..=newest {
            let version = match self.describe("", name, Some(number)).await {
                Ok(v) => v,
                Err(e) if e.code() == "not_found" && number != newest => continue,
                Err(e) => return Err(e),
            };
            let records = repair(&self.sources, &grant_of(&version), version.replicas).await?;
            if records == version.records {
                continue;
            }
            let before: std::collections::BTreeSet<_> = version.records.iter().collect();
            let after: std::collections::BTreeSet<_> = records.iter().collect();
            let added = after.difference(&before).count();
            let dropped = before.difference(&after).count();
            self.call(&StoreRequest::Repair {
                key: ObjectKey::file("", name),
                id: version.id,
                records,
            })
            .await?;
            done.push((number, added, dropped));
        }
        Ok(done)
    }

    /// Publishes the caller's mailbox public key; messages to the caller are sealed to it.
    /// The owners whose mailboxes take alerts about `houses`, of those the caller's token
    /// covers (an owner names its houses when it publishes its mailbox key).
    pub async fn house_owners(&self, houses: &[u32]) -> Result<Vec<(u32, String)>, ClientError> {
        let mut owners = Vec::new();
        for asked in houses.chunks(crate::master::MAX_HOUSES_PER_MAILBOX) {
            match self
                .call(&StoreRequest::HouseOwners {
                    houses: asked.to_vec(),
                })
                .await?
            {
                StoreResponse::HouseOwners(found) => owners.extend(found),
                _ => return Err(ClientError::Unexpected("a house owners' lookup")),
            }
        }
        Ok(owners)
    }

    pub async fn set_mailbox_key(&self, keys: &MailboxKeys) -> Result<(), ClientError> {
        self.call(&StoreRequest::SetMailboxKey {
            public_key: keys.public(),
        })
        .await
        .map(|_| ())
    }

    /// Sends `body` to `recipient`, sealed to its mailbox key; returns the message's id.
    pub async fn send(&self, recipient: &str, body: &[u8]) -> Result<String, ClientError> {
        let StoreResponse::MailboxKey(key) = self
            .call(&StoreRequest::MailboxKey {
                user: recipient.into(),
            })
            .await?
        else {
            return Err(ClientError::Unexpected("a mailbox key"));
        };
        let Some(key) = key else {
            return Err(ClientError::Mailbox(MailboxError::BadKey(format!(
                "{recipient} has no mailbox key yet"
            ))));
        };
        let sealed = crate::mailbox::seal(&key, body)?;
        let key = self
            .write(
                Target::Message {
                    recipient: recipient.into(),
                },
                &sealed,
                FileAccess::default(),
            )
            .await?;
        Ok(key.name)
    }

    /// `messages()`: the caller's messages (id, sender, size, expiry).
    pub async fn messages(&self) -> Result<Vec<ObjectInfo>, ClientError> {
        match self
            .call(&StoreRequest::List {
                kind: Kind::Message,
                owner: None,
            })
            .await?
        {
            StoreResponse::List(l) => Ok(l),
            _ => Err(ClientError::Unexpected("a message listing")),
        }
    }

    /// A message of the caller's by id (the masters fill in the caller as recipient).
    fn message_key(id: &str) -> Result<ObjectKey, ClientError> {
        let id = u64::from_str_radix(id, 16).map_err(|_| {
            ClientError::Mailbox(MailboxError::BadKey(format!("{id:?} is not a message id")))
        })?;
        Ok(ObjectKey::message("", id))
    }

    /// `message(id)`: the message opened with the caller's key (it stays in the mailbox).
    pub async fn message(&self, id: &str, keys: &MailboxKeys) -> Result<Vec<u8>, ClientError> {
        let v = self.version(Self::message_key(id)?, None).await?;
        let sealed = read_file(&self.sources, &grant_of(&v)).await?;
        Ok(keys.open(&sealed)?)
    }

    /// `readmessage(id)`: the masters stop keeping the message and its packets are freed.
    pub async fn read_message(&self, id: &str) -> Result<(), ClientError> {
        self.call(&StoreRequest::Delete {
            key: Self::message_key(id)?,
        })
        .await
        .map(|_| ())
    }
}
