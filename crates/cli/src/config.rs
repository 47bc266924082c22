//! Configuration files: `node.toml` for `mcloud node`, `deployment.toml` for the sensor and
//! the collector. Relative paths are taken from the file's own directory.

use anyhow::{bail, Context, Result};
use mcloud_cloud::elastic::{ElasticConfig, Thresholds};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One party's node: the roles it runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its TLS identity, values table and flags table.
    pub data_dir: PathBuf,
    /// Names (DNS or IP) its certificate covers besides localhost and the loopback addresses.
    #[serde(default)]
    pub names: Vec<String>,
    pub catalog: Option<CatalogRole>,
    pub cloud: Option<CloudRole>,
    /// The cloud role's pre-aggregation workers; the defaults when absent.
    pub elastic: Option<ElasticSection>,
}

/// A catalog voter. With no `peers` the catalog is this one node; otherwise `peers` lists
/// every initial voter (this node too) and each partition's voters are chosen among them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRole {
    pub listen: SocketAddr,
    /// The voter's credentials, as `mcloud authority node --role voter` wrote them.
    pub credentials: PathBuf,
    #[serde(default = "default_node_id")]
    pub node_id: u64,
    /// Raft groups the flags keyspace is split into; every catalog node must agree.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    #[serde(default)]
    pub peers: Vec<CatalogPeer>,
    /// Start without creating any group and wait to be added with `mcloud catalog add-voter`.
    #[serde(default)]
    pub join: bool,
    /// How long a decided flag stays after its deadline once every cloud settled past it
    /// (seconds, at least a minute), for sensors that ask about their batches late.
    #[serde(default = "default_keep_decided")]
    pub keep_decided_secs: u64,
    /// The storage's sources (a file of `[[sources]]`), so this node's masters can free
    /// the packets of expired and deleted files; without it they only expire metadata.
    pub storage: Option<PathBuf>,
}

/// Least `keep_decided_secs`: below it a sensor still retrying a batch could find its flag
/// gone within the same upload.
pub const MIN_KEEP_DECIDED_SECS: u64 = 60;

fn default_keep_decided() -> u64 {
    mcloud_catalog::raft::node::KEEP_DECIDED_MS / 1000
}

/// A catalog voter as its peers see it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogPeer {
    pub id: u64,
    pub url: String,
    pub ca: PathBuf,
}

fn default_node_id() -> u64 {
    1
}

fn default_partitions() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudRole {
    pub listen: SocketAddr,
    /// The cloud's credentials, as `mcloud authority node --role cloud` wrote them.
    pub credentials: PathBuf,
    /// This cloud's index (0-based) among `parties`.
    pub party: u16,
    pub parties: u16,
    #[serde(default = "default_window")]
    pub window_secs: u64,
    #[serde(default = "default_window")]
    pub grace_secs: u64,
    pub catalog: Endpoint,
    /// The other catalog nodes, for failover when `catalog` is down.
    #[serde(default)]
    pub catalog_nodes: Vec<Endpoint>,
    /// The deployment's disclosure policy (TOML, the same file at every cloud); the
    /// built-in default without one.
    #[serde(default)]
    pub disclosure: Option<PathBuf>,
    /// How long sealed windows and their batches are kept (seconds; at least three hours).
    #[serde(default = "default_retention")]
    pub retention_secs: u64,
    /// Robust mode (`[cloud.robust]`): the clouds verify every report's proof together.
    #[serde(default)]
    pub robust: Option<RobustSection>,
    /// The encrypted storage's sources (a file of `[[sources]]`): with it, windows that pass
    /// the retention horizon go to the cloud's archive there, and ranges and COMPUTEs that
    /// reach back read them again; without it they are dropped.
    #[serde(default)]
    pub storage: Option<PathBuf>,
}

/// `[cloud.robust]`: what a cloud of a robust deployment verifies with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobustSection {
    /// A file holding the verification key, 64 hex digits (`openssl rand -hex 32`): the same
    /// at every cloud, never given to a sensor.
    pub verify_key: PathBuf,
    /// Every cloud in party order (this one's own entry included), for the verification
    /// calls between clouds.
    pub clouds: Vec<Endpoint>,
}

impl RobustSection {
    /// The cloud's robust configuration, calling the other clouds as `identity`.
    pub fn to_config(
        &self,
        identity: &mcloud_core::tls::NodeIdentity,
    ) -> Result<mcloud_cloud::robust::RobustConfig> {
        let text = std::fs::read_to_string(&self.verify_key)
            .with_context(|| format!("reading {}", self.verify_key.display()))?;
        let verify_key = mcloud_core::robust::VerifyKey::from_hex(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.verify_key.display()))?;
        let clouds = self
            .clouds
            .iter()
            .map(|e| e.endpoint(Some(identity)))
            .collect::<Result<Vec<_>>>()?;
        Ok(mcloud_cloud::robust::RobustConfig { verify_key, clouds })
    }
}

fn default_retention() -> u64 {
    mcloud_cloud::DEFAULT_RETENTION_SECS
}

fn default_window() -> u64 {
    60
}

/// `[elastic]`: the cloud's pre-aggregation workers and the manager that scales them. Every
/// field is optional; the defaults are those of [`ElasticConfig::default`].
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticSection {
    /// Buckets the plugs hash into; keep it for the life of the cloud's data.
    pub buckets: usize,
    /// Workers at start.
    pub workers: usize,
    pub min_workers: usize,
    pub max_workers: usize,
    /// Whether the manager runs; without it the workers stay as started.
    pub manager: bool,
    /// Seconds between two manager decisions.
    pub period_secs: f64,
    /// Upper utilisation threshold: above it, provision.
    pub uut: f64,
    /// Lower utilisation threshold: below it, decommission.
    pub lut: f64,
    /// Target utilisation after a scaling step.
    pub tut: f64,
    /// Imbalance (std-dev of utilisation) above which buckets move.
    pub uit: f64,
    /// Least projected improvement of the std-dev for a move to be made.
    pub mit: f64,
    /// Seconds after a scaling step during which no other is made.
    pub cooldown_secs: f64,
    /// Seconds between two checkpoints of the buckets' state; 0: none (a failed worker's
    /// buckets are then rebuilt from every stored batch, and so is a restarted node).
    pub checkpoint_secs: f64,
    /// Where workers run: "in-process" (threads of the node) or "os-process" (`mcloud
    /// worker` processes the node starts, talking to it over mutual TLS on loopback).
    pub provisioner: ProvisionerKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProvisionerKind {
    #[default]
    InProcess,
    OsProcess,
}

impl Default for ElasticSection {
    fn default() -> Self {
        let config = ElasticConfig::default();
        let t = &config.thresholds;
        ElasticSection {
            buckets: config.buckets,
            workers: config.workers,
            min_workers: t.min_workers,
            max_workers: t.max_workers,
            manager: config.period.is_some(),
            period_secs: config
                .period
                .unwrap_or(Duration::from_secs(1))
                .as_secs_f64(),
            uut: t.uut,
            lut: t.lut,
            tut: t.tut,
            uit: t.uit,
            mit: t.mit,
            cooldown_secs: t.cooldown.as_secs_f64(),
            checkpoint_secs: config.checkpoint_period.map_or(0.0, |p| p.as_secs_f64()),
            provisioner: ProvisionerKind::default(),
        }
    }
}

fn seconds(what: &str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("elastic {what}: {secs} seconds"))
}

impl ElasticSection {
    /// The pool's configuration; `worker_program` is the executable to run as `worker`
    /// processes (used only by the "os-process" provisioner).
    pub fn to_config(&self, worker_program: Option<PathBuf>) -> Result<ElasticConfig> {
        if self.buckets == 0 {
            bail!("elastic buckets must be at least 1");
        }
        if self.workers == 0 {
            bail!("elastic workers must be at least 1");
        }
        let period = if self.manager {
            let period = seconds("period_secs", self.period_secs)?;
            if period.is_zero() {
                bail!("elastic period_secs must be above 0");
            }
            Some(period)
        } else {
            None
        };
        let thresholds = Thresholds {
            uut: self.uut,
            lut: self.lut,
            tut: self.tut,
            uit: self.uit,
            mit: self.mit,
            min_workers: self.min_workers,
            max_workers: self.max_workers,
            cooldown: seconds("cooldown_secs", self.cooldown_secs)?,
            ..Thresholds::default()
        };
        thresholds
            .check()
            .map_err(|e| anyhow::anyhow!("elastic thresholds: {e}"))?;
        if !(self.uit > 0.0 && self.mit >= 0.0) {
            bail!(
                "elastic thresholds: need UIT > 0 and MIT >= 0, got UIT {} MIT {}",
                self.uit,
                self.mit
            );
        }
        let worker_program = match self.provisioner {
            ProvisionerKind::InProcess => None,
            ProvisionerKind::OsProcess => Some(
                worker_program.context("the os-process provisioner needs the mcloud executable")?,
            ),
        };
        let checkpoint = seconds("checkpoint_secs", self.checkpoint_secs)?;
        Ok(ElasticConfig {
            buckets: self.buckets,
            workers: self.workers,
            period,
            thresholds,
            checkpoint_period: Some(checkpoint).filter(|p| !p.is_zero()),
            worker_program,
            ..ElasticConfig::default()
        })
    }
}

/// A peer: its URL and its party's CA certificate, pinned for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub url: String,
    pub ca: PathBuf,
}

impl Endpoint {
    /// The endpoint behind a client that trusts only its CA and presents `identity`, if any.
    pub fn endpoint(
        &self,
        identity: Option<&mcloud_core::tls::NodeIdentity>,
    ) -> Result<mcloud_core::http::Endpoint> {
        let ca = [wait_for_ca(&self.ca)?];
        let http = match identity {
            Some(i) => i.client(&ca)?,
            None => mcloud_core::tls::client(&ca)?,
        };
        Ok(mcloud_core::http::Endpoint::new(self.url.clone(), http))
    }
}

/// Where a deployment's catalog and clouds are, for sensors and the collector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub catalog: Endpoint,
    /// The other catalog nodes, for failover when `catalog` is down.
    #[serde(default)]
    pub catalog_nodes: Vec<Endpoint>,
    /// In party order.
    pub clouds: Vec<Endpoint>,
    /// What this deployment's user holds (paths): the sensor's keys, an app token, an
    /// administrator's certificate; each command reads the one it needs.
    #[serde(default)]
    pub credentials: Credentials,
    /// The clouds run robust mode: sensors send proven reports.
    #[serde(default)]
    pub robust: bool,
    /// The encrypted storage's sources (a file of `[[sources]]`), for `mcloud store` and
    /// `mcloud mailbox`.
    pub storage: Option<PathBuf>,
}

/// A storage file: the sources packets go to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    sources: Vec<mcloud_store::source::SourceConfig>,
}

/// The sources a storage file lists, local directories taken from the file's directory.
pub fn load_storage(path: &Path) -> Result<Vec<mcloud_store::source::SourceConfig>> {
    let mut file: StorageFile = read_toml(path)?;
    let base = base_of(path);
    for source in &mut file.sources {
        if let Some(dir) = &mut source.path {
            resolve(&base, dir);
        }
    }
    if file.sources.is_empty() {
        bail!("{}: no [[sources]] listed", path.display());
    }
    Ok(file.sources)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// A sensor's keys (`mcloud authority sensor` writes them).
    pub sensor: Option<PathBuf>,
    /// A file holding an app's capability token (`mcloud authority app`).
    pub app: Option<PathBuf>,
    /// A directory with an administrator's certificate (`mcloud authority admin`).
    pub admin: Option<PathBuf>,
}

/// Writes a file only its owner may read.
pub fn write_secret(path: &Path, text: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

fn base_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let mut config: NodeConfig = read_toml(path)?;
        let base = base_of(path);
        resolve(&base, &mut config.data_dir);
        if let Some(catalog) = &mut config.catalog {
            resolve(&base, &mut catalog.credentials);
            for peer in &mut catalog.peers {
                resolve(&base, &mut peer.ca);
            }
            if let Some(storage) = &mut catalog.storage {
                resolve(&base, storage);
            }
            if catalog.partitions == 0 {
                bail!("{}: catalog partitions must be at least 1", path.display());
            }
            if !catalog.peers.is_empty() && !catalog.peers.iter().any(|p| p.id == catalog.node_id) {
                bail!(
                    "{}: catalog node_id {} is not in its peers list",
                    path.display(),
                    catalog.node_id
                );
            }
        }
        if let Some(cloud) = &mut config.cloud {
            resolve(&base, &mut cloud.credentials);
            resolve(&base, &mut cloud.catalog.ca);
            if let Some(policy) = &mut cloud.disclosure {
                resolve(&base, policy);
            }
            if let Some(storage) = &mut cloud.storage {
                resolve(&base, storage);
            }
            if let Some(robust) = &mut cloud.robust {
                resolve(&base, &mut robust.verify_key);
                for e in &mut robust.clouds {
                    resolve(&base, &mut e.ca);
                }
            }
            for e in &mut cloud.catalog_nodes {
                resolve(&base, &mut e.ca);
            }
            if cloud.parties == 0 || cloud.party >= cloud.parties {
                bail!(
                    "{}: cloud party {} is out of range for {} parties",
                    path.display(),
                    cloud.party,
                    cloud.parties
                );
            }
            if cloud.window_secs == 0 {
                bail!("{}: cloud window_secs must be at least 1", path.display());
            }
        }
        if let Some(elastic) = &config.elastic {
            if config.cloud.is_none() {
                bail!(
                    "{}: [elastic] configures the cloud role's workers; add a [cloud] section",
                    path.display()
                );
            }
            // Checked here so a bad value stops the node before it binds anything.
            elastic
                .to_config(Some(PathBuf::new()))
                .with_context(|| path.display().to_string())?;
        }
        if config.catalog.is_none() && config.cloud.is_none() {
            bail!(
                "{}: the node runs no role: add a [catalog] or a [cloud] section",
                path.display()
            );
        }
        Ok(config)
    }
}

impl Deployment {
    /// The sensor side of this deployment: its clouds, catalog and sensor keys, with flags
    /// that expire after `ttl` (what `mcloud sensor` and `mcloud bridge` upload through).
    pub fn uploader(&self, ttl: std::time::Duration) -> Result<mcloud_client::Uploader> {
        let uploader = mcloud_client::Uploader::new(
            self.cloud_endpoints()?,
            mcloud_catalog::CatalogClient::with_nodes(self.catalog_endpoints()?),
            self.catalog_parties()?,
            self.sensor_credentials()?,
            ttl,
        );
        Ok(if self.robust {
            uploader.robust(None)?
        } else {
            uploader
        })
    }

    pub fn load(path: &Path) -> Result<Deployment> {
        let mut d: Deployment = read_toml(path)?;
        let base = base_of(path);
        resolve(&base, &mut d.catalog.ca);
        for c in d.clouds.iter_mut().chain(&mut d.catalog_nodes) {
            resolve(&base, &mut c.ca);
        }
        let c = &mut d.credentials;
        for path in [&mut c.sensor, &mut c.app, &mut c.admin]
            .into_iter()
            .flatten()
        {
            resolve(&base, path);
        }
        if let Some(storage) = &mut d.storage {
            resolve(&base, storage);
        }
        if d.clouds.is_empty() {
            bail!("{}: no clouds listed", path.display());
        }
        Ok(d)
    }

    /// The storage's sources, from the file `storage` names.
    pub fn storage_sources(&self) -> Result<Vec<mcloud_store::source::SourceConfig>> {
        let path = self.storage.as_ref().context(
            "this deployment names no storage: add `storage = \"FILE\"` listing its [[sources]]",
        )?;
        load_storage(path)
    }

    /// An HTTPS client pinning every CA of the deployment, showing no credential.
    pub fn client(&self) -> Result<reqwest::Client> {
        Ok(mcloud_core::tls::client(&self.pinned()?)?)
    }

    /// The party of every catalog node (the primary first), as its CA names it.
    pub fn catalog_parties(&self) -> Result<Vec<u16>> {
        std::iter::once(&self.catalog)
            .chain(&self.catalog_nodes)
            .map(|e| {
                let pem = wait_for_ca(&e.ca)?;
                mcloud_core::auth::peer::ca_party(&pem)
                    .with_context(|| format!("{}: not a party CA", e.ca.display()))
            })
            .collect()
    }

    /// The sensor's keys named under `[credentials]`.
    pub fn sensor_credentials(&self) -> Result<mcloud_core::auth::authority::SensorCredentials> {
        let path = self.credentials.sensor.as_ref().context(
            "the deployment names no sensor keys: add `sensor = \"FILE\"` under [credentials]",
        )?;
        Ok(mcloud_core::auth::authority::SensorCredentials::load(path)?)
    }

    /// The clouds, each behind a client that pins its party's CA and shows the app token
    /// named under `[credentials]`.
    pub fn app_cloud_endpoints(&self) -> Result<Vec<mcloud_core::http::Endpoint>> {
        let path = self.credentials.app.as_ref().context(
            "the deployment names no app token: add `app = \"FILE\"` under [credentials]",
        )?;
        let token =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        self.clouds
            .iter()
            .map(|e| {
                let http = mcloud_core::tls::app_client(&[wait_for_ca(&e.ca)?], token.trim())?;
                Ok(mcloud_core::http::Endpoint::new(e.url.clone(), http))
            })
            .collect()
    }

    /// The clouds, each behind a client that pins its party's CA (a sensor adds its session).
    pub fn cloud_endpoints(&self) -> Result<Vec<mcloud_core::http::Endpoint>> {
        self.clouds.iter().map(|e| e.endpoint(None)).collect()
    }

    /// The catalog nodes (the primary first), each behind a client that pins its party's CA.
    pub fn catalog_endpoints(&self) -> Result<Vec<mcloud_core::http::Endpoint>> {
        self.catalog_list().map(|e| e.endpoint(None)).collect()
    }

    /// The catalog nodes with the administrator's certificate named under `[credentials]`.
    pub fn admin_catalog_endpoints(&self) -> Result<Vec<mcloud_core::http::Endpoint>> {
        let dir = self.credentials.admin.as_ref().context(
            "the deployment names no administrator: add `admin = \"DIR\"` under [credentials]",
        )?;
        let identity = mcloud_core::tls::NodeIdentity::load(dir)?;
        self.catalog_list()
            .map(|e| e.endpoint(Some(&identity)))
            .collect()
    }

    fn catalog_list(&self) -> impl Iterator<Item = &Endpoint> {
        std::iter::once(&self.catalog).chain(&self.catalog_nodes)
    }

    fn pinned(&self) -> Result<Vec<String>> {
        std::iter::once(&self.catalog)
            .chain(&self.catalog_nodes)
            .chain(&self.clouds)
            .map(|e| wait_for_ca(&e.ca))
            .collect()
    }

    /// Every catalog node's URL, the primary first.
    pub fn catalog_urls(&self) -> Vec<String> {
        std::iter::once(&self.catalog)
            .chain(&self.catalog_nodes)
            .map(|e| e.url.clone())
            .collect()
    }

    pub fn cloud_urls(&self) -> Vec<String> {
        self.clouds.iter().map(|c| c.url.clone()).collect()
    }
}

/// Reads a pinned CA, waiting a while for a peer that creates it on its first start.
pub fn wait_for_ca(path: &Path) -> Result<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match mcloud_core::tls::read_ca(path) {
            Ok(pem) => return Ok(pem),
            Err(e) if std::time::Instant::now() < until && !path.exists() => {
                tracing::info!("waiting for {}: {e}", path.display());
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("pinned CA {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(elastic: &str) -> Result<NodeConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.toml");
        let text = format!(
            r#"
data_dir = "data"
[cloud]
credentials = "c"
listen = "127.0.0.1:7100"
party = 0
parties = 3
catalog = {{ url = "https://127.0.0.1:7000", ca = "ca.pem" }}
{elastic}
"#
        );
        std::fs::write(&path, text)?;
        NodeConfig::load(&path)
    }

    #[test]
    fn without_an_elastic_section_the_workers_run_the_defaults() {
        let config = node("").unwrap();
        assert!(config.elastic.is_none());
        let elastic = ElasticSection::default().to_config(None).unwrap();
        let defaults = ElasticConfig::default();
        assert_eq!(elastic.buckets, defaults.buckets);
        assert_eq!(elastic.workers, defaults.workers);
        assert_eq!(elastic.period, defaults.period);
        assert_eq!(elastic.thresholds.uut, defaults.thresholds.uut);
        assert_eq!(elastic.thresholds.cooldown, defaults.thresholds.cooldown);
        assert!(elastic.worker_program.is_none());
    }

    #[test]
    fn the_elastic_section_sets_every_rule() {
        let config = node(
            r#"
[elastic]
buckets = 256
workers = 2
max_workers = 4
period_secs = 0.5
uut = 0.8
lut = 0.3
tut = 0.55
uit = 0.25
mit = 0.05
cooldown_secs = 10
checkpoint_secs = 0.25
provisioner = "os-process"
"#,
        )
        .unwrap();
        let section = config.elastic.unwrap();
        let elastic = section
            .to_config(Some(PathBuf::from("/usr/bin/mcloud")))
            .unwrap();
        assert_eq!(elastic.buckets, 256);
        assert_eq!(elastic.workers, 2);
        assert_eq!(elastic.period, Some(Duration::from_millis(500)));
        let t = &elastic.thresholds;
        assert_eq!(
            (t.uut, t.lut, t.tut, t.uit, t.mit),
            (0.8, 0.3, 0.55, 0.25, 0.05)
        );
        assert_eq!((t.min_workers, t.max_workers), (1, 4));
        assert_eq!(t.cooldown, Duration::from_secs(10));
        assert_eq!(elastic.checkpoint_period, Some(Duration::from_millis(250)));
        assert_eq!(
            elastic.worker_program,
            Some(PathBuf::from("/usr/bin/mcloud"))
        );
    }

    #[test]
    fn the_manager_can_be_switched_off() {
        let section = node("[elastic]\nmanager = false\nworkers = 3")
            .unwrap()
            .elastic
            .unwrap();
        let elastic = section.to_config(None).unwrap();
        assert_eq!(elastic.period, None);
        assert_eq!(elastic.workers, 3);
        let section = node("[elastic]\ncheckpoint_secs = 0")
            .unwrap()
            .elastic
            .unwrap();
        assert_eq!(section.to_config(None).unwrap().checkpoint_period, None);
    }

    #[test]
    fn bad_elastic_settings_are_refused_at_load() {
        for bad in [
            "lut = 0.7",
            "uut = 1.5",
            "buckets = 0",
            "workers = 0",
            "period_secs = 0",
            "period_secs = -1",
            "cooldown_secs = -2",
            "checkpoint_secs = -1",
            "min_workers = 5\nmax_workers = 2",
            "provisioner = \"kubernetes\"",
            "typo = 1",
        ] {
            let err = node(&format!("[elastic]\n{bad}")).err();
            assert!(err.is_some(), "accepted {bad:?}");
        }
    }

    #[test]
    fn the_example_nodes_load_with_the_default_elastic_settings() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/local");
        let defaults = ElasticConfig::default();
        for n in 0..3 {
            let config = NodeConfig::load(&dir.join(format!("node{n}.toml"))).unwrap();
            let elastic = config.elastic.expect("[elastic]").to_config(None).unwrap();
            assert_eq!(elastic.buckets, defaults.buckets);
            assert_eq!(elastic.workers, defaults.workers);
            assert_eq!(elastic.period, defaults.period);
            let (t, d) = (&elastic.thresholds, &defaults.thresholds);
            assert_eq!(
                (t.uut, t.lut, t.tut, t.uit, t.mit),
                (d.uut, d.lut, d.tut, d.uit, d.mit)
            );
            assert_eq!(
                (t.min_workers, t.max_workers),
                (d.min_workers, d.max_workers)
            );
            assert_eq!(t.cooldown, d.cooldown);
            assert!(elastic.worker_program.is_none());
            // The example's policy file spells out the built-in default.
            let cloud = config.cloud.expect("[cloud]");
            let policy = cloud.disclosure.expect("disclosure");
            assert_eq!(
                mcloud_core::disclosure::DisclosurePolicy::load(&policy).unwrap(),
                mcloud_core::disclosure::DisclosurePolicy::default()
            );
        }
    }

    #[test]
    fn the_example_storage_loads_for_the_deployment_and_every_node() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/local");
        let d = Deployment::load(&dir.join("deployment.toml")).unwrap();
        let sources = d.storage_sources().unwrap();
        assert_eq!(sources.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1, 2]);
        for s in &sources {
            s.validate().unwrap();
            // Relative to the file, not to wherever the command runs.
            assert!(s.path.as_ref().unwrap().starts_with(&dir));
        }
        for n in 0..4 {
            let config = NodeConfig::load(&dir.join(format!("node{n}.toml"))).unwrap();
            let storage = config.catalog.unwrap().storage.unwrap();
            assert_eq!(load_storage(&storage).unwrap(), sources);
            // Every cloud archives there.
            if let Some(cloud) = config.cloud {
                assert_eq!(load_storage(&cloud.storage.unwrap()).unwrap(), sources);
            }
        }
    }

    #[test]
    fn an_elastic_section_needs_a_cloud() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data_dir = \"d\"\n[catalog]\ncredentials = \"c\"\nlisten = \"127.0.0.1:7000\"\n[elastic]\nworkers = 2\n",
        )
        .unwrap();
        let err = NodeConfig::load(&path).unwrap_err();
        assert!(format!("{err:#}").contains("[cloud]"), "{err:#}");
    }
}
