//! Serving a role's router over HTTPS.

use crate::auth::peer::PartyRoots;
use crate::auth::ConnectionPeer;
use crate::tls::NodeIdentity;
use crate::wire::MAX_BODY_BYTES;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use axum_server::accept::Accept;
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tower_layer::Layer;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A running HTTPS server; dropping the handle leaves it running, `shutdown` stops it.
pub struct RunningServer {
    pub addr: SocketAddr,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops accepting, closes connections and waits for the server task.
    pub async fn shutdown(self) {
        self.handle.shutdown();
        let _ = self.task.await;
    }
}

/// Binds `addr` (port 0 picks a free port) and serves `router` over TLS; client certificates
/// of the parties in `roots` identify peers (see [`crate::auth`]).
pub async fn serve(
    router: Router,
    addr: SocketAddr,
    identity: &NodeIdentity,
    roots: Arc<PartyRoots>,
) -> Result<RunningServer, ServeError> {
    serve_on(bind(addr)?, router, identity, roots).await
}

/// Binds `addr` without serving yet, so a node can learn its address before it builds the
/// router (catalog voters name each other by address).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(listener)
}

/// Serves `router` over TLS on a listener from `bind`.
pub async fn serve_on(
    listener: std::net::TcpListener,
    router: Router,
    identity: &NodeIdentity,
    roots: Arc<PartyRoots>,
) -> Result<RunningServer, ServeError> {
    let bound = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let config =
        axum_server::tls_rustls::RustlsConfig::from_config(identity.server_config(&roots)?);
    let handle = axum_server::Handle::new();
    // Answers are small and each request waits for its answer: without TCP_NODELAY an
    // answer's last segment waits for the client's delayed ACK (tens of milliseconds per
    // round trip on Linux), which made the query phase wait on the network instead of work.
    let acceptor = PeerAcceptor {
        tls: axum_server::tls_rustls::RustlsAcceptor::new(config)
            .acceptor(axum_server::accept::NoDelayAcceptor::new()),
        roots,
    };
    let server = axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle.clone());
    let app = router
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized));
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(%bound, "server stopped: {e}");
        }
    });
    Ok(RunningServer {
        addr: bound,
        handle,
        task,
    })
}

type TlsAcceptor = axum_server::tls_rustls::RustlsAcceptor<axum_server::accept::NoDelayAcceptor>;

/// Completes the TLS handshake, then tells every request of the connection which peer (if
/// any) the client certificate proved, so the routes can decide without looking at TLS.
#[derive(Clone)]
struct PeerAcceptor {
    tls: TlsAcceptor,
    roots: Arc<PartyRoots>,
}

impl<S: Send + 'static> Accept<tokio::net::TcpStream, S> for PeerAcceptor {
    type Stream = <TlsAcceptor as Accept<tokio::net::TcpStream, S>>::Stream;
    type Service = axum::middleware::AddExtension<S, ConnectionPeer>;
    type Future = BoxFuture<'static, std::io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let handshake = self.tls.accept(stream, service);
        let roots = self.roots.clone();
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| roots.identify(chain));
            Ok((stream, axum::Extension(ConnectionPeer(peer)).layer(service)))
        })
    }
}

/// How much of an oversized body is read (and dropped) before answering, so that the client,
/// still writing, reads the 413 instead of a reset connection. Beyond this the connection is
/// simply closed.
const DRAIN_LIMIT: usize = 4 * MAX_BODY_BYTES;

/// Answers a request whose declared length exceeds the limit with a 413 that names the
/// limit, after draining what the client sends.
async fn refuse_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(length) if length > MAX_BODY_BYTES => {
            if length <= DRAIN_LIMIT {
                let _ = axum::body::to_bytes(request.into_body(), DRAIN_LIMIT).await;
            }
            crate::http::ApiError::too_large(format!(
                "request body is larger than the limit of {MAX_BODY_BYTES} bytes ({length} bytes declared)"
            ))
            .into_response()
        }
        _ => next.run(request).await,
    }
}
