//! `mcloud audit`: reads a cloud's audit log of disclosures (who learnt what, when) with the
//! deployment's administrator certificate; a cloud shows its log to its own party's
//! administrators only.

use crate::config::Deployment;
use anyhow::{bail, Context, Result};
use clap::Args;
use mcloud_cloud::audit::Disclosure;
use mcloud_core::paths::AUDIT_PATH;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct AuditArgs {
    /// The deployment file naming the clouds and the administrator's certificate.
    #[arg(long)]
    pub deployment: PathBuf,
    /// The cloud to read (default: the administrator's own party).
    #[arg(long)]
    pub party: Option<u16>,
    /// Only disclosures to this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only disclosures to this app.
    #[arg(long)]
    pub app: Option<String>,
    /// Only disclosures that revealed something of this house.
    #[arg(long)]
    pub house: Option<u32>,
    /// Only disclosures at or after this time (Unix seconds).
    #[arg(long)]
    pub since: Option<u64>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: AuditArgs) -> Result<()> {
    let deployment = Deployment::load(&args.deployment)?;
    let dir = deployment.credentials.admin.as_ref().context(
        "the deployment names no administrator: add `admin = \"DIR\"` under [credentials]",
    )?;
    let identity = mcloud_core::tls::NodeIdentity::load(dir)?;
    let own = mcloud_core::auth::peer::ca_party(&identity.ca_pem)?;
    let party = args.party.unwrap_or(own);
    let Some(cloud) = deployment.clouds.get(party as usize) else {
        bail!(
            "the deployment has {} clouds; there is no party {party}",
            deployment.clouds.len()
        );
    };
    let endpoint = cloud.endpoint(Some(&identity))?;
    let mut query = vec![("limit", args.limit.to_string())];
    let optional = [
        ("user", args.user.clone()),
        ("app", args.app.clone()),
        ("house", args.house.map(|h| h.to_string())),
        ("since", args.since.map(|s| s.to_string())),
    ];
    query.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    let url = format!("{}{AUDIT_PATH}", endpoint.url);
    let response = endpoint
        .http
        .get(&url)
        .query(&query)
        .send()
        .await
        .with_context(|| format!("reaching {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("{url} refused ({status}): {body}");
    }
    let log: Vec<Disclosure> = response.json().await.context("reading the audit log")?;
    if args.json {
        for d in &log {
            println!("{}", serde_json::to_string(d)?);
        }
        return Ok(());
    }
    println!("seq\tat\tuser\tapp\tscopes\tquery\tlevel\tfrom\tto\thouses\tcells\twithheld\tmin_plugs\tchain");
    for d in &log {
        let scopes: Vec<&str> = d.scopes.iter().map(|s| s.name()).collect();
        let houses: Vec<String> = d.houses.iter().map(u32::to_string).collect();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            d.seq,
            d.at,
            d.user,
            d.app.as_deref().unwrap_or("-"),
            scopes.join(","),
            d.query,
            d.level.name(),
            d.from,
            d.to,
            houses.join(","),
            d.cells,
            d.withheld,
            d.min_contributors,
            d.chain.len()
        );
    }
    eprintln!("{} disclosures at cloud {party}", log.len());
    Ok(())
}
