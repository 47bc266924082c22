//! The replicated catalog: the flags table as an openraft state machine, one Raft group per
//! partition of the keyspace, logs and state in redb, RPCs over the nodes' TLS servers.

// openraft fixes the storage error type, and it is large; boxing it would only add copies.
#![allow(clippy::result_large_err)]
pub mod bounds;
pub mod durable;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod node;
pub mod placement;
pub mod proposer;
pub mod snapshot_transfer;
pub mod state_machine;
pub mod types;

pub use network::Faults;
pub use node::{CatalogConfig, CatalogNode, MembershipChange, PartitionStatus, StartError};
pub use openraft::ServerState;
pub use types::{AccessRules, Assignment, NodeId, Peer, MAX_ASSIGNMENT_BUCKETS, MAX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use mcloud_core::auth::peer::{PeerIdentity, Role};
use mcloud_core::auth::{require_peer, NodeAuth};
use mcloud_core::http::{decode, ApiError, Postcard};
use network::{Envelope, SnapshotChunkAnswer};
use node::{Forwarded, ForwardedAnswer};
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use serde::Serialize;
use snapshot_transfer::SnapshotChunk;
use state_machine::StateMachine;
use std::sync::Arc;
use types::{TypeConfig, WireError};

fn postcard_answer<T: Serialize>(value: &T) -> Response {
    encoded(axum::http::StatusCode::OK, value)
}

fn encoded<T: Serialize>(status: axum::http::StatusCode, value: &T) -> Response {
    match postcard::to_stdvec(value) {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            body,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("encoding answer: {e}")).into_response(),
    }
}

/// A node-to-node answer: the whole `Result` travels as postcard (the caller decodes the
/// error itself), but an error never travels inside a 200 — its status says what happened.
fn result_answer<T: Serialize, E: Serialize>(
    answer: &Result<T, E>,
    status_of: impl Fn(&E) -> axum::http::StatusCode,
) -> Response {
    let status = match answer {
        Ok(_) => axum::http::StatusCode::OK,
        Err(e) => status_of(e),
    };
    encoded(status, answer)
}

/// A Raft group that cannot take an RPC (stopped, or failed): the caller tries again later.
fn raft_status<E>(_: &E) -> axum::http::StatusCode {
    axum::http::StatusCode::SERVICE_UNAVAILABLE
}

fn wire_status(e: &WireError) -> axum::http::StatusCode {
    ApiError::from(crate::CatalogError::from(e.clone())).status
}

type Node = State<Arc<CatalogNode>>;

fn raft_of(node: &CatalogNode, partition: u32) -> Result<&types::Raft, ApiError> {
    node.raft(partition)
        .ok_or_else(|| ApiError::not_found(format!("no catalog partition {partition}")))
}

/// A Raft message is believed only from the voter its certificate names, and only while that
/// voter belongs to the partition (or before this node has joined any membership: its first
/// messages come from the leader that is adding it).
fn check_sender(
    node: &CatalogNode,
    partition: u32,
    who: &PeerIdentity,
    from: NodeId,
) -> Result<(), ApiError> {
    if who.id != from {
        return Err(ApiError::forbidden(
            "wrong_sender",
            format!("{who} sent a message in the name of node {from}"),
        ));
    }
    if let Some(raft) = node.raft(partition) {
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let mut members = membership.nodes().map(|(id, _)| *id).peekable();
        if members.peek().is_some() && !members.any(|id| id == from) {
            return Err(ApiError::forbidden(
                "not_a_member",
                format!("node {from} is not a member of partition {partition}"),
            ));
        }
    }
    if node.faults().blocks(from) {
        return Err(ApiError::unavailable(format!(
            "node {from} is cut off by the fault switch"
        )));
    }
    Ok(())
}

type Sender = Extension<PeerIdentity>;

/// A Raft message with a number out of bounds is refused whole, before openraft sees it.
fn out_of_bounds(e: bounds::BoundError) -> ApiError {
    let status = match e {
        bounds::BoundError::NotTheSender { .. } => axum::http::StatusCode::FORBIDDEN,
        _ => axum::http::StatusCode::BAD_REQUEST,
    };
    ApiError::coded(status, e.code(), e.to_string())
}

async fn append(
    State(node): Node,
    Extension(who): Sender,
    Path(p): Path<u32>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rpc: Envelope<AppendEntriesRequest<TypeConfig>> = decode(&body)?;
    check_sender(&node, p, &who, rpc.from)?;
    bounds::check_append(&rpc.body, rpc.from, crate::now_ms()).map_err(out_of_bounds)?;
    let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
        raft_of(&node, p)?.append_entries(rpc.body).await;
    Ok(result_answer(&answer, raft_status))
}

async fn vote(
    State(node): Node,
    Extension(who): Sender,
    Path(p): Path<u32>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rpc: Envelope<VoteRequest<NodeId>> = decode(&body)?;
    check_sender(&node, p, &who, rpc.from)?;
    bounds::check_vote(&rpc.body, rpc.from).map_err(out_of_bounds)?;
    let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
        raft_of(&node, p)?.vote(rpc.body).await;
    Ok(result_answer(&answer, raft_status))
}

async fn snapshot(
    State(node): Node,
    Extension(who): Sender,
    Path(p): Path<u32>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rpc: Envelope<SnapshotChunk> = decode(&body)?;
    check_sender(&node, p, &who, rpc.from)?;
    bounds::check_snapshot(&rpc.body, rpc.from).map_err(out_of_bounds)?;
    let raft = raft_of(&node, p)?;
    let Some(whole) = node
        .incoming_snapshots()
        .accept(p, rpc.from, rpc.body)
        .map_err(|e| ApiError::conflict(e.to_string()))?
    else {
        return Ok(postcard_answer(&SnapshotChunkAnswer::Ok(None)));
    };
    // Refused here, not in the state machine: a storage error there would stop the group.
    StateMachine::check_peer_snapshot(&whole.data, crate::now_ms()).map_err(|e| {
        ApiError::coded(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_snapshot",
            format!("snapshot from node {}: {e}", rpc.from),
        )
    })?;
    let snapshot = openraft::Snapshot {
        meta: whole.meta,
        snapshot: Box::new(std::io::Cursor::new(whole.data)),
    };
    let answer: SnapshotChunkAnswer = raft
        .install_full_snapshot(whole.vote, snapshot)
        .await
        .map(Some);
    Ok(result_answer(&answer, raft_status))
}

async fn local(State(node): Node, Path(p): Path<u32>, body: Bytes) -> Result<Response, ApiError> {
    let req: Forwarded = decode(&body)?;
    let answer: Result<ForwardedAnswer, WireError> = node.run_local(p, req).await;
    Ok(result_answer(&answer, wire_status))
}

async fn membership(
    State(node): Node,
    Path(p): Path<u32>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let change: MembershipChange = decode(&body)?;
    let answer: Result<(), WireError> = node
        .change_membership(p, change)
        .await
        .map_err(WireError::from);
    Ok(result_answer(&answer, wire_status))
}

const VOTERS: &[Role] = &[Role::Voter];
/// Administrators change membership; a voter forwards an administrator's change to the
/// leader.
const ADMINS: &[Role] = &[Role::Admin, Role::Voter];
const CLOUDS: &[Role] = &[Role::Cloud, Role::Admin];

/// The node-to-node endpoints (voters only): Raft RPCs and forwarded requests; and membership
/// changes (administrators).
pub fn internal_router(node: Arc<CatalogNode>) -> Router {
    let voters = Router::new()
        .route("/v1/raft/{partition}/append", post(append))
        .route("/v1/raft/{partition}/vote", post(vote))
        .route("/v1/raft/{partition}/snapshot", post(snapshot))
        .route("/v1/catalog/{partition}/local", post(local))
        .layer(from_fn_with_state(VOTERS, require_peer));
    let admins = Router::new()
        .route("/v1/catalog/{partition}/membership", post(membership))
        .layer(from_fn_with_state(ADMINS, require_peer));
    voters
        .merge(admins)
        // One body limit for every route, the server's: snapshots travel in chunks and a
        // catch-up append carries fewer entries when large, so no Raft RPC needs more.
        .with_state(node)
}

/// Where cloud `party`'s bucket → worker map is written (POST) and read (GET).
pub fn assignment_path(party: u16) -> String {
    format!("/v1/assignments/{party}")
}

fn party_of(raw: &str) -> Result<u16, crate::CatalogError> {
    raw.parse().map_err(|_| {
        crate::CatalogError::BadAssignment(format!(
            "party `{raw}` is not a cloud index (0..=65535)"
        ))
    })
}

async fn put_assignment(
    State(node): Node,
    Extension(who): Sender,
    Path(party): Path<String>,
    Postcard(assignment): Postcard<Assignment>,
) -> Result<Postcard<()>, ApiError> {
    let party = party_of(&party)?;
    if who.role != Role::Cloud || who.party != party {
        return Err(ApiError::forbidden(
            "not_your_map",
            format!("only cloud {party} writes its bucket map, not {who}"),
        ));
    }
    node.put_assignment(party, assignment).await?;
    Ok(Postcard(()))
}

/// Where cloud `party` reports its settled time (POST, a postcard `u64` of ms).
pub fn settled_path(party: u16) -> String {
    format!("/v1/settled/{party}")
}

async fn post_settled(
    State(node): Node,
    Extension(who): Sender,
    Path(party): Path<String>,
    Postcard(before_ms): Postcard<u64>,
) -> Result<Postcard<()>, ApiError> {
    let party = party_of(&party)?;
    if who.role != Role::Cloud || who.party != party {
        return Err(ApiError::forbidden(
            "not_your_cloud",
            format!("only cloud {party} reports its settled time, not {who}"),
        ));
    }
    node.report_settled(party, before_ms).await?;
    Ok(Postcard(()))
}

async fn get_assignment(
    State(node): Node,
    Path(party): Path<String>,
) -> Result<Postcard<Option<Assignment>>, ApiError> {
    Ok(Postcard(node.get_assignment(party_of(&party)?).await?))
}

async fn post_revocations(
    State(node): Node,
    Postcard(ids): Postcard<Vec<String>>,
) -> Result<Postcard<()>, ApiError> {
    node.revoke(ids).await?;
    Ok(Postcard(()))
}

async fn get_revocations(State(node): Node) -> Result<Postcard<Vec<String>>, ApiError> {
    Ok(Postcard(node.revocations()?))
}

async fn post_sensor_revocations(
    State(node): Node,
    Postcard(ids): Postcard<Vec<u32>>,
) -> Result<Postcard<()>, ApiError> {
    node.revoke_sensors(ids).await?;
    Ok(Postcard(()))
}

async fn get_sensor_revocations(State(node): Node) -> Result<Postcard<Vec<u32>>, ApiError> {
    Ok(Postcard(node.revoked_sensors()?))
}

async fn post_forget_cloud(
    State(node): Node,
    Path(party): Path<u16>,
) -> Result<Postcard<()>, ApiError> {
    node.forget_cloud(party).await?;
    Ok(Postcard(()))
}

/// Revoked app tokens and sensors, and clouds that left for good: administrators write,
/// clouds (and administrators) read the revocations.
pub fn revocations_router(node: Arc<CatalogNode>) -> Router {
    use mcloud_core::paths::{REVOCATIONS_PATH, SENSOR_REVOCATIONS_PATH};
    let admins = Router::new()
        .route(REVOCATIONS_PATH, post(post_revocations))
        .route(SENSOR_REVOCATIONS_PATH, post(post_sensor_revocations))
        .route(FORGET_CLOUD_PATH, post(post_forget_cloud))
        .layer(from_fn_with_state(ADMIN_ONLY, require_peer));
    let readers = Router::new()
        .route(REVOCATIONS_PATH, axum::routing::get(get_revocations))
        .route(
            SENSOR_REVOCATIONS_PATH,
            axum::routing::get(get_sensor_revocations),
        )
        .layer(from_fn_with_state(CLOUDS, require_peer));
    admins.merge(readers).with_state(node)
}

/// Keeps the node's own sensor gate in step with the revoked sensors it has applied, until
/// `auth` is dropped with the node's routes.
fn watch_local_revocations(node: Arc<CatalogNode>, auth: &NodeAuth) {
    let revoked = Arc::downgrade(&auth.revoked_sensors);
    tokio::spawn(async move {
        loop {
            let Some(revoked) = revoked.upgrade() else {
                return;
            };
            if let Ok(ids) = node.revoked_sensors() {
                revoked
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(ids);
            }
            drop(revoked);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

const ADMIN_ONLY: &[Role] = &[Role::Admin];

/// Where an administrator tells the catalog that a cloud left for good.
pub const FORGET_CLOUD_PATH: &str = "/v1/clouds/{party}/forget";

/// [`FORGET_CLOUD_PATH`] for `party`.
pub fn forget_cloud_path(party: u16) -> String {
    FORGET_CLOUD_PATH.replace("{party}", &party.to_string())
}

/// The access modifiers of the owner whose token the request carries.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct AccessRequest {
    pub friends: Vec<String>,
    pub others: bool,
    pub denied_apps: Vec<String>,
}

#[derive(Clone)]
struct Access {
    node: Arc<CatalogNode>,
    auth: NodeAuth,
}

/// A house owner sets the rules for the houses its token names; only the owner's own token
/// (not one handed to an app) may, and a collector's token (every house, nobody's) may not.
async fn post_access(
    State(access): State<Access>,
    Extension(bearer): Extension<mcloud_core::auth::AppBearer>,
    Postcard(req): Postcard<AccessRequest>,
) -> Result<Postcard<()>, ApiError> {
    use mcloud_core::auth::app::HouseScope;
    let grant = access.auth.token_holder(&bearer)?;
    let HouseScope::Only(houses) = grant.houses else {
        return Err(ApiError::forbidden(
            "not_an_owner",
            format!("{}'s token owns no houses of its own", grant.user),
        ));
    };
    if let Some(app) = grant.app {
        return Err(ApiError::forbidden(
            "not_an_owner",
            format!("app {app} may not set {}'s access rules", grant.user),
        ));
    }
    let rules = AccessRules {
        user: grant.user,
        houses: houses.into_iter().collect(),
        friends: req.friends,
        others: req.others,
        denied_apps: req.denied_apps,
    };
    access.node.set_access(rules).await?;
    Ok(Postcard(()))
}

async fn get_access(State(node): Node) -> Result<Postcard<Vec<AccessRules>>, ApiError> {
    Ok(Postcard(node.access_rules()?))
}

/// Owners' access modifiers: owners set theirs with their token, clouds read them all.
pub fn access_router(node: Arc<CatalogNode>, auth: NodeAuth) -> Router {
    let owners = Router::new()
        .route(mcloud_core::paths::ACCESS_PATH, post(post_access))
        .layer(axum::middleware::from_fn(mcloud_core::auth::require_app))
        .with_state(Access {
            node: node.clone(),
            auth,
        });
    let readers = Router::new()
        .route(
            mcloud_core::paths::ACCESS_PATH,
            axum::routing::get(get_access),
        )
        .layer(from_fn_with_state(CLOUDS, require_peer))
        .with_state(node);
    owners.merge(readers)
}

/// The clouds' bucket → worker maps: each cloud writes its own; clouds and administrators
/// read them.
pub fn assignments_router(node: Arc<CatalogNode>) -> Router {
    Router::new()
        .route(
            "/v1/assignments/{party}",
            post(put_assignment).get(get_assignment),
        )
        .route("/v1/settled/{party}", post(post_settled))
        .layer(from_fn_with_state(CLOUDS, require_peer))
        .with_state(node)
}

/// Everything a catalog node serves: the flags API, the clouds' bucket maps, the node-to-node endpoints and a status
/// page that shows every partition's leader and term.
pub fn router(node: Arc<CatalogNode>, auth: NodeAuth) -> Router {
    let metrics = metrics::register(&node);
    let status_node = node.clone();
    let access = access_router(node.clone(), auth.clone());
    let auth_for_masters = auth.clone();
    watch_local_revocations(node.clone(), &auth);
    let router = crate::service::router_with_status(node.clone(), auth, move || {
        serde_json::json!({
            "role": "catalog",
            "node_id": status_node.id(),
            "partitions": status_node.status(),
        })
    })
    .merge(assignments_router(node.clone()))
    .merge(revocations_router(node.clone()))
    .merge(access)
    .merge(crate::masters::router(node.clone(), auth_for_masters))
    .merge(internal_router(node));
    metrics.instrument(mcloud_core::console::with_console(router))
}
