//! `mcloud access`: a house owner's access modifiers — the friends whose apps may read the
//! aggregates of the owner's houses, whether every other user's apps may, and the apps that
//! may read none of them. Sent with the owner's own token, which also names the houses.

use crate::config::{wait_for_ca, Deployment};
use anyhow::{bail, Context, Result};
use clap::Args;
use mcloud_catalog::raft::AccessRequest;
use mcloud_core::http::post;
use mcloud_core::paths::ACCESS_PATH;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AccessArgs {
    #[arg(long)]
    pub deployment: PathBuf,
    /// The owner's own token (not one narrowed for an app).
    #[arg(long)]
    pub token: PathBuf,
    /// A user whose apps may read the houses' aggregates (repeat for more).
    #[arg(long = "friend")]
    pub friends: Vec<String>,
    /// Every other user's apps may read the houses' aggregates too.
    #[arg(long)]
    pub others: bool,
    /// An app (by the name its token gives) that may read none of the houses (repeat for more).
    #[arg(long = "deny-app")]
    pub denied_apps: Vec<String>,
}

/// Replaces the owner's rules at the catalog; every cloud applies them within a second.
pub async fn run(args: AccessArgs) -> Result<()> {
    let deployment = Deployment::load(&args.deployment)?;
    let token = std::fs::read_to_string(&args.token)
        .with_context(|| format!("reading {}", args.token.display()))?;
    let request = AccessRequest {
        friends: args.friends,
        others: args.others,
        denied_apps: args.denied_apps,
    };
    let mut last = None;
    for node in std::iter::once(&deployment.catalog).chain(&deployment.catalog_nodes) {
        let http = mcloud_core::tls::app_client(&[wait_for_ca(&node.ca)?], token.trim())?;
        let url = format!("{}{ACCESS_PATH}", node.url.trim_end_matches('/'));
        match post::<_, ()>(&http, &url, &request).await {
            Ok(()) => {
                eprintln!("access rules stored");
                return Ok(());
            }
            Err(e) if e.is_retryable() => last = Some(e),
            Err(e) => bail!("{e}"),
        }
    }
    bail!(
        "no catalog node took the rules: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )
}
