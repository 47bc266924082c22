//! `mcloud node --config node.toml`: one party's roles as real servers.

use crate::config::{wait_for_ca, NodeConfig, ProvisionerKind};
use anyhow::{Context, Result};
use mcloud_catalog::{CatalogClient, CatalogConfig, CatalogNode, Peer};
use mcloud_cloud::{CloudConfig, CloudNode};
use mcloud_core::auth::authority::NodeCredentials;
use mcloud_core::server::{bind, serve, serve_on};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub async fn run(config_path: &Path) -> Result<()> {
    let config = NodeConfig::load(config_path)?;
    let mut servers = Vec::new();
    let mut catalog_node = None;
    if let Some(catalog) = &config.catalog {
        let credentials = NodeCredentials::load(&catalog.credentials)
            .with_context(|| format!("voter credentials {}", catalog.credentials.display()))?;
        let identity = credentials.identity.clone();
        let listener = bind(catalog.listen)?;
        let mut peers = BTreeMap::new();
        for p in &catalog.peers {
            let ca_pem = if p.id == catalog.node_id {
                identity.ca_pem.clone()
            } else {
                wait_for_ca(&p.ca)?
            };
            peers.insert(
                p.id,
                Peer {
                    url: p.url.clone(),
                    ca_pem,
                },
            );
        }
        if peers.is_empty() {
            peers.insert(
                catalog.node_id,
                Peer {
                    url: format!("https://{}", listener.local_addr()?),
                    ca_pem: identity.ca_pem.clone(),
                },
            );
        }
        let mut catalog_config = CatalogConfig::new(
            catalog.node_id,
            config.data_dir.join("catalog"),
            peers,
            identity.clone(),
        );
        catalog_config.partitions = catalog.partitions;
        catalog_config.join = catalog.join;
        if catalog.keep_decided_secs < crate::config::MIN_KEEP_DECIDED_SECS
            || catalog.keep_decided_secs > u64::MAX / 1000
        {
            anyhow::bail!(
                "keep_decided_secs = {} is below the least of {} s or too large",
                catalog.keep_decided_secs,
                crate::config::MIN_KEEP_DECIDED_SECS
            );
        }
        catalog_config.keep_decided_ms = catalog.keep_decided_secs * 1000;
        let node = CatalogNode::start(catalog_config)
            .await
            .context("starting the catalog role")?;
        let server = serve_on(
            listener,
            mcloud_catalog::raft::router(node.clone(), credentials.node_auth()),
            &identity,
            credentials.roots()?,
        )
        .await?;
        eprintln!(
            "catalog node {} ({} partition(s), {}) listening on {}",
            catalog.node_id,
            catalog.partitions,
            credentials.who,
            server.url(),
        );
        servers.push(server);
        let freer = match &catalog.storage {
            Some(path) => {
                let sources = crate::config::load_storage(path)?;
                let sources = mcloud_store::source::Sources::open(&sources)
                    .with_context(|| format!("opening the sources of {}", path.display()))?;
                Some(mcloud_catalog::masters::freer(Arc::new(sources)))
            }
            None => None,
        };
        mcloud_catalog::masters::spawn_upkeep(
            node.clone(),
            freer,
            mcloud_catalog::masters::UPKEEP_PERIOD,
        );
        catalog_node = Some(node);
    }
    if let Some(cloud) = &config.cloud {
        let credentials = NodeCredentials::load(&cloud.credentials)
            .with_context(|| format!("cloud credentials {}", cloud.credentials.display()))?;
        // Each catalog node behind a client that pins its party's CA and shows this cloud's
        // certificate.
        let catalog_nodes = std::iter::once(&cloud.catalog)
            .chain(&cloud.catalog_nodes)
            .map(|e| e.endpoint(Some(&credentials.identity)))
            .collect::<Result<Vec<_>>>()?;
        let archive = match &cloud.storage {
            Some(path) => {
                let sources =
                    mcloud_store::source::Sources::open(&crate::config::load_storage(path)?)?;
                Some(mcloud_cloud::store::Archive::new(
                    mcloud_store::client::StoreClient::for_cloud(
                        catalog_nodes.clone(),
                        Arc::new(sources),
                    ),
                    cloud.party,
                ))
            }
            None => None,
        };
        let catalog = CatalogClient::with_nodes(catalog_nodes);
        let section = config.elastic.unwrap_or_default();
        let program = if section.provisioner == ProvisionerKind::OsProcess {
            Some(std::env::current_exe().context("locating the mcloud executable for workers")?)
        } else {
            None
        };
        let elastic = section.to_config(program)?;
        let disclosure = match &cloud.disclosure {
            Some(path) => mcloud_core::disclosure::DisclosurePolicy::load(path)?,
            None => Default::default(),
        };
        let robust = match &cloud.robust {
            Some(section) => Some(section.to_config(&credentials.identity)?),
            None => None,
        };
        let node = CloudNode::open(
            &config.data_dir.join("cloud"),
            CloudConfig {
                party: cloud.party,
                parties: cloud.parties,
                window_secs: cloud.window_secs,
                grace_secs: cloud.grace_secs,
                elastic,
                disclosure,
                retention_secs: cloud.retention_secs,
                robust,
                archive,
                ..CloudConfig::default()
            },
            catalog.clone(),
        )
        .await
        .context("opening the cloud role")?;
        let auth = credentials.node_auth();
        mcloud_cloud::service::watch_revocations(catalog, &auth);
        let server = serve(
            mcloud_cloud::service::router(node, auth),
            cloud.listen,
            &credentials.identity,
            credentials.roots()?,
        )
        .await?;
        eprintln!(
            "cloud {} of {} ({}) listening on {}",
            cloud.party,
            cloud.parties,
            credentials.who,
            server.url(),
        );
        servers.push(server);
    }
    shutdown_signal().await;
    eprintln!("shutting down");
    for server in servers {
        server.shutdown().await;
    }
    if let Some(node) = catalog_node {
        node.shutdown().await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
