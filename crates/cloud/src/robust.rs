//! Robust mode at a cloud: verifying robust batches with the other clouds before a single
//! share of them counts (see `mcloud_core::robust`).
//!
//! 1. UPLOAD (sensor → every cloud): the cloud checks the batch as any upload, claims its
//!    windows, runs its half of verification and keeps the result in memory.
//! 2. SETTLE (sensor → the batch's leader, its explicit party): the leader gathers every
//!    other cloud's verifier shares over mutual TLS, combines them into one message per
//!    report, and sends the messages (or its refusal) back.
//! 3. FINISH (leader → every other cloud, and itself): each cloud checks the messages against
//!    what it saw, turns its reports into exactly the shares a plain upload would have
//!    carried and stores them as a batch.
//! 4. The leader gives the catalog its verdict: TRUE once every cloud stored the batch, ERROR
//!    as soon as any report failed anywhere. From here on the flag decides the batch as any.
//!
//! A leader per batch, rather than every cloud broadcasting to every other: 2(N − 1) messages
//! instead of N(N − 1), and one cloud writes the flag, so no two verdicts can race. The
//! leader rotates with the batch id, so no cloud carries every batch's verification.
//!
//! A batch is refused whole: its reports come from one sensor in one transaction, and a sensor
//! that sends one invalid report is broken or hostile. The refusal is counted per sensor.
//! Nothing is written durably before FINISH: a cloud that restarts mid-verification forgets
//! the batch, the leader's verdict is ERROR, and the sensor still holds the readings.

use crate::node::CloudNode;
use crate::store::StoredBatch;
use crate::windows::Registered;
use crate::CloudError;
use axum::http::StatusCode;
use bytes::Bytes;
use mcloud_catalog::FlagTable;
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::http::{decode, post, ApiError, CallError, Endpoint};
use mcloud_core::paths::{PEER_FINISH_PATH, PEER_VERIFIER_SHARES_PATH};
use mcloud_core::robust::{
    aggregator, party_of, Finish, FinishRequest, Invalid, Messages, Prepared, Robust,
    RobustUploadRequest, SettleAnswer, SettleRequest, VerifierShares, VerifyKey,
};
use mcloud_core::upload::expand;
use mcloud_core::wire::{FlagState, Shares, UploadAck, UploadRequest};
use mcloud_core::BatchId;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// How a cloud of a robust deployment verifies.
#[derive(Clone, Debug)]
pub struct RobustConfig {
    /// The same at every cloud, unknown to sensors.
    pub verify_key: VerifyKey,
    /// Every cloud in party order (this cloud's own entry is not called), each behind a
    /// client that presents this cloud's certificate and pins that party's CA.
    pub clouds: Vec<Endpoint>,
}

/// Reports a cloud holds in verification at once, over all batches: about 350 bytes each,
/// so about 90 MB. Past it, uploads are refused as unavailable (retryable) until
/// verifications finish.
const MAX_PENDING_REPORTS: usize = 1 << 18;
/// How long past its flag's deadline a batch waits for its leader before it is forgotten:
/// by then its flag is ERROR and no verdict can make it TRUE.
const PENDING_GRACE_MS: u64 = 5_000;

/// Why verification did not accept a batch.
#[derive(Clone, Debug)]
enum Failure {
    /// A report failed: the sensor's fault.
    Invalid(String),
    /// Verification could not finish.
    Unfinished(String),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Invalid(r) | Failure::Unfinished(r) => r,
        }
    }
}

/// A batch between UPLOAD and FINISH.
struct Pending {
    metadata: UploadRequest,
    prepared: Prepared,
    /// The flag's deadline (catalog clock, ms): past it no verdict can make the batch count.
    deadline_ms: u64,
}

/// A cloud's robust state: the VDAFs, the key, the batches in verification and the count of
/// refused batches per sensor.
pub struct Verifier {
    robust: Robust,
    config: RobustConfig,
    pending: Mutex<HashMap<BatchId, Pending>>,
    refused: Mutex<BTreeMap<u32, u64>>,
}

impl Verifier {
    pub fn new(config: RobustConfig, parties: u16) -> Result<Verifier, CloudError> {
        if config.clouds.len() != usize::from(parties) {
            return Err(CloudError::Config(format!(
                "robust mode names {} clouds; the deployment has {parties}",
                config.clouds.len()
            )));
        }
        let robust = Robust::new(parties).map_err(|e| CloudError::Config(e.to_string()))?;
        Ok(Verifier {
            robust,
            config,
            pending: Mutex::new(HashMap::new()),
            refused: Mutex::new(BTreeMap::new()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<BatchId, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_refusal(&self, sensor: u32) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sensor)
            .or_default() += 1;
    }

    /// Refused batches per sensor, and the batches in verification, for the status page.
    pub fn status(&self) -> serde_json::Value {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "pending_batches": self.pending().len(),
            "refused_batches_by_sensor": refused
                .iter()
                .map(|(sensor, n)| (sensor.to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    /// Refused batches of `sensor` so far.
    pub fn refused(&self, sensor: u32) -> u64 {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sensor)
            .copied()
            .unwrap_or(0)
    }
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::coded(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

fn call_failed(what: &str, e: CallError) -> String {
    format!("{what}: {e}")
}

impl CloudNode {
    /// Counts a refused batch against its sensor, and in the batch metrics (`refused`).
    fn refuse(&self, verifier: &Verifier, id: BatchId) {
        verifier.count_refusal(id.sensor());
        self.record_batch("refused");
    }

    fn verifier(&self) -> Result<&Verifier, ApiError> {
        self.robust().ok_or_else(|| {
            ApiError::coded(
                StatusCode::BAD_REQUEST,
                "plain_deployment",
                "this deployment is not robust: upload plain shares",
            )
        })
    }

    /// Robust UPLOAD: checks the batch as any upload, claims its windows, and runs this
    /// cloud's half of verification; nothing is stored until FINISH.
    pub async fn robust_upload(
        self: &Arc<Self>,
        body: Bytes,
        scope: &SensorScope,
    ) -> Result<UploadAck, ApiError> {
        let verifier = self.verifier()?;
        let request: RobustUploadRequest = decode(&body)?;
        let id = request.batch_id;
        let metadata = request.metadata();
        crate::node::check_scope(&metadata, scope)?;
        if self.is_known(&id) {
            return Ok(UploadAck {
                batch_id: id,
                duplicate: true,
            });
        }
        crate::node::validate_upload(self.config(), &metadata, crate::node::now_secs())?;
        let flag = self.check_open_flag(id, true).await?;
        let party = self.party();
        let node = self.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let verifier = node
                .robust()
                .ok_or_else(|| "robust mode is off".to_string())?;
            verifier
                .robust
                .prepare(&verifier.config.verify_key, party, &request)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ApiError::internal(format!("verifying batch {id}: {e}")))?
        .map_err(|e| ApiError::coded(StatusCode::BAD_REQUEST, "malformed_report", e))?;
        self.forget_expired(mcloud_catalog::now_ms());
        let held: usize = verifier
            .pending()
            .values()
            .map(|p| p.prepared.reports())
            .sum();
        if held + prepared.reports() > MAX_PENDING_REPORTS {
            return Err(ApiError::unavailable(format!(
                "{held} reports are in verification; the limit is {MAX_PENDING_REPORTS}: retry"
            )));
        }
        let windows = crate::node::windows_of(&metadata, self.config().window_secs);
        if let Registered::Duplicate = self.register(id, windows)? {
            return Ok(UploadAck {
                batch_id: id,
                duplicate: true,
            });
        }
        verifier.pending().insert(
            id,
            Pending {
                metadata,
                prepared,
                deadline_ms: flag.deadline_ms,
            },
        );
        tracing::debug!(party, batch = %id, "robust batch prepared");
        Ok(UploadAck {
            batch_id: id,
            duplicate: false,
        })
    }

    /// Forgets batches whose flag passed its deadline without a verdict, releasing their
    /// windows: the sensor never asked their leader, or the leader never finished.
    pub(crate) fn forget_expired(&self, now_ms: u64) {
        let Some(verifier) = self.robust() else {
            return;
        };
        let expired: Vec<BatchId> = verifier
            .pending()
            .iter()
            .filter(|(_, p)| p.deadline_ms.saturating_add(PENDING_GRACE_MS) < now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if verifier.pending().remove(&id).is_some() {
                self.abort(id);
                tracing::debug!(party = self.party(), batch = %id, "robust batch expired unverified");
            }
        }
    }

    /// SETTLE, at the batch's leader: runs the verification among the clouds and gives the
    /// catalog the verdict.
    pub async fn settle(
        self: &Arc<Self>,
        req: SettleRequest,
        scope: &SensorScope,
    ) -> Result<SettleAnswer, ApiError> {
        let verifier = self.verifier()?;
        let id = req.batch_id;
        mcloud_core::auth::check_own(scope, id)?;
        let parties = self.config().parties;
        if aggregator(id, self.party(), parties) != 0 {
            return Err(ApiError::coded(
                StatusCode::MISDIRECTED_REQUEST,
                "not_the_leader",
                format!(
                    "batch {id} is verified by cloud {}, not cloud {}",
                    party_of(id, 0, parties),
                    self.party()
                ),
            ));
        }
        let Some(pending) = verifier.pending().remove(&id) else {
            return self.settled(id).await;
        };
        // Runs to its end in a task of its own: a sensor that hangs up must not leave the
        // other clouds holding a batch that no verdict will ever reach.
        let node = self.clone();
        tokio::spawn(async move { node.lead(id, pending).await })
            .await
            .map_err(|e| ApiError::internal(format!("verifying batch {id}: {e}")))?
    }

    /// What became of a batch this leader no longer holds: the flag says.
    async fn settled(&self, id: BatchId) -> Result<SettleAnswer, ApiError> {
        let flag = self
            .catalog()
            .get(vec![id])
            .await
            .map_err(|e| CloudError::Catalog(e.to_string()))?;
        match flag.first().copied().flatten().map(|f| f.state) {
            Some(FlagState::True) => Ok(SettleAnswer::valid(id)),
            Some(FlagState::Error) => Ok(SettleAnswer::refused(
                id,
                false,
                format!("flag {id} is ERROR"),
            )),
            Some(FlagState::False) => Err(ApiError::coded(
                StatusCode::CONFLICT,
                "verifying",
                format!("batch {id} is being verified; its flag will say"),
            )),
            None => Err(CloudError::UnknownFlag(id).into()),
        }
    }

    async fn lead(
        self: Arc<Self>,
        id: BatchId,
        pending: Pending,
    ) -> Result<SettleAnswer, ApiError> {
        let verifier = self.verifier()?;
        let parties = self.config().parties;
        let helpers: Vec<u16> = (1..usize::from(parties))
            .map(|agg| party_of(id, agg, parties))
            .collect();
        let failure = match self.gather_and_combine(id, &pending, &helpers).await {
            Ok(messages) => {
                let finishes = helpers
                    .iter()
                    .map(|&p| self.tell(p, id, Finish::Accept(messages.clone())));
                let own = self.finish_own(id, pending, &messages);
                let (helpers_done, own) =
                    futures::future::join(futures::future::join_all(finishes), own).await;
                let failures: Vec<Failure> = helpers_done
                    .into_iter()
                    .chain(std::iter::once(own))
                    .filter_map(Result::err)
                    .collect();
                if failures.is_empty() {
                    return match self.catalog().verdict(vec![id], true).await {
                        Ok(_) => {
                            tracing::debug!(party = self.party(), batch = %id, "robust batch valid");
                            Ok(SettleAnswer::valid(id))
                        }
                        // The flag decides; a lost answer is read back.
                        Err(e) if e.is_retryable() => self.settled(id).await,
                        Err(e) => Ok(SettleAnswer::refused(id, false, e.to_string())),
                    };
                }
                let reasons: Vec<&str> = failures.iter().map(Failure::reason).collect();
                let reason = reasons.join("; ");
                if failures.iter().any(|f| matches!(f, Failure::Invalid(_))) {
                    Failure::Invalid(reason)
                } else {
                    Failure::Unfinished(reason)
                }
            }
            Err(failure) => {
                self.abort(id);
                failure
            }
        };
        // Every other cloud drops the batch (one that stored it already leaves it out by
        // its ERROR flag) and counts the refusal against the sensor, as this one does.
        let rejects = helpers
            .iter()
            .map(|&p| self.tell(p, id, Finish::Reject(failure.reason().to_string())));
        futures::future::join_all(rejects).await;
        if matches!(failure, Failure::Invalid(_)) {
            self.refuse(verifier, id);
        }
        tracing::info!(
            party = self.party(),
            batch = %id,
            sensor = id.sensor(),
            "robust batch refused: {}",
            failure.reason()
        );
        if let Err(e) = self.catalog().verdict(vec![id], false).await {
            // The deadline makes the flag ERROR anyway.
            tracing::warn!(party = self.party(), batch = %id, "verdict ERROR: {e}");
        }
        let invalid = matches!(failure, Failure::Invalid(_));
        Ok(SettleAnswer::refused(
            id,
            invalid,
            failure.reason().to_string(),
        ))
    }

    /// The leader's step: every cloud's verifier shares, combined, or why not.
    async fn gather_and_combine(
        &self,
        id: BatchId,
        pending: &Pending,
        helpers: &[u16],
    ) -> Result<Messages, Failure> {
        let unfinished = |e: String| Failure::Unfinished(e);
        let verifier = self.verifier().map_err(|e| unfinished(e.to_string()))?;
        let calls = helpers.iter().map(|&p| async move {
            let cloud = &verifier.config.clouds[usize::from(p)];
            let url = format!("{}{PEER_VERIFIER_SHARES_PATH}", cloud.url);
            post::<_, VerifierShares>(&cloud.http, &url, &SettleRequest { batch_id: id })
                .await
                .map_err(|e| unfinished(call_failed(&format!("cloud {p}'s verifier shares"), e)))
        });
        let mut all = vec![pending
            .prepared
            .shares()
            .map_err(|e| unfinished(e.to_string()))?];
        for shares in futures::future::join_all(calls).await {
            all.push(shares?);
        }
        let robust = verifier.robust.clone();
        let prepared = pending.prepared.clone();
        tokio::task::spawn_blocking(move || robust.combine(&prepared, &all))
            .await
            .map_err(|e| unfinished(e.to_string()))?
            .map_err(|e: Invalid| Failure::Invalid(e.to_string()))
    }

    /// Sends cloud `party` the leader's word; Ok once it finished (or dropped) the batch.
    async fn tell(&self, party: u16, id: BatchId, finish: Finish) -> Result<(), Failure> {
        let verifier = self
            .verifier()
            .map_err(|e| Failure::Unfinished(e.to_string()))?;
        let cloud = &verifier.config.clouds[usize::from(party)];
        let url = format!("{}{PEER_FINISH_PATH}", cloud.url);
        match post::<_, ()>(
            &cloud.http,
            &url,
            &FinishRequest {
                batch_id: id,
                finish,
            },
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(e @ CallError::Rejected { status: 422, .. }) => {
                Err(Failure::Invalid(call_failed(&format!("cloud {party}"), e)))
            }
            Err(e) => Err(Failure::Unfinished(call_failed(
                &format!("cloud {party}"),
                e,
            ))),
        }
    }

    /// This cloud's last step: checks the messages, and stores its output shares as a batch.
    async fn finish_own(
        self: &Arc<Self>,
        id: BatchId,
        pending: Pending,
        messages: &Messages,
    ) -> Result<(), Failure> {
        let unfinished = |e: String| Failure::Unfinished(e);
        let verifier = self.verifier().map_err(|e| unfinished(e.to_string()))?;
        let party = self.party();
        let robust = verifier.robust.clone();
        let messages = messages.clone();
        let Pending {
            metadata, prepared, ..
        } = pending;
        let finished = tokio::task::spawn_blocking(move || robust.finish(prepared, &messages))
            .await
            .map_err(|e| unfinished(e.to_string()))?;
        let (records, histograms) = match finished {
            Ok(shares) => shares,
            Err(invalid) => {
                self.abort(id);
                return Err(Failure::Invalid(format!("cloud {party}: {invalid}")));
            }
        };
        let request = UploadRequest {
            shares: Shares::Verified {
                records,
                histograms,
            },
            ..metadata
        };
        let stored = async {
            let body = StoredBatch::encode(&request).map_err(|e| e.to_string())?;
            let batch = expand(request).map_err(|e| e.to_string())?;
            self.store(id, body, batch).await.map_err(|e| e.to_string())
        }
        .await;
        if stored.is_err() {
            self.abort(id);
        }
        stored.map_err(|e| unfinished(format!("cloud {party}: {e}")))
    }

    /// Cloud to cloud: this cloud's verifier shares of a batch, for its leader.
    pub async fn verifier_shares(&self, req: SettleRequest) -> Result<VerifierShares, ApiError> {
        let verifier = self.verifier()?;
        let shares = match verifier.pending().get(&req.batch_id) {
            Some(p) => p.prepared.shares(),
            None => {
                return Err(ApiError::not_found(format!(
                    "batch {} is not in verification here",
                    req.batch_id
                )))
            }
        };
        shares.map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Cloud to cloud: the leader's messages or refusal for a batch.
    pub async fn finish(self: &Arc<Self>, req: FinishRequest) -> Result<(), ApiError> {
        let verifier = self.verifier()?;
        let id = req.batch_id;
        let pending = verifier.pending().remove(&id);
        match (req.finish, pending) {
            (Finish::Accept(messages), Some(pending)) => self
                .finish_own(id, pending, &messages)
                .await
                .map_err(|failure| match failure {
                    Failure::Invalid(r) => {
                        self.refuse(verifier, id);
                        unprocessable("report_invalid", r)
                    }
                    Failure::Unfinished(r) => ApiError::unavailable(r),
                }),
            (Finish::Reject(reason), pending) => {
                // Held, or stored already (another cloud refused it after this one finished:
                // its ERROR flag leaves it out); either way the sensor sent a bad batch.
                if pending.is_some() {
                    self.abort(id);
                } else if !self.is_known(&id) {
                    return Ok(());
                }
                self.refuse(verifier, id);
                tracing::info!(party = self.party(), batch = %id, "robust batch refused by its leader: {reason}");
                Ok(())
            }
            // A repeated word: done already if the batch is stored here.
            (Finish::Accept(_), None) if self.is_known(&id) => Ok(()),
            (Finish::Accept(_), None) => Err(ApiError::not_found(format!(
                "batch {id} is not in verification here"
            ))),
        }
    }
}
