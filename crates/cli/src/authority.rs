//! `mcloud authority`: a deployment's trust roots and its members' credentials.
//!
//! `init` makes the authority (each party's CA and sensor secret, the app token key) in a
//! directory that can go offline once members are enrolled; `node`, `sensor` and `app`
//! enrol members from it; `attenuate` narrows an app token and needs no secret at all; and
//! `local` enrols a whole loopback deployment at once (the layout `examples/local` and
//! `mcloud demo --processes` use).

use crate::config::write_secret;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use mcloud_core::auth::app::{AppToken, Attenuation, QueryKind, TokenRoot};
use mcloud_core::auth::authority::Authority;
use mcloud_core::auth::now_secs;
use mcloud_core::auth::peer::{PeerIdentity, Role};
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::reading::GroupLevel;
use mcloud_core::tls::default_names;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct AuthorityArgs {
    #[command(subcommand)]
    pub command: AuthorityCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Voter,
    Cloud,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Voter => Role::Voter,
            RoleArg::Cloud => Role::Cloud,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LevelArg {
    House,
    Household,
    Plug,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MetricArg {
    Load,
    Work,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum QueryArg {
    Compute,
    Range,
    Histograms,
}

#[derive(Subcommand, Debug)]
pub enum AuthorityCommand {
    /// Create a deployment's authority: a CA and a sensor secret per party, an app token key.
    Init {
        /// Where the authority's secrets go (keep it offline afterwards).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        parties: u16,
    },
    /// Enrol a node (or an administrator) of a party: its certificate, its party's sensor
    /// secret, every party's CA and the token root, written into `--out`.
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        party: u16,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The catalog node id of a voter.
        #[arg(long, default_value_t = 0)]
        id: u64,
        /// DNS names or IP addresses the certificate covers besides localhost and loopback.
        #[arg(long = "name")]
        names: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Enrol a sensor: its key for every party, bound to its scope.
    Sensor {
        #[arg(long)]
        dir: PathBuf,
        /// The sensor's id (every batch id it makes carries it).
        #[arg(long)]
        id: u32,
        /// The house it reports; without it, any house (a gateway replaying a data set).
        #[arg(long)]
        house: Option<u32>,
        /// The plugs it reports (comma-separated); without it, every plug.
        #[arg(long, value_delimiter = ',')]
        plugs: Option<Vec<u32>>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an app token: a house owner's (`--user` with `--houses`) or the deployment's
    /// analytics collector's (`--collector`).
    App {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, conflicts_with = "collector", requires = "houses")]
        user: Option<String>,
        #[arg(long, value_delimiter = ',')]
        houses: Option<Vec<u32>>,
        /// The collector's name.
        #[arg(long)]
        collector: Option<String>,
        /// Days the token is good for.
        #[arg(long, default_value_t = 30.0)]
        days: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Narrow an app token before handing it on (offline; no secret needed).
    Attenuate {
        #[arg(long)]
        token: PathBuf,
        /// The deployment's token root (`tokens.pub` of the authority, or a node's).
        #[arg(long)]
        root: PathBuf,
        /// Names the app the token goes to.
        #[arg(long)]
        app: Option<String>,
        #[arg(long, value_delimiter = ',')]
        houses: Option<Vec<u32>>,
        /// Plug ids: the token then sees those plugs' own figures only.
        #[arg(long, value_delimiter = ',')]
        plugs: Option<Vec<u32>>,
        #[arg(long, value_enum, value_delimiter = ',')]
        metrics: Option<Vec<MetricArg>>,
        #[arg(long, value_enum, value_delimiter = ',')]
        levels: Option<Vec<LevelArg>>,
        #[arg(long, value_enum, value_delimiter = ',')]
        queries: Option<Vec<QueryArg>>,
        /// Days from now until the narrowed token expires.
        #[arg(long)]
        days: Option<f64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a node's (or administrator's) certificate: writes the party's new revocation
    /// list (`party<P>/crl.pem` in the authority's directory) and installs it into every
    /// credentials directory named with `--install-into`; nodes read it when they start.
    RevokeNode {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        party: u16,
        /// The certificate to revoke (`cert.pem` of its credentials).
        #[arg(long)]
        cert: PathBuf,
        /// A node's credentials directory to install the list into (repeat for more).
        #[arg(long = "install-into")]
        install_into: Vec<PathBuf>,
    },
    /// Rotate a party's CA: a new CA signs the party's certificates from now on, the old one
    /// stays trusted until `retire`. Installs the party's trusted CAs into every credentials
    /// directory named with `--install-into` (enrol the party's nodes again, then retire).
    Rotate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        party: u16,
        #[arg(long = "install-into")]
        install_into: Vec<PathBuf>,
    },
    /// Stop trusting a party's rotated-out CA; installs the party's trusted CAs as `rotate`.
    Retire {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        party: u16,
        #[arg(long = "install-into")]
        install_into: Vec<PathBuf>,
    },
    /// Make an authority and enrol a whole loopback deployment into `--dir` (the layout of
    /// `examples/local`): every party's CA, voters, clouds, an administrator, a gateway
    /// sensor and a collector token.
    Local {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        parties: u16,
        /// Catalog voters (node ids 1..=N; voter i belongs to party (i - 1) % parties).
        #[arg(long, default_value_t = 3)]
        voters: u16,
        /// DNS names or IP addresses every node certificate covers besides localhost and
        /// loopback (the service names of a container deployment).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

pub fn run(args: AuthorityArgs) -> Result<()> {
    match args.command {
        AuthorityCommand::Init { dir, parties } => {
            if dir.join("tokens.key").exists() {
                bail!("{} already holds an authority", dir.display());
            }
            let authority = Authority::generate(parties)?;
            authority.save(&dir)?;
            std::fs::write(dir.join("tokens.pub"), authority.tokens.root().to_hex())?;
            eprintln!("authority for {parties} parties in {}", dir.display());
        }
        AuthorityCommand::Node {
            dir,
            party,
            role,
            id,
            names,
            out,
        } => {
            let authority = Authority::load(&dir)?;
            let mut all = default_names();
            all.extend(names);
            let who = PeerIdentity {
                party,
                role: role.into(),
                id,
            };
            authority.node(who, &all)?.save(&out)?;
            eprintln!("{who} enrolled into {}", out.display());
        }
        AuthorityCommand::Sensor {
            dir,
            id,
            house,
            plugs,
            out,
        } => {
            let authority = Authority::load(&dir)?;
            let scope = SensorScope {
                sensor: id,
                house,
                plugs,
            };
            authority.sensor(scope).save(&out)?;
            eprintln!("sensor {id} enrolled into {}", out.display());
        }
        AuthorityCommand::App {
            dir,
            user,
            houses,
            collector,
            days,
            out,
        } => {
            let authority = Authority::load(&dir)?;
            let expires = until(days)?;
            let token = match (user, collector) {
                (Some(user), None) => {
                    authority
                        .tokens
                        .issue_owner(&user, &houses.unwrap_or_default(), expires)?
                }
                (None, Some(name)) => authority.tokens.issue_collector(&name, expires)?,
                _ => bail!("name the token's holder: --user NAME --houses ... or --collector NAME"),
            };
            write_secret(&out, &token.0)?;
            eprintln!("app token (until {expires}) in {}", out.display());
        }
        AuthorityCommand::Attenuate {
            token,
            root,
            app,
            houses,
            plugs,
            metrics,
            levels,
            queries,
            days,
            out,
        } => {
            let text = std::fs::read_to_string(&token)
                .with_context(|| format!("reading {}", token.display()))?;
            let root_hex = std::fs::read_to_string(&root)
                .with_context(|| format!("reading {}", root.display()))?;
            let root = TokenRoot::from_hex(root_hex.trim())?;
            let narrow = Attenuation {
                app,
                houses,
                plugs,
                metrics: metrics.map(|m| {
                    m.into_iter()
                        .map(|m| match m {
                            MetricArg::Load => mcloud_core::Metric::Load,
                            MetricArg::Work => mcloud_core::Metric::Work,
                        })
                        .collect()
                }),
                levels: levels.map(|l| l.into_iter().map(level).collect()),
                queries: queries.map(|q| q.into_iter().map(query).collect()),
                expires: days.map(until).transpose()?,
            };
            let narrowed = AppToken(text.trim().to_string()).attenuate(&root, &narrow)?;
            write_secret(&out, &narrowed.0)?;
            eprintln!("narrowed token in {}", out.display());
        }
        AuthorityCommand::RevokeNode {
            dir,
            party,
            cert,
            install_into,
        } => {
            let authority = Authority::load(&dir)?;
            let pem = std::fs::read_to_string(&cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let crl = authority.revoke_certificate(&dir, party, &pem)?;
            for node in &install_into {
                install_crl(node, party, &crl)?;
            }
            eprintln!(
                "revoked; party {party}'s list is {} (installed into {} credentials directories; nodes read it at start)",
                dir.join(format!("party{party}/crl.pem")).display(),
                install_into.len()
            );
        }
        AuthorityCommand::Rotate {
            dir,
            party,
            install_into,
        } => change_party_ca(&dir, party, &install_into, true)?,
        AuthorityCommand::Retire {
            dir,
            party,
            install_into,
        } => change_party_ca(&dir, party, &install_into, false)?,
        AuthorityCommand::Local {
            dir,
            parties,
            voters,
            names,
        } => {
            write_local_with_names(&dir, parties, voters, &names)?;
            eprintln!(
                "{parties} parties, {voters} voters, an administrator, a gateway sensor and a collector enrolled into {}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Rotates (`rotate`) or retires party `party`'s CA and installs the party's trusted CAs
/// into the credentials directories `install_into`.
fn change_party_ca(dir: &Path, party: u16, install_into: &[PathBuf], rotate: bool) -> Result<()> {
    let mut authority = Authority::load(dir)?;
    if rotate {
        authority.rotate(party)?;
    } else {
        authority.retire(party)?;
    }
    authority.save(dir)?;
    let trusted = authority.party_cas()[party as usize].clone();
    for node in install_into {
        let path = node.join(format!("parties/party{party}.pem"));
        std::fs::write(&path, &trusted).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "party {party}: {} (installed into {} credentials directories; nodes read it at start)",
        if rotate {
            "a new CA signs, the old one is still trusted"
        } else {
            "retired CAs are no longer trusted"
        },
        install_into.len()
    );
    Ok(())
}

/// Puts party `party`'s revocation list into a node's credentials directory.
pub fn install_crl(credentials: &Path, party: u16, crl: &str) -> Result<()> {
    let dir = credentials.join("crls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("party{party}.pem"));
    std::fs::write(&path, crl).with_context(|| format!("writing {}", path.display()))
}

fn until(days: f64) -> Result<u64> {
    if !(days > 0.0 && days <= 3650.0) {
        bail!("--days must be above 0 and at most 3650, got {days}");
    }
    Ok(now_secs() + (days * 86_400.0) as u64)
}

fn level(l: LevelArg) -> GroupLevel {
    match l {
        LevelArg::House => GroupLevel::House,
        LevelArg::Household => GroupLevel::Household,
        LevelArg::Plug => GroupLevel::Plug,
    }
}

fn query(q: QueryArg) -> QueryKind {
    match q {
        QueryArg::Compute => QueryKind::Compute,
        QueryArg::Range => QueryKind::Range,
        QueryArg::Histograms => QueryKind::Histograms,
    }
}

/// The party of catalog voter `voter` (0-based) in a local deployment.
pub fn voter_party(voter: u16, parties: u16) -> u16 {
    voter % parties
}

/// Enrols a loopback deployment into `dir`:
///
/// ```text
/// authority/            the authority's secrets
/// party{p}.pem          each party's CA (what clients pin)
/// voter{i}/ cloud{p}/   node credentials (voter i has node id i + 1)
/// admin/                party 0's administrator
/// sensor.toml           the gateway sensor (id 1, any house)
/// owner.token           the token of the user who owns houses 0 to 63 (30 days)
/// collector.token       the deployment collector's token (30 days; other-users scope)
/// friend.token          the token of a user who owns no house (30 days): storage, mailbox
/// ```
pub fn write_local(dir: &Path, parties: u16, voters: u16) -> Result<()> {
    write_local_with_names(dir, parties, voters, &[])
}

/// As [`write_local`], with node certificates that also cover `extra_names` (the addresses
/// of a deployment whose roles do not all listen on loopback).
pub fn write_local_with_names(
    dir: &Path,
    parties: u16,
    voters: u16,
    extra_names: &[String],
) -> Result<()> {
    if dir.join("authority").exists() {
        bail!(
            "{} already holds an enrolled deployment; remove it to start over",
            dir.display()
        );
    }
    let authority = Authority::generate(parties)?;
    authority.save(&dir.join("authority"))?;
    std::fs::write(
        dir.join("authority/tokens.pub"),
        authority.tokens.root().to_hex(),
    )?;
    for (p, pem) in authority.party_cas().iter().enumerate() {
        std::fs::write(dir.join(format!("party{p}.pem")), pem)?;
    }
    let mut names = default_names();
    names.extend(extra_names.iter().cloned());
    for voter in 0..voters {
        let who = PeerIdentity {
            party: voter_party(voter, parties),
            role: Role::Voter,
            id: voter as u64 + 1,
        };
        authority
            .node(who, &names)?
            .save(&dir.join(format!("voter{voter}")))?;
    }
    for party in 0..parties {
        let who = PeerIdentity {
            party,
            role: Role::Cloud,
            id: 0,
        };
        authority
            .node(who, &names)?
            .save(&dir.join(format!("cloud{party}")))?;
    }
    let admin = PeerIdentity {
        party: 0,
        role: Role::Admin,
        id: 0,
    };
    authority.node(admin, &[])?.save(&dir.join("admin"))?;
    authority
        .sensor(crate::cluster::GATEWAY)
        .save(&dir.join("sensor.toml"))?;
    let token = authority
        .tokens
        .issue_collector("collector", until(30.0)?)?;
    write_secret(&dir.join("collector.token"), &token.0)?;
    let houses: Vec<u32> = (0..crate::cluster::LOCAL_HOUSES).collect();
    let owner = authority
        .tokens
        .issue_owner(crate::cluster::OWNER, &houses, until(30.0)?)?;
    write_secret(&dir.join("owner.token"), &owner.0)?;
    // A second user with no house: someone the owner shares files and sends messages to.
    let friend = authority
        .tokens
        .issue_owner(crate::cluster::FRIEND, &[], until(30.0)?)?;
    write_secret(&dir.join("friend.token"), &friend.0)?;
    Ok(())
}
