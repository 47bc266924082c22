//! Messages between sensors, clouds, the catalog and the collector. Bodies are postcard on the
//! wire (compact, so the per-record cost stays a few dozen bytes); errors are JSON
//! (see `http`).

use crate::reading::{GroupId, GroupKey, GroupLevel, Metric};
use crate::share::{RecordShares, SHARES_PER_RECORD};
use crate::stats::Partial;
use crate::window::Window;
use crate::{histogram, CountField, Field};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Largest batch a cloud accepts, in records and histograms.
pub const MAX_BATCH_RECORDS: usize = 65_536;
/// Largest request body any endpoint accepts. A batch of 4096 records is about 250 KiB at its
/// explicit party and 45 KiB at a seed party; each histogram adds about 1.7 KiB at the
/// explicit party and 8 bytes at a seed party.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Largest answer a server builds and a client reads: a RANGE or COMPUTE answer grows with
/// the plugs and ranges asked for, and neither side should hold an unbounded one.
pub const MAX_ANSWER_BYTES: usize = 256 << 20;
/// Largest number of flags in one catalog request.
pub const MAX_FLAGS_PER_REQUEST: usize = 100_000;

/// What a sensor aims a batch's upload body at (counted with `upload_wire_bytes_max`), well
/// under [`MAX_BODY_BYTES`]: every cloud must receive its body before the flag's deadline, so
/// a transaction's bytes stay small next to what a link moves in a flag's lifetime, and
/// several transactions in flight keep every cloud busy.
pub const UPLOAD_TARGET_BYTES: usize = 1 << 20;

/// Identifies one upload batch, and so one flag: the sensor's id in the top 32 bits (so the
/// catalog and the clouds can tell whose flag it is without storing an owner) and 96 random
/// bits (so a sensor's ids never collide).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BatchId(pub u128);

impl BatchId {
    pub fn of_sensor(sensor: u32) -> BatchId {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        BatchId(((sensor as u128) << 96) | (u128::from_le_bytes(bytes) >> 32))
    }

    /// The sensor that made the id.
    pub fn sensor(self) -> u32 {
        (self.0 >> 96) as u32
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
    pub counts: Vec<CountField>,
}

/// A batch of shares for cloud `party` of `parties`, as the cloud works with it: every
/// record and histogram with its explicit share. It travels in this form only inside a cloud
/// (node to worker); sensors send the compact `UploadRequest`, which `upload::expand` turns
/// into this.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadBatch {
    pub batch_id: BatchId,
    pub party: u16,
    pub parties: u16,
    pub records: Vec<ShareRecord>,
    pub histograms: Vec<HistogramShare>,
}

impl UploadBatch {
    /// A batch of records without histograms as the only party of one sees it (the
    /// plaintext baseline, and workers measured or tested on their own).
    pub fn single_party(batch_id: BatchId, records: Vec<ShareRecord>) -> UploadBatch {
        UploadBatch {
            batch_id,
            party: 0,
            parties: 1,
            records,
            histograms: Vec::new(),
        }
    }
}

/// What travels in the clear about one record: everything but its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    pub key: u64,
    pub ts: u64,
    pub metric: Metric,
    pub group: GroupKey,
}

/// What travels in the clear about one histogram: its plug and 30 s window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramMeta {
    pub plug: GroupKey,
    pub window_start: u64,
}

/// A cloud's shares of one batch, as they travel.
///
/// Exactly one party of a batch, `upload::explicit_party`, receives `Explicit` shares; every
/// other party receives a `Seed` and expands its shares from it, in a fixed order: for each
/// record in order its 3 `Field` elements (x, x², 1), then for each histogram in order its
/// `histogram::BUCKETS` `CountField` elements, all drawn from one `ShareStream` over the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Shares {
    Seed([u8; 32]),
    Explicit {
        /// One per record, in record order.
        records: Vec<RecordShares>,
        /// `histogram::BUCKETS` per histogram, histogram after histogram.
        histograms: Vec<CountField>,
    },
    /// A cloud's own output shares of a verified robust batch (`crate::robust`), laid out as
    /// `Explicit`: only ever stored by the cloud that verified them, and refused in an upload.
    Verified {
        records: Vec<RecordShares>,
        histograms: Vec<CountField>,
    },
}

/// UPLOAD: one cloud's body for one batch. The metadata is the same at every party; only
/// `party` and `shares` differ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadRequest {
    pub batch_id: BatchId,
    pub party: u16,
    pub parties: u16,
    pub records: Vec<RecordMeta>,
    pub histograms: Vec<HistogramMeta>,
    pub shares: Shares,
}

impl UploadRequest {
    /// Bytes the explicit shares of this batch take on the wire, whichever party this body is
    /// for: every party can tell from the metadata alone how large the batch is at its
    /// explicit party.
    pub fn explicit_share_bytes(&self) -> usize {
        let elements = self.histograms.len().saturating_mul(histogram::BUCKETS);
        1 + varint_len(self.records.len() as u64)
            + self.records.len().saturating_mul(RECORD_SHARE_BYTES)
            + varint_len(elements as u64)
            + elements.saturating_mul(COUNT_SHARE_BYTES)
    }

    /// This body encoded, in a buffer sized for it up front: a body takes up to a megabyte,
    /// and a buffer grown by doubling would copy it over and over on the way.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let capacity = self.wire_bytes_max().min(MAX_BODY_BYTES);
        postcard::to_extend(self, Vec::with_capacity(capacity))
    }

    /// The most bytes this body takes encoded, from its lengths and kind of shares alone: the
    /// bound of an explicit body, less the explicit shares a seed party's body does not carry.
    pub fn wire_bytes_max(&self) -> usize {
        let explicit = upload_wire_bytes_max(self.records.len(), self.histograms.len());
        match &self.shares {
            // The seed and its variant byte.
            Shares::Seed(_) => explicit
                .saturating_sub(self.explicit_share_bytes())
                .saturating_add(33),
            Shares::Explicit { .. } | Shares::Verified { .. } => explicit,
        }
    }
}

/// postcard writes a field element as a byte string: its length (one byte), then the bytes.
const FIELD_BYTES: usize = 1 + <Field as prio::field::FieldElement>::ENCODED_SIZE;
const COUNT_SHARE_BYTES: usize = 1 + <CountField as prio::field::FieldElement>::ENCODED_SIZE;
const RECORD_SHARE_BYTES: usize = SHARES_PER_RECORD * FIELD_BYTES;

/// postcard writes integers (and lengths, and enum variant indices) as varints: 7 bits a byte.
const fn varint_max(bits: usize) -> usize {
    bits.div_ceil(7)
}

fn varint_len(value: u64) -> usize {
    (64 - value.leading_zeros() as usize).max(1).div_ceil(7)
}

const GROUP_KEY_BYTES_MAX: usize = 3 * varint_max(32);
/// A `Metric` is a variant index below 128: one byte.
const METRIC_BYTES_MAX: usize = 1;

/// The most bytes one record adds to an upload body (the explicit party's, the largest): its
/// metadata with the widest varints, its three shares, and one byte for each of the two
/// lengths it grows (a varint length grows by at most one byte per item added).
pub const RECORD_WIRE_BYTES_MAX: usize =
    2 * varint_max(64) + METRIC_BYTES_MAX + GROUP_KEY_BYTES_MAX + RECORD_SHARE_BYTES + 2;

/// The most bytes one histogram adds to an upload body (the explicit party's): plug and
/// window start with the widest varints, `BUCKETS` count shares, and one byte for each of the
/// two lengths it grows (its `BUCKETS` elements cross at most one varint boundary of the
/// flattened count list: the boundaries, 2^7, 2^14, ..., lie more than `BUCKETS` apart).
pub const HISTOGRAM_WIRE_BYTES_MAX: usize =
    GROUP_KEY_BYTES_MAX + varint_max(64) + histogram::BUCKETS * COUNT_SHARE_BYTES + 2;

/// The most bytes an upload body takes besides its records and histograms: batch id, party,
/// parties, the two empty metadata lengths, the shares' variant, and the larger of a seed and
/// two empty share lists.
pub const UPLOAD_WIRE_BYTES_BASE_MAX: usize = varint_max(128) + 2 * varint_max(16) + 2 + 1 + 32;

/// The most bytes an upload body with `records` records and `histograms` histograms takes at
/// any party: what a sender that cuts batches by size compares with `MAX_BODY_BYTES`.
pub const fn upload_wire_bytes_max(records: usize, histograms: usize) -> usize {
    UPLOAD_WIRE_BYTES_BASE_MAX
        .saturating_add(records.saturating_mul(RECORD_WIRE_BYTES_MAX))
        .saturating_add(histograms.saturating_mul(HISTOGRAM_WIRE_BYTES_MAX))
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
    /// A robust batch's flag: only its clouds decide it, once they verified its reports
    /// (`crate::robust`); its sensor's SET is refused.
    pub robust: bool,
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
    /// For a robust batch: see `Flag::robust`.
    pub robust: bool,
}

/// A cloud's verdict on robust batches it led the verification of: TRUE for `valid`, ERROR
/// otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerdictRequest {
    pub ids: Vec<BatchId>,
    pub valid: bool,
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

/// One closed window's (or, for scopes that see time in blocks, one block's) partial
/// aggregate at one cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowPartial {
    pub window: Window,
    /// How many committed batches the window holds, and an order-independent fingerprint
    /// (XOR) of their ids: the collector checks that every cloud aggregated the same set.
    pub batches: u64,
    pub batch_digest: u128,
    pub groups: Vec<GroupPartial>,
    /// Cells the disclosure policy held back (too few plugs or data windows behind them).
    pub withheld: u64,
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
    /// Hash of the disclosure policy that decided the answer (see `disclosure`).
    pub policy: [u8; 32],
    /// Whether the cloud added differential-privacy noise to its shares (see `noise`).
    pub noisy: bool,
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
    pub histogram: Vec<CountField>,
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
    /// Hash of the disclosure policy that decided the answer.
    pub policy: [u8; 32],
    pub from: u64,
    pub to: u64,
    /// Committed batches summed over the range's windows, and the XOR of their fingerprints,
    /// for the agreement check.
    pub batches: u64,
    pub batch_digest: u128,
    pub plugs: Vec<PlugRange>,
}

impl RangeResponse {
    /// The most bytes this answer takes encoded, from its lengths alone: a cloud checks an
    /// answer against [`MAX_ANSWER_BYTES`] without encoding it twice (each count share's
    /// encoding converts it out of prio's internal form, most of an encoding's cost).
    pub fn wire_bytes_max(&self) -> usize {
        // party, parties, policy, from, to, batches, batch_digest, the plugs' length.
        let head = 2 * varint_max(16) + 32 + 3 * varint_max(64) + varint_max(128) + varint_max(64);
        self.plugs.iter().fold(head, |bytes, p| {
            bytes
                .saturating_add(GROUP_KEY_BYTES_MAX + SHARES_PER_RECORD * FIELD_BYTES)
                .saturating_add(varint_len(p.histogram.len() as u64))
                .saturating_add(p.histogram.len().saturating_mul(COUNT_SHARE_BYTES))
        })
    }
}

// `HISTOGRAM_WIRE_BYTES_MAX` counts one byte of growth for the flattened count list.
const _: () = assert!(histogram::BUCKETS < (1 << 14) - (1 << 7));

#[cfg(test)]
mod tests {
    use super::*;
    use prio::field::FieldElement;

    fn widest_group() -> GroupKey {
        GroupKey {
            house: u32::MAX,
            household: u32::MAX,
            plug: u32::MAX,
        }
    }

    /// An explicit body of `records` and `histograms` worst-case items: the widest varints,
    /// every field element p − 1 (a share takes the same bytes whatever its value, but the
    /// largest value is the honest worst case).
    fn worst_body(records: usize, histograms: usize, metric: Metric) -> usize {
        let request = UploadRequest {
            batch_id: BatchId(u128::MAX),
            party: u16::MAX,
            parties: u16::MAX,
            records: vec![
                RecordMeta {
                    key: u64::MAX,
                    ts: u64::MAX,
                    metric,
                    group: widest_group(),
                };
                records
            ],
            histograms: vec![
                HistogramMeta {
                    plug: widest_group(),
                    window_start: u64::MAX,
                };
                histograms
            ],
            shares: Shares::Explicit {
                records: vec![[-Field::one(); SHARES_PER_RECORD]; records],
                histograms: vec![-CountField::one(); histograms * histogram::BUCKETS],
            },
        };
        // Every party computes the explicit shares' bytes from the metadata alone.
        let seed = UploadRequest {
            shares: Shares::Seed([0xff; 32]),
            ..request.clone()
        };
        assert_eq!(
            postcard::to_stdvec(&request).unwrap().len() + 33,
            postcard::to_stdvec(&seed).unwrap().len() + request.explicit_share_bytes()
        );
        // `encode` writes the same bytes into a buffer it never has to grow.
        for body in [&request, &seed] {
            let encoded = body.encode().unwrap();
            assert_eq!(encoded, postcard::to_stdvec(body).unwrap());
            assert!(encoded.len() <= body.wire_bytes_max());
            assert_eq!(
                encoded.capacity(),
                body.wire_bytes_max().min(MAX_BODY_BYTES)
            );
        }
        postcard::to_stdvec(&request).unwrap().len()
    }

    #[test]
    fn byte_bounds_hold_for_worst_case_items() {
        let seed_only = UploadRequest {
            batch_id: BatchId(u128::MAX),
            party: u16::MAX,
            parties: u16::MAX,
            records: Vec::new(),
            histograms: Vec::new(),
            shares: Shares::Seed([0xff; 32]),
        };
        let base = postcard::to_stdvec(&seed_only).unwrap().len();
        assert_eq!(base, UPLOAD_WIRE_BYTES_BASE_MAX);
        assert!(worst_body(0, 0, Metric::Load) <= UPLOAD_WIRE_BYTES_BASE_MAX);
        for metric in Metric::ALL {
            // Across the lengths where a varint length gains a byte.
            for records in [1, 2, 127, 128, 129, 16_383, 16_384, 16_385] {
                let body = worst_body(records, 0, metric);
                assert!(
                    body <= upload_wire_bytes_max(records, 0),
                    "{records} records: {body} bytes"
                );
            }
        }
        // 84 histograms hold 16,380 counts, 85 cross 2^14.
        for histograms in [1, 2, 83, 84, 85, 86] {
            let body = worst_body(0, histograms, Metric::Load);
            assert!(
                body <= upload_wire_bytes_max(0, histograms),
                "{histograms} histograms: {body} bytes"
            );
            let body = worst_body(histograms, histograms, Metric::Work);
            assert!(body <= upload_wire_bytes_max(histograms, histograms));
        }
        // The bounds are tight: one item adds at most the two length bytes less.
        let one_record = worst_body(1, 0, Metric::Load) - worst_body(0, 0, Metric::Load);
        assert!(one_record + 2 >= RECORD_WIRE_BYTES_MAX, "{one_record}");
        let one_histogram = worst_body(0, 1, Metric::Load) - worst_body(0, 0, Metric::Load);
        assert!(
            one_histogram + 2 >= HISTOGRAM_WIRE_BYTES_MAX,
            "{one_histogram}"
        );
    }

    /// A RANGE answer's bound from its lengths holds for the widest answers, across the plug
    /// counts where a length gains a byte, and is only the plugs' length's slack above it.
    #[test]
    fn a_range_answer_takes_at_most_its_bound() {
        use prio::field::FieldElementWithInteger;
        let top = CountField::from(CountField::modulus() - 1);
        let widest = Field::from(Field::modulus() - 1);
        for plugs in [0, 1, 127, 128, 129] {
            for buckets in [0, histogram::BUCKETS] {
                let answer = RangeResponse {
                    party: u16::MAX,
                    parties: u16::MAX,
                    policy: [0xff; 32],
                    from: u64::MAX,
                    to: u64::MAX,
                    batches: u64::MAX,
                    batch_digest: u128::MAX,
                    plugs: (0..plugs)
                        .map(|_| PlugRange {
                            plug: widest_group(),
                            load: crate::Partial {
                                sum: widest,
                                sumsq: widest,
                                count: widest,
                            },
                            histogram: vec![top; buckets],
                        })
                        .collect(),
                };
                let bytes = postcard::to_stdvec(&answer).unwrap().len();
                let bound = answer.wire_bytes_max();
                assert!(
                    bytes <= bound,
                    "{plugs} plugs of {buckets}: {bytes} > {bound}"
                );
                assert!(bound - bytes < 10, "{plugs} plugs: {bytes} of {bound}");
            }
        }
    }
}
