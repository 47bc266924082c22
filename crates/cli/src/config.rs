//! Configuration files: `node.toml` for `mcloud node`, `deployment.toml` for the sensor and
//! the collector. Relative paths are taken from the file's own directory.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
}

/// A catalog voter. With no `peers` the catalog is this one node; otherwise `peers` lists
/// every initial voter (this node too) and each partition's voters are chosen among them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRole {
    pub listen: SocketAddr,
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
}

fn default_window() -> u64 {
    60
}

/// A peer: its URL and the CA certificate pinned for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub url: String,
    pub ca: PathBuf,
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
            for peer in &mut catalog.peers {
                resolve(&base, &mut peer.ca);
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
            resolve(&base, &mut cloud.catalog.ca);
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
    pub fn load(path: &Path) -> Result<Deployment> {
        let mut d: Deployment = read_toml(path)?;
        let base = base_of(path);
        resolve(&base, &mut d.catalog.ca);
        for c in d.clouds.iter_mut().chain(&mut d.catalog_nodes) {
            resolve(&base, &mut c.ca);
        }
        if d.clouds.is_empty() {
            bail!("{}: no clouds listed", path.display());
        }
        Ok(d)
    }

    /// An HTTPS client pinning every CA of the deployment.
    pub fn client(&self) -> Result<reqwest::Client> {
        let mut pems = Vec::new();
        for e in std::iter::once(&self.catalog)
            .chain(&self.catalog_nodes)
            .chain(&self.clouds)
        {
            pems.push(wait_for_ca(&e.ca)?);
        }
        Ok(mcloud_core::tls::client(&pems)?)
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
