//! Sensors prove who they are with a key they share with each party, and then carry a
//! short-lived session token that every node of that party checks locally.
//!
//! Each party holds one secret ([`PartySecret`]). A sensor's key for the party is an HMAC of
//! that secret over the sensor's scope (its id, house and plugs), so a party derives any
//! sensor's key when it needs it and stores none, and a sensor cannot widen its scope: another
//! scope gives another key. Keys differ per party, so no party learns what would let it pose
//! as the sensor to another party.
//!
//! Opening a session is a challenge–response: a node hands out a challenge it MACs itself
//! (so it keeps no state), the sensor answers with an HMAC of the challenge under its key,
//! and the node returns a session token MACed with the party's session key. Every node of the
//! party (cloud and catalog voter) checks tokens with that key: no round trip per batch.

use crate::reading::GroupKey;
use rand::RngCore;
use ring::hmac;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How long a session token is good for.
pub const SESSION_SECS: u64 = 3600;
/// How long a challenge may be answered.
pub const CHALLENGE_SECS: u64 = 60;
/// A sensor scope names at most this many plugs: it travels in every request's header.
pub const MAX_SCOPE_PLUGS: usize = 1024;
/// The longest `Authorization` value a node decodes.
pub const MAX_TOKEN_CHARS: usize = 2 * (64 + 5 * MAX_SCOPE_PLUGS + 64);

/// What a sensor may report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorScope {
    /// The sensor's id; every batch id it makes carries it (see [`crate::BatchId::of_sensor`]).
    pub sensor: u32,
    /// The house it reports; `None`: any house (a gateway that replays a whole data set).
    pub house: Option<u32>,
    /// The plug ids (within the house) it reports; `None`: every plug.
    pub plugs: Option<Vec<u32>>,
}

impl SensorScope {
    pub fn allows(&self, key: &GroupKey) -> bool {
        self.house.is_none_or(|h| h == key.house)
            && self.plugs.as_ref().is_none_or(|p| p.contains(&key.plug))
    }

    fn check(&self) -> Result<(), SensorAuthError> {
        match &self.plugs {
            Some(p) if p.len() > MAX_SCOPE_PLUGS => Err(SensorAuthError::Malformed(format!(
                "a scope names at most {MAX_SCOPE_PLUGS} plugs, this one {}",
                p.len()
            ))),
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SensorAuthError {
    #[error("no sensor session: send `Authorization: Sensor <token>` (open one at /v1/session)")]
    Missing,
    #[error("malformed sensor credential: {0}")]
    Malformed(String),
    #[error(
        "the challenge is older than {CHALLENGE_SECS} s or from the future: ask for a new one"
    )]
    ChallengeExpired,
    #[error("the challenge was not issued by this party")]
    ChallengeForged,
    #[error("the proof does not match the sensor's key for this party")]
    BadProof,
    #[error("the session expired at {expired}; now is {now}: open a new one")]
    SessionExpired { expired: u64, now: u64 },
    #[error("the session token was not issued by this party")]
    SessionForged,
    #[error("the session is for party {token}, this is party {here}")]
    WrongParty { token: u16, here: u16 },
}

impl SensorAuthError {
    /// The stable code clients match.
    pub fn code(&self) -> &'static str {
        match self {
            SensorAuthError::Missing => "credential_missing",
            SensorAuthError::Malformed(_) => "credential_malformed",
            SensorAuthError::ChallengeExpired => "challenge_expired",
            SensorAuthError::ChallengeForged => "challenge_forged",
            SensorAuthError::BadProof => "proof_invalid",
            SensorAuthError::SessionExpired { .. } => "session_expired",
            SensorAuthError::SessionForged => "session_forged",
            SensorAuthError::WrongParty { .. } => "wrong_party",
        }
    }
}

/// 32 secret bytes, shown as hex in files.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl Secret {
    pub fn generate() -> Secret {
        let mut bytes = [0; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Secret(bytes)
    }

    pub fn from_hex(text: &str) -> Result<Secret, SensorAuthError> {
        let bytes = hex::decode(text.trim())
            .map_err(|e| SensorAuthError::Malformed(format!("key is not hex: {e}")))?;
        bytes
            .try_into()
            .map(Secret)
            .map_err(|_| SensorAuthError::Malformed("a key has 32 bytes".into()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        let tag = hmac::sign(&self.key(), &message(label, parts));
        let mut out = [0; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn verify(&self, label: &str, parts: &[&[u8]], tag: &[u8; 32]) -> bool {
        // ring compares in constant time; recomputing and comparing with == would not.
        hmac::verify(&self.key(), &message(label, parts), tag).is_ok()
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

/// What a MAC covers: the label, then each part with its length, so no two different lists
/// of parts give the same bytes.
fn message(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut message = label.as_bytes().to_vec();
    for part in parts {
        message.extend_from_slice(&(part.len() as u64).to_le_bytes());
        message.extend_from_slice(part);
    }
    message
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard cannot fail on these plain structs; an empty encoding would only make a MAC
    // that no honest peer produces.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// A party's sensor secret: every sensor's key for the party and the party's session key
/// come from it. Held by the party's nodes and by the authority that enrols sensors.
#[derive(Clone, Debug)]
pub struct PartySecret {
    pub party: u16,
    pub secret: Secret,
}

impl PartySecret {
    /// The key a sensor with `scope` shares with this party.
    pub fn sensor_key(&self, scope: &SensorScope) -> Secret {
        Secret(self.secret.mac(
            "mcloud sensor key v1",
            &[&self.party.to_le_bytes(), &encode(scope)],
        ))
    }

    fn session_key(&self) -> Secret {
        Secret(
            self.secret
                .mac("mcloud session key v1", &[&self.party.to_le_bytes()]),
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub party: u16,
    pub issued: u64,
    pub nonce: [u8; 16],
    pub mac: [u8; 32],
}

impl Challenge {
    fn body(&self) -> Vec<u8> {
        encode(&(self.party, self.issued, self.nonce))
    }
}

/// A sensor's answer to a challenge: its scope and the proof that it holds the scope's key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRequest {
    pub scope: SensorScope,
    pub challenge: Challenge,
    pub proof: [u8; 32],
}

impl SessionRequest {
    /// The sensor's side: answers `challenge` with `key` (its key for the challenge's party).
    pub fn answer(scope: SensorScope, challenge: Challenge, key: &Secret) -> SessionRequest {
        let proof = key.mac(
            "mcloud session proof v1",
            &[&encode(&scope), &challenge.body(), &challenge.mac],
        );
        SessionRequest {
            scope,
            challenge,
            proof,
        }
    }
}

/// A session as it travels: `Authorization: Sensor <hex of the postcard encoding>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionToken {
    pub scope: SensorScope,
    pub party: u16,
    pub expires: u64,
    pub mac: [u8; 32],
}

impl SessionToken {
    fn body(&self) -> Vec<u8> {
        encode(&(&self.scope, self.party, self.expires))
    }

    pub fn to_header(&self) -> String {
        format!("Sensor {}", hex::encode(encode(self)))
    }

    pub fn from_header(value: &str) -> Result<SessionToken, SensorAuthError> {
        let hex_text = value
            .strip_prefix("Sensor ")
            .ok_or(SensorAuthError::Missing)?;
        if hex_text.len() > MAX_TOKEN_CHARS {
            return Err(SensorAuthError::Malformed(format!(
                "the token has {} characters; the limit is {MAX_TOKEN_CHARS}",
                hex_text.len()
            )));
        }
        let bytes = hex::decode(hex_text)
            .map_err(|e| SensorAuthError::Malformed(format!("token is not hex: {e}")))?;
        match postcard::take_from_bytes::<SessionToken>(&bytes) {
            Ok((token, [])) => {
                token.scope.check()?;
                Ok(token)
            }
            _ => Err(SensorAuthError::Malformed(
                "not a session token".to_string(),
            )),
        }
    }
}

/// A node's side: issues challenges and sessions and checks session tokens, for its party.
#[derive(Clone, Debug)]
pub struct SessionIssuer {
    party: PartySecret,
    session_key: Secret,
}

impl SessionIssuer {
    pub fn new(party: PartySecret) -> SessionIssuer {
        SessionIssuer {
            session_key: party.session_key(),
            party,
        }
    }

    pub fn party(&self) -> u16 {
        self.party.party
    }

    pub fn challenge(&self, now: u64) -> Challenge {
        let mut nonce = [0; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut challenge = Challenge {
            party: self.party(),
            issued: now,
            nonce,
            mac: [0; 32],
        };
        challenge.mac = self
            .session_key
            .mac("mcloud challenge v1", &[&challenge.body()]);
        challenge
    }

    /// Checks a sensor's answer and opens its session.
    pub fn open(&self, req: &SessionRequest, now: u64) -> Result<SessionToken, SensorAuthError> {
        req.scope.check()?;
        let c = &req.challenge;
        if c.party != self.party() {
            return Err(SensorAuthError::WrongParty {
                token: c.party,
                here: self.party(),
            });
        }
        if !self
            .session_key
            .verify("mcloud challenge v1", &[&c.body()], &c.mac)
        {
            return Err(SensorAuthError::ChallengeForged);
        }
        if c.issued > now || now - c.issued > CHALLENGE_SECS {
            return Err(SensorAuthError::ChallengeExpired);
        }
        let key = self.party.sensor_key(&req.scope);
        if !key.verify(
            "mcloud session proof v1",
            &[&encode(&req.scope), &c.body(), &c.mac],
            &req.proof,
        ) {
            return Err(SensorAuthError::BadProof);
        }
        let mut token = SessionToken {
            scope: req.scope.clone(),
            party: self.party(),
            expires: now.saturating_add(SESSION_SECS),
            mac: [0; 32],
        };
        token.mac = self.session_key.mac("mcloud session v1", &[&token.body()]);
        Ok(token)
    }

    /// The scope of the session an `Authorization` value carries.
    pub fn verify(&self, header: &str, now: u64) -> Result<SensorScope, SensorAuthError> {
        let token = SessionToken::from_header(header)?;
        if token.party != self.party() {
            return Err(SensorAuthError::WrongParty {
                token: token.party,
                here: self.party(),
            });
        }
        if !self
            .session_key
            .verify("mcloud session v1", &[&token.body()], &token.mac)
        {
            return Err(SensorAuthError::SessionForged);
        }
        if now > token.expires {
            return Err(SensorAuthError::SessionExpired {
                expired: token.expires,
                now,
            });
        }
        Ok(token.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> SensorScope {
        SensorScope {
            sensor: 7,
            house: Some(3),
            plugs: Some(vec![1, 2]),
        }
    }

    fn party(p: u16) -> PartySecret {
        PartySecret {
            party: p,
            secret: Secret::generate(),
        }
    }

    #[test]
    fn a_sensor_with_its_key_opens_a_session_that_its_party_accepts() {
        let p = party(1);
        let issuer = SessionIssuer::new(p.clone());
        let key = p.sensor_key(&scope());
        let req = SessionRequest::answer(scope(), issuer.challenge(1000), &key);
        let token = issuer.open(&req, 1010).unwrap();
        assert_eq!(issuer.verify(&token.to_header(), 1020).unwrap(), scope());
        assert!(scope().allows(&GroupKey {
            house: 3,
            household: 9,
            plug: 2
        }));
        assert!(!scope().allows(&GroupKey {
            house: 3,
            household: 9,
            plug: 5
        }));
        assert_eq!(
            issuer.verify(&token.to_header(), 1000 + SESSION_SECS + 11),
            Err(SensorAuthError::SessionExpired {
                expired: 1010 + SESSION_SECS,
                now: 1000 + SESSION_SECS + 11
            })
        );
    }

    #[test]
    fn wrong_keys_stale_challenges_and_forged_tokens_are_refused() {
        let p = party(1);
        let issuer = SessionIssuer::new(p.clone());
        let challenge = issuer.challenge(1000);

        // A wider scope than the key's, another party's key, a made-up key.
        let mut wider = scope();
        wider.plugs = None;
        let req = SessionRequest::answer(wider, challenge.clone(), &p.sensor_key(&scope()));
        assert_eq!(issuer.open(&req, 1001), Err(SensorAuthError::BadProof));
        let other = party(2);
        let req = SessionRequest::answer(scope(), challenge.clone(), &other.sensor_key(&scope()));
        assert_eq!(issuer.open(&req, 1001), Err(SensorAuthError::BadProof));

        let key = p.sensor_key(&scope());
        let req = SessionRequest::answer(scope(), challenge.clone(), &key);
        assert_eq!(
            issuer.open(&req, 1000 + CHALLENGE_SECS + 1),
            Err(SensorAuthError::ChallengeExpired)
        );
        let mut forged = challenge;
        forged.issued += 1;
        let req = SessionRequest::answer(scope(), forged, &key);
        assert_eq!(
            issuer.open(&req, 1001),
            Err(SensorAuthError::ChallengeForged)
        );

        // Another party's node (another secret) cannot mint tokens this party believes, nor
        // does this party accept a token made for another.
        let token = issuer
            .open(
                &SessionRequest::answer(scope(), issuer.challenge(5), &key),
                6,
            )
            .unwrap();
        let stranger = SessionIssuer::new(PartySecret {
            party: 1,
            secret: Secret::generate(),
        });
        assert_eq!(
            stranger.verify(&token.to_header(), 7),
            Err(SensorAuthError::SessionForged)
        );
        let two = SessionIssuer::new(other);
        assert_eq!(
            two.verify(&token.to_header(), 7),
            Err(SensorAuthError::WrongParty { token: 1, here: 2 })
        );
        let mut widened = token.clone();
        widened.scope.plugs = None;
        assert_eq!(
            issuer.verify(&widened.to_header(), 7),
            Err(SensorAuthError::SessionForged)
        );
        for bad in ["", "Bearer x", "Sensor zz", "Sensor 00"] {
            assert!(issuer.verify(bad, 7).is_err(), "{bad}");
        }
        let huge = format!("Sensor {}", "0".repeat(MAX_TOKEN_CHARS + 2));
        assert!(matches!(
            issuer.verify(&huge, 7),
            Err(SensorAuthError::Malformed(m)) if m.contains("limit")
        ));
    }
}
