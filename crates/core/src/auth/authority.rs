//! A deployment's trust roots and the credentials it hands its members.
//!
//! The authority holds, per party, the party's CA and the party's sensor secret, and one
//! token root key for app tokens. It enrols nodes (a certificate naming party and role),
//! sensors (one key per party, bound to the sensor's scope) and apps (a capability token).
//! Members only ever receive what they need; once they are enrolled, the authority's
//! directory can go offline.

use super::app::{TokenAuthority, TokenRoot};
use super::peer::{PartyRoots, PeerIdentity};
use super::sensor::{PartySecret, Secret, SensorScope, SessionIssuer};
use super::NodeAuth;
use crate::tls::{NodeIdentity, PartyCa, TlsError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn read(path: &Path) -> Result<String, AuthorityError> {
    std::fs::read_to_string(path).map_err(|e| AuthorityError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes a file; `secret` ones are readable by their owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), AuthorityError> {
    let fail = |e: std::io::Error| AuthorityError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(fail)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(fail)
}

fn secret(path: &Path, party: u16) -> Result<PartySecret, AuthorityError> {
    Ok(PartySecret {
        party,
        secret: Secret::from_hex(&read(path)?).map_err(|e| AuthorityError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?,
    })
}

pub struct PartyAuthority {
    /// The CA that signs the party's new certificates.
    pub ca: PartyCa,
    /// CAs rotated out but still trusted, so the party's nodes keep working until each is
    /// enrolled again under `ca` (PEM, possibly several).
    pub retired: Option<String>,
    pub sensors: PartySecret,
}

pub struct Authority {
    pub parties: Vec<PartyAuthority>,
    pub tokens: TokenAuthority,
}

impl Authority {
    pub fn generate(parties: u16) -> Result<Authority, AuthorityError> {
        if parties == 0 {
            return Err(AuthorityError::Invalid(
                "a deployment needs at least one party".into(),
            ));
        }
        let parties = (0..parties)
            .map(|party| {
                Ok(PartyAuthority {
                    ca: PartyCa::generate(party)?,
                    retired: None,
                    sensors: PartySecret {
                        party,
                        secret: Secret::generate(),
                    },
                })
            })
            .collect::<Result<_, AuthorityError>>()?;
        Ok(Authority {
            parties,
            tokens: TokenAuthority::generate(),
        })
    }

    /// Writes the authority's secrets into `dir` (party{p}/ca.pem, ca.key, sensor.key and
    /// tokens.key).
    pub fn save(&self, dir: &Path) -> Result<(), AuthorityError> {
        for p in &self.parties {
            let d = dir.join(format!("party{}", p.ca.party()));
            write(&d.join("ca.key"), &p.ca.key_pem(), true)?;
            write(&d.join("sensor.key"), &p.sensors.secret.to_hex(), true)?;
            write(&d.join("ca.pem"), &p.ca.ca_pem(), false)?;
            match &p.retired {
                Some(pem) => write(&d.join("retired.pem"), pem, false)?,
                None => {
                    let _ = std::fs::remove_file(d.join("retired.pem"));
                }
            }
        }
        write(&dir.join("tokens.key"), &self.tokens.private_hex(), true)
    }

    pub fn load(dir: &Path) -> Result<Authority, AuthorityError> {
        let mut parties = Vec::new();
        for party in 0.. {
            let d = dir.join(format!("party{party}"));
            if !d.exists() {
                break;
            }
            let retired = d.join("retired.pem");
            parties.push(PartyAuthority {
                ca: PartyCa::load(&read(&d.join("ca.pem"))?, &read(&d.join("ca.key"))?)?,
                retired: retired.exists().then(|| read(&retired)).transpose()?,
                sensors: secret(&d.join("sensor.key"), party)?,
            });
        }
        if parties.is_empty() {
            return Err(AuthorityError::Invalid(format!(
                "{}: not an authority directory (party0, party1, ... missing)",
                dir.display()
            )));
        }
        let tokens = TokenAuthority::from_private_hex(read(&dir.join("tokens.key"))?.trim())
            .map_err(|e| AuthorityError::Invalid(format!("tokens.key: {e}")))?;
        Ok(Authority { parties, tokens })
    }

    fn party(&self, party: u16) -> Result<&PartyAuthority, AuthorityError> {
        self.parties.get(party as usize).ok_or_else(|| {
            AuthorityError::Invalid(format!(
                "party {party} is not one of the deployment's {} parties",
                self.parties.len()
            ))
        })
    }

    /// Each party's trusted CAs (the signing CA first, then any retired one), as clients pin
    /// them and servers check client certificates against them.
    pub fn party_cas(&self) -> Vec<String> {
        self.parties
            .iter()
            .map(|p| p.ca.ca_pem() + p.retired.as_deref().unwrap_or(""))
            .collect()
    }

    /// Rotates party `party`'s CA: a new one signs from now on, the old one stays trusted
    /// (retired) until [`Authority::retire`]. Save the authority afterwards.
    pub fn rotate(&mut self, party: u16) -> Result<(), AuthorityError> {
        let fresh = PartyCa::generate(party)?;
        let p = self.party_mut(party)?;
        let old = std::mem::replace(&mut p.ca, fresh);
        p.retired = Some(old.ca_pem() + p.retired.as_deref().unwrap_or(""));
        Ok(())
    }

    /// Stops trusting party `party`'s retired CAs: certificates they signed count no more.
    pub fn retire(&mut self, party: u16) -> Result<(), AuthorityError> {
        self.party_mut(party)?.retired = None;
        Ok(())
    }

    fn party_mut(&mut self, party: u16) -> Result<&mut PartyAuthority, AuthorityError> {
        let parties = self.parties.len();
        self.parties.get_mut(party as usize).ok_or_else(|| {
            AuthorityError::Invalid(format!(
                "party {party} is not one of the deployment's {parties} parties"
            ))
        })
    }

    /// Revokes the certificate `cert_pem` of party `party`: adds its serial to the party's
    /// list in `dir` (the authority's directory) and returns the party's new revocation list,
    /// which every node installs in its credentials' `crls/` directory.
    pub fn revoke_certificate(
        &self,
        dir: &Path,
        party: u16,
        cert_pem: &str,
    ) -> Result<String, AuthorityError> {
        let ca = &self.party(party)?.ca;
        let list_path = dir.join(format!("party{party}/revoked.txt"));
        let mut serials: Vec<Vec<u8>> = match std::fs::read_to_string(&list_path) {
            Ok(text) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    hex::decode(l.trim()).map_err(|e| AuthorityError::File {
                        path: list_path.display().to_string(),
                        message: e.to_string(),
                    })
                })
                .collect::<Result<_, _>>()?,
            Err(_) => Vec::new(),
        };
        let serial = crate::tls::serial_of(cert_pem)?;
        if !serials.contains(&serial) {
            serials.push(serial);
        }
        let text: String = serials.iter().map(|s| hex::encode(s) + "\n").collect();
        write(&list_path, &text, false)?;
        let crl = ca.crl(&serials, serials.len() as u64, 365)?;
        write(&dir.join(format!("party{party}/crl.pem")), &crl, false)?;
        Ok(crl)
    }

    /// Everything a node of `who.party` needs for the role `who.role`.
    pub fn node(
        &self,
        who: PeerIdentity,
        names: &[String],
    ) -> Result<NodeCredentials, AuthorityError> {
        let party = self.party(who.party)?;
        Ok(NodeCredentials {
            identity: party.ca.issue(who, names)?,
            who,
            sensors: party.sensors.clone(),
            party_cas: self.party_cas(),
            tokens: self.tokens.root(),
            crls: Vec::new(),
        })
    }

    /// A sensor's keys, one per party, for `scope`.
    pub fn sensor(&self, scope: SensorScope) -> SensorCredentials {
        SensorCredentials {
            keys: self
                .parties
                .iter()
                .map(|p| p.sensors.sensor_key(&scope))
                .collect(),
            scope,
        }
    }
}

/// What a node holds: its certificate, its party's sensor secret (to check sensor sessions),
/// every party's CA (to tell peers apart) and the app token root.
#[derive(Clone)]
pub struct NodeCredentials {
    pub identity: NodeIdentity,
    pub who: PeerIdentity,
    sensors: PartySecret,
    party_cas: Vec<String>,
    tokens: TokenRoot,
    /// The parties' revocation lists installed beside the credentials (`crls/*.pem`).
    crls: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct NodeFile {
    who: PeerIdentity,
    sensor_key: String,
    token_root: String,
}

impl NodeCredentials {
    pub fn save(&self, dir: &Path) -> Result<(), AuthorityError> {
        self.identity.save(dir)?;
        for (p, pem) in self.party_cas.iter().enumerate() {
            write(&dir.join(format!("parties/party{p}.pem")), pem, false)?;
        }
        let file = NodeFile {
            who: self.who,
            sensor_key: self.sensors.secret.to_hex(),
            token_root: self.tokens.to_hex(),
        };
        let text = toml::to_string(&file).map_err(|e| AuthorityError::Invalid(e.to_string()))?;
        write(&dir.join("node.toml"), &text, true)
    }

    pub fn load(dir: &Path) -> Result<NodeCredentials, AuthorityError> {
        let path = dir.join("node.toml");
        let file: NodeFile = toml::from_str(&read(&path)?).map_err(|e| AuthorityError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut party_cas = Vec::new();
        for p in 0.. {
            let f = dir.join(format!("parties/party{p}.pem"));
            if !f.exists() {
                break;
            }
            party_cas.push(read(&f)?);
        }
        let sensors = PartySecret {
            party: file.who.party,
            secret: Secret::from_hex(&file.sensor_key).map_err(|e| AuthorityError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
        };
        let mut crls = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("crls")) {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "pem"))
            {
                crls.push(read(path)?);
            }
        }
        Ok(NodeCredentials {
            identity: NodeIdentity::load(dir)?,
            who: file.who,
            sensors,
            party_cas,
            crls,
            tokens: TokenRoot::from_hex(&file.token_root)
                .map_err(|e| AuthorityError::Invalid(format!("token root: {e}")))?,
        })
    }

    pub fn party_cas(&self) -> &[String] {
        &self.party_cas
    }

    /// The CA of `party`, which a client pins to talk to that party's nodes.
    pub fn party_ca(&self, party: u16) -> Option<&String> {
        self.party_cas.get(party as usize)
    }

    /// Every party's CA, refusing what the installed revocation lists name.
    pub fn roots(&self) -> Result<std::sync::Arc<PartyRoots>, TlsError> {
        PartyRoots::with_crls(&self.party_cas, &self.crls).map(std::sync::Arc::new)
    }

    pub fn node_auth(&self) -> NodeAuth {
        NodeAuth::new(
            SessionIssuer::new(self.sensors.clone()),
            self.tokens.clone(),
        )
    }
}

/// What a sensor holds: its scope and its key for every party, in party order.
#[derive(Clone, Debug)]
pub struct SensorCredentials {
    pub scope: SensorScope,
    pub keys: Vec<Secret>,
}

#[derive(Serialize, Deserialize)]
struct SensorFile {
    scope: SensorScope,
    keys: Vec<String>,
}

impl SensorCredentials {
    pub fn save(&self, path: &Path) -> Result<(), AuthorityError> {
        let file = SensorFile {
            scope: self.scope.clone(),
            keys: self.keys.iter().map(Secret::to_hex).collect(),
        };
        let text = toml::to_string(&file).map_err(|e| AuthorityError::Invalid(e.to_string()))?;
        write(path, &text, true)
    }

    pub fn load(path: &Path) -> Result<SensorCredentials, AuthorityError> {
        let file: SensorFile = toml::from_str(&read(path)?).map_err(|e| AuthorityError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let keys = file
            .keys
            .iter()
            .map(|k| Secret::from_hex(k))
            .collect::<Result<_, _>>()
            .map_err(|e| AuthorityError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(SensorCredentials {
            scope: file.scope,
            keys,
        })
    }
}
