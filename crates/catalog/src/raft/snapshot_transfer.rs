//! A snapshot travels from leader to follower in chunks, each a request of its own well under
//! the servers' body limit: a partition's snapshot grows with the flags table (tens of bytes
//! per flag, so a busy day passes any single request's limit), and a follower that could not
//! receive it would never catch up once the leader compacted its log.
//!
//! The follower assembles the chunks of one snapshot per partition, in order, and installs
//! the snapshot when the last chunk arrived. A first chunk (offset 0) starts over, so a
//! leader that retries after a lost answer, or a new leader, simply sends again.

use super::types::{NodeId, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use thiserror::Error;

/// Bytes of snapshot data per chunk: half the body limit, leaving room for the envelope.
pub const SNAPSHOT_CHUNK_BYTES: usize = mcloud_core::wire::MAX_BODY_BYTES / 2;
/// Largest snapshot a follower assembles: a bound on what a sender can make it buffer.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 << 30;

/// One piece of a snapshot: `data` is `[offset, offset + data.len())` of `total` bytes.
#[derive(Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub total: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Error, PartialEq)]
pub enum ChunkError {
    #[error("snapshot of {total} bytes is larger than the limit of {MAX_SNAPSHOT_BYTES} bytes")]
    TooLarge { total: u64 },
    #[error("chunk [{offset}, {end}) lies outside the snapshot's {total} bytes")]
    OutOfRange { offset: u64, end: u64, total: u64 },
    #[error("chunk at offset {offset} of snapshot {snapshot} from node {from} does not continue the transfer under way (expected offset {expected}); start again at offset 0")]
    OutOfOrder {
        from: NodeId,
        snapshot: String,
        offset: u64,
        expected: u64,
    },
    #[error("empty chunk at offset {offset} of a {total}-byte snapshot")]
    Empty { offset: u64, total: u64 },
}

struct Transfer {
    from: NodeId,
    snapshot: String,
    total: u64,
    data: Vec<u8>,
}

/// A snapshot whose last chunk arrived, ready to install.
pub struct Assembled {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// The transfers under way at one node, one per partition.
#[derive(Default)]
pub struct Assembler {
    transfers: Mutex<HashMap<u32, Transfer>>,
    /// Size of the last snapshot assembled per partition, for the status page.
    last: Mutex<HashMap<u32, u64>>,
}

impl Assembler {
    /// Takes a chunk; returns the whole snapshot once its last chunk is in.
    pub fn accept(
        &self,
        partition: u32,
        from: NodeId,
        chunk: SnapshotChunk,
    ) -> Result<Option<Assembled>, ChunkError> {
        let SnapshotChunk {
            vote,
            meta,
            offset,
            total,
            data,
        } = chunk;
        if total > MAX_SNAPSHOT_BYTES {
            return Err(ChunkError::TooLarge { total });
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > total {
            return Err(ChunkError::OutOfRange { offset, end, total });
        }
        if data.is_empty() && total > 0 {
            return Err(ChunkError::Empty { offset, total });
        }
        let mut transfers = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        if offset == 0 {
            transfers.insert(
                partition,
                Transfer {
                    from,
                    snapshot: meta.snapshot_id.clone(),
                    total,
                    // Grows with the chunks: a sender must send bytes to make us hold them.
                    data: Vec::new(),
                },
            );
        }
        let Some(transfer) = transfers.get_mut(&partition).filter(|t| {
            t.from == from
                && t.snapshot == meta.snapshot_id
                && t.total == total
                && t.data.len() as u64 == offset
        }) else {
            let expected = transfers.get(&partition).map_or(0, |t| t.data.len() as u64);
            return Err(ChunkError::OutOfOrder {
                from,
                snapshot: meta.snapshot_id,
                offset,
                expected,
            });
        };
        transfer.data.extend_from_slice(&data);
        if (transfer.data.len() as u64) < total {
            return Ok(None);
        }
        let done = transfers
            .remove(&partition)
            .map(|t| t.data)
            .unwrap_or_default();
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition, total);
        Ok(Some(Assembled {
            vote,
            meta,
            data: done,
        }))
    }

    /// Bytes of the last snapshot this node received for `partition`.
    pub fn last_received(&self, partition: u32) -> Option<u64> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .copied()
    }
}

/// Cuts `data` into chunks of at most [`SNAPSHOT_CHUNK_BYTES`] (one empty chunk for empty
/// data), as (offset, bytes).
pub fn chunks(data: &[u8]) -> Vec<(u64, &[u8])> {
    if data.is_empty() {
        return vec![(0, data)];
    }
    data.chunks(SNAPSHOT_CHUNK_BYTES)
        .enumerate()
        .map(|(i, piece)| ((i * SNAPSHOT_CHUNK_BYTES) as u64, piece))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> SnapshotMeta {
        SnapshotMeta {
            snapshot_id: id.to_string(),
            ..Default::default()
        }
    }

    fn chunk(id: &str, offset: u64, total: u64, data: &[u8]) -> SnapshotChunk {
        SnapshotChunk {
            vote: Vote::default(),
            meta: meta(id),
            offset,
            total,
            data: data.to_vec(),
        }
    }

    #[test]
    fn chunks_in_order_assemble_the_snapshot() {
        let data: Vec<u8> = (0..(2 * SNAPSHOT_CHUNK_BYTES + 17))
            .map(|i| i as u8)
            .collect();
        let a = Assembler::default();
        let pieces = chunks(&data);
        assert_eq!(pieces.len(), 3);
        let total = data.len() as u64;
        for (i, (offset, piece)) in pieces.iter().enumerate() {
            let got = a.accept(0, 7, chunk("s1", *offset, total, piece)).unwrap();
            assert_eq!(got.is_some(), i == pieces.len() - 1);
            if let Some(done) = got {
                assert_eq!(done.data, data);
            }
        }
        assert_eq!(a.last_received(0), Some(total));
    }

    #[test]
    fn an_empty_snapshot_is_one_empty_chunk() {
        let a = Assembler::default();
        let pieces = chunks(&[]);
        assert_eq!(pieces, vec![(0, &[][..])]);
        assert!(a.accept(0, 1, chunk("s", 0, 0, &[])).unwrap().is_some());
    }

    #[test]
    fn bad_chunks_are_refused_and_change_nothing() {
        let a = Assembler::default();
        assert_eq!(
            a.accept(0, 1, chunk("s", 0, MAX_SNAPSHOT_BYTES + 1, b"x"))
                .err(),
            Some(ChunkError::TooLarge {
                total: MAX_SNAPSHOT_BYTES + 1
            })
        );
        assert!(matches!(
            a.accept(0, 1, chunk("s", u64::MAX, 10, b"xy")),
            Err(ChunkError::OutOfRange { .. })
        ));
        assert!(a.accept(0, 1, chunk("s", 0, 6, b"ab")).unwrap().is_none());
        // A gap, another sender, another snapshot: refused, the transfer goes on.
        for bad in [
            (1, chunk("s", 4, 6, b"ef")),
            (2, chunk("s", 2, 6, b"cd")),
            (1, chunk("t", 2, 6, b"cd")),
            (1, chunk("s", 2, 6, b"")),
        ] {
            assert!(a.accept(0, bad.0, bad.1).is_err());
        }
        assert!(a.accept(0, 1, chunk("s", 2, 6, b"cd")).unwrap().is_none());
        let done = a.accept(0, 1, chunk("s", 4, 6, b"ef")).unwrap().unwrap();
        assert_eq!(done.data, b"abcdef");
        // A retry from the start replaces a transfer left half-way.
        assert!(a.accept(1, 1, chunk("u", 0, 4, b"ab")).unwrap().is_none());
        assert!(a.accept(1, 1, chunk("u", 0, 4, b"wx")).unwrap().is_none());
        let done = a.accept(1, 1, chunk("u", 2, 4, b"yz")).unwrap().unwrap();
        assert_eq!(done.data, b"wxyz");
    }
}
