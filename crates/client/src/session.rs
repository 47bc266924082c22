//! A sensor's sessions, one per party: opened with the sensor's key for that party on first
//! use, kept until shortly before they expire, and sent with every call to that party.

use futures::future::BoxFuture;
use mcloud_core::auth::authority::SensorCredentials;
use mcloud_core::auth::sensor::{Challenge, SensorScope, SessionRequest, SessionToken};
use mcloud_core::auth::{now_secs, CallCredentials};
use mcloud_core::http::{post, CallError, Endpoint};
use mcloud_core::paths::{SESSION_CHALLENGE_PATH, SESSION_PATH};
use std::sync::Mutex;

/// A session is renewed when it has less than this left, so no call carries one that
/// expires on the way.
const RENEW_BEFORE_SECS: u64 = 300;

pub struct SensorSessions {
    credentials: SensorCredentials,
    /// Where each party opens sessions (its cloud), in party order.
    nodes: Vec<Endpoint>,
    tokens: Mutex<Vec<Option<SessionToken>>>,
}

impl SensorSessions {
    pub fn new(credentials: SensorCredentials, nodes: Vec<Endpoint>) -> SensorSessions {
        SensorSessions {
            tokens: Mutex::new(vec![None; nodes.len()]),
            credentials,
            nodes,
        }
    }

    pub fn scope(&self) -> &SensorScope {
        &self.credentials.scope
    }

    fn cached(&self, party: u16) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let token = tokens.get(party as usize)?.as_ref()?;
        (token.expires > now_secs() + RENEW_BEFORE_SECS).then(|| token.to_header())
    }

    /// The `Authorization` value for party `party`, opening a session when needed.
    pub async fn header(&self, party: u16) -> Result<String, CallError> {
        if let Some(header) = self.cached(party) {
            return Ok(header);
        }
        let (Some(node), Some(key)) = (
            self.nodes.get(party as usize),
            self.credentials.keys.get(party as usize),
        ) else {
            return Err(CallError::Rejected {
                url: String::new(),
                status: 401,
                code: "no_key".into(),
                message: format!("the sensor holds no key for party {party}"),
            });
        };
        let url = &node.url;
        let challenge: Challenge =
            post(&node.http, &format!("{url}{SESSION_CHALLENGE_PATH}"), &()).await?;
        let request = SessionRequest::answer(self.scope().clone(), challenge, key);
        let token: SessionToken =
            post(&node.http, &format!("{url}{SESSION_PATH}"), &request).await?;
        let header = token.to_header();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = tokens.get_mut(party as usize) {
            *slot = Some(token);
        }
        Ok(header)
    }
}

impl CallCredentials for SensorSessions {
    fn authorization(&self, party: u16) -> BoxFuture<'_, Result<String, CallError>> {
        Box::pin(self.header(party))
    }
}
