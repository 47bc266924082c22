//! TLS for every connection between roles. Each party keeps its own CA ([`PartyCa`]); the
//! deployment's authority issues every node of the party a certificate from it that names the
//! node's party and role (see [`crate::auth::peer`]). The certificate serves both ends: as a
//! server certificate that callers pin by the party's CA, and as a client certificate that
//! proves the node to its peers (mutual TLS). No public PKI is involved.
//!
//! A process and a child it starts (a node and its worker processes) talk over a
//! [`PrivateLink`]: mutual TLS under a CA made for that one link, held in memory only.

use crate::auth::peer::{party_ca_uri, PartyRoots, PeerIdentity};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate found")]
    NoCertificate(String),
    #[error("{0}: no PEM private key found")]
    NoKey(String),
    #[error("not a party CA: {0}")]
    NotAPartyCa(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A party's certificate authority: signs the certificates of the party's nodes and
/// administrators, and nothing else. Its key stays with the authority (offline).
pub struct PartyCa {
    party: u16,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl PartyCa {
    pub fn generate(party: u16) -> Result<PartyCa, TlsError> {
        let key = KeyPair::generate()?;
        let params = ca_params(&format!("mcloud party {party} CA"), Some(party))?;
        let cert = params.self_signed(&key)?;
        Ok(PartyCa { party, cert, key })
    }

    /// A CA from its PEM certificate and key (as `ca.pem` and `ca.key` hold them).
    pub fn load(ca_pem: &str, key_pem: &str) -> Result<PartyCa, TlsError> {
        let party = crate::auth::peer::ca_party(ca_pem)?;
        let key = KeyPair::from_pem(key_pem)?;
        // rcgen signs with a Certificate value: rebuilt from the stored one's parameters and
        // key, it has the same subject and key, so what it signs chains to the stored CA.
        let params = CertificateParams::from_ca_cert_pem(ca_pem)?;
        let cert = params.self_signed(&key)?;
        Ok(PartyCa { party, cert, key })
    }

    pub fn party(&self) -> u16 {
        self.party
    }

    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A revocation list of this CA naming the certificates with `serials` (as
    /// [`serial_of`] reads them), valid for `days`; `number` orders successive lists.
    pub fn crl(&self, serials: &[Vec<u8>], number: u64, days: i64) -> Result<String, TlsError> {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(days.max(1)),
            crl_number: rcgen::SerialNumber::from(number.to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(serial.clone()),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `who` (of this CA's party), valid as a server certificate for
    /// `names` (DNS names or IP addresses) and as a client certificate.
    pub fn issue(&self, who: PeerIdentity, names: &[String]) -> Result<NodeIdentity, TlsError> {
        if who.party != self.party {
            return Err(TlsError::NotAPartyCa(format!(
                "party {}'s CA cannot issue an identity of party {}",
                self.party, who.party
            )));
        }
        self.sign(who, names)
    }

    /// Signs without checking the party: what a dishonest party's CA could do, which tests
    /// need to show that servers refuse it.
    pub(crate) fn sign(
        &self,
        who: PeerIdentity,
        names: &[String],
    ) -> Result<NodeIdentity, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mcloud {who}"));
        params
            .subject_alt_names
            .push(SanType::URI(who.uri().try_into()?));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(NodeIdentity {
            ca_pem: self.ca_pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A node's (or an administrator's) TLS identity: its party's CA, and the certificate and key
/// the party's CA issued it.
#[derive(Clone)]
pub struct NodeIdentity {
    pub ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// Names every node certificate covers, so loopback deployments work out of the box.
pub fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.write_str("NodeIdentity(..)")
    }
}

const IDENTITY_FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

impl NodeIdentity {
    /// A throwaway identity under a CA of its own (party 0, role cloud): for tools and tests
    /// that need a TLS server and no deployment.
    pub fn generate(names: &[String]) -> Result<NodeIdentity, TlsError> {
        let who = PeerIdentity {
            party: 0,
            role: crate::auth::peer::Role::Cloud,
            id: 0,
        };
        PartyCa::generate(0)?.issue(who, names)
    }

    /// Loads `ca.pem`, `cert.pem` and `key.pem` from `dir` (as `mcloud authority` writes them).
    pub fn load(dir: &Path) -> Result<NodeIdentity, TlsError> {
        let [ca_pem, cert_pem, key_pem] = IDENTITY_FILES.map(|f| read(&dir.join(f)));
        let identity = NodeIdentity {
            ca_pem: ca_pem?,
            cert_pem: cert_pem?,
            key_pem: key_pem?,
        };
        identity.chain()?;
        parse_key(&identity.key_pem, "key.pem")?;
        Ok(identity)
    }

    /// Writes the three files into `dir`, the key readable by its owner only.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        write(&dir.join("key.pem"), &self.key_pem, true)?;
        write(&dir.join("cert.pem"), &self.cert_pem, false)?;
        write(&dir.join("ca.pem"), &self.ca_pem, false)
    }

    /// The certificate, as PEM (public).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate chain presented in a handshake.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        parse_certs(&self.cert_pem, "cert.pem")
    }

    /// The server end: presents this certificate, and lets through a client certificate of
    /// any party in `roots` (or none; the routes decide who may call them).
    pub fn server_config(&self, roots: &PartyRoots) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(roots.verifier())
            .with_single_cert(self.chain()?, parse_key(&self.key_pem, "key.pem")?)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// An HTTPS client that presents this identity and trusts exactly `pinned_ca_pems`.
    pub fn client(&self, pinned_ca_pems: &[String]) -> Result<reqwest::Client, TlsError> {
        build_client(
            pinned_ca_pems,
            Some((self.chain()?, parse_key(&self.key_pem, "key.pem")?)),
            None,
        )
    }
}

fn ca_params(name: &str, party: Option<u16>) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    if let Some(party) = party {
        params
            .subject_alt_names
            .push(SanType::URI(party_ca_uri(party).try_into()?));
    }
    Ok(params)
}

/// A mutually authenticated TLS link between a process (the server end, which listens) and
/// one child process it starts (the client end, which connects back). The link has its own
/// CA, generated for it and kept in memory only; it signs one server and one client
/// certificate, and each end accepts exactly a peer holding the other one. The parent keeps
/// the server end ([`PrivateLink::server_config`]) and hands [`PrivateLink::client_pem`] to
/// the child through a pipe (never argv or a file), where [`link_client_config`] reads it.
pub struct PrivateLink {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    client_pem: String,
}

impl PrivateLink {
    /// A fresh link whose server certificate names `server` (an IP address or DNS name: the
    /// address the child connects to).
    pub fn generate(server: &str) -> Result<PrivateLink, TlsError> {
        let (ca_cert, ca_key) = new_ca("mcloud link CA")?;
        let (cert_pem, key_pem) = issue(
            &[server.to_string()],
            "mcloud link server",
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca_cert,
            &ca_key,
        )?;
        let (client_cert, client_key) = issue(
            &[],
            "mcloud link client",
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca_cert,
            &ca_key,
        )?;
        // The CA's key is dropped here: no further certificate can be issued for this link.
        let ca_pem = ca_cert.pem();
        Ok(PrivateLink {
            client_pem: format!("{ca_pem}{client_cert}{client_key}"),
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// The server end: TLS 1.3, and a client certificate signed by this link's CA is
    /// required, so any other peer fails the handshake before a byte of data is exchanged.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in parse_certs(&self.ca_pem, "link CA")? {
            roots.add(cert)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                parse_certs(&self.cert_pem, "link certificate")?,
                parse_key(&self.key_pem, "link key")?,
            )?;
        // One connection per link: nothing to resume.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// What the client end needs, as PEM: the link's CA certificate, then the client
    /// certificate, then the client key. Secret: pass it to the child through a pipe.
    pub fn client_pem(&self) -> &str {
        &self.client_pem
    }
}

/// The client end of a [`PrivateLink`] from its [`PrivateLink::client_pem`]: trusts only the
/// link's CA and presents the link's client certificate.
pub fn link_client_config(pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut certs = parse_certs(pem, "link credentials")?.into_iter();
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = certs.next() {
        roots.add(ca)?;
    }
    let chain: Vec<_> = certs.collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate("link credentials (client)".into()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, parse_key(pem, "link credentials")?)?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A client of a service outside the deployment (an MQTT broker): trusts only the CAs in
/// `ca_pem` (the service's own, not the system's roots), and presents `identity` (a
/// certificate chain PEM and its key PEM) when the service asks for a client certificate.
pub fn service_client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let identity = match identity {
        Some((chain, key)) => Some((
            parse_certs(chain, "the client certificate")?,
            parse_key(key, "the client key")?,
        )),
        None => None,
    };
    Ok(Arc::new(client_config(&[ca_pem.to_string()], identity)?))
}

fn new_ca(name: &str) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(name, None)?.self_signed(&key)?;
    Ok((cert, key))
}

/// A certificate for `names` signed by the CA; returns its PEM and its key's PEM.
fn issue(
    names: &[String],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a peer polling for the file never reads
/// it half written. `private`: only the owner may read it.
fn write(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    let mut file = options.open(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

pub(crate) fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Io {
            path: what.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what.into()));
    }
    Ok(certs)
}

fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|source| TlsError::Io {
            path: what.into(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(what.into()))
}

/// An HTTPS client that trusts exactly the pinned CAs, keeps connections alive and gives up
/// on a silent peer, so a dead node turns into a retryable error instead of a hang.
pub fn client(pinned_ca_pems: &[String]) -> Result<reqwest::Client, TlsError> {
    build_client(pinned_ca_pems, None, None)
}

/// A client for an app: every request carries the app's capability token.
pub fn app_client(pinned_ca_pems: &[String], token: &str) -> Result<reqwest::Client, TlsError> {
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| TlsError::NotAPartyCa(format!("the app token is not a header value: {e}")))?;
    build_client(pinned_ca_pems, None, Some(value))
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A TLS client that trusts exactly the pinned CAs and shows `identity`, if any.
fn client_config(
    pinned_ca_pems: &[String],
    identity: Option<ClientCert>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, pem) in pinned_ca_pems.iter().enumerate() {
        for cert in parse_certs(pem, &format!("pinned CA #{i}"))? {
            roots.add(cert)?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    })
}

fn build_client(
    pinned_ca_pems: &[String],
    identity: Option<ClientCert>,
    bearer: Option<reqwest::header::HeaderValue>,
) -> Result<reqwest::Client, TlsError> {
    let mut config = client_config(pinned_ca_pems, identity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(mut bearer) = bearer {
        bearer.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
    }
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()?)
}

/// The serial number of the first certificate in `pem`, as a revocation list names it.
pub fn serial_of(pem: &str) -> Result<Vec<u8>, TlsError> {
    let certs = parse_certs(pem, "certificate")?;
    let cert = certs
        .first()
        .ok_or_else(|| TlsError::NoCertificate("certificate".into()))?;
    CertificateParams::from_ca_cert_der(cert)?
        .serial_number
        .map(|s| s.to_bytes())
        .ok_or_else(|| TlsError::NoCertificate("certificate without a serial number".into()))
}

/// Reads a pinned CA certificate file.
pub fn read_ca(path: &Path) -> Result<String, TlsError> {
    let pem = read(path)?;
    parse_certs(&pem, &path.display().to_string())?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};

    /// Runs a handshake between the two ends in memory, then has the server send one message
    /// (in TLS 1.3 the client finishes before the server has checked its certificate); the
    /// first error of either end.
    fn connect(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<Vec<u8>, rustls::Error> {
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut c = ClientConnection::new(client, name)?;
        let mut s = ServerConnection::new(server)?;
        let mut sent = false;
        for _ in 0..16 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).expect("to memory");
            }
            let mut input = &wire[..];
            while !input.is_empty() {
                s.read_tls(&mut input).expect("from memory");
                s.process_new_packets()?;
            }
            if !s.is_handshaking() && !sent {
                std::io::Write::write_all(&mut s.writer(), b"shares").expect("to memory");
                sent = true;
            }
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).expect("to memory");
            }
            let mut input = &wire[..];
            while !input.is_empty() {
                c.read_tls(&mut input).expect("from memory");
                let state = c.process_new_packets()?;
                if state.plaintext_bytes_to_read() > 0 {
                    let mut got = vec![0; state.plaintext_bytes_to_read()];
                    std::io::Read::read_exact(&mut c.reader(), &mut got).expect("plaintext");
                    return Ok(got);
                }
            }
        }
        panic!("handshake neither finished nor failed");
    }

    #[test]
    fn a_private_link_admits_exactly_its_own_ends() {
        let link = PrivateLink::generate("127.0.0.1").expect("link");
        let other = PrivateLink::generate("127.0.0.1").expect("link");
        let server = link.server_config().expect("server");

        let own = link_client_config(link.client_pem()).expect("client");
        assert_eq!(connect(own, server.clone()).expect("own client"), b"shares");

        // A client of another link does not trust this server.
        let stranger = link_client_config(other.client_pem()).expect("client");
        assert!(connect(stranger, server.clone()).is_err());

        // Trusting this link's CA is not enough: the server wants its own client certificate,
        // not another link's...
        let foreign_cert = &other.client_pem()[other.ca_pem.len()..];
        let impostor =
            link_client_config(&format!("{}{foreign_cert}", link.ca_pem)).expect("client");
        let refused = connect(impostor, server.clone()).expect_err("foreign certificate");
        assert!(
            matches!(refused, rustls::Error::InvalidCertificate(_)),
            "{refused:?}"
        );

        // ...and a client without a certificate.
        let mut roots = rustls::RootCertStore::empty();
        for cert in parse_certs(&link.ca_pem, "CA").expect("CA") {
            roots.add(cert).expect("root");
        }
        let anonymous = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let refused = connect(Arc::new(anonymous), server).expect_err("no certificate");
        assert!(
            matches!(refused, rustls::Error::NoCertificatesPresented),
            "{refused:?}"
        );
    }

    #[test]
    fn link_credentials_without_a_client_certificate_are_refused() {
        let link = PrivateLink::generate("127.0.0.1").expect("link");
        assert!(link_client_config(&link.ca_pem).is_err());
        assert!(link_client_config("not PEM").is_err());
    }
}
