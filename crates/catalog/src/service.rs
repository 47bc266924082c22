//! The catalog's flags endpoints, for sensors (their own flags) and clouds (any flag, and the
//! verdict on robust ones).

use crate::FlagTable;
use axum::extract::State;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use mcloud_core::auth::peer::{PeerIdentity, Role};
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::auth::{require_peer, require_sensor, require_sensor_or_peer, NodeAuth};
use mcloud_core::http::{ApiError, Postcard};
use mcloud_core::wire::{
    CreateFlagsRequest, FlagIds, FlagsResponse, GetFlagsResponse, VerdictRequest,
};
use mcloud_core::BatchId;
use std::sync::Arc;

pub use mcloud_core::paths::{CREATE_PATH, GET_PATH, SET_PATH, VERDICT_PATH};

/// Who may give a verdict on robust flags: the clouds that verify them.
const CLOUDS: &[Role] = &[Role::Cloud];

/// Routes for a catalog backed by `table`, with `status` answering `/v1/status`.
pub fn router_with_status<T: FlagTable>(
    table: T,
    auth: NodeAuth,
    status: impl Fn() -> serde_json::Value + Clone + Send + Sync + 'static,
) -> Router {
    let table = Arc::new(table);
    let sensors = Router::new()
        .route(CREATE_PATH, post(create::<T>))
        .route(SET_PATH, post(set::<T>))
        .layer(from_fn_with_state(auth.clone(), require_sensor));
    let readers = Router::new()
        .route(GET_PATH, post(read::<T>))
        .layer(from_fn_with_state(auth.clone(), require_sensor_or_peer));
    let clouds = Router::new()
        .route(VERDICT_PATH, post(verdict::<T>))
        .layer(from_fn_with_state(CLOUDS, require_peer));
    sensors
        .merge(readers)
        .merge(clouds)
        .with_state(table)
        .merge(mcloud_core::auth::session_router(auth))
        .route(
            mcloud_core::paths::STATUS_PATH,
            get(move || async move { Json(status()) }),
        )
        .route(mcloud_core::paths::HEALTH_PATH, get(|| async { "ok" }))
}

/// A sensor names only flags of its own batches (their ids carry its id).
fn own_ids(scope: &SensorScope, mut ids: impl Iterator<Item = BatchId>) -> Result<(), ApiError> {
    ids.try_for_each(|id| mcloud_core::auth::check_own(scope, id))
}

async fn create<T: FlagTable>(
    State(table): State<Arc<T>>,
    Extension(scope): Extension<SensorScope>,
    Postcard(req): Postcard<CreateFlagsRequest>,
) -> Result<Postcard<FlagsResponse>, ApiError> {
    own_ids(&scope, req.flags.iter().map(|f| f.id))?;
    let flags = table.create(req.flags).await?;
    Ok(Postcard(FlagsResponse { flags }))
}

async fn set<T: FlagTable>(
    State(table): State<Arc<T>>,
    Extension(scope): Extension<SensorScope>,
    Postcard(req): Postcard<FlagIds>,
) -> Result<Postcard<FlagsResponse>, ApiError> {
    own_ids(&scope, req.ids.iter().copied())?;
    let flags = table.set(req.ids).await?;
    Ok(Postcard(FlagsResponse { flags }))
}

async fn verdict<T: FlagTable>(
    State(table): State<Arc<T>>,
    Extension(cloud): Extension<PeerIdentity>,
    Postcard(req): Postcard<VerdictRequest>,
) -> Result<Postcard<FlagsResponse>, ApiError> {
    let flags = table.verdict(req.ids.clone(), req.valid).await?;
    tracing::debug!(
        party = cloud.party,
        batches = req.ids.len(),
        valid = req.valid,
        "verdict on robust flags"
    );
    Ok(Postcard(FlagsResponse { flags }))
}

async fn read<T: FlagTable>(
    State(table): State<Arc<T>>,
    scope: Option<Extension<SensorScope>>,
    peer: Option<Extension<PeerIdentity>>,
    Postcard(req): Postcard<FlagIds>,
) -> Result<Postcard<GetFlagsResponse>, ApiError> {
    match (scope, peer) {
        (_, Some(_)) => {}
        (Some(Extension(scope)), None) => own_ids(&scope, req.ids.iter().copied())?,
        (None, None) => {
            return Err(ApiError::unauthenticated(
                "credential_missing",
                "reading flags needs a sensor session or a cloud's certificate",
            ))
        }
    }
    let flags = table.get(req.ids).await?;
    Ok(Postcard(GetFlagsResponse { flags }))
}
