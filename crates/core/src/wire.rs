//! Messages between sensors, clouds, the catalog and the collector. Bodies are postcard on the
//! wire (compact, so the per-record cost stays a few dozen bytes); errors are JSON
//! (see `http`).

use crate::reading::{GroupId, GroupKey, GroupLevel, Metric};
use crate::share::RecordShares;
use crate::stats::Partial;
use crate::window::Window;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Largest batch a cloud accepts, in records.
pub const MAX_BATCH_RECORDS: usize = 65_536;
/// Largest request body any endpoint accepts (a full batch is about 4.5 MiB).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Largest number of flags in one catalog request.
pub const MAX_FLAGS_PER_REQUEST: usize = 100_000;

/// What a sensor aims a batch's upload body at (counted with the worst cases below), well
/// under [`MAX_BODY_BYTES`]: every cloud must receive its body before the flag's deadline, so
/// a transaction's bytes stay small next to what a link moves in a flag's lifetime, and
/// several transactions in flight keep every cloud busy.
pub const UPLOAD_TARGET_BYTES: usize = 1 << 20;

/// The most bytes one record adds to an encoded [`UploadBatch`] (postcard: varints of at most
/// 10 bytes for a u64 and 5 for a u32, a one-byte metric, and three field elements of
/// 16 bytes behind a one-byte length). A sensor cuts its batches with these worst cases, so a
/// batch never exceeds [`MAX_BODY_BYTES`] whatever the shape of the data.
pub const RECORD_WIRE_BYTES_MAX: usize = 10 + 10 + 1 + 3 * 5 + 3 * 17;
/// The most bytes one load histogram adds to an encoded [`UploadBatch`] (its bucket count,
/// under 2^14, takes a two-byte varint).
pub const HISTOGRAM_WIRE_BYTES_MAX: usize = 3 * 5 + 10 + 2 + crate::histogram::BUCKETS * 17;
/// An encoded [`UploadBatch`]'s bytes besides its records and histograms: id, parties and
/// the two length prefixes.
pub const UPLOAD_OVERHEAD_BYTES: usize = 19 + 3 + 3 + 2 * 5;

/// The most bytes an upload of `records` records and `histograms` histograms can encode to.
pub const fn upload_bytes_max(records: usize, histograms: usize) -> usize {
    UPLOAD_OVERHEAD_BYTES + records * RECORD_WIRE_BYTES_MAX + histograms * HISTOGRAM_WIRE_BYTES_MAX
}

/// Identifies one upload batch, and so one flag. Random, so ids from independent sensors
/// never collide.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BatchId(pub u128);

impl BatchId {
    pub fn random() -> BatchId {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        BatchId(u128::from_le_bytes(bytes))
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for BatchId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        u128::from_str_radix(s, 16)
            .map(BatchId)
            .map_err(|_| format!("{s:?} is not a batch id (32 hex digits)"))
    }
}

/// One reading's share for one cloud. The key, time and group travel in the clear: they are
/// metadata the clouds need to aggregate; only the value is secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShareRecord {
    pub key: u64,
    pub ts: u64,
    pub metric: Metric,
    pub group: GroupKey,
    pub share: RecordShares,
}

/// Histograms cover fixed 30-second windows (the DEBS 2014 output period).
pub const HISTOGRAM_WINDOW_SECS: u64 = 30;

/// One cloud's share of a plug's load histogram over one 30 s window: the sensor counts its
/// own readings per bucket (see `histogram`) and shares the counts like any value, so the
/// clouds can sum histograms and a collector can estimate medians without seeing a reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramShare {
    pub plug: GroupKey,
    pub window_start: u64,
    pub counts: Vec<crate::Field>,
}

/// UPLOAD: a batch of shares for cloud `party` of `parties`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadBatch {
    pub batch_id: BatchId,
    pub party: u16,
    pub parties: u16,
    pub records: Vec<ShareRecord>,
    pub histograms: Vec<HistogramShare>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadAck {
    pub batch_id: BatchId,
    /// True when the cloud already held this batch (a retry): nothing was stored again.
    pub duplicate: bool,
}

/// A sensor's progress in event time. `ts`: every reading with a timestamp before `ts` has
/// been sent. With `end_of_stream` the sender is done: the window holding `ts` closes too.
/// The watermark is global: it only moves forward, and a window closes once it passes the
/// window's end plus the grace period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatermarkRequest {
    pub ts: u64,
    pub end_of_stream: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlagState {
    False,
    True,
    Error,
}

impl fmt::Display for FlagState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlagState::False => "FALSE",
            FlagState::True => "TRUE",
            FlagState::Error => "ERROR",
        })
    }
}

/// A flag as the catalog holds it. `deadline_ms` is Unix milliseconds on the catalog's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    pub state: FlagState,
    pub deadline_ms: u64,
}

impl Flag {
    pub fn is_final(&self) -> bool {
        self.state != FlagState::False
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateFlag {
    pub id: BatchId,
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateFlagsRequest {
    pub flags: Vec<CreateFlag>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagIds {
    pub ids: Vec<BatchId>,
}

/// Answer to CREATE and SET: the flags after the operation, in request order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagsResponse {
    pub flags: Vec<Flag>,
}

/// Answer to GET: `None` for ids the catalog never saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetFlagsResponse {
    pub flags: Vec<Option<Flag>>,
}

/// COMPUTE query parameters: windows whose start lies in [from, to).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeQuery {
    pub from: u64,
    pub to: u64,
    pub level: GroupLevel,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupPartial {
    pub metric: Metric,
    pub group: GroupId,
    pub partial: Partial,
}

/// One closed window's partial aggregate at one cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowPartial {
    pub window: Window,
    /// How many committed batches the window holds, and an order-independent fingerprint
    /// (XOR) of their ids: the collector checks that every cloud aggregated the same set.
    pub batches: u64,
    pub batch_digest: u128,
    pub groups: Vec<GroupPartial>,
}

/// A window that exists at a cloud but cannot be computed yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowPending {
    pub window: Window,
    /// False while the watermark has not passed the window's end plus grace.
    pub closed: bool,
    /// Batches touching the window whose flag is not final yet.
    pub pending_batches: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeResponse {
    pub party: u16,
    pub parties: u16,
    pub window_secs: u64,
    /// Every window that ends at or before this is closed: one this cloud does not list
    /// holds nothing here.
    pub closed_before: u64,
    pub ready: Vec<WindowPartial>,
    pub pending: Vec<WindowPending>,
}

/// A plug's partial sums over a range of windows at one cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlugRange {
    pub plug: GroupKey,
    /// Shares of the plug's load readings (x, x², 1) summed over the range.
    pub load: Partial,
    /// Shares of the plug's load histogram summed over the range (empty unless asked for).
    pub histogram: Vec<crate::Field>,
}

/// One range of a multi-range request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeSpec {
    pub from: u64,
    pub to: u64,
    pub histograms: bool,
}

/// RANGE: per-plug partial sums over every window in [from, to), all of them closed and decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub party: u16,
    pub parties: u16,
    pub from: u64,
    pub to: u64,
    /// Committed batches summed over the range's windows, and the XOR of their fingerprints,
    /// for the agreement check.
    pub batches: u64,
    pub batch_digest: u128,
    pub plugs: Vec<PlugRange>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::GroupKey;
    use prio::field::FieldElement;

    fn largest_field() -> crate::Field {
        -crate::Field::one()
    }

    /// The byte bounds a sensor cuts batches by hold for the largest possible items.
    #[test]
    fn upload_bytes_max_bounds_the_largest_batch() {
        let group = GroupKey {
            house: u32::MAX,
            household: u32::MAX,
            plug: u32::MAX,
        };
        let record = ShareRecord {
            key: u64::MAX,
            ts: u64::MAX,
            metric: Metric::Work,
            group,
            share: [largest_field(); 3],
        };
        let histogram = HistogramShare {
            plug: group,
            window_start: u64::MAX,
            counts: vec![largest_field(); crate::histogram::BUCKETS],
        };
        for (records, histograms) in [(0, 1), (1, 0), (300, 200), (70_000, 3)] {
            let batch = UploadBatch {
                batch_id: BatchId(u128::MAX),
                party: u16::MAX,
                parties: u16::MAX,
                records: vec![record.clone(); records],
                histograms: vec![histogram.clone(); histograms],
            };
            let encoded = postcard::to_stdvec(&batch).unwrap().len();
            assert!(
                encoded <= upload_bytes_max(records, histograms),
                "{records} records and {histograms} histograms encode to {encoded} bytes, above the bound {}",
                upload_bytes_max(records, histograms)
            );
        }
        let one_record = postcard::to_stdvec(&record).unwrap().len();
        assert_eq!(one_record, RECORD_WIRE_BYTES_MAX);
        let one_histogram = postcard::to_stdvec(&histogram).unwrap().len();
        assert_eq!(one_histogram, HISTOGRAM_WIRE_BYTES_MAX);
    }
}
