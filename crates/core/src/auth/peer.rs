//! Peers (catalog voters, clouds, administrators) prove who they are with a client certificate
//! from their party's CA. The certificate names its party, role and id in a URI
//! (`mcloud://party/1/voter/2`), and a server believes that name only when the CA of that same
//! party signed it: every party keeps its own CA, and no party's CA can issue an identity of
//! another party, which is what a name constraint would say, checked here instead because
//! rustls and rcgen carry no URI name constraints.

use crate::tls::TlsError;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

const PREFIX: &str = "mcloud://party/";

/// What a peer certificate lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A catalog voter: Raft RPCs and forwarded requests.
    Voter,
    /// A cloud: its own bucket map, and reading flags.
    Cloud,
    /// An administrator of the party: catalog membership.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Cloud => "cloud",
            Role::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Role> {
        [Role::Voter, Role::Cloud, Role::Admin]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who a peer certificate names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerIdentity {
    pub party: u16,
    pub role: Role,
    /// The catalog node id of a voter; 0 for the other roles.
    pub id: u64,
}

impl PeerIdentity {
    /// The URI a certificate carries in its subject alternative names.
    pub fn uri(&self) -> String {
        format!("{PREFIX}{}/{}/{}", self.party, self.role, self.id)
    }

    /// Reads an identity URI; `None` for anything else.
    pub fn from_uri(uri: &str) -> Option<PeerIdentity> {
        let mut parts = uri.strip_prefix(PREFIX)?.split('/');
        let party = parts.next()?.parse().ok()?;
        let role = Role::parse(parts.next()?)?;
        let id = parts.next()?.parse().ok()?;
        parts
            .next()
            .is_none()
            .then_some(PeerIdentity { party, role, id })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "party {} {} {}", self.party, self.role, self.id)
    }
}

/// The URI a party's CA certificate carries, so a CA file names its own party.
pub fn party_ca_uri(party: u16) -> String {
    format!("{PREFIX}{party}")
}

fn party_of_ca_uri(uri: &str) -> Option<u16> {
    uri.strip_prefix(PREFIX)?.parse().ok()
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("no party CA signed the client certificate")]
    UnknownIssuer,
    #[error("the client certificate has been revoked")]
    Revoked,
    #[error("the client certificate names no mcloud identity")]
    NoIdentity,
    #[error("the client certificate names {named} but party {signer}'s CA signed it")]
    WrongParty { named: PeerIdentity, signer: u16 },
}

/// The parties' CA certificates as a server uses them: to let a client certificate of any
/// party through the handshake, then to tell which party signed it.
pub struct PartyRoots {
    by_party: Vec<(u16, Arc<dyn ClientCertVerifier>)>,
    any: Arc<dyn ClientCertVerifier>,
}

/// The party a CA certificate names in its URI.
pub fn ca_party(ca_pem: &str) -> Result<u16, TlsError> {
    let certs = crate::tls::parse_certs(ca_pem, "party CA")?;
    let ca = certs
        .first()
        .ok_or_else(|| TlsError::NoCertificate("party CA".into()))?;
    uris(ca)
        .iter()
        .find_map(|u| party_of_ca_uri(u))
        .ok_or_else(|| TlsError::NotAPartyCa("the certificate names no mcloud party".into()))
}

fn uris(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(params) = rcgen::CertificateParams::from_ca_cert_der(cert) else {
        return Vec::new();
    };
    params
        .subject_alt_names
        .into_iter()
        .filter_map(|san| match san {
            rcgen::SanType::URI(uri) => Some(uri.as_str().to_string()),
            _ => None,
        })
        .collect()
}

impl PartyRoots {
    /// Roots from the parties' CA certificates; each names its party. A party may have
    /// several (a CA being rotated out and its successor).
    pub fn new(ca_pems: &[String]) -> Result<PartyRoots, TlsError> {
        Self::with_crls(ca_pems, &[])
    }

    /// Roots that also refuse every certificate the revocation lists `crl_pems` name.
    pub fn with_crls(ca_pems: &[String], crl_pems: &[String]) -> Result<PartyRoots, TlsError> {
        let mut crls = Vec::new();
        for pem in crl_pems {
            for crl in rustls_pemfile::crls(&mut pem.as_bytes()) {
                crls.push(crl.map_err(|source| TlsError::Io {
                    path: "revocation list".into(),
                    source,
                })?);
            }
        }
        let mut by_party = Vec::new();
        let mut all = rustls::RootCertStore::empty();
        for pem in ca_pems {
            let party = ca_party(pem)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in crate::tls::parse_certs(pem, "party CA")? {
                roots.add(cert.clone())?;
                all.add(cert)?;
            }
            by_party.push((party, verifier(roots, false, &crls)?));
        }
        Ok(PartyRoots {
            by_party,
            any: verifier(all, true, &crls)?,
        })
    }

    /// The handshake's verifier: a certificate from any party's CA, or none at all (sensors
    /// and apps authenticate with keys and tokens instead).
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.any.clone()
    }

    /// The identity a verified client certificate chain carries.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Result<PeerIdentity, PeerError> {
        let (leaf, intermediates) = chain.split_first().ok_or(PeerError::NoIdentity)?;
        let now = UnixTime::now();
        let mut signer = None;
        for (party, v) in &self.by_party {
            match v.verify_client_cert(leaf, intermediates, now) {
                Ok(_) => {
                    signer = Some(*party);
                    break;
                }
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                    return Err(PeerError::Revoked)
                }
                Err(_) => {}
            }
        }
        let signer = signer.ok_or(PeerError::UnknownIssuer)?;
        let named = uris(leaf)
            .iter()
            .find_map(|u| PeerIdentity::from_uri(u))
            .ok_or(PeerError::NoIdentity)?;
        if named.party != signer {
            return Err(PeerError::WrongParty { named, signer });
        }
        Ok(named)
    }
}

fn verifier(
    roots: rustls::RootCertStore,
    optional: bool,
    crls: &[rustls::pki_types::CertificateRevocationListDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    // Only the end entity is checked (the CA signs end entities only), and a certificate of
    // a party whose list is not here is not refused for that.
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .with_crls(crls.iter().cloned())
    .only_check_end_entity_revocation()
    .allow_unknown_revocation_status();
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PartyCa;

    #[test]
    fn identity_uris_round_trip_and_reject_anything_else() {
        let id = PeerIdentity {
            party: 2,
            role: Role::Voter,
            id: 7,
        };
        assert_eq!(id.uri(), "mcloud://party/2/voter/7");
        assert_eq!(PeerIdentity::from_uri(&id.uri()), Some(id));
        for bad in [
            "mcloud://party/2/voter",
            "mcloud://party/2/king/7",
            "mcloud://party/70000/voter/7",
            "mcloud://party/2/voter/7/extra",
            "https://party/2/voter/7",
        ] {
            assert_eq!(PeerIdentity::from_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_certificate_counts_only_for_the_party_whose_ca_signed_it() {
        let cas: Vec<PartyCa> = (0..3).map(|p| PartyCa::generate(p).unwrap()).collect();
        let pems: Vec<String> = cas.iter().map(|c| c.ca_pem()).collect();
        let roots = PartyRoots::new(&pems).unwrap();
        let voter = PeerIdentity {
            party: 1,
            role: Role::Voter,
            id: 2,
        };
        let cert = cas[1].issue(voter, &[]).unwrap();
        assert_eq!(roots.identify(&cert.chain().unwrap()), Ok(voter));

        // Party 0's CA issues a certificate that claims to be party 1's voter.
        let forged = cas[0].sign(voter, &[]).unwrap();
        assert_eq!(
            roots.identify(&forged.chain().unwrap()),
            Err(PeerError::WrongParty {
                named: voter,
                signer: 0
            })
        );

        // A CA the server does not know.
        let stranger = PartyCa::generate(1).unwrap().issue(voter, &[]).unwrap();
        assert_eq!(
            roots.identify(&stranger.chain().unwrap()),
            Err(PeerError::UnknownIssuer)
        );
        assert_eq!(ca_party(&cas[2].ca_pem()).unwrap(), 2);
    }

    #[test]
    fn a_revoked_certificate_counts_for_nothing() {
        let ca = PartyCa::generate(0).unwrap();
        let who = |id| PeerIdentity {
            party: 0,
            role: Role::Voter,
            id,
        };
        let (revoked, kept) = (
            ca.issue(who(1), &[]).unwrap(),
            ca.issue(who(2), &[]).unwrap(),
        );
        let serial = crate::tls::serial_of(revoked.cert_pem()).unwrap();
        let crl = ca.crl(&[serial], 1, 30).unwrap();
        let roots = PartyRoots::with_crls(&[ca.ca_pem()], &[crl]).unwrap();
        assert_eq!(
            roots.identify(&revoked.chain().unwrap()),
            Err(PeerError::Revoked)
        );
        assert_eq!(roots.identify(&kept.chain().unwrap()), Ok(who(2)));
        // Without the list, both count.
        let open = PartyRoots::new(&[ca.ca_pem()]).unwrap();
        assert_eq!(open.identify(&revoked.chain().unwrap()), Ok(who(1)));
    }
}
