//! The masters of encrypted storage and the mailbox: every catalog node serves apps' storage
//! requests and runs them on partition 0's leader, so each write is a Raft entry a majority
//! of voters holds. The node draws whatever a write needs at random (version ids, key
//! secrets, write orders, message ids) before proposing it; the rules are
//! `mcloud_store::master`'s.
//!
//! The leader also keeps the storage tidy ([`spawn_upkeep`]): it expires what is due and, when
//! the node can reach the sources, deletes freed packets from them.

use crate::{CatalogError, CatalogNode};
use axum::extract::State;
use axum::routing::post;
use axum::{Extension, Router};
use mcloud_core::auth::app::HouseScope;
use mcloud_core::auth::peer::{PeerIdentity, Role};
use mcloud_core::auth::{AppBearer, NodeAuth};
use mcloud_core::http::{ApiError, Postcard};
use mcloud_store::master::{
    Commit, Kind, ObjectKey, Reader, RefreshBegin, RefreshCommit, Repair, StoreAnswer, StoreOp,
    StoreRead, MAX_HOUSES_PER_MAILBOX,
};
use mcloud_store::wire::{StoreRequest, StoreResponse, STORE_CLOUD_PATH, STORE_PATH};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct Masters {
    node: Arc<CatalogNode>,
    auth: NodeAuth,
}

/// The masters' routes: apps with a token, and clouds (their archives) with their peer
/// certificate.
pub fn router(node: Arc<CatalogNode>, auth: NodeAuth) -> Router {
    let apps = Router::new()
        .route(STORE_PATH, post(app_store))
        .layer(axum::middleware::from_fn(mcloud_core::auth::require_app))
        .with_state(Masters {
            node: node.clone(),
            auth,
        });
    let clouds = Router::new()
        .route(STORE_CLOUD_PATH, post(cloud_store))
        .layer(axum::middleware::from_fn_with_state(
            &[Role::Cloud][..],
            mcloud_core::auth::require_peer,
        ))
        .with_state(node);
    apps.merge(clouds)
}

fn unexpected() -> ApiError {
    ApiError::internal("the masters answered a storage read with something else")
}

async fn app_store(
    State(m): State<Masters>,
    Extension(bearer): Extension<AppBearer>,
    Postcard(req): Postcard<StoreRequest>,
) -> Result<Postcard<StoreResponse>, ApiError> {
    // Any valid token names a user (and an app when it was handed to one); what that user
    // may do with each object is the masters' access rules.
    let grant = m.auth.token_holder(&bearer)?;
    let caller = Reader {
        user: grant.user,
        app: grant.app,
    };
    store(&m.node, caller, &grant.houses, req).await
}

/// A cloud is the user no token can name, of its own party: its archive is its own.
async fn cloud_store(
    State(node): State<Arc<CatalogNode>>,
    Extension(who): Extension<PeerIdentity>,
    Postcard(req): Postcard<StoreRequest>,
) -> Result<Postcard<StoreResponse>, ApiError> {
    let caller = Reader {
        user: mcloud_store::master::cloud_user(who.party),
        app: Some(mcloud_store::master::CLOUD_APP.into()),
    };
    let no_houses = HouseScope::Only(Default::default());
    store(&node, caller, &no_houses, req).await
}

/// `houses`: those the caller's token covers.
async fn store(
    node: &CatalogNode,
    caller: Reader,
    houses: &HouseScope,
    req: StoreRequest,
) -> Result<Postcard<StoreResponse>, ApiError> {
    let answer = match req {
        StoreRequest::Begin(request) => {
            let begin = request
                .draw(caller, &mut rand::rngs::OsRng)
                .map_err(CatalogError::Store)?;
            node.store_write(StoreOp::Begin(begin.clone())).await?;
            StoreResponse::Plan(Box::new(begin))
        }
        StoreRequest::Commit { key, id, records } => {
            // A message's writer commits into the recipient's mailbox; the masters check the
            // committer began the write.
            let key = key.or_owner(&caller.user);
            let op = StoreOp::Commit(Commit {
                key,
                writer: caller,
                id,
                records,
            });
            done(node, op).await?
        }
        StoreRequest::RefreshBegin { key, version } => {
            let key = own(key, &caller.user);
            let StoreAnswer::Version(v) = node
                .store_read(StoreRead::Version {
                    key: key.clone(),
                    reader: caller.clone(),
                    version: Some(version),
                })
                .await?
            else {
                return Err(unexpected());
            };
            let StoreAnswer::RefreshChoice {
                id,
                packets,
                key_id,
            } = node
                .store_read(StoreRead::RefreshChoice {
                    key: key.clone(),
                    version,
                })
                .await?
            else {
                return Err(unexpected());
            };
            let plan = RefreshBegin::draw(key, caller, id, packets, key_id, &mut rand::rngs::OsRng);
            node.store_write(StoreOp::RefreshBegin(plan.clone()))
                .await?;
            StoreResponse::Refresh {
                plan: Box::new(plan),
                version: v,
            }
        }
        StoreRequest::RefreshCommit { key, id, records } => {
            let key = own(key, &caller.user);
            let op = StoreOp::RefreshCommit(RefreshCommit {
                key,
                writer: caller,
                id,
                records,
            });
            done(node, op).await?
        }
        StoreRequest::Repair { key, id, records } => {
            let key = own(key, &caller.user);
            let op = StoreOp::Repair(Repair {
                key,
                writer: caller,
                id,
                records,
            });
            done(node, op).await?
        }
        StoreRequest::Get { key, version } => match node
            .store_read(StoreRead::Version {
                key: own(key, &caller.user),
                reader: caller,
                version,
            })
            .await?
        {
            StoreAnswer::Version(v) => StoreResponse::Version(v),
            _ => return Err(unexpected()),
        },
        StoreRequest::List { kind, owner } => {
            let owner = match kind {
                Kind::Message => Some(caller.user.clone()),
                Kind::File => owner,
            };
            match node
                .store_read(StoreRead::List {
                    kind,
                    owner,
                    reader: caller,
                })
                .await?
            {
                StoreAnswer::List(l) => StoreResponse::List(l),
                _ => return Err(unexpected()),
            }
        }
        StoreRequest::Delete { key } => {
            let key = own(key, &caller.user);
            done(node, StoreOp::Delete { key, by: caller }).await?
        }
        StoreRequest::SetMailboxKey { public_key } => {
            if caller.app.is_some() {
                return Err(ApiError::forbidden(
                    "not_an_owner",
                    "only a user's own token (not one handed to an app) sets its mailbox key",
                ));
            }
            // Alerts about the houses the user's token owns go to this mailbox.
            let houses = match houses {
                HouseScope::Only(houses) => houses.iter().copied().collect(),
                HouseScope::All => Vec::new(),
            };
            node.store_write(StoreOp::SetMailboxKey {
                user: caller.user,
                public_key,
                houses,
            })
            .await?;
            StoreResponse::Done
        }
        StoreRequest::HouseOwners { houses: asked } => {
            if asked.len() > MAX_HOUSES_PER_MAILBOX {
                return Err(ApiError::bad_request(format!(
                    "{} houses asked about; at most {MAX_HOUSES_PER_MAILBOX} at once",
                    asked.len()
                )));
            }
            // Only the owners of houses the caller may see.
            let asked = asked.into_iter().filter(|h| houses.allows(*h)).collect();
            match node.store_read(StoreRead::HouseOwners(asked)).await? {
                StoreAnswer::HouseOwners(owners) => StoreResponse::HouseOwners(owners),
                _ => return Err(unexpected()),
            }
        }
        StoreRequest::MailboxKey { user } => {
            match node.store_read(StoreRead::MailboxKey(user)).await? {
                StoreAnswer::MailboxKey(k) => StoreResponse::MailboxKey(k),
                _ => return Err(unexpected()),
            }
        }
    };
    Ok(Postcard(answer))
}

/// The object the caller means: a message is only ever its recipient's to read, refresh or
/// consume, so the caller fills in a message's owner whatever the request says.
fn own(key: ObjectKey, user: &str) -> ObjectKey {
    match key.kind {
        Kind::Message => ObjectKey {
            owner: user.to_string(),
            ..key
        },
        Kind::File => key.or_owner(user),
    }
}

/// Replicates `op`; its answer is only that it was applied.
async fn done(node: &CatalogNode, op: StoreOp) -> Result<StoreResponse, CatalogError> {
    node.store_write(op).await?;
    Ok(StoreResponse::Done)
}

/// Deletes a garbage set's blobs from the sources; returns whether every one is gone.
pub type Freer = Arc<
    dyn Fn(mcloud_store::master::Garbage) -> futures::future::BoxFuture<'static, bool>
        + Send
        + Sync,
>;

/// How often a node that leads the masters looks for expired files and garbage.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(10);

/// A [`Freer`] that deletes from `sources` (a blob already gone counts as freed).
pub fn freer(sources: Arc<mcloud_store::source::Sources>) -> Freer {
    Arc::new(move |set| {
        let sources = sources.clone();
        Box::pin(async move {
            let blobs = set.blobs(|bytes| mcloud_store::data::max_subs(&sources, bytes));
            match mcloud_store::data::free(&sources, &blobs).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "freeing packets at the sources failed");
                    false
                }
            }
        })
    })
}

/// While this node leads the masters: every `period`, expires what is due and, with a
/// `freer` (the node can reach the sources), frees garbage at the sources and records it.
pub fn spawn_upkeep(
    node: Arc<CatalogNode>,
    freer: Option<Freer>,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !node.leads_masters() {
                continue;
            }
            if let Err(e) = upkeep(&node, freer.as_ref()).await {
                tracing::warn!(error = %e, "storage upkeep failed; retrying next period");
            }
        }
    })
}

async fn upkeep(node: &CatalogNode, freer: Option<&Freer>) -> Result<(), CatalogError> {
    let now = crate::now_ms();
    if let StoreAnswer::Due(true) = node.store_read(StoreRead::Due(now)).await? {
        node.store_write(StoreOp::Expire).await?;
    }
    let Some(freer) = freer else {
        return Ok(());
    };
    let StoreAnswer::Garbage(sets) = node
        .store_read(StoreRead::Garbage(mcloud_store::master::MAX_GARBAGE_READ))
        .await?
    else {
        return Ok(());
    };
    let mut freed = Vec::new();
    for set in sets {
        let seq = set.seq;
        if freer(set).await {
            freed.push(seq);
        }
    }
    if !freed.is_empty() {
        tracing::debug!(sets = freed.len(), "freed packets at the sources");
        node.store_write(StoreOp::Freed(freed)).await?;
    }
    Ok(())
}
