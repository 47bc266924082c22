//! The catalog's HTTPS endpoints.

use crate::store::FlagStore;
use crate::FlagTable;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use mcloud_core::http::{ApiError, Postcard};
use mcloud_core::wire::{CreateFlagsRequest, FlagIds, FlagsResponse, GetFlagsResponse};
use std::sync::Arc;

pub const CREATE_PATH: &str = "/v1/flags/create";
pub const SET_PATH: &str = "/v1/flags/set";
pub const GET_PATH: &str = "/v1/flags/get";

/// Routes for a catalog backed by `table`.
pub fn router<T: FlagTable>(table: T, status: Option<Arc<FlagStore>>) -> Router {
    router_with_status(table, move || {
        serde_json::json!({
            "role": "catalog",
            "flags": status.as_ref().map(|s| s.counts()),
        })
    })
}

/// Routes for a catalog backed by `table`, with `status` answering `/v1/status`.
pub fn router_with_status<T: FlagTable>(
    table: T,
    status: impl Fn() -> serde_json::Value + Clone + Send + Sync + 'static,
) -> Router {
    let table = Arc::new(table);
    Router::new()
        .route(CREATE_PATH, post(create::<T>))
        .route(SET_PATH, post(set::<T>))
        .route(GET_PATH, post(read::<T>))
        .with_state(table)
        .route("/v1/status", get(move || async move { Json(status()) }))
        .route("/v1/health", get(|| async { "ok" }))
}

async fn create<T: FlagTable>(
    State(table): State<Arc<T>>,
    Postcard(req): Postcard<CreateFlagsRequest>,
) -> Result<Postcard<FlagsResponse>, ApiError> {
    let flags = table.create(req.flags).await?;
    Ok(Postcard(FlagsResponse { flags }))
}

async fn set<T: FlagTable>(
    State(table): State<Arc<T>>,
    Postcard(req): Postcard<FlagIds>,
) -> Result<Postcard<FlagsResponse>, ApiError> {
    let flags = table.set(req.ids).await?;
    Ok(Postcard(FlagsResponse { flags }))
}

async fn read<T: FlagTable>(
    State(table): State<Arc<T>>,
    Postcard(req): Postcard<FlagIds>,
) -> Result<Postcard<GetFlagsResponse>, ApiError> {
    let flags = table.get(req.ids).await?;
    Ok(Postcard(GetFlagsResponse { flags }))
}
