//! `mcloud mailbox`: messages for apps that are offline. A message is sealed to its
//! recipient's public key (HPKE) and stored as packets like a file; the recipient lists its
//! messages, opens one, and reads it (after which the masters forget it and its packets are
//! freed).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mcloud_store::mailbox::MailboxKeys;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MailboxArgs {
    #[arg(long)]
    pub deployment: PathBuf,
    /// The app token to act with (default: the deployment's `[credentials] app`).
    #[arg(long)]
    pub token: Option<PathBuf>,
    #[command(subcommand)]
    pub command: MailboxCommand,
}

#[derive(Subcommand, Debug)]
pub enum MailboxCommand {
    /// Make the caller's mailbox key pair: the private key goes to `--key`, the public key
    /// to the masters.
    Keygen {
        #[arg(long)]
        key: PathBuf,
    },
    /// Send a message to a user.
    Send {
        #[arg(long)]
        to: String,
        #[arg(long, conflicts_with = "file")]
        text: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// The caller's messages: id, sender, size, expiry.
    List,
    /// Open a message with the private key; it is then gone unless `--keep`.
    Read {
        id: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        keep: bool,
    },
}

pub async fn run(args: MailboxArgs) -> Result<()> {
    let store = crate::store::client(&args.deployment, args.token.as_deref())?;
    match args.command {
        MailboxCommand::Keygen { key } => {
            let keys = MailboxKeys::generate();
            crate::config::write_secret(&key, &keys.private_hex())?;
            store.set_mailbox_key(&keys).await?;
            eprintln!("mailbox key written to {} and published", key.display());
        }
        MailboxCommand::Send { to, text, file } => {
            let body = match (text, file) {
                (Some(t), None) => t.into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?
                }
                _ => bail!("give the message as --text TEXT or --file FILE"),
            };
            let id = store.send(&to, &body).await?;
            println!("{id}");
        }
        MailboxCommand::List => {
            println!("id\tfrom\tbytes\texpires");
            for m in store.messages().await? {
                let from = m
                    .from
                    .map(|r| match r.app {
                        Some(app) => format!("{}/{app}", r.user),
                        None => r.user,
                    })
                    .unwrap_or_default();
                for (_, len, _, expires) in &m.versions {
                    println!(
                        "{}\t{from}\t{len}\t{}",
                        m.key.name,
                        crate::store::format_ms(*expires)
                    );
                }
            }
        }
        MailboxCommand::Read { id, key, keep } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let keys = MailboxKeys::from_private_hex(&text)?;
            let body = store.message(&id, &keys).await?;
            crate::store::print_bytes(&body)?;
            if !keep {
                store.read_message(&id).await?;
            }
        }
    }
    Ok(())
}
