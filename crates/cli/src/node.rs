//! `mcloud node --config node.toml`: one party's roles as real servers.

use crate::config::{wait_for_ca, NodeConfig};
use anyhow::{Context, Result};
use mcloud_catalog::{CatalogClient, FlagStore};
use mcloud_cloud::{CloudConfig, CloudNode};
use mcloud_core::server::serve;
use mcloud_core::tls::{self, NodeIdentity};
use std::path::Path;

pub async fn run(config_path: &Path) -> Result<()> {
    let config = NodeConfig::load(config_path)?;
    let mut names = tls::default_names();
    names.extend(config.names.iter().cloned());
    let identity = NodeIdentity::load_or_create(&config.data_dir.join("tls"), &names)?;
    let ca_path = config.data_dir.join("tls/ca.pem");
    let mut servers = Vec::new();
    if let Some(catalog) = &config.catalog {
        let store = FlagStore::open(&config.data_dir.join("catalog"))?;
        let server = serve(
            mcloud_catalog::service::router(store.clone(), Some(store)),
            catalog.listen,
            &identity,
        )
        .await?;
        eprintln!(
            "catalog listening on {} (peers pin {})",
            server.url(),
            ca_path.display()
        );
        servers.push(server);
    }
    if let Some(cloud) = &config.cloud {
        let http = tls::client(&[wait_for_ca(&cloud.catalog.ca)?])?;
        let node = CloudNode::open(
            &config.data_dir.join("cloud"),
            CloudConfig {
                party: cloud.party,
                parties: cloud.parties,
                window_secs: cloud.window_secs,
                grace_secs: cloud.grace_secs,
                ..CloudConfig::default()
            },
            CatalogClient::new(http, cloud.catalog.url.clone()),
        )
        .context("opening the cloud role")?;
        let server = serve(mcloud_cloud::service::router(node), cloud.listen, &identity).await?;
        eprintln!(
            "cloud {} of {} listening on {} (peers pin {})",
            cloud.party,
            cloud.parties,
            server.url(),
            ca_path.display()
        );
        servers.push(server);
    }
    shutdown_signal().await;
    eprintln!("shutting down");
    for server in servers {
        server.shutdown().await;
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
