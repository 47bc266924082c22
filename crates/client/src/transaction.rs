//! One batch's flags transaction: CREATE the flag, UPLOAD one share batch to every cloud, SET
//! the flag. Every step is idempotent, so any step may be retried after a lost answer.

use crate::outbox::PlainBatch;
use crate::session::SensorSessions;
use crate::SensorError;
use futures::future::join_all;
use mcloud_catalog::{CatalogClient, CatalogError, FlagTable};
use mcloud_core::auth::authority::SensorCredentials;
use mcloud_core::http::{send, CallError, Endpoint};
use mcloud_core::paths::{
    HEALTH_PATH, ROBUST_SETTLE_PATH, ROBUST_UPLOAD_PATH, UPLOAD_PATH, WATERMARK_PATH,
};
use mcloud_core::robust::{Forgery, Robust, SettleAnswer, SettleRequest};
use mcloud_core::upload::split_batch;
use mcloud_core::wire::{CreateFlag, FlagState, UploadAck, WatermarkRequest};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What became of one transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every cloud holds its share and the flag is TRUE.
    Committed,
    /// The flag ended ERROR (deadline passed before every cloud acknowledged): the batch
    /// counts nowhere and may be retried under a new flag.
    Expired(String),
    /// A cloud refused a share because its window had already closed: the readings are
    /// too late to count and are reported, not retried.
    Missed(String),
    /// A cloud or the catalog refused the batch as invalid: retrying will not help.
    Rejected(String),
    /// The sensor stopped on purpose before SET (fault injection): the flag will end ERROR.
    Crashed,
}

/// How far a transaction runs; `DieAfter(k)` simulates a sensor that dies after `k` clouds
/// acknowledged their shares and before SET.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fate {
    Complete,
    DieAfter(usize),
}

pub struct Uploader {
    /// In party order, each pinning its party's CA.
    clouds: Vec<Endpoint>,
    sessions: Arc<SensorSessions>,
    catalog: CatalogClient,
    ttl: Duration,
    /// Upload body bytes sent so far (every attempt counts: they all cross the network).
    sent_bytes: std::sync::atomic::AtomicU64,
    /// Robust mode: every batch goes as proven reports, and its leader cloud decides it.
    robust: Option<RobustSender>,
}

/// How a sensor of a robust deployment makes its reports.
#[derive(Clone)]
struct RobustSender {
    robust: Arc<Robust>,
    /// Set only to show the clouds refusing a broken or hostile sensor.
    forgery: Option<Forgery>,
}

const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How long a transaction waits out a catalog that cannot decide (no leader, no quorum): a
/// leader election takes about a second, a restarted majority several.
const CATALOG_PATIENCE: Duration = Duration::from_secs(30);

/// Retries `call` on retryable errors until `until`; other errors and the last retryable
/// one are returned.
async fn retry<T, E, F, Fut>(
    until: Instant,
    retryable: impl Fn(&E) -> bool,
    mut call: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = BACKOFF_START;
    loop {
        match call().await {
            Err(e) if retryable(&e) && Instant::now() + backoff < until => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            other => return other,
        }
    }
}

impl Uploader {
    /// `clouds` in party order; `catalog_parties` names the party of each of `catalog`'s
    /// nodes, whose session the sensor shows it.
    pub fn new(
        clouds: Vec<Endpoint>,
        catalog: CatalogClient,
        catalog_parties: Vec<u16>,
        credentials: SensorCredentials,
        ttl: Duration,
    ) -> Uploader {
        let sessions = Arc::new(SensorSessions::new(credentials, clouds.clone()));
        Uploader {
            catalog: catalog.with_credentials(sessions.clone(), catalog_parties),
            sessions,
            clouds,
            ttl,
            sent_bytes: Default::default(),
            robust: None,
        }
    }

    /// Sends every batch as robust reports (the deployment's clouds must run robust mode).
    /// With `forgery`, one report of each batch is invalid, as a broken or hostile sensor's
    /// would be: for showing that the clouds refuse it.
    pub fn robust(mut self, forgery: Option<Forgery>) -> Result<Uploader, SensorError> {
        let parties = u16::try_from(self.clouds.len())
            .map_err(|_| SensorError::TooManyClouds(self.clouds.len()))?;
        let robust = Robust::new(parties).map_err(|e| SensorError::Robust(e.to_string()))?;
        self.robust = Some(RobustSender {
            robust: Arc::new(robust),
            forgery,
        });
        Ok(self)
    }

    pub fn is_robust(&self) -> bool {
        self.robust.is_some()
    }

    pub fn parties(&self) -> usize {
        self.clouds.len()
    }

    /// The sensor's id, which every batch id it makes carries.
    pub fn sensor(&self) -> u32 {
        self.sessions.scope().sensor
    }

    /// A POST to cloud `party` with the sensor's session for that party.
    async fn post_to<R: serde::de::DeserializeOwned>(
        &self,
        party: usize,
        url: &str,
        body: Vec<u8>,
    ) -> Result<R, CallError> {
        let session = self.sessions.header(party as u16).await?;
        let request = self.clouds[party]
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::AUTHORIZATION, session)
            .body(body);
        send(url, request).await
    }

    /// Upload body bytes sent to all clouds so far.
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the catalog and every cloud answer, so that no flag is created (and its
    /// deadline started) while the shares could not be delivered anyway.
    pub async fn wait_until_reachable(&self, give_up: Duration) -> Result<(), SensorError> {
        let start = Instant::now();
        let mut backoff = BACKOFF_START;
        let probe = |node: Endpoint| async move {
            let url = format!("{}{HEALTH_PATH}", node.url);
            match node.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{url}: {}", r.status())),
                Err(e) => Err(format!("{url}: {e}")),
            }
        };
        loop {
            let clouds = join_all(self.clouds.iter().cloned().map(probe));
            // Any catalog node will do: each one routes to the leaders, and a node that is
            // gone for good must not hold the sensor up.
            let catalog = join_all(self.catalog.endpoints().into_iter().map(probe));
            let (clouds, catalog) = futures::future::join(clouds, catalog).await;
            let mut failures: Vec<String> = clouds.into_iter().filter_map(Result::err).collect();
            if !catalog.iter().any(Result::is_ok) {
                failures.extend(catalog.into_iter().filter_map(Result::err));
            }
            let Some(first) = failures.first() else {
                return Ok(());
            };
            if start.elapsed() >= give_up {
                return Err(SensorError::Unreachable {
                    what: format!("{} endpoints", failures.len()),
                    waited_secs: start.elapsed().as_secs(),
                    last_error: first.clone(),
                });
            }
            tracing::debug!("waiting for {} endpoints: {first}", failures.len());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One encoded upload body per cloud, in party order: explicit shares for the batch's
    /// explicit party, a seed for every other. Everything derives from the batch's master
    /// seed, so the bodies are the same on every attempt.
    pub fn encode_shares(&self, batch: &PlainBatch) -> Result<Vec<Vec<u8>>, SensorError> {
        let parties = u16::try_from(self.clouds.len())
            .map_err(|_| SensorError::TooManyClouds(self.clouds.len()))?;
        split_batch(
            batch.id,
            &batch.seed,
            parties,
            &batch.readings,
            &batch.histograms,
        )?
        .iter()
        .map(|request| Ok(request.encode()?))
        .collect()
    }

    /// The upload bodies of `batch`, and the path they go to: plain shares, or robust
    /// reports (proving is the sensor's heaviest work, so it runs off the async threads).
    async fn bodies(
        &self,
        batch: &PlainBatch,
    ) -> Result<(Vec<Vec<u8>>, &'static str), SensorError> {
        let Some(sender) = self.robust.clone() else {
            return Ok((self.encode_shares(batch)?, UPLOAD_PATH));
        };
        let batch = batch.clone();
        let requests = tokio::task::spawn_blocking(move || {
            sender
                .robust
                .shard_batch(batch.id, &batch.readings, &batch.histograms, sender.forgery)
        })
        .await
        .map_err(|e| SensorError::Robust(e.to_string()))?
        .map_err(|e| SensorError::Robust(e.to_string()))?;
        let bodies = requests
            .iter()
            .map(postcard::to_stdvec)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((bodies, ROBUST_UPLOAD_PATH))
    }

    /// Runs the transaction for `batch` as far as `fate` allows.
    // The span names the batch in every event of its transaction; the clouds log the same id
    // when they store it and when its flag is final, so one batch can be followed to reveal.
    #[tracing::instrument(level = "debug", skip_all, fields(batch = %batch.id))]
    pub async fn transact(&self, batch: &PlainBatch, fate: Fate) -> Result<Outcome, SensorError> {
        let (bodies, path) = self.bodies(batch).await?;
        let ttl_ms = self.ttl.as_millis() as u64;
        // CREATE is idempotent and the deadline starts when the leader applies it, so waiting
        // out an election costs the batch nothing.
        let create_until = Instant::now() + CATALOG_PATIENCE;
        let created = retry(create_until, CatalogError::is_retryable, || {
            self.catalog.create(vec![CreateFlag {
                id: batch.id,
                ttl_ms,
                robust: self.is_robust(),
            }])
        })
        .await;
        let deadline_ms = match created {
            Ok(flags) => match flags.first() {
                Some(flag) => flag.deadline_ms,
                None => return Ok(Outcome::Rejected("catalog answered no flag".into())),
            },
            // The request itself is wrong: no retry can fix it.
            Err(
                e @ (CatalogError::BadTtl { .. }
                | CatalogError::TooMany(_)
                | CatalogError::DuplicateId(_)),
            ) => return Ok(Outcome::Rejected(e.to_string())),
            Err(e) => return Ok(self.settle(batch, e.to_string()).await),
        };
        let remaining = Duration::from_millis(deadline_ms.saturating_sub(mcloud_catalog::now_ms()));
        let upload_until = Instant::now() + remaining;
        let targets = match fate {
            Fate::Complete => self.clouds.len(),
            Fate::DieAfter(k) => k.min(self.clouds.len()),
        };
        let uploads =
            self.clouds[..targets]
                .iter()
                .zip(bodies)
                .enumerate()
                .map(|(party, (cloud, body))| {
                    let url = format!("{}{path}", cloud.url);
                    async move {
                        retry(upload_until, CallError::is_retryable, || {
                            self.sent_bytes
                                .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            self.post_to::<UploadAck>(party, &url, body.clone())
                        })
                        .await
                    }
                });
        for result in join_all(uploads).await {
            match result {
                Ok(_) => {}
                Err(CallError::Rejected {
                    status: 410,
                    message,
                    ..
                }) => return Ok(Outcome::Missed(message)),
                Err(e) if e.is_retryable() => return Ok(Outcome::Expired(e.to_string())),
                Err(CallError::Rejected {
                    status: 409,
                    message,
                    ..
                }) => return Ok(self.settle(batch, message).await),
                Err(e) => return Ok(Outcome::Rejected(e.to_string())),
            }
        }
        if fate != Fate::Complete {
            return Ok(Outcome::Crashed);
        }
        if self.is_robust() {
            return Ok(self.settle_robust(batch, upload_until).await);
        }
        let set = retry(
            upload_until + Duration::from_secs(5),
            CatalogError::is_retryable,
            || self.catalog.set(vec![batch.id]),
        )
        .await;
        Ok(match set {
            Ok(flags) if flags.first().map(|f| f.state) == Some(FlagState::True) => {
                Outcome::Committed
            }
            Ok(_) => Outcome::Rejected("catalog did not confirm TRUE".into()),
            Err(e) => self.settle(batch, e.to_string()).await,
        })
    }

    /// Asks the batch's leader cloud to verify it with the others; its verdict decides the
    /// flag. A leader that cannot be asked leaves the flag to its deadline.
    async fn settle_robust(&self, batch: &PlainBatch, until: Instant) -> Outcome {
        let parties = self.clouds.len() as u16;
        let leader = mcloud_core::robust::party_of(batch.id, 0, parties);
        let url = format!(
            "{}{ROBUST_SETTLE_PATH}",
            self.clouds[usize::from(leader)].url
        );
        let body = match postcard::to_stdvec(&SettleRequest { batch_id: batch.id }) {
            Ok(body) => body,
            Err(e) => return Outcome::Rejected(e.to_string()),
        };
        let answer = retry(
            until + Duration::from_secs(5),
            CallError::is_retryable,
            || self.post_to::<SettleAnswer>(usize::from(leader), &url, body.clone()),
        )
        .await;
        match answer {
            Ok(a) if a.valid => Outcome::Committed,
            Ok(a) => {
                let reason = format!(
                    "robust verification refused the batch: {}",
                    a.reason.unwrap_or_default()
                );
                if a.invalid_report {
                    Outcome::Rejected(reason)
                } else {
                    Outcome::Expired(reason)
                }
            }
            Err(e) => self.settle(batch, e.to_string()).await,
        }
    }

    /// After a refusal that concerns the flag, the flag itself says what became of the batch:
    /// TRUE means an earlier attempt already committed it, ERROR that it expired, and no flag
    /// that CREATE never took effect (nothing was uploaded under it). A flag still FALSE is
    /// waited for: its deadline decides it.
    async fn settle(&self, batch: &PlainBatch, message: String) -> Outcome {
        let patience = CATALOG_PATIENCE.max(self.ttl * 2);
        let until = Instant::now() + patience;
        loop {
            match self.catalog.get(vec![batch.id]).await {
                Ok(flags) => match flags.first().copied().flatten().map(|f| f.state) {
                    Some(FlagState::True) => return Outcome::Committed,
                    Some(FlagState::Error) | None => return Outcome::Expired(message),
                    Some(FlagState::False) => {}
                },
                Err(e) if e.is_retryable() => {
                    tracing::debug!(batch = %batch.id, "reading the flag: {e}");
                }
                Err(e) => return Outcome::Rejected(format!("{message}; reading the flag: {e}")),
            }
            if Instant::now() >= until {
                return Outcome::Rejected(format!(
                    "{message}; the catalog did not decide the flag within {patience:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reports progress to every cloud: every reading before `ts` has been sent; with
    /// `end_of_stream`, the window holding `ts` may close too.
    pub async fn advance_watermark(&self, ts: u64, end_of_stream: bool) -> Result<(), CallError> {
        let body = postcard::to_stdvec(&WatermarkRequest { ts, end_of_stream })?;
        for (party, cloud) in self.clouds.iter().enumerate() {
            let url = format!("{}{WATERMARK_PATH}", cloud.url);
            let until = Instant::now() + Duration::from_secs(30);
            retry(until, CallError::is_retryable, || {
                self.post_to::<u64>(party, &url, body.clone())
            })
            .await?;
        }
        Ok(())
    }
}
