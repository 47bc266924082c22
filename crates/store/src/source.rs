//! Sources: the untrusted places blobs are kept, a local directory or an S3-compatible bucket,
//! reached through `object_store`. A source sees nothing but blobs under random 32-hex names
//! in one flat namespace.

mod config;
mod pool;

pub use config::{Device, SourceConfig, SourceKind, MIN_BLOB_BYTES};

use crate::error::StoreError;
use crate::placement::{base_weight, Outcome, Placement};
use bytes::Bytes;
use config::{CONNECT_TIMEOUT, REMOTE_TIMEOUT};
use futures::{Future, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use pool::Pool;
use std::sync::Arc;
use std::time::Instant;

/// Requests to remote sources one batch keeps in flight.
const REMOTE_IN_FLIGHT: usize = 32;

/// A blob name: 32 lowercase hex digits, as [`crate::packet::Place::blob_name`] makes them.
pub fn is_blob_name(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

struct Source {
    config: SourceConfig,
    store: Arc<dyn ObjectStore>,
    /// The folder blobs go in; None for the root.
    prefix: Option<ObjectPath>,
}

impl Source {
    fn open(config: &SourceConfig) -> Result<Source, StoreError> {
        config.validate()?;
        let field = |name: &str| format!("sources[{}].{name}", config.id);
        let store: Arc<dyn ObjectStore> = match config.kind {
            SourceKind::Local => {
                let path = config
                    .path
                    .as_ref()
                    .ok_or_else(|| StoreError::config(field("path"), "is required"))?;
                std::fs::create_dir_all(path).map_err(|e| {
                    StoreError::config(field("path"), format!("{}: {e}", path.display()))
                })?;
                let fs = LocalFileSystem::new_with_prefix(path).map_err(|e| {
                    StoreError::config(field("path"), format!("{}: {e}", path.display()))
                })?;
                Arc::new(fs)
            }
            SourceKind::S3 => {
                let text = |v: &Option<String>| v.clone().unwrap_or_default();
                let retry = RetryConfig {
                    max_retries: 2,
                    retry_timeout: REMOTE_TIMEOUT,
                    ..RetryConfig::default()
                };
                let client = ClientOptions::new()
                    .with_timeout(REMOTE_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_allow_http(config.allow_http);
                let s3 = AmazonS3Builder::new()
                    .with_endpoint(text(&config.endpoint))
                    .with_bucket_name(text(&config.bucket))
                    .with_region(config.region.as_deref().unwrap_or("us-east-1"))
                    .with_access_key_id(text(&config.access_key_id))
                    .with_secret_access_key(text(&config.secret_access_key))
                    .with_allow_http(config.allow_http)
                    // Path-style requests: S3-compatible services seldom have a DNS name per
                    // bucket.
                    .with_virtual_hosted_style_request(false)
                    .with_retry(retry)
                    .with_client_options(client)
                    .build()
                    .map_err(|e| StoreError::config(field("endpoint"), e.to_string()))?;
                Arc::new(s3)
            }
        };
        Ok(Source {
            config: config.clone(),
            store,
            prefix: config.prefix.as_deref().map(ObjectPath::from),
        })
    }

    fn is_local(&self) -> bool {
        self.config.kind == SourceKind::Local
    }

    /// One blob of this source, checked to be a blob name.
    fn blob(&self, name: &str) -> Result<Blob, StoreError> {
        if !is_blob_name(name) {
            return Err(StoreError::BadName(name.into()));
        }
        let file = match (&self.config.path, self.is_local()) {
            (Some(dir), true) => {
                let mut file = dir.clone();
                file.extend(self.config.prefix.as_deref());
                file.push(name);
                Some(file)
            }
            _ => None,
        };
        Ok(Blob {
            source: self.config.id,
            store: self.store.clone(),
            path: match &self.prefix {
                Some(p) => p.child(name),
                None => ObjectPath::from(name),
            },
            file,
        })
    }
}

/// What an operation on one blob needs, owned, so that it can go to another thread.
struct Blob {
    source: u8,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    /// A local source's blob as a file, which `put` writes itself.
    file: Option<std::path::PathBuf>,
}

/// Writes a local blob in place. `object_store`'s local file system writes every object to
/// a temporary file and renames it over the name, so that no reader sees half an object; a
/// blob needs no such care (it is written once under a fresh random name that no reader asks
/// for before its write is committed, and a torn one fails its AEAD and is read from another
/// copy), and at two files per 16 KiB packet the rename was the largest single cost of
/// `mcloud bench --store` on tmpfs (see README, Performance).
fn write_in_place(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::write(file, bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(file, bytes)
        }
        other => other,
    }
}

impl Blob {
    fn error(&self, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::BlobMissing {
                source_id: self.source,
                name: self.path.filename().unwrap_or_default().to_string(),
            },
            other => StoreError::SourceUnavailable {
                source_id: self.source,
                reason: other.to_string(),
            },
        }
    }

    /// Stores the blob; says what the placement should learn from it.
    async fn put(&self, bytes: Bytes) -> (Result<(), StoreError>, Outcome) {
        let started = Instant::now();
        let result = match &self.file {
            Some(file) => write_in_place(file, &bytes).map_err(|e| StoreError::SourceUnavailable {
                source_id: self.source,
                reason: format!("{}: {e}", file.display()),
            }),
            None => self
                .store
                .put(&self.path, PutPayload::from_bytes(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.error(e)),
        };
        if let Err(e) = &result {
            tracing::debug!(source = self.source, error = %e, "put failed");
        }
        let outcome = outcome(started, &result);
        (result, outcome)
    }

    async fn get(&self) -> (Result<Bytes, StoreError>, Outcome) {
        let started = Instant::now();
        let result = match self.store.get(&self.path).await {
            Ok(found) => found.bytes().await.map_err(|e| self.error(e)),
            Err(e) => Err(self.error(e)),
        };
        let outcome = outcome(started, &result);
        (result, outcome)
    }

    async fn delete(&self) -> (Result<(), StoreError>, Option<Outcome>) {
        match self.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => (Ok(()), None),
            Err(e) => (Err(self.error(e)), Some(Outcome::Unavailable)),
        }
    }
}

fn outcome<T>(started: Instant, result: &Result<T, StoreError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Done(started.elapsed()),
        Err(StoreError::SourceUnavailable { .. }) => Outcome::Unavailable,
        Err(_) => Outcome::Failed,
    }
}

/// The sources this process can reach, with what it learnt about them.
pub struct Sources {
    sources: Vec<Source>,
    placement: Arc<Placement>,
    /// Threads for the local sources' operations (none without local sources).
    pool: Option<Pool>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("ids", &self.ids())
            .field("weights", &self.placement.weights())
            .finish()
    }
}

type Answers<T> = Vec<(usize, Result<T, StoreError>)>;

impl Sources {
    /// Opens every source (local directories are created); any bad config is refused whole.
    pub fn open(configs: &[SourceConfig]) -> Result<Sources, StoreError> {
        if configs.is_empty() {
            return Err(StoreError::config(
                "sources",
                "is empty: at least one source is needed",
            ));
        }
        let mut seen = [false; 256];
        let mut sources = Vec::with_capacity(configs.len());
        for c in configs {
            if std::mem::replace(&mut seen[usize::from(c.id)], true) {
                return Err(StoreError::config(
                    format!("sources[{}].id", c.id),
                    "is used by two sources",
                ));
            }
            sources.push(Source::open(c)?);
        }
        sources.sort_by_key(|s| s.config.id);
        let weights: Vec<(u8, f64)> = sources
            .iter()
            .map(|s| (s.config.id, base_weight(&s.config)))
            .collect();
        tracing::debug!(?weights, "sources opened");
        // Twice the cores: on a disk whose metadata updates wait on a journal, more of them
        // in flight keep the cores busy; on a fast one, two per core cost little.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = match sources.iter().any(Source::is_local) {
            true => Some(Pool::new((2 * cores).clamp(4, 16))?),
            false => None,
        };
        Ok(Sources {
            placement: Arc::new(Placement::new(&weights)),
            sources,
            pool,
        })
    }

    /// The sources' ids, ascending.
    pub fn ids(&self) -> Vec<u8> {
        self.sources.iter().map(|s| s.config.id).collect()
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn config(&self, id: u8) -> Option<&SourceConfig> {
        self.source(id).ok().map(|s| &s.config)
    }

    /// The largest blob `id` takes (None: any size, or not configured).
    pub fn max_blob_bytes(&self, id: u8) -> Option<u32> {
        self.config(id).and_then(|c| c.max_blob_bytes)
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Batches worth keeping in flight to keep every thread for local sources busy.
    pub fn parallelism(&self) -> usize {
        self.pool.as_ref().map_or(4, Pool::threads)
    }

    fn source(&self, id: u8) -> Result<&Source, StoreError> {
        self.sources
            .binary_search_by_key(&id, |s| s.config.id)
            .map(|i| &self.sources[i])
            .map_err(|_| StoreError::UnknownSource(id))
    }

    /// Runs one operation per item: those on local sources together as one job on a blob
    /// thread (`local`, blocking), those on remote ones concurrently here (`remote`). One
    /// result per item, in order.
    async fn batch<I, T, L, R, Fut>(
        &self,
        items: Vec<(u8, String, I)>,
        size: impl Fn(&I) -> Option<usize>,
        local: L,
        remote: R,
    ) -> Vec<Result<T, StoreError>>
    where
        I: Send + 'static,
        T: Send + 'static,
        L: Fn(usize, &Blob, I) -> (Result<T, StoreError>, Option<Outcome>) + Send + 'static,
        R: Fn(usize, Blob, I) -> Fut,
        Fut: Future<Output = (Result<T, StoreError>, Option<Outcome>)>,
    {
        let mut results: Vec<Option<Result<T, StoreError>>> =
            (0..items.len()).map(|_| None).collect();
        let (mut on_pool, mut on_net) = (Vec::new(), Vec::new());
        for (i, (id, name, item)) in items.into_iter().enumerate() {
            let resolved = self.source(id).and_then(|s| {
                if let (Some(max), Some(len)) = (s.config.max_blob_bytes, size(&item)) {
                    if len > max as usize {
                        return Err(StoreError::BadPlan(format!(
                            "a blob of {len} bytes for source {id}, which takes at most {max}"
                        )));
                    }
                }
                Ok((s.is_local(), s.blob(&name)?))
            });
            match resolved {
                Ok((true, blob)) => on_pool.push((i, blob, item)),
                Ok((false, blob)) => on_net.push((i, blob, item)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let net = futures::stream::iter(on_net)
            .map(|(i, blob, item)| {
                let source = blob.source;
                let op = remote(i, blob, item);
                async move {
                    let (result, outcome) = op.await;
                    if let Some(outcome) = outcome {
                        self.placement.record(source, outcome);
                    }
                    (i, result)
                }
            })
            .buffer_unordered(REMOTE_IN_FLIGHT)
            .collect::<Answers<T>>();
        let pool = async {
            let Some(pool) = self.pool.as_ref().filter(|_| !on_pool.is_empty()) else {
                return Vec::new();
            };
            let indices: Vec<usize> = on_pool.iter().map(|(i, ..)| *i).collect();
            let placement = self.placement.clone();
            let job = move || -> Answers<T> {
                let mut learnt = Vec::with_capacity(on_pool.len());
                let answers = on_pool
                    .into_iter()
                    .map(|(i, blob, item)| {
                        let (result, outcome) = local(i, &blob, item);
                        learnt.extend(outcome.map(|o| (blob.source, o)));
                        (i, result)
                    })
                    .collect();
                // Once per batch: the placement's lock is shared with every other batch.
                placement.record_many(&learnt);
                answers
            };
            match pool.run(job).await {
                Ok(answers) => answers,
                Err(e) => indices
                    .into_iter()
                    .map(|i| (i, Err(StoreError::Internal(e.to_string()))))
                    .collect(),
            }
        };
        let (net, pool) = futures::join!(net, pool);
        for (i, r) in net.into_iter().chain(pool) {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(StoreError::Internal("an operation got no answer".into())))
            })
            .collect()
    }

    /// Stores each `(source, name, bytes)`, replacing any blob of that name. One result per
    /// blob, in order.
    pub async fn put_many(&self, blobs: Vec<(u8, String, Bytes)>) -> Vec<Result<(), StoreError>> {
        self.batch(
            blobs,
            |bytes| Some(bytes.len()),
            |_, blob, bytes| {
                let (result, outcome) = futures::executor::block_on(blob.put(bytes));
                (result, Some(outcome))
            },
            |_, blob, bytes| async move {
                let (result, outcome) = blob.put(bytes).await;
                (result, Some(outcome))
            },
        )
        .await
    }

    /// Fetches each `(source, name)` and hands it, with its index, to `then` on the thread
    /// that fetched it, so that the work on a blob (opening it, say) runs next to its fetch,
    /// on as many threads as the fetches. One result per blob, in order.
    pub async fn get_many_then<T, F>(
        &self,
        blobs: Vec<(u8, String)>,
        then: F,
    ) -> Vec<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: Fn(usize, Bytes) -> Result<T, StoreError> + Send + Sync + 'static,
    {
        let then = Arc::new(then);
        let on_pool = then.clone();
        self.batch(
            blobs.into_iter().map(|(id, name)| (id, name, ())).collect(),
            |_| None,
            move |i, blob, ()| {
                let (result, outcome) = futures::executor::block_on(blob.get());
                (result.and_then(|b| on_pool(i, b)), Some(outcome))
            },
            |i, blob, ()| {
                let then = then.clone();
                async move {
                    let (result, outcome) = blob.get().await;
                    (result.and_then(|b| then(i, b)), Some(outcome))
                }
            },
        )
        .await
    }

    /// Fetches each `(source, name)`. One result per blob, in order.
    pub async fn get_many(&self, blobs: Vec<(u8, String)>) -> Vec<Result<Bytes, StoreError>> {
        self.get_many_then(blobs, |_, b| Ok(b)).await
    }

    /// Stores `bytes` as blob `name` on source `id`, replacing any blob of that name.
    pub async fn put(&self, id: u8, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let mut results = self.put_many(vec![(id, name.to_string(), bytes)]).await;
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Internal("no answer".into())))
    }

    /// The blob `name` of source `id`.
    pub async fn get(&self, id: u8, name: &str) -> Result<Bytes, StoreError> {
        let mut results = self.get_many(vec![(id, name.to_string())]).await;
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Internal("no answer".into())))
    }

    /// Deletes blob `name` from source `id`; one that is not there counts as deleted.
    pub async fn delete(&self, id: u8, name: &str) -> Result<(), StoreError> {
        self.delete_many(vec![(id, name.to_string())])
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Internal("no answer".into())))
    }

    /// Deletes each `(source, name)`; one that is not there counts as deleted. One result
    /// per blob, in order.
    pub async fn delete_many(&self, blobs: Vec<(u8, String)>) -> Vec<Result<(), StoreError>> {
        self.batch(
            blobs.into_iter().map(|(id, name)| (id, name, ())).collect(),
            |_| None,
            |_, blob, ()| futures::executor::block_on(blob.delete()),
            |_, blob, ()| async move { blob.delete().await },
        )
        .await
    }

    /// The names of every blob source `id` holds (anything else there is left out).
    pub async fn list(&self, id: u8) -> Result<Vec<String>, StoreError> {
        let source = self.source(id)?;
        let store = source.store.clone();
        let prefix = source.prefix.clone();
        let listing = async move { store.list(prefix.as_ref()).try_collect::<Vec<_>>().await };
        let listed = match (&self.pool, source.is_local()) {
            (Some(pool), true) => {
                pool.run(move || futures::executor::block_on(listing))
                    .await?
            }
            _ => listing.await,
        }
        .map_err(|e| StoreError::SourceUnavailable {
            source_id: id,
            reason: e.to_string(),
        })?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .filter(|name| is_blob_name(name))
            .collect();
        names.sort_unstable();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_refuse_duplicates_and_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = SourceConfig::local(1, dir.path().join("a"));
        let e = Sources::open(&[a.clone(), a.clone()]).unwrap_err();
        assert!(e.to_string().contains("sources[1].id"), "{e}");
        assert_eq!(Sources::open(&[]).unwrap_err().code(), "bad_config");
    }

    #[tokio::test]
    async fn a_local_source_puts_gets_lists_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let sources = Sources::open(&[SourceConfig::local(7, dir.path().join("s7"))]).unwrap();
        let name = "0123456789abcdef0123456789abcdef";
        sources
            .put(7, name, Bytes::from_static(b"sealed"))
            .await
            .unwrap();
        assert_eq!(&sources.get(7, name).await.unwrap()[..], b"sealed");
        // Stored flat, under the name alone.
        assert!(dir.path().join("s7").join(name).is_file());
        std::fs::write(dir.path().join("s7/notes.txt"), b"x").unwrap();
        assert_eq!(sources.list(7).await.unwrap(), vec![name.to_string()]);
        sources.delete(7, name).await.unwrap();
        sources.delete(7, name).await.unwrap();
        let missing = sources.get(7, name).await.unwrap_err();
        assert_eq!(missing.code(), "blob_missing");
        assert_eq!(
            sources.get(8, name).await.unwrap_err().code(),
            "unknown_source"
        );
        for bad in ["../../etc/passwd", "0123456789ABCDEF0123456789ABCDEF", "ab"] {
            assert_eq!(
                sources.put(7, bad, Bytes::new()).await.unwrap_err().code(),
                "bad_name"
            );
        }
    }
}
