//! TLS for every connection between roles: each node holds a private CA and a server
//! certificate signed by it, generated on first start; peers pin the CA certificate
//! (`ca.pem`) in their configuration, so no public PKI is involved and no other certificate
//! is trusted.
//!
//! A process and a child it starts (a node and its worker processes) talk over a
//! [`PrivateLink`]: mutual TLS under a CA made for that one link, held in memory only.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
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
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A node's TLS identity: the CA its peers pin, and the server certificate and key.
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

impl NodeIdentity {
    /// A fresh CA and a server certificate for `names` (DNS names or IP addresses).
    pub fn generate(names: &[String]) -> Result<NodeIdentity, TlsError> {
        let (ca_cert, ca_key) = new_ca("mcloud node CA")?;
        let (cert_pem, key_pem) = issue(
            names,
            "mcloud node",
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca_cert,
            &ca_key,
        )?;
        Ok(NodeIdentity {
            ca_pem: ca_cert.pem(),
            cert_pem,
            key_pem,
        })
    }

    /// Loads `ca.pem`, `cert.pem` and `key.pem` from `dir`, creating them on first start.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<NodeIdentity, TlsError> {
        let paths = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
        if paths.iter().all(|p| p.exists()) {
            let [ca_pem, cert_pem, key_pem] = paths.map(|p| read(&p));
            return Ok(NodeIdentity {
                ca_pem: ca_pem?,
                cert_pem: cert_pem?,
                key_pem: key_pem?,
            });
        }
        let identity = Self::generate(names)?;
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        // The key first and the CA last: a peer that sees ca.pem can rely on the rest.
        write(&paths[2], &identity.key_pem, true)?;
        write(&paths[1], &identity.cert_pem, false)?;
        write(&paths[0], &identity.ca_pem, false)?;
        Ok(identity)
    }

    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs = parse_certs(&self.cert_pem, "cert.pem")?;
        let key = parse_key(&self.key_pem, "key.pem")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
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

fn new_ca(name: &str) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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

fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
    let mut roots = rustls::RootCertStore::empty();
    for (i, pem) in pinned_ca_pems.iter().enumerate() {
        for cert in parse_certs(pem, &format!("pinned CA #{i}"))? {
            roots.add(cert)?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()?)
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
