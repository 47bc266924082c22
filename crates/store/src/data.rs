//! The file data plane: what a writer or reader does at the sources, once the master has
//! handed it a plan (for a write) or a grant (for a read). Nothing here talks to the master.
//!
//! A file of `len` bytes is cut into packets of `packet_bytes` (the last one shorter; an
//! empty file is one empty packet). Each packet is sealed at its place and stored on
//! `replicas` distinct sources chosen by [`crate::placement`]; a source that only takes
//! smaller blobs gets the packet as sub-packets, and then every copy of that packet uses the
//! same split, so that a place (and its key and nonce) only ever seals one plaintext. Repair
//! copies sealed blobs as they are, never seals again; a refresh seals under a new key id.

mod read;
mod speed;
mod upkeep;
mod write;

pub use speed::{aead_throughput, aead_throughput_of};
pub use upkeep::{free, repair, rewrite_packets};
pub use write::max_subs;

use crate::error::StoreError;
use crate::packet::{Cipher, KeySecret, PacketRecord, MAX_PACKET_BYTES, MIN_PACKET_BYTES};
use crate::source::Sources;
use futures::{StreamExt, TryStreamExt};
use std::time::Instant;

/// Plaintext bytes of the packets handled as one batch: one job of blob operations on the
/// threads of the local sources, so the hand-off to them is paid once per batch.
pub const BATCH_BYTES: usize = 512 * 1024;
/// Most packets in a batch, however small.
const BATCH_PACKETS: usize = 64;

fn batch_packets(packet_bytes: u32) -> usize {
    (BATCH_BYTES / packet_bytes.max(1) as usize).clamp(1, BATCH_PACKETS)
}

/// Batches in flight at once: two per thread for local sources, so that a thread done with
/// one finds the next queued.
fn in_flight(sources: &Sources) -> usize {
    2 * sources.parallelism()
}

/// How the master wants a new file version written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePlan {
    pub file: u64,
    pub len: u64,
    pub packet_bytes: u32,
    /// A random permutation of the packet ids, chosen by the master: packets are written in
    /// exactly this order.
    pub order: Vec<u32>,
    /// The cipher id of each packet, by packet id.
    pub ciphers: Vec<u8>,
    pub key: KeySecret,
    pub replicas: u8,
}

impl WritePlan {
    /// The write the masters planned in `begin`.
    pub fn of(begin: &crate::master::Begin) -> WritePlan {
        WritePlan {
            file: begin.id,
            len: begin.len,
            packet_bytes: begin.packet_bytes,
            order: begin.order.clone(),
            ciphers: begin.ciphers.clone(),
            key: begin.secret.clone(),
            replicas: begin.replicas,
        }
    }
}

/// What a reader may read of a file version: where its copies are and the key secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadGrant {
    pub file: u64,
    pub len: u64,
    pub packet_bytes: u32,
    pub records: Vec<PacketRecord>,
    pub keys: Vec<KeySecret>,
}

/// Number of packets of a file of `len` bytes (one, empty, for an empty file).
pub fn packet_count(len: u64, packet_bytes: u32) -> Result<u32, String> {
    if !(MIN_PACKET_BYTES..=MAX_PACKET_BYTES).contains(&packet_bytes) {
        return Err(format!(
            "packet size {packet_bytes} is outside {MIN_PACKET_BYTES}..={MAX_PACKET_BYTES}"
        ));
    }
    let n = len.div_ceil(u64::from(packet_bytes)).max(1);
    u32::try_from(n).map_err(|_| format!("{len} bytes make {n} packets, too many"))
}

/// The byte range of packet `p` in the file.
fn packet_range(len: u64, packet_bytes: u32, p: u32) -> std::ops::Range<usize> {
    let start = u64::from(p) * u64::from(packet_bytes);
    let end = (start + u64::from(packet_bytes)).min(len);
    start as usize..end.max(start) as usize
}

fn check_replicas(replicas: u8, sources: &Sources) -> Result<usize, String> {
    if replicas == 0 || usize::from(replicas) > sources.len() {
        return Err(format!(
            "{replicas} copies of each packet on {} sources; between 1 and the number of sources",
            sources.len()
        ));
    }
    Ok(usize::from(replicas))
}

impl WritePlan {
    /// Checks the plan against the data and the sources; returns the packet count.
    fn check(&self, data_len: usize, sources: &Sources) -> Result<u32, StoreError> {
        let bad = |m: String| Err(StoreError::BadPlan(m));
        if data_len as u64 != self.len {
            return bad(format!(
                "the plan is for {} bytes, the data has {data_len}",
                self.len
            ));
        }
        let n = packet_count(self.len, self.packet_bytes).map_err(StoreError::BadPlan)?;
        if self.order.len() != n as usize {
            return bad(format!(
                "the order has {} packets, the file {n}",
                self.order.len()
            ));
        }
        let mut seen = vec![false; n as usize];
        for &p in &self.order {
            match seen.get_mut(p as usize) {
                Some(s) if !*s => *s = true,
                _ => return bad(format!("the order is not a permutation (packet {p})")),
            }
        }
        if self.ciphers.len() != n as usize {
            return bad(format!("{} ciphers for {n} packets", self.ciphers.len()));
        }
        for &c in &self.ciphers {
            Cipher::from_id(c)?;
        }
        check_replicas(self.replicas, sources).map_err(StoreError::BadPlan)?;
        Ok(n)
    }
}

/// One copy of a packet, as the grant records it.
#[derive(Clone, Copy, Debug)]
struct Copy {
    source: u8,
    cipher: Cipher,
    key: u8,
    /// Number of sub-packets (0..subs are all recorded).
    subs: u8,
}

/// A grant checked and indexed by packet.
struct Layout<'a> {
    grant: &'a ReadGrant,
    copies: Vec<Vec<Copy>>,
}

impl<'a> Layout<'a> {
    fn new(grant: &'a ReadGrant) -> Result<Layout<'a>, StoreError> {
        let bad = |m: String| Err(StoreError::BadGrant(m));
        let n = packet_count(grant.len, grant.packet_bytes).map_err(StoreError::BadGrant)?;
        let mut records = grant.records.clone();
        records.sort_unstable_by_key(|r| (r.packet, r.source, r.sub));
        let mut copies: Vec<Vec<Copy>> = vec![Vec::new(); n as usize];
        for r in &records {
            let Some(of_packet) = copies.get_mut(r.packet as usize) else {
                return bad(format!(
                    "packet {} is past the file's {n} packets",
                    r.packet
                ));
            };
            let cipher = Cipher::from_id(r.cipher).map_err(|_| {
                StoreError::BadGrant(format!("packet {}: cipher {}", r.packet, r.cipher))
            })?;
            if !grant.keys.iter().any(|k| k.id == r.key) {
                return bad(format!(
                    "packet {} is under key {}, not granted",
                    r.packet, r.key
                ));
            }
            match of_packet.last_mut() {
                Some(c) if c.source == r.source => {
                    if r.sub != c.subs || c.cipher != cipher || c.key != r.key {
                        return bad(format!(
                            "packet {} on source {}: sub-packets do not follow on",
                            r.packet, r.source
                        ));
                    }
                    c.subs = c.subs.checked_add(1).ok_or_else(|| {
                        StoreError::BadGrant(format!("packet {}: too many sub-packets", r.packet))
                    })?;
                }
                _ if r.sub != 0 => {
                    return bad(format!(
                        "packet {} on source {} misses sub-packet 0",
                        r.packet, r.source
                    ))
                }
                _ => of_packet.push(Copy {
                    source: r.source,
                    cipher,
                    key: r.key,
                    subs: 1,
                }),
            }
        }
        if let Some(p) = copies.iter().position(Vec::is_empty) {
            return bad(format!("packet {p} has no copy"));
        }
        Ok(Layout { grant, copies })
    }

    fn key(&self, id: u8) -> Result<&'a KeySecret, StoreError> {
        self.grant
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::BadGrant(format!("key {id} is not granted")))
    }

    fn range(&self, p: u32) -> std::ops::Range<usize> {
        packet_range(self.grant.len, self.grant.packet_bytes, p)
    }
}

/// Writes a new file version as planned; returns its records sorted by (packet, sub, source).
pub async fn write_file(
    sources: &Sources,
    plan: &WritePlan,
    data: &[u8],
) -> Result<Vec<PacketRecord>, StoreError> {
    let started = Instant::now();
    let n = plan.check(data.len(), sources)?;
    let replicas = usize::from(plan.replicas);
    // Batches by index rather than `chunks()`: a closure over borrowed slices is generic
    // over their lifetime, and a caller's spawned task then fails rustc's `Send` check.
    let per_batch = batch_packets(plan.packet_bytes);
    let mut records: Vec<PacketRecord> =
        futures::stream::iter((0..plan.order.len()).step_by(per_batch))
            .map(|at| async move {
                let batch = &plan.order[at..plan.order.len().min(at + per_batch)];
                let packets = batch
                    .iter()
                    .map(|&p| {
                        let packet = write::Packet {
                            file: plan.file,
                            packet: p,
                            cipher: Cipher::from_id(plan.ciphers[p as usize])?,
                            key: &plan.key,
                        };
                        Ok((packet, &data[packet_range(plan.len, plan.packet_bytes, p)]))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                write::write_packets(sources, &packets, replicas).await
            })
            .buffer_unordered(in_flight(sources))
            .try_concat()
            .await?;
    records.sort_unstable();
    tracing::debug!(
        file = plan.file,
        packets = n,
        bytes = plan.len,
        ms = started.elapsed().as_millis() as u64,
        "file written"
    );
    Ok(records)
}

/// A zeroed buffer for a file read. Zeroed memory comes from the allocator untouched, so
/// creating it costs no pass over the file, but each of its pages faults in on first write:
/// on the 2-core reference machine (a VM) a fault costs 2 µs, which is 35 ms of a 64 MiB
/// read, as much as decrypting it. Huge pages, where the kernel gives them on request, fault
/// 512 times less often.
fn output_buffer(len: usize) -> Vec<u8> {
    let out = vec![0u8; len];
    #[cfg(target_os = "linux")]
    if len >= 4 << 20 {
        const PAGE: usize = 4096;
        let start = out.as_ptr() as usize;
        let aligned = start.div_ceil(PAGE) * PAGE;
        let end = (start + len) / PAGE * PAGE;
        if end > aligned {
            // SAFETY: the range lies within `out`'s allocation, page-aligned as madvise wants;
            // MADV_HUGEPAGE is advice on how to back it and changes no byte of it. A refusal
            // (no transparent huge pages) leaves the buffer as it was.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    out
}

/// Reads a file version: each packet from the first of its copies (in placement order) that
/// opens, falling back to the next on any error.
pub async fn read_file(sources: &Sources, grant: &ReadGrant) -> Result<Vec<u8>, StoreError> {
    let started = Instant::now();
    let layout = Layout::new(grant)?;
    let len = usize::try_from(grant.len)
        .map_err(|_| StoreError::BadGrant(format!("{} bytes do not fit here", grant.len)))?;
    let mut out = output_buffer(len);
    let layout = &layout;
    // Owned batches of ids, for the same reason as in `write_file`.
    let count = layout.copies.len() as u32;
    let per_batch = batch_packets(grant.packet_bytes) as u32;
    let mut batches = futures::stream::iter((0..count).step_by(per_batch.max(1) as usize))
        .map(|at| async move {
            let batch: Vec<u32> = (at..count.min(at.saturating_add(per_batch))).collect();
            read::read_packets(sources, layout, &batch).await
        })
        .buffer_unordered(in_flight(sources));
    while let Some(packets) = batches.try_next().await? {
        for (p, plaintext) in packets {
            out[layout.range(p)].copy_from_slice(&plaintext);
        }
    }
    tracing::debug!(
        file = grant.file,
        bytes = len,
        ms = started.elapsed().as_millis() as u64,
        "file read"
    );
    Ok(out)
}
