//! The cloud's HTTPS endpoints, grouped by who calls them: sensors (sessions, UPLOAD, robust
//! UPLOAD and SETTLE, watermark), apps (COMPUTE, RANGE), the other clouds (robust
//! verification), the party's administrators (the audit log) and anyone (health, status).
//! Each group sits behind its own authentication layer (see `mcloud_core::auth`).

use crate::node::CloudNode;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use mcloud_core::auth::app::{AppRequest, Grant, QueryKind};
use mcloud_core::auth::peer::{PeerIdentity, Role};
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::auth::{now_secs, require_app, require_peer, require_sensor, AppBearer, NodeAuth};
use mcloud_core::http::{ApiError, Postcard, RawBody};
use mcloud_core::paths::{
    AUDIT_PATH, COMPUTE_PATH, PEER_FINISH_PATH, PEER_VERIFIER_SHARES_PATH, RANGE_PATH,
    ROBUST_SETTLE_PATH, ROBUST_UPLOAD_PATH, UPLOAD_PATH, WATERMARK_PATH,
};
use mcloud_core::reading::GroupLevel;
use mcloud_core::robust::VerifierShares;
use mcloud_core::robust::{FinishRequest, SettleAnswer, SettleRequest};
use mcloud_core::wire::{ComputeResponse, RangeResponse, RangeSpec, UploadAck, WatermarkRequest};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Clone)]
struct Cloud {
    node: Arc<CloudNode>,
    auth: NodeAuth,
}

type Node = State<Cloud>;

pub fn router(node: Arc<CloudNode>, auth: NodeAuth) -> Router {
    let metrics = node.metrics().clone();
    let state = Cloud {
        node,
        auth: auth.clone(),
    };
    let sensor = Router::new()
        .route(UPLOAD_PATH, post(upload))
        .route(ROBUST_UPLOAD_PATH, post(robust_upload))
        .route(ROBUST_SETTLE_PATH, post(settle))
        .route(WATERMARK_PATH, post(watermark))
        .layer(from_fn_with_state(auth.clone(), require_sensor));
    let app = Router::new()
        .route(COMPUTE_PATH, get(compute))
        .route(RANGE_PATH, get(range).post(ranges))
        .layer(from_fn(require_app));
    let admin = Router::new()
        .route(AUDIT_PATH, get(audit))
        .layer(from_fn_with_state(ADMINS, require_peer));
    let peers = Router::new()
        .route(PEER_VERIFIER_SHARES_PATH, post(verifier_shares))
        .route(PEER_FINISH_PATH, post(finish))
        .layer(from_fn_with_state(CLOUDS, require_peer));
    let router = Router::new()
        .merge(sensor)
        .merge(app)
        .merge(admin)
        .merge(peers)
        .merge(mcloud_core::auth::session_router(auth))
        .route(mcloud_core::paths::STATUS_PATH, get(status))
        .route(mcloud_core::paths::HEALTH_PATH, get(|| async { "ok" }))
        .with_state(state);
    metrics.instrument(mcloud_core::console::with_console(router))
}

/// How often a cloud reads the revoked app tokens from the catalog: a revocation takes effect
/// within this, at every cloud.
pub const REVOCATION_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps `auth`'s revoked app tokens and sensors and owners' access rules in step with the
/// catalog's, until `auth` is dropped with the cloud's routes.
pub fn watch_revocations(
    catalog: mcloud_catalog::CatalogClient,
    auth: &NodeAuth,
) -> tokio::task::JoinHandle<()> {
    let revoked = Arc::downgrade(&auth.revoked);
    let access = Arc::downgrade(&auth.access);
    let revoked_sensors = Arc::downgrade(&auth.revoked_sensors);
    tokio::spawn(async move {
        // The three live and die together with `auth`.
        while revoked.strong_count() > 0 {
            let tokens = catalog.revocations().await;
            let sensors = catalog.revoked_sensors().await;
            let rules = catalog.access_rules().await;
            let (Some(r), Some(s), Some(a)) = (
                revoked.upgrade(),
                revoked_sensors.upgrade(),
                access.upgrade(),
            ) else {
                return;
            };
            update(&r, tokens, "revoked tokens", |set, ids| set.extend(ids));
            update(&s, sensors, "revoked sensors", |set, ids| set.extend(ids));
            update(&a, rules, "access rules", |map, rules| {
                *map = rules.into_iter().map(|r| (r.user.clone(), r)).collect();
            });
            tokio::time::sleep(REVOCATION_POLL).await;
        }
    })
}

/// Applies what the catalog answered to one of `auth`'s lists; a failed read keeps the list
/// as it was until the next poll.
fn update<T, V>(
    lock: &std::sync::RwLock<T>,
    read: Result<V, mcloud_catalog::CatalogError>,
    what: &str,
    apply: impl FnOnce(&mut T, V),
) {
    match read {
        Ok(value) => apply(&mut lock.write().unwrap_or_else(|p| p.into_inner()), value),
        Err(e) => tracing::debug!("reading {what}: {e}"),
    }
}

async fn upload(
    State(cloud): Node,
    Extension(scope): Extension<SensorScope>,
    RawBody(body): RawBody,
) -> Result<Postcard<UploadAck>, ApiError> {
    cloud.node.upload(body, &scope).await.map(Postcard)
}

async fn robust_upload(
    State(cloud): Node,
    Extension(scope): Extension<SensorScope>,
    RawBody(body): RawBody,
) -> Result<Postcard<UploadAck>, ApiError> {
    cloud.node.robust_upload(body, &scope).await.map(Postcard)
}

async fn settle(
    State(cloud): Node,
    Extension(scope): Extension<SensorScope>,
    Postcard(req): Postcard<SettleRequest>,
) -> Result<Postcard<SettleAnswer>, ApiError> {
    cloud.node.settle(req, &scope).await.map(Postcard)
}

async fn verifier_shares(
    State(cloud): Node,
    Postcard(req): Postcard<SettleRequest>,
) -> Result<Postcard<VerifierShares>, ApiError> {
    cloud.node.verifier_shares(req).await.map(Postcard)
}

async fn finish(
    State(cloud): Node,
    Postcard(req): Postcard<FinishRequest>,
) -> Result<Postcard<()>, ApiError> {
    cloud.node.finish(req).await.map(Postcard)
}

async fn watermark(
    State(cloud): Node,
    Extension(scope): Extension<SensorScope>,
    Postcard(req): Postcard<WatermarkRequest>,
) -> Result<Postcard<u64>, ApiError> {
    Ok(Postcard(
        cloud.node.advance_watermark(req, scope.sensor).await?,
    ))
}

/// What the request's app token grants for `query` at `level`.
fn grant(
    cloud: &Cloud,
    bearer: &AppBearer,
    query: QueryKind,
    level: GroupLevel,
) -> Result<Grant, ApiError> {
    cloud.auth.authorize_app(
        bearer,
        &AppRequest {
            now: now_secs(),
            query,
            level,
        },
    )
}

#[derive(Deserialize)]
struct ComputeParams {
    from: Option<u64>,
    to: Option<u64>,
    level: Option<GroupLevel>,
}

async fn compute(
    State(cloud): Node,
    Extension(bearer): Extension<AppBearer>,
    params: Result<Query<ComputeParams>, QueryRejection>,
) -> Result<Postcard<ComputeResponse>, ApiError> {
    let (from, to, level) = compute_params(params)?;
    let grant = grant(&cloud, &bearer, QueryKind::Compute, level)?;
    let reach = cloud.auth.reach(&grant);
    crate::disclosure::compute(&cloud.node, &reach, &grant, from, to, level)
        .await
        .map(Postcard)
}

fn range_kind(histograms: bool) -> QueryKind {
    if histograms {
        QueryKind::Histograms
    } else {
        QueryKind::Range
    }
}

#[derive(Deserialize)]
struct RangeParams {
    from: u64,
    to: u64,
    #[serde(default)]
    histograms: bool,
}

async fn range(
    State(cloud): Node,
    Extension(bearer): Extension<AppBearer>,
    params: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Postcard<RangeResponse>, ApiError> {
    let spec = range_params(params)?;
    let mut answers = answer_ranges(&cloud, &bearer, &[spec]).await?;
    answers
        .pop()
        .map(Postcard)
        .ok_or_else(|| ApiError::internal("no answer to one range"))
}

/// Several ranges in one round trip (the analytics ask for all of a boundary's at once).
async fn ranges(
    State(cloud): Node,
    Extension(bearer): Extension<AppBearer>,
    Postcard(specs): Postcard<Vec<RangeSpec>>,
) -> Result<Postcard<Vec<RangeResponse>>, ApiError> {
    check_range_list(&specs)?;
    answer_ranges(&cloud, &bearer, &specs).await.map(Postcard)
}

/// A token without histograms refuses a request that asks for any: the grant is for the
/// widest kind asked for.
async fn answer_ranges(
    cloud: &Cloud,
    bearer: &AppBearer,
    specs: &[RangeSpec],
) -> Result<Vec<RangeResponse>, ApiError> {
    let kind = range_kind(specs.iter().any(|s| s.histograms));
    let granted = grant(cloud, bearer, kind, GroupLevel::Plug)?;
    let reach = cloud.auth.reach(&granted);
    crate::disclosure::ranges(&cloud.node, &reach, &granted, specs).await
}

const ADMINS: &[Role] = &[Role::Admin];
/// Robust verification is among the clouds only.
const CLOUDS: &[Role] = &[Role::Cloud];

/// The audit log, to this party's administrators only.
async fn audit(
    State(cloud): Node,
    Extension(who): Extension<PeerIdentity>,
    params: Result<Query<crate::audit::AuditFilter>, QueryRejection>,
) -> Result<Json<Vec<crate::audit::Disclosure>>, ApiError> {
    if who.party != cloud.node.party() {
        return Err(ApiError::forbidden(
            "wrong_party",
            format!(
                "{who} administers party {}, this cloud is party {}",
                who.party,
                cloud.node.party()
            ),
        ));
    }
    let filter = audit_params(params)?;
    cloud.node.audit().settle().await?;
    Ok(Json(cloud.node.audit().read(&filter)?))
}

/// Ranges one request may ask for.
pub const MAX_RANGES_PER_REQUEST: usize = 1024;

/// COMPUTE's query as the handler reads it: (from, to, level), or the 400 it answers.
fn compute_params(
    params: Result<Query<ComputeParams>, QueryRejection>,
) -> Result<(u64, u64, GroupLevel), ApiError> {
    let Query(p) = params.map_err(|e| {
        ApiError::bad_request(format!(
            "bad COMPUTE query ({e}); expected from=<unix s>&to=<unix s>&level=house|household|plug"
        ))
    })?;
    let (from, to) = (p.from.unwrap_or(0), p.to.unwrap_or(u64::MAX));
    if from > to {
        return Err(ApiError::bad_request(format!(
            "bad COMPUTE range: from {from} is after to {to}"
        )));
    }
    Ok((from, to, p.level.unwrap_or(GroupLevel::Plug)))
}

/// RANGE's query as the handler reads it, or the 400 it answers.
fn range_params(params: Result<Query<RangeParams>, QueryRejection>) -> Result<RangeSpec, ApiError> {
    let Query(p) = params.map_err(|e| {
        ApiError::bad_request(format!(
            "bad RANGE query ({e}); expected from=<unix s>&to=<unix s>[&histograms=true]"
        ))
    })?;
    Ok(RangeSpec {
        from: p.from,
        to: p.to,
        histograms: p.histograms,
    })
}

/// The audit query as the handler reads it, or the 400 it answers.
fn audit_params(
    params: Result<Query<crate::audit::AuditFilter>, QueryRejection>,
) -> Result<crate::audit::AuditFilter, ApiError> {
    let Query(filter) = params.map_err(|e| {
        ApiError::bad_request(format!(
            "bad audit query ({e}); expected [user=..][&app=..][&house=n][&since=<unix s>][&limit=n]"
        ))
    })?;
    Ok(filter)
}

/// Refuses a range-list body with more ranges than one request may ask for.
pub fn check_range_list(specs: &[RangeSpec]) -> Result<(), ApiError> {
    if specs.len() > MAX_RANGES_PER_REQUEST {
        return Err(ApiError::too_large(format!(
            "{} ranges in one request; the limit is {MAX_RANGES_PER_REQUEST}",
            specs.len()
        )));
    }
    Ok(())
}

/// The request parsers behind the handlers above, on a request URI as the server received it:
/// what the fuzz targets (`mcloud::fuzzing`) drive without a server.
pub mod parse {
    use super::*;
    use axum::http::Uri;

    /// COMPUTE's query string: (from, to, level).
    pub fn compute(uri: &Uri) -> Result<(u64, u64, GroupLevel), ApiError> {
        compute_params(Query::try_from_uri(uri))
    }

    /// RANGE's query string.
    pub fn range(uri: &Uri) -> Result<RangeSpec, ApiError> {
        range_params(Query::try_from_uri(uri))
    }

    /// The audit log's query string.
    pub fn audit(uri: &Uri) -> Result<crate::audit::AuditFilter, ApiError> {
        audit_params(Query::try_from_uri(uri))
    }
}

async fn status(State(cloud): Node) -> Json<serde_json::Value> {
    Json(cloud.node.status())
}
