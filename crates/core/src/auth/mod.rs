//! Who may call what. Every route belongs to one caller group, and each group sits behind one
//! authentication layer that the servers share:
//!
//! | group  | credential | checked by |
//! |---|---|---|
//! | sensor | session token from a pre-shared key (`Authorization: Sensor ...`) | [`sensor`] |
//! | app    | capability token (`Authorization: Bearer ...`), attenuable and delegable | [`app`] |
//! | peer   | client certificate of a party's CA naming party and role (mutual TLS) | [`peer`] |
//! | public | none: health and status only | — |
//!
//! A refused caller gets 401 (no valid credential) or 403 (a valid one, not for this), with
//! a stable code, before its request reaches any state.

pub mod access;
pub mod app;
pub mod authority;
pub mod peer;
pub mod sensor;

use crate::http::ApiError;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use peer::{PeerError, PeerIdentity, Role};
use sensor::{SensorScope, SessionIssuer};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// The client certificate of a connection, as the TLS acceptor found it: `None` when the
/// client presented none.
#[derive(Clone, Debug)]
pub struct ConnectionPeer(pub Option<Result<PeerIdentity, PeerError>>);

/// What a node needs to authenticate sensors and apps; peers are checked in the handshake
/// and by [`require_peer`].
#[derive(Clone)]
pub struct NodeAuth {
    pub sessions: Arc<SessionIssuer>,
    pub tokens: app::TokenRoot,
    /// Revocation ids of app tokens that no longer count.
    pub revoked: Arc<RwLock<BTreeSet<String>>>,
    /// Sensors whose keys no longer count.
    pub revoked_sensors: Arc<RwLock<BTreeSet<u32>>>,
    /// Every owner's access modifiers, by user.
    pub access: Arc<RwLock<std::collections::BTreeMap<String, access::AccessRules>>>,
    grants: Arc<std::sync::Mutex<HashMap<GrantKey, app::Grant>>>,
}

/// A token (by its SHA-256) asked for one kind of query at one level.
type GrantKey = ([u8; 32], app::QueryKind, crate::reading::GroupLevel);

/// Grants remembered at most: a collector asks thousands of times with one token, and
/// verifying a biscuit (signatures and Datalog) costs far more than the request it guards.
const GRANT_CACHE: usize = 1024;

impl NodeAuth {
    pub fn new(sessions: SessionIssuer, tokens: app::TokenRoot) -> NodeAuth {
        NodeAuth {
            sessions: Arc::new(sessions),
            tokens,
            revoked: Default::default(),
            revoked_sensors: Default::default(),
            access: Default::default(),
            grants: Default::default(),
        }
    }

    /// Who holds the request's app token (a user, and an app when it was handed to one),
    /// for endpoints whose own rules decide what the holder may do (a house's access rules,
    /// stored files): any valid token passes, whatever it may query.
    pub fn token_holder(&self, bearer: &AppBearer) -> Result<app::Grant, ApiError> {
        self.authorize_app(
            bearer,
            &app::AppRequest {
                now: now_secs(),
                query: app::QueryKind::Compute,
                level: crate::reading::GroupLevel::House,
            },
        )
    }

    /// What the app token of a request grants for `request`; 401 or 403 naming why not. A
    /// token is verified once per query kind and level; the grant is reused while it has not
    /// expired and none of its revocation ids is revoked.
    pub fn authorize_app(
        &self,
        bearer: &AppBearer,
        request: &app::AppRequest,
    ) -> Result<app::Grant, ApiError> {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(
            ring::digest::digest(&ring::digest::SHA256, bearer.0.as_bytes()).as_ref(),
        );
        let key = (digest, request.query, request.level);
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        let still_good = |g: &app::Grant| {
            g.expires.is_none_or(|at| request.now <= at)
                && !g.revocation_ids.iter().any(|id| revoked.contains(id))
        };
        if let Some(grant) = self.grants().get(&key).filter(|g| still_good(g)) {
            return Ok(grant.clone());
        }
        let grant = app::authorize(&bearer.0, &self.tokens, request, |id| revoked.contains(id))
            .map_err(|e| {
                let code = e.code();
                match e {
                    app::AppTokenError::OutOfScope(_) => ApiError::forbidden(code, e.to_string()),
                    _ => ApiError::unauthenticated(code, e.to_string()),
                }
            })?;
        let mut grants = self.grants();
        if grants.len() >= GRANT_CACHE {
            grants.clear();
        }
        grants.insert(key, grant.clone());
        Ok(grant)
    }

    /// Whether sensor `sensor` has been revoked.
    pub fn sensor_revoked(&self, sensor: u32) -> bool {
        self.revoked_sensors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&sensor)
    }

    /// What `grant` reaches under the owners' access rules as last read.
    pub fn reach(&self, grant: &app::Grant) -> access::Reach {
        let rules = self.access.read().unwrap_or_else(|p| p.into_inner());
        access::reach(grant, &rules)
    }

    fn grants(&self) -> std::sync::MutexGuard<'_, HashMap<GrantKey, app::Grant>> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn authorization(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The sensor group's layer: a valid session of this party, whose scope the handlers get as
/// an extension.
pub async fn require_sensor(
    State(auth): State<NodeAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    let scope = match authorization(&request) {
        None => Err(sensor::SensorAuthError::Missing),
        Some(value) => auth.sessions.verify(value, now_secs()),
    };
    match scope {
        Ok(scope) if auth.sensor_revoked(scope.sensor) => revoked_sensor(scope.sensor),
        Ok(scope) => {
            request.extensions_mut().insert::<SensorScope>(scope);
            next.run(request).await
        }
        Err(e) => ApiError::unauthenticated(e.code(), e.to_string()).into_response(),
    }
}

fn revoked_sensor(sensor: u32) -> Response {
    ApiError::unauthenticated(
        "sensor_revoked",
        format!("sensor {sensor}'s keys have been revoked"),
    )
    .into_response()
}

/// A sensor names only its own batches and flags: their ids carry its id.
pub fn check_own(scope: &SensorScope, id: crate::BatchId) -> Result<(), ApiError> {
    if id.sensor() == scope.sensor {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "not_your_batch",
        format!(
            "batch {id} belongs to sensor {}; this session is sensor {}'s",
            id.sensor(),
            scope.sensor
        ),
    ))
}

/// An app's token as the request carried it; the handler authorizes it for what it asks.
#[derive(Clone, Debug)]
pub struct AppBearer(pub String);

/// The app group's layer: a bearer token must be there (the handler checks what it grants).
pub async fn require_app(mut request: Request, next: Next) -> Response {
    let bearer = authorization(&request)
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| AppBearer(t.trim().to_string()));
    match bearer {
        Some(b) if !b.0.is_empty() => {
            request.extensions_mut().insert(b);
            next.run(request).await
        }
        _ => ApiError::unauthenticated(
            "credential_missing",
            "no app token: send `Authorization: Bearer <token>`",
        )
        .into_response(),
    }
}

/// The peer identity a request's connection proved, if its role is one of `roles`.
pub fn peer_of(request: &Request, roles: &[Role]) -> Result<PeerIdentity, ApiError> {
    match request.extensions().get::<ConnectionPeer>() {
        None | Some(ConnectionPeer(None)) => Err(ApiError::unauthenticated(
            "peer_certificate_missing",
            format!(
                "this route is for peers ({}): present a client certificate from your party's CA",
                names(roles)
            ),
        )),
        Some(ConnectionPeer(Some(Err(e)))) => Err(ApiError::unauthenticated(
            "peer_certificate_invalid",
            e.to_string(),
        )),
        Some(ConnectionPeer(Some(Ok(who)))) if roles.contains(&who.role) => Ok(*who),
        Some(ConnectionPeer(Some(Ok(who)))) => Err(ApiError::forbidden(
            "wrong_role",
            format!("{who} may not call this route; it is for {}", names(roles)),
        )),
    }
}

fn names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The peer group's layer: a client certificate of one of `roles`, whose identity the
/// handlers get as an extension.
pub async fn require_peer(
    State(roles): State<&'static [Role]>,
    mut request: Request,
    next: Next,
) -> Response {
    match peer_of(&request, roles) {
        Ok(who) => {
            request.extensions_mut().insert(who);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The routes that open sensor sessions, served by every node of a party (no credential:
/// they are how a sensor gets one).
pub fn session_router<S: Clone + Send + Sync + 'static>(auth: NodeAuth) -> axum::Router<S> {
    use crate::http::Postcard;
    use axum::routing::post;
    async fn challenge(State(auth): State<NodeAuth>) -> Postcard<sensor::Challenge> {
        Postcard(auth.sessions.challenge(now_secs()))
    }
    async fn open(
        State(auth): State<NodeAuth>,
        Postcard(req): Postcard<sensor::SessionRequest>,
    ) -> Result<Postcard<sensor::SessionToken>, ApiError> {
        if auth.sensor_revoked(req.scope.sensor) {
            return Err(ApiError::unauthenticated(
                "sensor_revoked",
                format!("sensor {}'s keys have been revoked", req.scope.sensor),
            ));
        }
        auth.sessions
            .open(&req, now_secs())
            .map(Postcard)
            .map_err(|e| ApiError::unauthenticated(e.code(), e.to_string()))
    }
    axum::Router::new()
        .route(crate::paths::SESSION_CHALLENGE_PATH, post(challenge))
        .route(crate::paths::SESSION_PATH, post(open))
        .with_state(auth)
}

/// For routes both sensors and clouds call (reading flags): a cloud's or voter's certificate,
/// or else a sensor session of this party.
pub async fn require_sensor_or_peer(
    State(auth): State<NodeAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Ok(who) = peer_of(&request, &[Role::Cloud, Role::Voter]) {
        request.extensions_mut().insert(who);
        return next.run(request).await;
    }
    require_sensor(State(auth), request, next).await
}

/// Supplies the `Authorization` value of a call to a node of `party` (a sensor's session for
/// that party; opened on first use and renewed before it expires).
pub trait CallCredentials: Send + Sync {
    fn authorization(
        &self,
        party: u16,
    ) -> futures::future::BoxFuture<'_, Result<String, crate::http::CallError>>;
}
