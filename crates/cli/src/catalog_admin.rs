//! `mcloud catalog`: the replicated catalog's membership at run time — add voters and
//! learners, remove nodes, show who leads what — and the revocation of app tokens. Uploads go
//! on meanwhile: Raft changes membership through its log, one step at a time.

use crate::config::{wait_for_ca, Deployment};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mcloud_catalog::raft::node::membership_path;
use mcloud_catalog::raft::types::WireError;
use mcloud_catalog::raft::MembershipChange;
use mcloud_catalog::{CatalogError, Peer};
use mcloud_core::http::post;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct CatalogArgs {
    /// The deployment file naming the catalog nodes (any of them takes the change).
    #[arg(long)]
    pub deployment: PathBuf,
    #[command(subcommand)]
    pub command: CatalogCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum CatalogCommand {
    /// Every catalog node's view of every partition: state, leader, term, members, flags.
    Status,
    /// Make a running node (started with `join = true`) a voter: it catches up as a learner
    /// first, then counts towards the quorum.
    AddVoter(NewMember),
    /// Make a running node a learner: it receives the log but does not vote.
    AddLearner(NewMember),
    /// Revoke an app token (and every token narrowed from it): every cloud refuses it within
    /// a second.
    Revoke {
        /// The token's file.
        #[arg(long)]
        token: PathBuf,
        /// The deployment's token root (`tokens.pub` of the authority).
        #[arg(long)]
        root: PathBuf,
    },
    /// Revoke a sensor's keys: every node refuses its sessions within a second, and it can
    /// open no new one.
    RevokeSensor {
        /// The sensor's id.
        #[arg(long)]
        id: u32,
    },
    /// Forget a cloud that left the deployment for good: its bucket map and settled time go,
    /// and decided flags no longer wait for it before they are pruned. Only for a cloud that
    /// will not come back; a running one would have to store its map again.
    ForgetCloud {
        /// The cloud's party.
        #[arg(long)]
        party: u16,
    },
    /// Remove a voter or learner; removing the leader hands leadership to another voter.
    Remove {
        /// The node's Raft id.
        #[arg(long)]
        id: u64,
        /// Only this partition (default: every partition).
        #[arg(long)]
        partition: Option<u32>,
    },
}

#[derive(Args, Clone, Debug)]
pub struct NewMember {
    /// The new node's Raft id (its `node_id`).
    #[arg(long)]
    pub id: u64,
    /// Where its peers reach it, `https://host:port`.
    #[arg(long)]
    pub url: String,
    /// Its party's CA certificate (`mcloud authority local` writes `party<P>.pem`), pinned by
    /// every peer from now on.
    #[arg(long)]
    pub ca: PathBuf,
    /// Only this partition (default: every partition).
    #[arg(long)]
    pub partition: Option<u32>,
}

pub async fn run(args: CatalogArgs) -> Result<()> {
    let deployment = Deployment::load(&args.deployment)?;
    match &args.command {
        CatalogCommand::Revoke { token, root } => return revoke(&deployment, token, root).await,
        CatalogCommand::RevokeSensor { id } => {
            let catalog =
                mcloud_catalog::CatalogClient::with_nodes(deployment.admin_catalog_endpoints()?);
            catalog.revoke_sensors(vec![*id]).await?;
            eprintln!("revoked sensor {id}");
            return Ok(());
        }
        CatalogCommand::ForgetCloud { party } => {
            let catalog =
                mcloud_catalog::CatalogClient::with_nodes(deployment.admin_catalog_endpoints()?);
            catalog.forget_cloud(*party).await?;
            eprintln!("forgot cloud {party}: decided flags no longer wait for it");
            return Ok(());
        }
        _ => {}
    }
    let http = deployment.client()?;
    let nodes = deployment.catalog_urls();
    let status = statuses(&http, &nodes).await;
    let partitions = status
        .iter()
        .find_map(|(_, s)| s.as_ref().ok()?["partitions"].as_array().map(Vec::len))
        .context("no catalog node answered; is the catalog running?")? as u32;
    let (change, only) = match args.command {
        CatalogCommand::Status => {
            print_status(&status);
            return Ok(());
        }
        CatalogCommand::AddVoter(m) | CatalogCommand::AddLearner(m)
            if !m.url.starts_with("https://") =>
        {
            bail!(
                "--url must be the new node's https://host:port, got {}",
                m.url
            )
        }
        CatalogCommand::AddVoter(m) => {
            let peer = new_peer(&m)?;
            (MembershipChange::AddVoter { id: m.id, peer }, m.partition)
        }
        CatalogCommand::AddLearner(m) => {
            let peer = new_peer(&m)?;
            (MembershipChange::AddLearner { id: m.id, peer }, m.partition)
        }
        CatalogCommand::Remove { id, partition } => (MembershipChange::Remove { id }, partition),
        CatalogCommand::Revoke { .. }
        | CatalogCommand::RevokeSensor { .. }
        | CatalogCommand::ForgetCloud { .. } => {
            unreachable!("answered above")
        }
    };
    if let Some(p) = only {
        if p >= partitions {
            bail!("--partition {p} does not exist: the catalog has {partitions} partition(s)");
        }
    }
    // The new node's CA must be pinned to talk to it afterwards; the change itself goes
    // through nodes the deployment already knows.
    let targets: Vec<u32> = only.map(|p| vec![p]).unwrap_or((0..partitions).collect());
    // Membership changes need an administrator's certificate; status does not.
    let admin = deployment.admin_catalog_endpoints()?;
    for p in targets {
        apply(&admin, p, &change).await?;
        eprintln!("partition {p}: {}", describe(&change));
    }
    Ok(())
}

/// Revokes the token's last block: the token and whatever was narrowed from it stop counting,
/// the token it was narrowed from (if any) does not.
async fn revoke(deployment: &Deployment, token: &Path, root: &Path) -> Result<()> {
    use mcloud_core::auth::app::{AppToken, TokenRoot};
    let text =
        std::fs::read_to_string(token).with_context(|| format!("reading {}", token.display()))?;
    let root_hex =
        std::fs::read_to_string(root).with_context(|| format!("reading {}", root.display()))?;
    let ids =
        AppToken(text.trim().to_string()).revocation_ids(&TokenRoot::from_hex(root_hex.trim())?)?;
    let last = ids.last().context("the token has no blocks")?.clone();
    let catalog = mcloud_catalog::CatalogClient::with_nodes(deployment.admin_catalog_endpoints()?);
    catalog.revoke(vec![last.clone()]).await?;
    eprintln!("revoked {last}");
    Ok(())
}

fn new_peer(m: &NewMember) -> Result<Peer> {
    let ca_pem = wait_for_ca(&m.ca)?;
    Ok(Peer {
        url: m.url.trim_end_matches('/').to_string(),
        ca_pem,
    })
}

fn describe(change: &MembershipChange) -> String {
    match change {
        MembershipChange::AddVoter { id, peer } => format!("node {id} ({}) is a voter", peer.url),
        MembershipChange::AddLearner { id, peer } => {
            format!("node {id} ({}) is a learner", peer.url)
        }
        MembershipChange::Remove { id } => format!("node {id} removed"),
    }
}

/// How long a change keeps being retried while no node can make it (an election).
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends the change to the first catalog node that can act on it (it forwards to the leader),
/// going round the nodes until one does or `PATIENCE` runs out.
async fn apply(
    nodes: &[mcloud_core::http::Endpoint],
    partition: u32,
    change: &MembershipChange,
) -> Result<()> {
    let until = std::time::Instant::now() + PATIENCE;
    let mut last = None;
    loop {
        for node in nodes {
            let url = format!("{}{}", node.url, membership_path(partition));
            match post::<_, Result<(), WireError>>(&node.http, &url, change).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => match CatalogError::from(e) {
                    // An earlier attempt that answered unclearly (the leader removing itself
                    // steps down mid-call) did make the change.
                    CatalogError::NoChange(_) if last.is_some() => return Ok(()),
                    e if e.is_retryable() => last = Some(e.to_string()),
                    e => bail!("partition {partition}: {e}"),
                },
                Err(e) if e.is_retryable() => last = Some(e.to_string()),
                Err(e) => bail!("partition {partition}: {e}"),
            }
        }
        if std::time::Instant::now() >= until {
            bail!(
                "partition {partition}: no catalog node could make the change within {PATIENCE:?}: {}",
                last.unwrap_or_default()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

type Status = Result<serde_json::Value, String>;

async fn statuses(http: &reqwest::Client, nodes: &[String]) -> Vec<(String, Status)> {
    let mut out = Vec::new();
    for node in nodes {
        let answer = async {
            http.get(format!("{node}/v1/status"))
                .send()
                .await?
                .error_for_status()?
                .json::<serde_json::Value>()
                .await
        }
        .await
        .map_err(|e| e.to_string());
        out.push((node.clone(), answer));
    }
    out
}

fn print_status(status: &[(String, Status)]) {
    println!(
        "{:<26} {:>4} {:>9} {:>10} {:>6} {:>8} {:<12} {:<10} {:>9} {:>7} {:>5}",
        "node",
        "id",
        "partition",
        "state",
        "leader",
        "term",
        "voters",
        "learners",
        "committed",
        "errored",
        "open"
    );
    for (url, s) in status {
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                println!("{url:<26} unreachable: {e}");
                continue;
            }
        };
        let parts = s["partitions"].as_array().cloned().unwrap_or_default();
        for p in parts {
            let ids = |v: &serde_json::Value| {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            // `Value` ignores width and alignment, strings do not.
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!(
                "{:<26} {:>4} {:>9} {:>10} {:>6} {:>8} {:<12} {:<10} {:>9} {:>7} {:>5}",
                url,
                text(&s["node_id"]),
                text(&p["partition"]),
                text(&p["state"]),
                text(&p["leader"]),
                text(&p["term"]),
                ids(&p["voters"]),
                ids(&p["learners"]),
                text(&p["flags"]["committed"]),
                text(&p["flags"]["errored"]),
                text(&p["flags"]["open"])
            );
        }
    }
}
