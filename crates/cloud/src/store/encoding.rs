//! How each value of the values table is encoded. All of it is postcard, and all of it is
//! the on-disk format: existing data directories hold these encodings.

use crate::elastic::BucketState;
use crate::sums::{HistogramCell, WindowSums};
use crate::windows::SealedWindow;
use crate::CloudError;
use bytes::Bytes;
use mcloud_core::reading::{GroupKey, Metric};
use mcloud_core::upload::expand;
use mcloud_core::wire::{UploadBatch, UploadRequest};
use mcloud_core::{BatchId, Partial, Window};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::HashMap;

/// A batch as the values table keeps it: an encoded `UploadRequest`, whose shares stay as
/// they came (a seed party's stays a seed, expanded again whenever it is replayed).
pub struct StoredBatch(pub(super) Bytes);

impl StoredBatch {
    /// An upload body as received, which decoded as an `UploadRequest`: kept byte for byte,
    /// so storing it costs no encoding.
    pub fn received(body: Bytes) -> StoredBatch {
        StoredBatch(body)
    }

    /// A batch this cloud put together itself (robust mode's verified shares).
    pub fn encode(request: &UploadRequest) -> Result<StoredBatch, postcard::Error> {
        postcard::to_stdvec(request).map(|bytes| StoredBatch(Bytes::from(bytes)))
    }
}

pub(super) fn decode_batch(id: BatchId, bytes: &[u8]) -> Result<UploadRequest, CloudError> {
    mcloud_core::http::decode(bytes)
        .map_err(|e| CloudError::Storage(format!("stored batch {id}: {}", e.message)))
}

/// A stored batch's shares as workers take them: only those of windows `keep` keeps. Every
/// caller drops the windows before the retention horizon: a batch that straddles it stays
/// stored for its later windows; its earlier ones are gone from the state, and replaying
/// their shares would bring them back, held by this cloud alone.
pub(super) fn expand_kept(
    id: BatchId,
    request: UploadRequest,
    window_secs: u64,
    keep: impl Fn(u64) -> bool,
) -> Result<UploadBatch, CloudError> {
    let mut batch =
        expand(request).map_err(|e| CloudError::Storage(format!("stored batch {id}: {e}")))?;
    let kept = |ts: u64| keep(Window::containing(ts, window_secs).start);
    batch.records.retain(|r| kept(r.ts));
    batch.histograms.retain(|h| kept(h.window_start));
    Ok(batch)
}

/// A checkpointed bucket's key and stored state.
pub(super) fn encode_state(
    bucket: usize,
    state: &BucketState,
) -> Result<(u32, Vec<u8>), CloudError> {
    let key = u32::try_from(bucket)
        .map_err(|_| CloudError::Storage(format!("bucket {bucket} out of range")))?;
    let bytes = postcard::to_stdvec(state)
        .map_err(|e| CloudError::Storage(format!("bucket {bucket}: {e}")))?;
    Ok((key, bytes))
}

pub(super) fn decode_state(bucket: u32, bytes: &[u8]) -> Result<(usize, BucketState), CloudError> {
    postcard::from_bytes(bytes)
        .map(|state| (bucket as usize, state))
        .map_err(|e| CloudError::Storage(format!("checkpoint of bucket {bucket}: {e}")))
}

/// Sealed windows on their way to [`super::Store::save_sealed`], each encoded as it is
/// added: a gathering of many windows then holds their encodings, never copies of all their
/// sums at once.
#[derive(Default)]
pub struct EncodedWindows(pub(super) Vec<(u64, Vec<u8>)>);

impl EncodedWindows {
    pub fn add(&mut self, start: u64, window: &SealedWindow) -> Result<(), CloudError> {
        let bytes = postcard::to_stdvec(window)
            .map_err(|e| CloudError::Storage(format!("window {start}: {e}")))?;
        self.0.push((start, bytes));
        Ok(())
    }
}

pub(super) fn decode_window(start: u64, bytes: &[u8]) -> Result<SealedWindow, CloudError> {
    postcard::from_bytes(bytes)
        .map_err(|e| CloudError::Storage(format!("stored window {start}: {e}")))
}

/// A stored window's record sums, batches and digest, its histograms stepped over: each
/// count's bytes are borrowed and dropped, never turned into a field element or allocated.
/// The layout is [`SealedWindow`]'s, field for field; the whole encoding must be consumed,
/// so a field added to `SealedWindow` fails here rather than being read wrong.
pub(super) fn decode_window_sums_only(
    start: u64,
    bytes: &[u8],
) -> Result<SealedWindow, CloudError> {
    let (window, rest) = postcard::take_from_bytes::<SumsOnlyWindow>(bytes)
        .map_err(|e| CloudError::Storage(format!("stored window {start}: {e}")))?;
    if !rest.is_empty() {
        return Err(CloudError::Storage(format!(
            "stored window {start}: {} bytes past its sums",
            rest.len()
        )));
    }
    let sums = WindowSums {
        groups: window.sums.groups,
        histograms: Default::default(),
    };
    Ok(SealedWindow::from_parts(
        sums,
        window.batches,
        window.digest,
    ))
}

#[derive(Deserialize)]
struct SumsOnlyWindow {
    sums: SumsOnly,
    batches: u64,
    digest: u128,
}

#[derive(Deserialize)]
struct SumsOnly {
    groups: HashMap<(Metric, GroupKey), Partial>,
    #[allow(dead_code)] // read only to step over it
    histograms: SkippedHistograms,
}

/// A `HashMap<HistogramCell, Vec<CountField>>` read and dropped.
struct SkippedHistograms;

impl<'de> Deserialize<'de> for SkippedHistograms {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Cells;
        impl<'de> Visitor<'de> for Cells {
            type Value = SkippedHistograms;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("histograms by cell")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // A vector of zero-sized values never allocates.
                while map
                    .next_entry::<HistogramCell, Vec<SkippedCount>>()?
                    .is_some()
                {}
                Ok(SkippedHistograms)
            }
        }
        deserializer.deserialize_map(Cells)
    }
}

/// One `CountField` (serialized as its bytes) read and dropped.
struct SkippedCount;

impl<'de> Deserialize<'de> for SkippedCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = SkippedCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count's bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                _: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(SkippedCount)
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
                Ok(SkippedCount)
            }
        }
        deserializer.deserialize_bytes(Count)
    }
}
