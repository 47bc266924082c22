//! The cloud's HTTPS endpoints.

use crate::node::CloudNode;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use mcloud_core::http::{ApiError, Postcard, RawBody};
use mcloud_core::reading::GroupLevel;
use mcloud_core::wire::{ComputeResponse, RangeResponse, RangeSpec, UploadAck, WatermarkRequest};
use serde::Deserialize;
use std::sync::Arc;

pub const UPLOAD_PATH: &str = "/v1/upload";
pub const WATERMARK_PATH: &str = "/v1/watermark";
pub const COMPUTE_PATH: &str = "/v1/compute";
pub const RANGE_PATH: &str = "/v1/range";

pub fn router(node: Arc<CloudNode>) -> Router {
    Router::new()
        .route(UPLOAD_PATH, post(upload))
        .route(WATERMARK_PATH, post(watermark))
        .route(COMPUTE_PATH, get(compute))
        .route(RANGE_PATH, get(range).post(ranges))
        .route("/v1/status", get(status))
        .route("/v1/health", get(|| async { "ok" }))
        .with_state(node)
}

async fn upload(
    State(node): State<Arc<CloudNode>>,
    RawBody(body): RawBody,
) -> Result<Postcard<UploadAck>, ApiError> {
    node.upload(body).await.map(Postcard)
}

async fn watermark(
    State(node): State<Arc<CloudNode>>,
    Postcard(req): Postcard<WatermarkRequest>,
) -> Result<Postcard<u64>, ApiError> {
    Ok(Postcard(node.advance_watermark(req).await?))
}

#[derive(Deserialize)]
struct ComputeParams {
    from: Option<u64>,
    to: Option<u64>,
    level: Option<GroupLevel>,
}

async fn compute(
    State(node): State<Arc<CloudNode>>,
    params: Result<Query<ComputeParams>, QueryRejection>,
) -> Result<Postcard<ComputeResponse>, ApiError> {
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
    node.compute(from, to, p.level.unwrap_or(GroupLevel::Plug))
        .await
        .map(Postcard)
}

#[derive(Deserialize)]
struct RangeParams {
    from: u64,
    to: u64,
    #[serde(default)]
    histograms: bool,
}

async fn range(
    State(node): State<Arc<CloudNode>>,
    params: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Postcard<RangeResponse>, ApiError> {
    let Query(p) = params.map_err(|e| {
        ApiError::bad_request(format!(
            "bad RANGE query ({e}); expected from=<unix s>&to=<unix s>[&histograms=true]"
        ))
    })?;
    node.range(p.from, p.to, p.histograms).await.map(Postcard)
}

/// Several ranges in one round trip (the analytics ask for all of a boundary's at once).
async fn ranges(
    State(node): State<Arc<CloudNode>>,
    Postcard(specs): Postcard<Vec<RangeSpec>>,
) -> Result<Postcard<Vec<RangeResponse>>, ApiError> {
    if specs.len() > MAX_RANGES_PER_REQUEST {
        return Err(ApiError::too_large(format!(
            "{} ranges in one request; the limit is {MAX_RANGES_PER_REQUEST}",
            specs.len()
        )));
    }
    node.ranges(&specs).await.map(Postcard)
}

/// Ranges one request may ask for.
const MAX_RANGES_PER_REQUEST: usize = 1024;

async fn status(State(node): State<Arc<CloudNode>>) -> Json<serde_json::Value> {
    Json(node.status())
}
