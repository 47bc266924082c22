//! The operations the masters replicate. Everything random in them is drawn by the proposing
//! node ([`Begin::draw`], [`RefreshBegin::draw`]) so that every replica applies the same.

use super::access::{FileAccess, Reader};
use super::{MasterError, ObjectKey, MAX_PACKETS, MAX_REPLICAS};
use crate::packet::{Cipher, KeySecret, PacketRecord, MAX_PACKET_BYTES, MIN_PACKET_BYTES};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Reserves a new version of an object and fixes how the writer must write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    pub key: ObjectKey,
    pub writer: Reader,
    /// The version's id: random, so a source cannot tell two versions' blobs apart by it.
    pub id: u64,
    pub len: u64,
    pub packet_bytes: u32,
    pub replicas: u8,
    /// The sources the writer may place copies on (to free them if the write is abandoned).
    pub sources: Vec<u8>,
    /// The random order the writer writes packets in.
    pub order: Vec<u32>,
    /// The AEAD of each packet, by packet id.
    pub ciphers: Vec<u8>,
    pub secret: KeySecret,
    pub lifetime_secs: u64,
    /// For files; a message is readable by its recipient only.
    pub access: FileAccess,
}

/// Where a version's packets went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub key: ObjectKey,
    pub writer: Reader,
    pub id: u64,
    pub records: Vec<PacketRecord>,
}

/// Starts rewriting a tenth of a version's packets under a new key secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshBegin {
    pub key: ObjectKey,
    pub writer: Reader,
    pub id: u64,
    pub packets: Vec<u32>,
    pub secret: KeySecret,
    pub ciphers: Vec<u8>,
}

/// Where the rewritten packets went; the version's expiry moves on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshCommit {
    pub key: ObjectKey,
    pub writer: Reader,
    pub id: u64,
    pub records: Vec<PacketRecord>,
}

/// A version's full record list after a repair: copies that could not be read are left out,
/// new copies (of the same packets, under the same keys and AEADs) put in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub key: ObjectKey,
    pub writer: Reader,
    pub id: u64,
    pub records: Vec<PacketRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOp {
    Begin(Begin),
    Commit(Commit),
    RefreshBegin(RefreshBegin),
    RefreshCommit(RefreshCommit),
    Repair(Repair),
    /// Deletes a file (by its owner) or consumes a message (by its recipient: `readmessage`).
    Delete {
        key: ObjectKey,
        by: Reader,
    },
    /// A user's mailbox public key (X25519, for HPKE): messages to it are sealed to this key.
    /// `houses` (those the user's token owns) replace the user's earlier ones: alerts about
    /// them go to this mailbox.
    SetMailboxKey {
        user: String,
        public_key: [u8; 32],
        houses: Vec<u32>,
    },
    /// Deletes what expired by the entry's time and drops abandoned writes.
    Expire,
    /// Garbage sets whose blobs are gone from every source.
    Freed(Vec<u64>),
}

/// Number of packets an object of `len` bytes takes (an empty object takes one, empty).
pub fn packets_for(len: u64, packet_bytes: u32) -> u64 {
    len.div_ceil(u64::from(packet_bytes.max(1))).max(1)
}

/// One random AEAD per packet.
fn draw_ciphers(n: u32, rng: &mut impl Rng) -> Vec<u8> {
    (0..n)
        .map(|_| Cipher::ALL[rng.gen_range(0..Cipher::ALL.len())].id())
        .collect()
}

/// Checks the shape numbers of a write before anything is drawn for it.
pub fn check_shape(
    len: u64,
    packet_bytes: u32,
    replicas: u8,
    sources: &[u8],
) -> Result<u32, MasterError> {
    if !(MIN_PACKET_BYTES..=MAX_PACKET_BYTES).contains(&packet_bytes) {
        return Err(MasterError::BadPlan(format!(
            "packet size {packet_bytes} is outside {MIN_PACKET_BYTES}..={MAX_PACKET_BYTES} bytes"
        )));
    }
    if len > super::MAX_OBJECT_BYTES {
        return Err(MasterError::BadPlan(format!(
            "{len} bytes is larger than the limit of {} bytes",
            super::MAX_OBJECT_BYTES
        )));
    }
    let n = packets_for(len, packet_bytes);
    if n > u64::from(MAX_PACKETS) {
        return Err(MasterError::BadPlan(format!(
            "{len} bytes in packets of {packet_bytes} is {n} packets; at most {MAX_PACKETS}: use larger packets"
        )));
    }
    let mut distinct = sources.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != sources.len() || sources.is_empty() {
        return Err(MasterError::BadPlan(
            "the writer's sources must be distinct, and at least one".into(),
        ));
    }
    if replicas == 0 || replicas > MAX_REPLICAS || usize::from(replicas) > sources.len() {
        return Err(MasterError::BadPlan(format!(
            "{replicas} copies of each packet on {} sources; between 1 and {MAX_REPLICAS}, and no more than the sources",
            sources.len()
        )));
    }
    Ok(n as u32)
}

impl Begin {
    /// A plan for writing `len` bytes: a fresh version id and key secret, a random write
    /// order and one random AEAD per packet.
    #[allow(clippy::too_many_arguments)]
    pub fn draw(
        key: ObjectKey,
        writer: Reader,
        len: u64,
        packet_bytes: u32,
        replicas: u8,
        sources: Vec<u8>,
        lifetime_secs: u64,
        access: FileAccess,
        rng: &mut impl Rng,
    ) -> Result<Begin, MasterError> {
        let n = check_shape(len, packet_bytes, replicas, &sources)?;
        let mut order: Vec<u32> = (0..n).collect();
        order.shuffle(rng);
        Ok(Begin {
            key,
            writer,
            id: rng.gen(),
            len,
            packet_bytes,
            replicas,
            sources,
            order,
            ciphers: draw_ciphers(n, rng),
            secret: KeySecret::random(0),
            lifetime_secs,
            access,
        })
    }
}

impl RefreshBegin {
    /// A refresh of `packets` under a new secret with key id `key_id` and fresh AEADs.
    pub fn draw(
        key: ObjectKey,
        writer: Reader,
        id: u64,
        packets: Vec<u32>,
        key_id: u8,
        rng: &mut impl Rng,
    ) -> RefreshBegin {
        let ciphers = draw_ciphers(packets.len() as u32, rng);
        RefreshBegin {
            key,
            writer,
            id,
            packets,
            secret: KeySecret::random(key_id),
            ciphers,
        }
    }
}
