//! A robust batch: the reports a sensor sends each cloud, and the three steps that turn them
//! into the shares plain mode would have uploaded: every cloud [`Robust::prepare`]s its
//! reports, the batch's leader [`Robust::combine`]s every cloud's verifier shares into one
//! message per report, and every cloud [`Robust::finish`]es with those messages.

use super::forge::{Forged, Forgery};
use super::{aggregator, nonce, party_of, ReportKind, Robust, VerifyKey, CONTEXT};
use crate::reading::Reading;
use crate::upload::PlainHistogram;
use crate::wire::{BatchId, HistogramMeta, RecordMeta, Shares, UploadRequest};
use crate::{CountField, Field, RecordShares};
use prio::codec::{Encode, ParameterizedDecode};
use prio::flp::Type;
use prio::vdaf::prio3::{
    Prio3, Prio3InputShare, Prio3PublicShare, Prio3VerifierMessage, Prio3VerifierShare,
    Prio3VerifyState,
};
use prio::vdaf::xof::XofTurboShake128;
use prio::vdaf::{Aggregator, Client, VdafError, VerifyTransition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One report as one cloud receives it: the public share (every cloud gets the same) and the
/// cloud's input share, both in Prio3's encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub public_share: Vec<u8>,
    pub input_share: Vec<u8>,
}

/// A robust batch's body for one cloud: the metadata of a plain upload, and one report per
/// record and per histogram in the same order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobustUploadRequest {
    pub batch_id: BatchId,
    pub party: u16,
    pub parties: u16,
    pub records: Vec<RecordMeta>,
    pub histograms: Vec<HistogramMeta>,
    pub record_reports: Vec<Report>,
    pub histogram_reports: Vec<Report>,
}

impl RobustUploadRequest {
    /// The plain upload this batch stands for once verified (`shares` left empty): what the
    /// cloud checks the metadata and the sensor's scope on, as for any upload.
    pub fn metadata(&self) -> UploadRequest {
        UploadRequest {
            batch_id: self.batch_id,
            party: self.party,
            parties: self.parties,
            records: self.records.clone(),
            histograms: self.histograms.clone(),
            shares: Shares::Verified {
                records: Vec::new(),
                histograms: Vec::new(),
            },
        }
    }
}

/// A robust batch that cannot be made or read.
#[derive(Debug, Error, PartialEq)]
pub enum RobustError {
    #[error("{kind} {index} cannot be proven: {reason}")]
    Shard {
        kind: &'static str,
        index: usize,
        reason: String,
    },
    #[error("batch {id} has {items} {kind}s but {reports} {kind} reports")]
    ReportCount {
        id: BatchId,
        kind: &'static str,
        items: usize,
        reports: usize,
    },
    #[error("batch {id} is for {got} clouds; this deployment has {expected}")]
    Parties {
        id: BatchId,
        got: u16,
        expected: u16,
    },
    #[error("batch {id}: {kind} report {index} is malformed: {reason}")]
    Malformed {
        id: BatchId,
        kind: &'static str,
        index: usize,
        reason: String,
    },
}

/// Why verification refused a batch: the first report that failed, and how.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
#[error("{kind} report {index} is invalid: {reason}")]
pub struct Invalid {
    pub kind: String,
    pub index: usize,
    pub reason: String,
}

impl Invalid {
    fn new(kind: ReportKind, index: usize, reason: impl ToString) -> Invalid {
        Invalid {
            kind: kind_name(kind).to_string(),
            index,
            reason: reason.to_string(),
        }
    }
}

fn kind_name(kind: ReportKind) -> &'static str {
    match kind {
        ReportKind::Record => "record",
        ReportKind::Histogram => "histogram",
    }
}

/// One report after a cloud's half of verification: its state and its verifier share.
type Half<F> = (Prio3VerifyState<F, 32>, Prio3VerifierShare<F, 32>);
type ReadingState = Half<Field>;
type HistogramState = Half<CountField>;

/// One cloud's reports of a batch after its half of verification: what it keeps until the
/// leader's messages arrive.
#[derive(Clone)]
pub struct Prepared {
    readings: Vec<ReadingState>,
    histograms: Vec<HistogramState>,
}

/// One cloud's verifier shares of a batch, Prio3-encoded, in report order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierShares {
    pub readings: Vec<Vec<u8>>,
    pub histograms: Vec<Vec<u8>>,
}

/// The leader's verifier messages of a batch, Prio3-encoded, in report order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    pub readings: Vec<Vec<u8>>,
    pub histograms: Vec<Vec<u8>>,
}

impl Prepared {
    pub fn shares(&self) -> Result<VerifierShares, VdafError> {
        Ok(VerifierShares {
            readings: encode_all(self.readings.iter().map(|(_, s)| s))?,
            histograms: encode_all(self.histograms.iter().map(|(_, s)| s))?,
        })
    }

    /// Reports held: what a cloud bounds its pending batches by.
    pub fn reports(&self) -> usize {
        self.readings.len() + self.histograms.len()
    }
}

fn encode_all<'a, T: Encode + 'a>(
    items: impl Iterator<Item = &'a T>,
) -> Result<Vec<Vec<u8>>, VdafError> {
    items
        .map(|item| item.get_encoded().map_err(codec))
        .collect()
}

fn codec(e: prio::codec::CodecError) -> VdafError {
    VdafError::Uncategorized(format!("encoding: {e}"))
}

/// Shards `measurement` with `vdaf` and appends each aggregator's report to its cloud's list.
fn shard_into<T: Type>(
    vdaf: &Prio3<T, XofTurboShake128, 32>,
    measurement: &T::Measurement,
    (id, kind, index): (BatchId, ReportKind, usize),
    out: &mut [Vec<Report>],
) -> Result<(), RobustError> {
    let fail = |e: VdafError| RobustError::Shard {
        kind: kind_name(kind),
        index,
        reason: e.to_string(),
    };
    let (public, inputs) = vdaf
        .shard(CONTEXT, measurement, &nonce(id, kind, index))
        .map_err(fail)?;
    let public = public.get_encoded().map_err(|e| fail(codec(e)))?;
    let parties = out.len() as u16;
    for (agg, input) in inputs.iter().enumerate() {
        out[usize::from(party_of(id, agg, parties))].push(Report {
            public_share: public.clone(),
            input_share: input.get_encoded().map_err(|e| fail(codec(e)))?,
        });
    }
    Ok(())
}

impl Robust {
    /// A sensor's batch as one body per cloud, in party order. With `forgery`, the first
    /// report of the kind it names is invalid (see [`Forgery`]).
    pub fn shard_batch(
        &self,
        id: BatchId,
        readings: &[Reading],
        histograms: &[PlainHistogram],
        forgery: Option<Forgery>,
    ) -> Result<Vec<RobustUploadRequest>, RobustError> {
        let n = usize::from(self.parties);
        let mut record_reports = vec![Vec::with_capacity(readings.len()); n];
        for (index, r) in readings.iter().enumerate() {
            let at = (id, ReportKind::Record, index);
            match forgery.filter(|f| index == 0 && !f.of_histogram()) {
                None => shard_into(&self.readings, &r.value, at, &mut record_reports)?,
                Some(f @ (Forgery::OutOfRange | Forgery::ForgedSquare)) => {
                    let mut raw = self.reading_circuit.encode_value(r.value);
                    let (_, square) = self.reading_circuit.layout();
                    if f == Forgery::ForgedSquare {
                        raw[square] += Field::from(1);
                    } else {
                        raw[square - 1] = Field::from(2);
                    }
                    let forger = self.forger(Forged(self.reading_circuit.clone()), 1)?;
                    shard_into(&forger, &raw, at, &mut record_reports)?;
                }
                Some(Forgery::Replayed) => {
                    // Another batch of the same sensor and explicit party (the id modulo the
                    // clouds), so the copied shares decode where they land.
                    let other = BatchId(id.0.wrapping_add(u128::from(self.parties)));
                    let at = (other, ReportKind::Record, index);
                    shard_into(&self.readings, &r.value, at, &mut record_reports)?;
                }
                Some(f) => {
                    shard_into(&self.readings, &r.value, at, &mut record_reports)?;
                    let last = usize::from(party_of(id, n - 1, self.parties));
                    let report = &mut record_reports[last][0];
                    if f == Forgery::SharesDoNotAddUp {
                        // A seed party's share seed: any 32 bytes decode.
                        report.input_share[0] ^= 1;
                    } else {
                        report.public_share[0] ^= 1;
                    }
                }
            }
        }
        let mut histogram_reports = vec![Vec::with_capacity(histograms.len()); n];
        for (index, h) in histograms.iter().enumerate() {
            let at = (id, ReportKind::Histogram, index);
            match forgery.filter(|f| index == 0 && f.of_histogram()) {
                None => shard_into(&self.histograms, &h.counts, at, &mut histogram_reports)?,
                Some(_) => {
                    let raw = self
                        .histogram_circuit
                        .encode_counts(&vec![1; h.counts.len()]);
                    let forger = self.forger(
                        Forged(self.histogram_circuit.clone()),
                        super::HISTOGRAM_PROOFS,
                    )?;
                    shard_into(&forger, &raw, at, &mut histogram_reports)?;
                }
            }
        }
        let (records, histogram_meta) = crate::upload::metadata(readings, histograms);
        Ok(record_reports
            .into_iter()
            .zip(histogram_reports)
            .enumerate()
            .map(
                |(party, (record_reports, histogram_reports))| RobustUploadRequest {
                    batch_id: id,
                    party: party as u16,
                    parties: self.parties,
                    records: records.clone(),
                    histograms: histogram_meta.clone(),
                    record_reports,
                    histogram_reports,
                },
            )
            .collect())
    }

    /// A VDAF that proves raw encodings of `typ`'s circuit, indistinguishable on the wire.
    fn forger<T: Type>(
        &self,
        typ: Forged<T>,
        proofs: u8,
    ) -> Result<Prio3<Forged<T>, XofTurboShake128, 32>, RobustError> {
        let algorithm = if proofs == 1 {
            super::READING_ALGORITHM
        } else {
            super::HISTOGRAM_ALGORITHM
        };
        Prio3::new(self.parties as u8, proofs, algorithm, typ).map_err(|e| RobustError::Shard {
            kind: "forgery",
            index: 0,
            reason: e.to_string(),
        })
    }

    /// Cloud `party`'s first half of verification: decodes every report and computes its
    /// verifier share. A report that does not decode makes the whole body malformed.
    pub fn prepare(
        &self,
        key: &VerifyKey,
        party: u16,
        request: &RobustUploadRequest,
    ) -> Result<Prepared, RobustError> {
        let id = request.batch_id;
        if request.parties != self.parties {
            return Err(RobustError::Parties {
                id,
                got: request.parties,
                expected: self.parties,
            });
        }
        for (kind, items, reports) in [
            (
                "record",
                request.records.len(),
                request.record_reports.len(),
            ),
            (
                "histogram",
                request.histograms.len(),
                request.histogram_reports.len(),
            ),
        ] {
            if items != reports {
                return Err(RobustError::ReportCount {
                    id,
                    kind,
                    items,
                    reports,
                });
            }
        }
        let agg = aggregator(id, party, self.parties);
        let readings = prepare_all(
            &self.readings,
            key,
            (id, ReportKind::Record, agg),
            &request.record_reports,
        )?;
        let histograms = prepare_all(
            &self.histograms,
            key,
            (id, ReportKind::Histogram, agg),
            &request.histogram_reports,
        )?;
        Ok(Prepared {
            readings,
            histograms,
        })
    }

    /// The leader's step: every cloud's verifier shares, in aggregator order (its own among
    /// them), into one message per report, or the first report they refuse.
    pub fn combine(&self, own: &Prepared, all: &[VerifierShares]) -> Result<Messages, Invalid> {
        if all.len() != usize::from(self.parties) {
            return Err(Invalid::new(
                ReportKind::Record,
                0,
                format!("{} clouds' verifier shares for {}", all.len(), self.parties),
            ));
        }
        Ok(Messages {
            readings: combine_all(
                &self.readings,
                ReportKind::Record,
                &own.readings,
                all.iter().map(|s| &s.readings),
            )?,
            histograms: combine_all(
                &self.histograms,
                ReportKind::Histogram,
                &own.histograms,
                all.iter().map(|s| &s.histograms),
            )?,
        })
    }

    /// Every cloud's last step: the leader's messages check the joint randomness this cloud
    /// saw, and give its output shares, exactly the shares a plain upload would have carried.
    pub fn finish(
        &self,
        prepared: Prepared,
        messages: &Messages,
    ) -> Result<(Vec<RecordShares>, Vec<CountField>), Invalid> {
        let records = finish_all(
            &self.readings,
            ReportKind::Record,
            prepared.readings,
            &messages.readings,
        )?
        .into_iter()
        // The circuit's output is [1, x, x²]; a record's shares are (x, x², 1).
        .map(|out| [out[1], out[2], out[0]])
        .collect();
        let counts = finish_all(
            &self.histograms,
            ReportKind::Histogram,
            prepared.histograms,
            &messages.histograms,
        )?
        .concat();
        Ok((records, counts))
    }
}

fn prepare_all<T: Type>(
    vdaf: &Prio3<T, XofTurboShake128, 32>,
    key: &VerifyKey,
    (id, kind, agg): (BatchId, ReportKind, usize),
    reports: &[Report],
) -> Result<Vec<Half<T::Field>>, RobustError> {
    reports
        .iter()
        .enumerate()
        .map(|(index, report)| {
            let malformed = |reason: String| RobustError::Malformed {
                id,
                kind: kind_name(kind),
                index,
                reason,
            };
            let public = Prio3PublicShare::get_decoded_with_param(vdaf, &report.public_share)
                .map_err(|e| malformed(format!("public share: {e}")))?;
            let input = Prio3InputShare::get_decoded_with_param(&(vdaf, agg), &report.input_share)
                .map_err(|e| malformed(format!("input share: {e}")))?;
            vdaf.verify_init(
                &key.0,
                CONTEXT,
                agg,
                &(),
                &nonce(id, kind, index),
                &public,
                &input,
            )
            .map_err(|e| malformed(e.to_string()))
        })
        .collect()
}

fn combine_all<'a, T: Type>(
    vdaf: &Prio3<T, XofTurboShake128, 32>,
    kind: ReportKind,
    own: &[Half<T::Field>],
    all: impl Iterator<Item = &'a Vec<Vec<u8>>> + Clone,
) -> Result<Vec<Vec<u8>>, Invalid> {
    if let Some(short) = all.clone().find(|shares| shares.len() != own.len()) {
        return Err(Invalid::new(
            kind,
            short.len().min(own.len()),
            format!("{} verifier shares for {} reports", short.len(), own.len()),
        ));
    }
    own.iter()
        .enumerate()
        .map(|(index, (state, _))| {
            let invalid = |reason: String| Invalid::new(kind, index, reason);
            let shares = all
                .clone()
                .map(|shares| {
                    Prio3VerifierShare::get_decoded_with_param(state, &shares[index])
                        .map_err(|e| invalid(format!("verifier share: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let message = vdaf
                .verifier_shares_to_message(CONTEXT, &(), shares)
                .map_err(|e| invalid(e.to_string()))?;
            message
                .get_encoded()
                .map_err(|e| invalid(format!("message: {e}")))
        })
        .collect()
}

fn finish_all<T: Type>(
    vdaf: &Prio3<T, XofTurboShake128, 32>,
    kind: ReportKind,
    prepared: Vec<Half<T::Field>>,
    messages: &[Vec<u8>],
) -> Result<Vec<Vec<T::Field>>, Invalid> {
    if messages.len() != prepared.len() {
        return Err(Invalid::new(
            kind,
            messages.len().min(prepared.len()),
            format!("{} messages for {} reports", messages.len(), prepared.len()),
        ));
    }
    prepared
        .into_iter()
        .zip(messages)
        .enumerate()
        .map(|(index, ((state, _), message))| {
            let invalid = |reason: String| Invalid::new(kind, index, reason);
            let message = Prio3VerifierMessage::get_decoded_with_param(&state, message)
                .map_err(|e| invalid(format!("message: {e}")))?;
            match vdaf.verify_next(CONTEXT, state, message) {
                Ok(VerifyTransition::Finish(out)) => Ok(out.as_ref().to_vec()),
                Ok(VerifyTransition::Continue(..)) => Err(invalid("a second round".into())),
                Err(e) => Err(invalid(e.to_string())),
            }
        })
        .collect()
}

/// A sensor's question to a batch's leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettleRequest {
    pub batch_id: BatchId,
}

/// What verification decided: the batch counts, or why it does not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettleAnswer {
    pub batch_id: BatchId,
    pub valid: bool,
    /// For a batch that does not count: true when a report of it failed verification (the
    /// sensor's fault: sending it again cannot help), false when verification could not run
    /// to its end (a cloud unreachable, the deadline passed: the readings may go again under
    /// a new flag).
    pub invalid_report: bool,
    pub reason: Option<String>,
}

impl SettleAnswer {
    pub fn valid(batch_id: BatchId) -> SettleAnswer {
        SettleAnswer {
            batch_id,
            valid: true,
            invalid_report: false,
            reason: None,
        }
    }

    pub fn refused(batch_id: BatchId, invalid_report: bool, reason: String) -> SettleAnswer {
        SettleAnswer {
            batch_id,
            valid: false,
            invalid_report,
            reason: Some(reason),
        }
    }
}

/// The leader's word to the other clouds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Finish {
    /// Every cloud's verifier shares agreed: finish with these messages.
    Accept(Messages),
    /// Refused (a report failed, or a cloud did not answer): drop the batch.
    Reject(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinishRequest {
    pub batch_id: BatchId,
    pub finish: Finish,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{GroupKey, Metric};
    use crate::share::{reconstruct, record_values};

    const CLOUDS: u16 = 3;

    fn readings(n: u64) -> Vec<Reading> {
        (0..n)
            .map(|k| Reading {
                id: k,
                ts: 1_400_000_000 + k,
                value: k * 1_000_003 % crate::fixed::MAX_FIXED,
                metric: Metric::Load,
                group: GroupKey {
                    house: 1,
                    household: 0,
                    plug: (k % 3) as u32,
                },
            })
            .collect()
    }

    fn histograms() -> Vec<PlainHistogram> {
        (0..2)
            .map(|i| {
                let mut counts = vec![0; crate::histogram::BUCKETS];
                counts[7 + i] = 20;
                counts[100] = 3 + i as u64;
                PlainHistogram {
                    plug: GroupKey {
                        house: 1,
                        household: 0,
                        plug: i as u32,
                    },
                    window_start: 1_400_000_010,
                    counts,
                }
            })
            .collect()
    }

    /// Runs verification among the clouds as the cloud nodes do, over `bodies` (one per
    /// cloud): every cloud's output shares, or the refusal.
    #[allow(clippy::type_complexity)]
    fn verify(
        robust: &Robust,
        key: &VerifyKey,
        bodies: &[RobustUploadRequest],
    ) -> Result<Vec<(Vec<RecordShares>, Vec<CountField>)>, Invalid> {
        let id = bodies[0].batch_id;
        let prepared: Vec<Prepared> = (0..CLOUDS)
            .map(|party| robust.prepare(key, party, &bodies[party as usize]).unwrap())
            .collect();
        let by_agg: Vec<VerifierShares> = (0..CLOUDS as usize)
            .map(|agg| {
                prepared[party_of(id, agg, CLOUDS) as usize]
                    .shares()
                    .unwrap()
            })
            .collect();
        let leader = party_of(id, 0, CLOUDS) as usize;
        let messages = robust.combine(&prepared[leader], &by_agg)?;
        prepared
            .into_iter()
            .map(|p| robust.finish(p, &messages))
            .collect()
    }

    #[test]
    fn verified_reports_give_exactly_the_plain_shares() {
        let robust = Robust::new(CLOUDS).unwrap();
        let key = VerifyKey::random();
        let (readings, histograms) = (readings(10), histograms());
        for id in [BatchId(30), BatchId(31), BatchId(32)] {
            let bodies = robust
                .shard_batch(id, &readings, &histograms, None)
                .unwrap();
            // Round trip through the wire encoding, as a cloud receives them.
            let bodies: Vec<RobustUploadRequest> = bodies
                .iter()
                .map(|b| postcard::from_bytes(&postcard::to_stdvec(b).unwrap()).unwrap())
                .collect();
            let outputs = verify(&robust, &key, &bodies).unwrap();
            for (i, r) in readings.iter().enumerate() {
                let shares: Vec<RecordShares> = outputs.iter().map(|(rs, _)| rs[i]).collect();
                assert_eq!(reconstruct(&shares), record_values(r.value));
            }
            let buckets = crate::histogram::BUCKETS;
            for (i, h) in histograms.iter().enumerate() {
                let counts: Vec<u64> = (0..buckets)
                    .map(|b| {
                        let sum = outputs
                            .iter()
                            .fold(CountField::from(0), |a, (_, c)| a + c[i * buckets + b]);
                        u64::from(sum)
                    })
                    .collect();
                assert_eq!(counts, h.counts);
            }
        }
    }

    #[test]
    fn every_forgery_is_refused() {
        let robust = Robust::new(CLOUDS).unwrap();
        let key = VerifyKey::random();
        for forgery in Forgery::ALL {
            let bodies = robust
                .shard_batch(BatchId(7), &readings(3), &histograms(), Some(forgery))
                .unwrap();
            let refused = verify(&robust, &key, &bodies).unwrap_err();
            let kind = if forgery.of_histogram() {
                "histogram"
            } else {
                "record"
            };
            assert_eq!(
                (refused.kind.as_str(), refused.index),
                (kind, 0),
                "{forgery:?}"
            );
        }
    }

    #[test]
    fn tampered_shares_and_copied_reports_are_refused() {
        let robust = Robust::new(CLOUDS).unwrap();
        let key = VerifyKey::random();
        let id = BatchId(11);
        let honest = robust
            .shard_batch(id, &readings(4), &histograms(), None)
            .unwrap();
        // A helper's seed changed on its way (the shares no longer add up to what the
        // proof is about), and the explicit share changed at the leader.
        for agg in [0, 1, 2] {
            let mut bodies = honest.clone();
            let party = party_of(id, agg, CLOUDS) as usize;
            bodies[party].record_reports[2].input_share[5] ^= 1;
            let refused = verify(&robust, &key, &bodies).unwrap_err();
            assert_eq!((refused.kind.as_str(), refused.index), ("record", 2));
        }
        // The public share (the joint randomness parts) forged for one cloud only: the others
        // verify the proof, and that cloud's own check of the joint randomness refuses it.
        let mut bodies = honest.clone();
        bodies[1].histogram_reports[1].public_share[0] ^= 1;
        let refused = verify(&robust, &key, &bodies).unwrap_err();
        assert_eq!((refused.kind.as_str(), refused.index), ("histogram", 1));
        // A valid report replayed in another batch or in another place of its batch: its
        // proof is bound to the nonce of its place.
        // (Batch 14 has the same explicit party as 11, so the copied shares decode.)
        let other = robust
            .shard_batch(BatchId(14), &readings(4), &histograms(), None)
            .unwrap();
        let mut bodies = other.clone();
        for (body, old) in bodies.iter_mut().zip(&honest) {
            body.record_reports[1] = old.record_reports[1].clone();
        }
        assert!(verify(&robust, &key, &bodies).is_err());
        let mut bodies = honest.clone();
        for body in &mut bodies {
            body.record_reports.swap(0, 3);
        }
        assert!(verify(&robust, &key, &bodies).is_err());
        // The honest batch still verifies.
        assert!(verify(&robust, &key, &honest).is_ok());
    }

    #[test]
    fn bodies_stay_within_the_sizes_the_batcher_counts() {
        let robust = Robust::new(CLOUDS).unwrap();
        for (records, histograms) in [(1, 0), (0, 1), (50, 2), (3, 20)] {
            let bodies = robust
                .shard_batch(
                    BatchId(3),
                    &readings(records),
                    &histograms_n(histograms),
                    None,
                )
                .unwrap();
            for body in bodies {
                let bytes = postcard::to_stdvec(&body).unwrap().len();
                let bound = super::super::upload_wire_bytes_max(records as usize, histograms);
                assert!(
                    bytes <= bound,
                    "{records} records, {histograms} histograms: {bytes} B > {bound} B"
                );
            }
        }
    }

    fn histograms_n(n: usize) -> Vec<PlainHistogram> {
        (0..n)
            .map(|i| PlainHistogram {
                window_start: 30 * i as u64,
                ..histograms()[0].clone()
            })
            .collect()
    }
}
