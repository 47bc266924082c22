//! All roles of a deployment in one process, each behind its own HTTPS server on loopback:
//! the demo, the benchmark and the end-to-end tests run the real protocol over real TLS.

use anyhow::{Context, Result};
use mcloud_catalog::{CatalogClient, FlagStore};
use mcloud_client::Uploader;
use mcloud_cloud::elastic::ElasticConfig;
use mcloud_cloud::{CloudConfig, CloudNode};
use mcloud_collector::Collector;
use mcloud_core::server::{serve, RunningServer};
use mcloud_core::tls::{self, NodeIdentity};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub parties: u16,
    pub window_secs: u64,
    pub grace_secs: u64,
    pub dir: PathBuf,
}

pub struct LocalCluster {
    pub spec: ClusterSpec,
    catalog: RunningServer,
    clouds: Vec<Option<(RunningServer, Arc<CloudNode>)>>,
    cloud_addrs: Vec<SocketAddr>,
    identities: Vec<NodeIdentity>,
    http: reqwest::Client,
    elastic: ElasticConfig,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl LocalCluster {
    pub async fn start(spec: ClusterSpec) -> Result<LocalCluster> {
        LocalCluster::start_with(spec, ElasticConfig::default()).await
    }

    /// Starts a cluster whose clouds run their pre-aggregation workers as `elastic` says.
    pub async fn start_with(spec: ClusterSpec, elastic: ElasticConfig) -> Result<LocalCluster> {
        let names = tls::default_names();
        let catalog_identity = NodeIdentity::load_or_create(&spec.dir.join("catalog/tls"), &names)?;
        let mut identities = vec![catalog_identity.clone()];
        for party in 0..spec.parties {
            identities.push(NodeIdentity::load_or_create(
                &spec.dir.join(format!("cloud{party}/tls")),
                &names,
            )?);
        }
        let pinned: Vec<String> = identities.iter().map(|i| i.ca_pem.clone()).collect();
        let http = tls::client(&pinned)?;
        let store = FlagStore::open(&spec.dir.join("catalog"))?;
        let catalog = serve(
            mcloud_catalog::service::router(store.clone(), Some(store)),
            loopback(),
            &catalog_identity,
        )
        .await?;
        let mut cluster = LocalCluster {
            spec,
            catalog,
            clouds: Vec::new(),
            cloud_addrs: Vec::new(),
            identities,
            http,
            elastic,
        };
        for party in 0..cluster.spec.parties {
            let (server, node) = cluster.start_cloud(party, loopback()).await?;
            cluster.cloud_addrs.push(server.addr);
            cluster.clouds.push(Some((server, node)));
        }
        Ok(cluster)
    }

    fn cloud_dir(&self, party: u16) -> PathBuf {
        self.spec.dir.join(format!("cloud{party}"))
    }

    async fn start_cloud(
        &self,
        party: u16,
        addr: SocketAddr,
    ) -> Result<(RunningServer, Arc<CloudNode>)> {
        let config = CloudConfig {
            party,
            parties: self.spec.parties,
            window_secs: self.spec.window_secs,
            grace_secs: self.spec.grace_secs,
            elastic: self.elastic.clone(),
            ..CloudConfig::default()
        };
        let node = CloudNode::open(&self.cloud_dir(party), config, self.catalog_client())
            .with_context(|| format!("opening cloud {party}"))?;
        let server = serve(
            mcloud_cloud::service::router(node.clone()),
            addr,
            &self.identities[party as usize + 1],
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
        let started = self.start_cloud(party, addr).await?;
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

    pub fn catalog_url(&self) -> String {
        self.catalog.url()
    }

    pub fn cloud_urls(&self) -> Vec<String> {
        self.cloud_addrs
            .iter()
            .map(|a| format!("https://{a}"))
            .collect()
    }

    pub fn catalog_client(&self) -> CatalogClient {
        CatalogClient::new(self.http.clone(), self.catalog_url())
    }

    pub fn uploader(&self, ttl: Duration) -> Uploader {
        Uploader::new(
            self.http.clone(),
            self.cloud_urls(),
            self.catalog_client(),
            ttl,
        )
    }

    pub fn collector(&self) -> Collector {
        Collector::new(self.http.clone(), self.cloud_urls())
    }

    /// Writes a `deployment.toml` for this cluster (URLs and pinned CAs), so separate
    /// processes (`mcloud sensor`, `query`, `analytics`) can reach it; returns its path.
    pub fn write_deployment(&self) -> Result<PathBuf> {
        let dir = &self.spec.dir;
        let mut text = format!(
            "catalog = {{ url = \"{}\", ca = \"catalog/tls/ca.pem\" }}\n",
            self.catalog_url()
        );
        for (party, url) in self.cloud_urls().iter().enumerate() {
            text += &format!("[[clouds]]\nurl = \"{url}\"\nca = \"cloud{party}/tls/ca.pem\"\n");
        }
        let path = dir.join("deployment.toml");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    pub async fn shutdown(mut self) {
        for party in 0..self.spec.parties {
            self.stop_cloud(party).await;
        }
        self.catalog.shutdown().await;
    }
}
