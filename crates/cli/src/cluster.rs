//! All roles of a deployment in one process, each behind its own HTTPS server on loopback:
//! the demo, the benchmark and the end-to-end tests run the real protocol over real TLS.

use anyhow::{Context, Result};
use mcloud_catalog::{CatalogClient, CatalogConfig, CatalogNode, Peer};
use mcloud_client::Uploader;
use mcloud_cloud::elastic::ElasticConfig;
use mcloud_cloud::{CloudConfig, CloudNode};
use mcloud_collector::Collector;
use mcloud_core::auth::app::AppToken;
use mcloud_core::auth::authority::{Authority, NodeCredentials, SensorCredentials};
use mcloud_core::auth::peer::{PeerIdentity, Role};
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::disclosure::DisclosurePolicy;
use mcloud_core::http::Endpoint;
use mcloud_core::server::{bind, serve_on, RunningServer};
use mcloud_core::tls::{self, NodeIdentity};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub parties: u16,
    pub window_secs: u64,
    pub grace_secs: u64,
    pub dir: PathBuf,
}

/// What a local cluster runs besides its clouds' basics; `Default` is the common case.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub catalog: CatalogSpec,
    /// The clouds' pre-aggregation workers and their manager.
    pub elastic: ElasticConfig,
    /// Parties the authority enrols beyond those whose clouds run (parties `parties..`):
    /// members that have not started a cloud yet.
    pub extra_parties: u16,
    /// The clouds' disclosure policy.
    pub disclosure: DisclosurePolicy,
    /// The clouds' retention (None: [`mcloud_cloud::DEFAULT_RETENTION_SECS`]).
    pub retention_secs: Option<u64>,
    /// Robust mode: the clouds verify every report's proof together before it counts.
    pub robust: bool,
    /// The encrypted storage's sources: the voters free packets there, and
    /// [`LocalCluster::store_client`] writes there.
    pub storage: Vec<mcloud_store::source::SourceConfig>,
}

/// The replicated catalog of a local cluster.
#[derive(Clone, Debug)]
pub struct CatalogSpec {
    /// Catalog voters, each in-process behind its own TLS server (ids 1..=voters).
    pub voters: u16,
    /// Raft groups the flags keyspace is split into.
    pub partitions: u32,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// How long decided flags outlive their deadline and the clouds' settled times.
    pub keep_decided_ms: u64,
}

impl Default for CatalogSpec {
    fn default() -> Self {
        CatalogSpec {
            voters: 3,
            partitions: 1,
            snapshot_every: 5000,
            keep_decided_ms: mcloud_catalog::raft::node::KEEP_DECIDED_MS,
        }
    }
}

struct CatalogVoter {
    server: RunningServer,
    node: Arc<CatalogNode>,
    /// Expires files and frees their packets while this voter leads the masters.
    upkeep: tokio::task::JoinHandle<()>,
}

/// How often a local cluster's voters expire files and free packets: often, so a test
/// sees an expiry within a second or two of the date.
const LOCAL_UPKEEP_PERIOD: Duration = Duration::from_millis(500);

pub struct LocalCluster {
    pub spec: ClusterSpec,
    catalog_spec: CatalogSpec,
    catalog: Vec<Option<CatalogVoter>>,
    catalog_addrs: Vec<SocketAddr>,
    catalog_credentials: Vec<NodeCredentials>,
    clouds: Vec<Option<(RunningServer, Arc<CloudNode>)>>,
    cloud_addrs: Vec<SocketAddr>,
    cloud_credentials: Vec<NodeCredentials>,
    authority: Arc<Authority>,
    /// Pins every party's CA and shows no credential: health and status only.
    http: reqwest::Client,
    elastic: ElasticConfig,
    disclosure: DisclosurePolicy,
    retention_secs: Option<u64>,
    /// The clouds' shared verification key, in robust mode.
    verify_key: Option<mcloud_core::robust::VerifyKey>,
    storage: Vec<mcloud_store::source::SourceConfig>,
}

/// Until when the cluster's own app token is good: a day is longer than any run.
fn token_expiry() -> u64 {
    mcloud_core::auth::now_secs() + 86_400
}

/// The user who owns every house of a local deployment.
pub const OWNER: &str = "owner";

/// A second user of a local deployment, owning no house: whom the owner shares with.
pub const FRIEND: &str = "friend";

/// Houses the owner's default collector names (the DEBS 2014 data has 40).
pub const LOCAL_HOUSES: u32 = 64;

/// The sensor every local run uses: a gateway that replays a whole data set (any house).
pub const GATEWAY: SensorScope = SensorScope {
    sensor: 1,
    house: None,
    plugs: None,
};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl LocalCluster {
    /// A cluster with the defaults: three catalog voters, one partition, in-process workers.
    pub async fn start(spec: ClusterSpec) -> Result<LocalCluster> {
        Self::start_with(spec, ClusterOptions::default()).await
    }

    /// A cluster with the catalog and the clouds' pre-aggregation workers `options` describes.
    pub async fn start_with(spec: ClusterSpec, options: ClusterOptions) -> Result<LocalCluster> {
        let ClusterOptions {
            catalog: catalog_spec,
            elastic,
            extra_parties,
            disclosure,
            retention_secs,
            robust,
            storage,
        } = options;
        let names = tls::default_names();
        // The deployment's authority, in memory: every member is enrolled here at start.
        let authority = Authority::generate(spec.parties + extra_parties)?;
        let mut catalog_credentials = Vec::new();
        for voter in 0..catalog_spec.voters {
            let who = PeerIdentity {
                party: voter % spec.parties,
                role: Role::Voter,
                id: voter as u64 + 1,
            };
            catalog_credentials.push(authority.node(who, &names)?);
        }
        let mut cloud_credentials = Vec::new();
        for party in 0..spec.parties {
            let who = PeerIdentity {
                party,
                role: Role::Cloud,
                id: 0,
            };
            cloud_credentials.push(authority.node(who, &names)?);
        }
        let http = tls::client(&authority.party_cas())?;
        // Every voter names every other by address, so all listeners exist before any node.
        let listeners = (0..catalog_spec.voters)
            .map(|_| bind(loopback()))
            .collect::<Result<Vec<_>, _>>()?;
        let catalog_addrs = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let mut cluster = LocalCluster {
            spec,
            catalog_spec,
            catalog: Vec::new(),
            catalog_addrs,
            catalog_credentials,
            clouds: Vec::new(),
            cloud_addrs: Vec::new(),
            cloud_credentials,
            authority: Arc::new(authority),
            http,
            elastic,
            disclosure,
            retention_secs,
            verify_key: robust.then(mcloud_core::robust::VerifyKey::random),
            storage,
        };
        for (voter, listener) in listeners.into_iter().enumerate() {
            let started = cluster.start_catalog_voter(voter as u16, listener).await?;
            cluster.catalog.push(Some(started));
        }
        cluster
            .wait_for_catalog_leaders(Duration::from_secs(30))
            .await?;
        // Robust clouds call each other, so every address is known before any cloud starts.
        let listeners = (0..cluster.spec.parties)
            .map(|_| bind(loopback()))
            .collect::<Result<Vec<_>, _>>()?;
        cluster.cloud_addrs = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        for (party, listener) in listeners.into_iter().enumerate() {
            let started = cluster.start_cloud(party as u16, listener).await?;
            cluster.clouds.push(Some(started));
        }
        Ok(cluster)
    }

    fn catalog_peers(&self) -> BTreeMap<u64, Peer> {
        self.catalog_addrs
            .iter()
            .zip(&self.catalog_credentials)
            .enumerate()
            .map(|(i, (addr, credentials))| {
                (
                    i as u64 + 1,
                    Peer {
                        url: format!("https://{addr}"),
                        ca_pem: credentials.identity.ca_pem.clone(),
                    },
                )
            })
            .collect()
    }

    async fn start_catalog_voter(
        &self,
        voter: u16,
        listener: std::net::TcpListener,
    ) -> Result<CatalogVoter> {
        let credentials = &self.catalog_credentials[voter as usize];
        let mut config = CatalogConfig::new(
            voter as u64 + 1,
            self.spec.dir.join(format!("catalog{voter}")),
            self.catalog_peers(),
            credentials.identity.clone(),
        );
        config.partitions = self.catalog_spec.partitions;
        config.snapshot_every = self.catalog_spec.snapshot_every;
        config.keep_decided_ms = self.catalog_spec.keep_decided_ms;
        // A restarted voter's files are released only once its old Raft tasks have finished.
        let started = Instant::now();
        let node = loop {
            match CatalogNode::start(config.clone()).await {
                Ok(node) => break node,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    tracing::debug!("catalog voter {voter} not ready to reopen: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("starting catalog voter {voter}")),
            }
        };
        let server = serve_on(
            listener,
            mcloud_catalog::raft::router(node.clone(), credentials.node_auth()),
            &credentials.identity,
            credentials.roots()?,
        )
        .await?;
        let freer = if self.storage.is_empty() {
            None
        } else {
            let sources = mcloud_store::source::Sources::open(&self.storage)?;
            Some(mcloud_catalog::masters::freer(Arc::new(sources)))
        };
        let upkeep =
            mcloud_catalog::masters::spawn_upkeep(node.clone(), freer, LOCAL_UPKEEP_PERIOD);
        Ok(CatalogVoter {
            server,
            node,
            upkeep,
        })
    }

    /// Waits until every partition has a leader that the running voters agree on.
    pub async fn wait_for_catalog_leaders(&self, give_up: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if (0..self.catalog_spec.partitions).all(|p| self.catalog_leader(p).is_some()) {
                return Ok(());
            }
            if started.elapsed() > give_up {
                anyhow::bail!("the catalog elected no leader within {give_up:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The voter (0-based) that leads `partition`, as the running voters see it.
    pub fn catalog_leader(&self, partition: u32) -> Option<u16> {
        let mut leader = None;
        for v in self.catalog.iter().flatten() {
            let raft = v.node.raft(partition)?;
            let m = raft.metrics().borrow().clone();
            if m.state == mcloud_catalog::raft::ServerState::Leader {
                leader = Some((m.current_leader? - 1) as u16);
            }
        }
        leader
    }

    /// The running catalog node of voter `voter` (0-based), if it is running.
    pub fn catalog_node(&self, voter: u16) -> Option<Arc<CatalogNode>> {
        self.catalog
            .get(voter as usize)?
            .as_ref()
            .map(|v| v.node.clone())
    }

    pub fn catalog_voters(&self) -> u16 {
        self.catalog_spec.voters
    }

    /// Stops catalog voter `voter` (its server and Raft groups; its log and state stay).
    pub async fn stop_catalog(&mut self, voter: u16) {
        if let Some(v) = self.catalog[voter as usize].take() {
            v.upkeep.abort();
            v.server.shutdown().await;
            v.node.shutdown().await;
        }
    }

    /// Restarts catalog voter `voter` on its old address, from its log and state.
    pub async fn restart_catalog(&mut self, voter: u16) -> Result<()> {
        self.stop_catalog(voter).await;
        let listener = bind(self.catalog_addrs[voter as usize])?;
        let started = self.start_catalog_voter(voter, listener).await?;
        self.catalog[voter as usize] = Some(started);
        Ok(())
    }

    fn cloud_dir(&self, party: u16) -> PathBuf {
        self.spec.dir.join(format!("cloud{party}"))
    }

    async fn start_cloud(
        &self,
        party: u16,
        listener: std::net::TcpListener,
    ) -> Result<(RunningServer, Arc<CloudNode>)> {
        let credentials = &self.cloud_credentials[party as usize];
        let robust = match &self.verify_key {
            Some(key) => Some(mcloud_cloud::robust::RobustConfig {
                verify_key: key.clone(),
                clouds: (0..self.spec.parties)
                    .map(|p| {
                        Ok(Endpoint::new(
                            self.cloud_urls()[p as usize].clone(),
                            self.pinned(p, Some(&credentials.identity))?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?,
            }),
            None => None,
        };
        let catalog_endpoints = self.catalog_endpoints(Some(&credentials.identity))?;
        let archive = if self.storage.is_empty() {
            None
        } else {
            let sources = mcloud_store::source::Sources::open(&self.storage)?;
            Some(mcloud_cloud::store::Archive::new(
                mcloud_store::client::StoreClient::for_cloud(
                    catalog_endpoints.clone(),
                    Arc::new(sources),
                ),
                party,
            ))
        };
        let config = CloudConfig {
            party,
            parties: self.spec.parties,
            window_secs: self.spec.window_secs,
            grace_secs: self.spec.grace_secs,
            elastic: self.elastic.clone(),
            disclosure: self.disclosure.clone(),
            retention_secs: self
                .retention_secs
                .unwrap_or(mcloud_cloud::DEFAULT_RETENTION_SECS),
            robust,
            archive,
            ..CloudConfig::default()
        };
        let catalog = CatalogClient::with_nodes(catalog_endpoints);
        let node = CloudNode::open(&self.cloud_dir(party), config, catalog.clone())
            .await
            .with_context(|| format!("opening cloud {party}"))?;
        let auth = credentials.node_auth();
        mcloud_cloud::service::watch_revocations(catalog, &auth);
        let server = serve_on(
            listener,
            mcloud_cloud::service::router(node.clone(), auth),
            &credentials.identity,
            credentials.roots()?,
        )
        .await?;
        Ok((server, node))
    }

    /// Stops cloud `party` (its server and its in-memory state; the values table stays).
    pub async fn stop_cloud(&mut self, party: u16) {
        if let Some((server, node)) = self.clouds[party as usize].take() {
            server.shutdown().await;
            drop(node);
            // The flag poller holds the node only between ticks; give it one to let go, so the
            // values table can be reopened.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Restarts cloud `party` on its old address, from its values table.
    pub async fn restart_cloud(&mut self, party: u16) -> Result<()> {
        self.stop_cloud(party).await;
        let addr = self.cloud_addrs[party as usize];
        let started = self.start_cloud(party, bind(addr)?).await?;
        self.clouds[party as usize] = Some(started);
        Ok(())
    }

    /// The running node of cloud `party`, if it is up.
    pub fn cloud(&self, party: u16) -> Option<Arc<CloudNode>> {
        self.clouds
            .get(party as usize)
            .and_then(|c| c.as_ref())
            .map(|(_, node)| node.clone())
    }

    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The first catalog voter's URL; every voter serves the whole flags API.
    pub fn catalog_url(&self) -> String {
        format!("https://{}", self.catalog_addrs[0])
    }

    pub fn catalog_urls(&self) -> Vec<String> {
        self.catalog_addrs
            .iter()
            .map(|a| format!("https://{a}"))
            .collect()
    }

    pub fn cloud_urls(&self) -> Vec<String> {
        self.cloud_addrs
            .iter()
            .map(|a| format!("https://{a}"))
            .collect()
    }

    /// The deployment's authority (tests enrol more members with it).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// A catalog client with cloud `party`'s certificate (any enrolled party, running or
    /// not): it reads flags and bucket maps and writes `party`'s map.
    pub fn cloud_catalog_client(&self, party: u16) -> Result<CatalogClient> {
        let who = PeerIdentity {
            party,
            role: Role::Cloud,
            id: 0,
        };
        let credentials = match self.cloud_credentials.get(party as usize) {
            Some(c) => c.clone(),
            None => self.authority.node(who, &[])?,
        };
        Ok(CatalogClient::with_nodes(
            self.catalog_endpoints(Some(&credentials.identity))?,
        ))
    }

    /// A client that trusts only `party`'s CA and presents `identity`, if any.
    fn pinned(&self, party: u16, identity: Option<&NodeIdentity>) -> Result<reqwest::Client> {
        let ca = [self.authority.parties[party as usize].ca.ca_pem()];
        Ok(match identity {
            Some(i) => i.client(&ca)?,
            None => tls::client(&ca)?,
        })
    }

    /// The catalog voters, each behind a client pinned to its party's CA.
    fn catalog_endpoints(&self, identity: Option<&NodeIdentity>) -> Result<Vec<Endpoint>> {
        self.catalog_urls()
            .into_iter()
            .zip(self.catalog_parties())
            .map(|(url, party)| Ok(Endpoint::new(url, self.pinned(party, identity)?)))
            .collect()
    }

    /// The clouds in party order, each behind a client pinned to its party's CA.
    pub fn cloud_endpoints(&self) -> Result<Vec<Endpoint>> {
        (0..self.spec.parties)
            .map(|p| {
                Ok(Endpoint::new(
                    self.cloud_urls()[p as usize].clone(),
                    self.pinned(p, None)?,
                ))
            })
            .collect()
    }

    fn gateway_sessions(&self) -> Result<Arc<mcloud_client::SensorSessions>> {
        Ok(Arc::new(mcloud_client::SensorSessions::new(
            self.sensor_credentials(GATEWAY),
            self.cloud_endpoints()?,
        )))
    }

    /// The catalog as the gateway sensor sees it (its sessions, its own flags).
    pub fn catalog_client(&self) -> Result<CatalogClient> {
        Ok(CatalogClient::with_nodes(self.catalog_endpoints(None)?)
            .with_credentials(self.gateway_sessions()?, self.catalog_parties()))
    }

    /// The catalog as the gateway sensor sees it through voter `voter` alone.
    pub fn voter_catalog_client(&self, voter: u16) -> Result<CatalogClient> {
        let mut endpoints = self.catalog_endpoints(None)?;
        let party = self.catalog_parties()[voter as usize];
        Ok(CatalogClient::new(endpoints.swap_remove(voter as usize))
            .with_credentials(self.gateway_sessions()?, vec![party]))
    }

    /// The party of each catalog voter, in voter order.
    pub fn catalog_parties(&self) -> Vec<u16> {
        self.catalog_credentials
            .iter()
            .map(|c| c.who.party)
            .collect()
    }

    /// Keys for a sensor with `scope`, one per party.
    pub fn sensor_credentials(&self, scope: SensorScope) -> SensorCredentials {
        self.authority.sensor(scope)
    }

    /// The gateway sensor's uploader.
    pub fn uploader(&self, ttl: Duration) -> Result<Uploader> {
        self.uploader_for(GATEWAY, ttl)
    }

    pub fn uploader_for(&self, scope: SensorScope, ttl: Duration) -> Result<Uploader> {
        let uploader = Uploader::new(
            self.cloud_endpoints()?,
            CatalogClient::with_nodes(self.catalog_endpoints(None)?),
            self.catalog_parties(),
            self.sensor_credentials(scope),
            ttl,
        );
        Ok(if self.is_robust() {
            uploader.robust(None)?
        } else {
            uploader
        })
    }

    /// True when the clouds run robust mode (every sensor must send robust reports).
    pub fn is_robust(&self) -> bool {
        self.verify_key.is_some()
    }

    /// The deployment collector's token: every house, every query kind, for a day, seen in
    /// the disclosure policy's other-users scope (aggregates only).
    pub fn app_token(&self) -> Result<AppToken> {
        Ok(self
            .authority
            .tokens
            .issue_collector("collector", token_expiry())?)
    }

    /// The token of the user who owns `houses` (the local deployment's houses all belong to
    /// [`OWNER`]): its own plugs at full granularity, for a day.
    pub fn owner_token(&self, houses: impl IntoIterator<Item = u32>) -> Result<AppToken> {
        let houses: Vec<u32> = houses.into_iter().collect();
        Ok(self
            .authority
            .tokens
            .issue_owner(OWNER, &houses, token_expiry())?)
    }

    /// A token of `user` (who owns no house) used by app `app`, for a day: what another
    /// user's app shows the storage.
    pub fn user_token(&self, user: &str, app: Option<&str>) -> Result<AppToken> {
        let token = self
            .authority
            .tokens
            .issue_owner(user, &[], token_expiry())?;
        Ok(match app {
            Some(app) => token.attenuate(
                &self.authority.tokens.root(),
                &mcloud_core::auth::app::Attenuation {
                    app: Some(app.into()),
                    ..Default::default()
                },
            )?,
            None => token,
        })
    }

    /// The storage as the holder of `token` sees it: the voters as masters, the cluster's
    /// sources for data.
    pub fn store_client(&self, token: &AppToken) -> Result<mcloud_store::client::StoreClient> {
        let masters = self
            .catalog_urls()
            .into_iter()
            .zip(self.catalog_parties())
            .map(|(url, party)| {
                let ca = [self.authority.parties[party as usize].ca.ca_pem()];
                Ok(Endpoint::new(url, tls::app_client(&ca, &token.0)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let sources = mcloud_store::source::Sources::open(&self.storage)?;
        Ok(mcloud_store::client::StoreClient::new(
            masters,
            Arc::new(sources),
        ))
    }

    /// A client that shows `token` to the clouds.
    pub fn app_client(&self, token: &AppToken) -> Result<reqwest::Client> {
        Ok(tls::app_client(&self.authority.party_cas(), &token.0)?)
    }

    /// The owner's collector over houses 0 to [`LOCAL_HOUSES`] − 1.
    pub fn collector(&self) -> Result<Collector> {
        self.collector_as(&self.owner_token(0..LOCAL_HOUSES)?)
    }

    /// A collector showing `token`, each cloud pinned to its party's CA.
    pub fn collector_as(&self, token: &AppToken) -> Result<Collector> {
        let clouds = (0..self.spec.parties)
            .map(|p| {
                let ca = self.authority.parties[p as usize].ca.ca_pem();
                Ok(Endpoint::new(
                    self.cloud_urls()[p as usize].clone(),
                    tls::app_client(&[ca], &token.0)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Collector::new(clouds))
    }

    /// The catalog as party `party`'s administrator sees it (membership, revocations).
    pub fn admin_catalog_client(&self, party: u16) -> Result<CatalogClient> {
        let who = PeerIdentity {
            party,
            role: Role::Admin,
            id: 0,
        };
        let admin = self.authority.node(who, &[])?;
        Ok(CatalogClient::with_nodes(
            self.catalog_endpoints(Some(&admin.identity))?,
        ))
    }

    /// A client with party `party`'s administrator certificate (catalog membership).
    pub fn admin_client(&self, party: u16) -> Result<reqwest::Client> {
        let who = PeerIdentity {
            party,
            role: Role::Admin,
            id: 0,
        };
        let admin = self.authority.node(who, &[])?;
        Ok(admin.identity.client(admin.party_cas())?)
    }

    /// Writes a `deployment.toml` for this cluster (URLs, each party's CA, and the gateway
    /// sensor's keys, the owner's and the collector's tokens and party 0's administrator
    /// beside it), so separate processes (`mcloud
    /// sensor`, `query`, `analytics`) can reach it; returns its path.
    pub fn write_deployment(&self) -> Result<PathBuf> {
        let dir = &self.spec.dir;
        let trust = dir.join("trust");
        for (party, pem) in self.authority.party_cas().iter().enumerate() {
            let path = trust.join(format!("party{party}.pem"));
            std::fs::create_dir_all(&trust)?;
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        self.sensor_credentials(GATEWAY)
            .save(&trust.join("sensor.toml"))?;
        crate::config::write_secret(&trust.join("collector.token"), &self.app_token()?.0)?;
        let owner = self.owner_token(0..LOCAL_HOUSES)?;
        crate::config::write_secret(&trust.join("owner.token"), &owner.0)?;
        let admin = PeerIdentity {
            party: 0,
            role: Role::Admin,
            id: 0,
        };
        self.authority
            .node(admin, &[])?
            .save(&trust.join("admin"))?;
        let catalog = self.catalog_urls();
        let parties = self.catalog_parties();
        let endpoint = |voter: usize| {
            format!(
                "{{ url = \"{}\", ca = \"trust/party{}.pem\" }}",
                catalog[voter], parties[voter]
            )
        };
        let others: Vec<String> = (1..catalog.len()).map(endpoint).collect();
        let mut text = format!(
            "catalog = {}\ncatalog_nodes = [{}]\nrobust = {}\n\n[credentials]\nsensor = \"trust/sensor.toml\"\napp = \"trust/owner.token\"\nadmin = \"trust/admin\"\n\n",
            endpoint(0),
            others.join(", "),
            self.is_robust()
        );
        for (party, url) in self.cloud_urls().iter().enumerate() {
            text += &format!("[[clouds]]\nurl = \"{url}\"\nca = \"trust/party{party}.pem\"\n");
        }
        let path = dir.join("deployment.toml");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The clouds' disclosure policy.
    pub fn disclosure(&self) -> &DisclosurePolicy {
        &self.disclosure
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    pub async fn shutdown(mut self) {
        for party in 0..self.spec.parties {
            self.stop_cloud(party).await;
        }
        for voter in 0..self.catalog_spec.voters {
            self.stop_catalog(voter).await;
        }
    }
}
