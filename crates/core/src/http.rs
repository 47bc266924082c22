//! The HTTP conventions every mcloud endpoint follows: postcard bodies, JSON errors
//! `{"error": "...", "code": "..."}` with a 4xx that names the problem and a stable code that
//! clients match, and a client that tells a rejection (do not retry) from a transport failure
//! (retry).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An error answer of an endpoint: the status, a stable machine-readable code (clients match
/// the code, never the message) and a message for people.
#[derive(Debug, Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// 409 to a RANGE or COMPUTE that reaches a window not closed yet at some cloud: asking
/// again once the sensors' watermark has passed it succeeds.
pub const WINDOW_NOT_READY: &str = "window_not_ready";

/// The code of an error whose constructor names none: one per status.
fn default_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        410 => "gone",
        413 => "too_large",
        503 => "unavailable",
        _ => "internal",
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: default_code(status),
            message: message.into(),
        }
    }
    /// An error with its own stable code (for example `session_expired` within 401).
    pub fn coded(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 401: the caller did not prove who it is.
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::coded(StatusCode::UNAUTHORIZED, code, message)
    }
    /// 403: the caller is known but may not do this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::coded(StatusCode::FORBIDDEN, code, message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    code: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            error: self.message,
            code: self.code.to_string(),
        })
        .unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// A postcard-encoded request or response body.
pub struct Postcard<T>(pub T);

impl<S, T> FromRequest<S> for Postcard<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        decode(&bytes).map(Postcard)
    }
}

/// The request body as bytes, with the size limit reported the mcloud way.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(format!(
                        "request body is larger than the limit of {} bytes",
                        crate::wire::MAX_BODY_BYTES
                    ))
                } else {
                    ApiError::bad_request(format!("cannot read request body: {e}"))
                }
            })
    }
}

/// Decodes a postcard body; trailing bytes are an error, so a body cannot smuggle extra data.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(ApiError::bad_request(format!(
            "malformed body: {} unexpected trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "malformed body: not a valid {}: {e}",
            short_type_name::<T>()
        ))),
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

impl<T: Serialize> IntoResponse for Postcard<T> {
    fn into_response(self) -> Response {
        match postcard::to_stdvec(&self.0) {
            Ok(body) => {
                ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
            }
            Err(e) => ApiError::internal(format!("encoding response: {e}")).into_response(),
        }
    }
}

/// A node to call: its base URL and the HTTPS client that trusts exactly its party's CA (and
/// presents the caller's certificate or token, if any). One client per party: a client that
/// trusted every party's CA would let any party pose as another party's node.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    pub http: reqwest::Client,
}

impl Endpoint {
    pub fn new(url: impl Into<String>, http: reqwest::Client) -> Endpoint {
        Endpoint {
            url: url.into().trim_end_matches('/').to_string(),
            http,
        }
    }
}

/// Why a call to another mcloud role failed.
#[derive(Debug, Error)]
pub enum CallError {
    /// The peer could not be reached or the connection broke: the call may be retried.
    #[error("{url}: unreachable: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The peer answered with an error status and said why: retrying will not help, except
    /// for 503 (see `is_retryable`).
    #[error("{url}: rejected ({status} {code}): {message}")]
    Rejected {
        url: String,
        status: u16,
        /// The endpoint's stable error code (see [`ApiError`]).
        code: String,
        message: String,
    },
    #[error("{url}: undecodable answer: {message}")]
    Decode { url: String, message: String },
    #[error("encoding request: {0}")]
    Encode(#[from] postcard::Error),
}

impl CallError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Transport { .. } => true,
            CallError::Rejected { status, .. } => *status == 503,
            _ => false,
        }
    }

    /// The peer has not closed a window the request reaches ([`WINDOW_NOT_READY`]): asking
    /// again later succeeds.
    pub fn is_not_ready(&self) -> bool {
        matches!(self, CallError::Rejected { status: 409, code, .. } if code == WINDOW_NOT_READY)
    }
}

/// POSTs an already encoded body and decodes a postcard answer.
pub async fn post_bytes<R: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> Result<R, CallError> {
    Ok(post_bytes_sized(client, url, body).await?.0)
}

/// POSTs an already encoded body and decodes a postcard answer; also returns the answer's
/// size in bytes, for callers that account for what they move.
pub async fn post_bytes_sized<R: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> Result<(R, usize), CallError> {
    let request = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body);
    sized_call(url, request).await
}

/// POSTs a postcard body and decodes a postcard answer.
pub async fn post<Q: Serialize, R: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    request: &Q,
) -> Result<R, CallError> {
    post_bytes(client, url, postcard::to_stdvec(request)?).await
}

/// GETs a postcard answer.
pub async fn get<R: DeserializeOwned>(client: &reqwest::Client, url: &str) -> Result<R, CallError> {
    call(url, client.get(url)).await
}

async fn call<R: DeserializeOwned>(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<R, CallError> {
    Ok(sized_call(url, request).await?.0)
}

/// Sends a request built by the caller (with its own headers) and decodes a postcard answer.
pub async fn send<R: DeserializeOwned>(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<R, CallError> {
    call(url, request).await
}

async fn sized_call<R: DeserializeOwned>(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<(R, usize), CallError> {
    let response = request
        .send()
        .await
        .map_err(|source| CallError::Transport {
            url: url.to_string(),
            source,
        })?;
    read_sized_answer(url, response).await
}

/// The body of `response`, refused once it passes `limit` bytes (declared or read).
async fn read_capped(
    url: &str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, CallError> {
    let too_large = |size: u64| CallError::Decode {
        url: url.to_string(),
        message: format!("the answer has {size} bytes or more; the limit is {limit}"),
    };
    if let Some(declared) = response.content_length().filter(|&n| n > limit as u64) {
        return Err(too_large(declared));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| CallError::Transport {
            url: url.to_string(),
            source,
        })?
    {
        if bytes.len() + chunk.len() > limit {
            return Err(too_large((bytes.len() + chunk.len()) as u64));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn read_sized_answer<R: DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
) -> Result<(R, usize), CallError> {
    let status = response.status();
    // A node-to-node answer carries its error as postcard under an error status: the caller
    // expects a `Result` and decodes the error itself.
    let encoded_error = !status.is_success()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/octet-stream");
    let bytes = read_capped(url, response, crate::wire::MAX_ANSWER_BYTES).await?;
    if !status.is_success() && !encoded_error {
        let (message, code) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error, b.code),
            Err(_) => (String::from_utf8_lossy(&bytes).into_owned(), String::new()),
        };
        return Err(CallError::Rejected {
            url: url.to_string(),
            status: status.as_u16(),
            code,
            message,
        });
    }
    let answer = decode::<R>(&bytes).map_err(|e| CallError::Decode {
        url: url.to_string(),
        message: e.message,
    })?;
    Ok((answer, bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{client, default_names, NodeIdentity};

    /// A client reads no answer past the limit, whether the server declares its length or not.
    #[tokio::test]
    async fn answers_past_the_limit_are_refused() {
        let identity = NodeIdentity::generate(&default_names()).unwrap();
        let router = axum::Router::new()
            .route("/sized", axum::routing::get(|| async { vec![7u8; 4096] }))
            .route(
                "/streamed",
                axum::routing::get(|| async {
                    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(vec![7u8; 1024]));
                    axum::body::Body::from_stream(futures::stream::iter(chunks))
                }),
            );
        let roots = std::sync::Arc::new(
            crate::auth::peer::PartyRoots::new(std::slice::from_ref(&identity.ca_pem)).unwrap(),
        );
        let server = crate::server::serve(router, "127.0.0.1:0".parse().unwrap(), &identity, roots)
            .await
            .unwrap();
        let http = client(std::slice::from_ref(&identity.ca_pem)).unwrap();
        for path in ["/sized", "/streamed"] {
            let url = format!("{}{path}", server.url());
            let response = http.get(&url).send().await.unwrap();
            let refused = read_capped(&url, response, 4000).await;
            assert!(
                matches!(&refused, Err(CallError::Decode { message, .. }) if message.contains("limit is 4000")),
                "{path}: {refused:?}"
            );
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(read_capped(&url, response, 4096).await.unwrap().len(), 4096);
        }
        server.shutdown().await;
    }
}
