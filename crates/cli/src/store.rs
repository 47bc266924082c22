//! `mcloud store`: files on the deployment's encrypted storage. Data goes straight to the
//! sources named in the deployment's storage file; the catalog nodes (the masters) hand out
//! plans, keys and access decisions.

use crate::config::{wait_for_ca, Deployment};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mcloud_store::client::StoreClient;
use mcloud_store::master::FileAccess;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct StoreArgs {
    #[arg(long)]
    pub deployment: PathBuf,
    /// The app token to act with (default: the deployment's `[credentials] app`).
    #[arg(long)]
    pub token: Option<PathBuf>,
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Store FILE as a new version of NAME (one of the caller's files).
    Put {
        name: String,
        file: PathBuf,
        /// A user whose apps may read it (repeat for more).
        #[arg(long = "friend")]
        friends: Vec<String>,
        /// Every other user's apps may read it.
        #[arg(long)]
        others: bool,
        /// An app that may not read it, whoever's it is (repeat for more).
        #[arg(long = "deny-app")]
        denied_apps: Vec<String>,
        /// Days until it expires unless refreshed.
        #[arg(long, default_value_t = 30.0)]
        lifetime_days: f64,
    },
    /// Write a version of NAME to `--out` (or stdout).
    Get {
        name: String,
        /// Whose file (default: the caller's).
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the files the caller may read.
    Ls {
        #[arg(long)]
        owner: Option<String>,
    },
    /// Delete one of the caller's files, every version.
    Rm { name: String },
    /// Rewrite a tenth of each version's packets under new keys, extending its expiry.
    Refresh { name: String },
    /// Replace every copy that cannot be read (a lost or spoilt source) from a good one.
    Repair { name: String },
}

/// The client of a deployment's storage, acting with `token` (or the deployment's app token).
pub fn client(deployment: &Path, token: Option<&Path>) -> Result<StoreClient> {
    let d = Deployment::load(deployment)?;
    let token_path =
        match token {
            Some(t) => t.to_path_buf(),
            None => d.credentials.app.clone().context(
                "no token: pass --token FILE or add `app = \"FILE\"` under [credentials]",
            )?,
        };
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("reading {}", token_path.display()))?;
    let storage = d.storage_sources()?;
    let sources = Arc::new(mcloud_store::source::Sources::open(&storage)?);
    let masters = std::iter::once(&d.catalog)
        .chain(&d.catalog_nodes)
        .map(|node| {
            let http = mcloud_core::tls::app_client(&[wait_for_ca(&node.ca)?], token.trim())?;
            Ok(mcloud_core::http::Endpoint::new(node.url.clone(), http))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StoreClient::new(masters, sources))
}

pub async fn run(args: StoreArgs) -> Result<()> {
    let mut store = client(&args.deployment, args.token.as_deref())?;
    match args.command {
        StoreCommand::Put {
            name,
            file,
            friends,
            others,
            denied_apps,
            lifetime_days,
        } => {
            if !(lifetime_days.is_finite() && lifetime_days > 0.0) {
                bail!("--lifetime-days must be a positive number of days");
            }
            store.options.lifetime_secs = (lifetime_days * 86_400.0).round() as u64;
            let data =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let access = FileAccess {
                friends,
                others,
                denied_apps,
            };
            store.put(&name, &data, access).await?;
            eprintln!("stored {name}: {} bytes", data.len());
        }
        StoreCommand::Get {
            name,
            owner,
            version,
            out,
        } => {
            let data = store
                .get(owner.as_deref().unwrap_or(""), &name, version)
                .await?;
            match out {
                Some(path) => std::fs::write(&path, &data)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print_bytes(&data)?,
            }
        }
        StoreCommand::Ls { owner } => {
            println!("owner\tname\tversion\tbytes\texpires");
            for info in store.list(owner.as_deref()).await? {
                for (number, len, _created, expires) in &info.versions {
                    println!(
                        "{}\t{}\t{number}\t{len}\t{}",
                        info.key.owner,
                        info.key.name,
                        crate::store::format_ms(*expires)
                    );
                }
            }
        }
        StoreCommand::Rm { name } => {
            store.delete(&name).await?;
            eprintln!("deleted {name}");
        }
        StoreCommand::Repair { name } => {
            let repaired = store.repair(&name).await?;
            for (version, added, dropped) in &repaired {
                eprintln!(
                    "repaired {name} version {version}: {added} copies added, {dropped} dropped"
                );
            }
            if repaired.is_empty() {
                eprintln!("{name}: every copy reads; nothing to repair");
            }
        }
        StoreCommand::Refresh { name } => {
            for (version, packets) in store.refresh(&name).await? {
                eprintln!("refreshed {name} version {version}: {packets} packets under a new key");
            }
        }
    }
    Ok(())
}

/// Where a command keeps what it revealed in the storage, and who may read it there.
#[derive(Args, Clone, Debug, Default)]
pub struct ArchiveArgs {
    /// Also store the results as this file of the caller's (a new version when it exists),
    /// through the deployment's storage and app token.
    #[arg(long)]
    pub archive: Option<String>,
    /// A user whose apps may read the archived results (repeat for more).
    #[arg(long = "archive-friend", requires = "archive")]
    pub archive_friends: Vec<String>,
    /// Every other user's apps may read the archived results.
    #[arg(long, requires = "archive")]
    pub archive_others: bool,
}

/// An archive to write once the results are in: its client is made (and its name and rules
/// checked) before the work, so a bad option costs nothing.
pub struct Archive {
    store: StoreClient,
    name: String,
    access: FileAccess,
}

impl ArchiveArgs {
    pub fn open(&self, deployment: &Path) -> Result<Option<Archive>> {
        let Some(name) = &self.archive else {
            return Ok(None);
        };
        mcloud_store::master::check_name("archive name", name)?;
        let access = FileAccess {
            friends: self.archive_friends.clone(),
            others: self.archive_others,
            denied_apps: Vec::new(),
        };
        access.check()?;
        Ok(Some(Archive {
            store: client(deployment, None)?,
            name: name.clone(),
            access,
        }))
    }
}

impl Archive {
    /// Stores `data` as the archive's file, or as `NAME/part` when `part` is given.
    pub async fn put(&self, part: Option<&str>, data: &[u8]) -> Result<()> {
        let name = match part {
            Some(part) => format!("{}/{part}", self.name),
            None => self.name.clone(),
        };
        self.store
            .put(&name, data, self.access.clone())
            .await
            .with_context(|| format!("archiving {name}"))?;
        eprintln!("archived {name}: {} bytes", data.len());
        Ok(())
    }
}

/// Writes `data` to stdout as it is, ending the line on a terminal so the prompt does not
/// run into it.
pub fn print_bytes(data: &[u8]) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let mut out = std::io::stdout().lock();
    out.write_all(data)?;
    if out.is_terminal() && !data.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// How far away a time in ms since the epoch is, for people: "in 29.9 d", "2.0 h ago".
pub fn format_ms(ms: u64) -> String {
    let now = mcloud_core::auth::now_secs() as f64 * 1000.0;
    let delta = (ms as f64 - now) / 1000.0;
    let (value, unit) = match delta.abs() {
        d if d >= 86_400.0 => (d / 86_400.0, "d"),
        d if d >= 3600.0 => (d / 3600.0, "h"),
        d if d >= 60.0 => (d / 60.0, "min"),
        d => (d, "s"),
    };
    if delta >= 0.0 {
        format!("in {value:.1} {unit}")
    } else {
        format!("{value:.1} {unit} ago")
    }
}
