//! TLS for every connection between roles: each node holds a private CA and a server
//! certificate signed by it, generated on first start; peers pin the CA certificate
//! (`ca.pem`) in their configuration, so no public PKI is involved and no other certificate
//! is trusted.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
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
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mcloud node CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mcloud node");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        Ok(NodeIdentity {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
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
        let key = rustls_pemfile::pkcs8_private_keys(&mut self.key_pem.as_bytes())
            .next()
            .ok_or_else(|| TlsError::NoKey("key.pem".into()))?
            .map_err(|source| TlsError::Io {
                path: "key.pem".into(),
                source,
            })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                certs,
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.secret_pkcs8_der().to_vec())),
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
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
