use anyhow::Result;
use clap::{Parser, Subcommand};
use mcloud::{
    access, analytics, audit, authority, bench, bridge, catalog_admin, console, demo, mailbox,
    node, query, sensor, soak, store,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// Private statistics over IoT sensor data on several independent clouds: no cloud ever sees
/// a reading, only the collector sees aggregates.
#[derive(Parser)]
#[command(name = "mcloud", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process on loopback and check the result against plaintext.
    Demo(demo::DemoArgs),
    /// Run one party's roles (cloud, catalog) as real servers.
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a deployment's trust roots and enrol its nodes, sensors and apps.
    Authority(authority::AuthorityArgs),
    /// Set a house owner's access modifiers: friends, other users, denied apps.
    Access(access::AccessArgs),
    /// Read a cloud's audit log of disclosures (its party's administrator).
    Audit(audit::AuditArgs),
    /// Change or show the replicated catalog's membership at run time.
    Catalog(catalog_admin::CatalogArgs),
    /// Upload a CSV or synthetic stream to a running deployment.
    Sensor(sensor::SensorArgs),
    /// Take readings that devices publish to an MQTT broker and upload them, each exactly once.
    Bridge(bridge::BridgeArgs),
    /// Reveal the aggregates of a running deployment.
    Query(query::QueryArgs),
    /// Run DEBS 2014 Q1 and Q2 against a running deployment (the collector role).
    Analytics(analytics::AnalyticsArgs),
    /// Serve a web console of the whole deployment: every node's health and the latest
    /// revealed windows.
    Console(console::ConsoleArgs),
    /// Files on the deployment's encrypted storage: put, get, ls, rm, refresh, repair.
    Store(store::StoreArgs),
    /// Messages for offline apps, sealed to their recipient: keygen, send, list, read.
    Mailbox(mailbox::MailboxArgs),
    /// Measure private against plaintext throughput.
    Bench(bench::BenchArgs),
    /// Run the deployment as processes under steady load for minutes, killing one node a
    /// minute, and record memory, open files and disk per process.
    Soak(soak::SoakArgs),
    /// A pre-aggregation worker process; started by a cloud node, not by hand. Reads its TLS
    /// credentials for the link to the node from stdin.
    Worker {
        /// The node's loopback address for this worker (IP and port).
        #[arg(long)]
        connect: String,
        #[arg(long)]
        id: u32,
        #[arg(long)]
        buckets: usize,
        /// The node's window length in seconds.
        #[arg(long)]
        window: u64,
        #[arg(long, default_value_t = 0)]
        record_cost_us: u64,
    },
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let ok = match Cli::parse().command {
        Command::Demo(args) => demo::run(args).await?,
        Command::Node { config } => node::run(&config).await.map(|_| true)?,
        Command::Access(args) => access::run(args).await.map(|_| true)?,
        Command::Audit(args) => audit::run(args).await.map(|_| true)?,
        Command::Authority(args) => authority::run(args).map(|_| true)?,
        Command::Catalog(args) => catalog_admin::run(args).await.map(|_| true)?,
        Command::Sensor(args) => sensor::run(args).await?,
        Command::Bridge(args) => bridge::run(args).await?,
        Command::Query(args) => query::run(args).await.map(|_| true)?,
        Command::Analytics(args) => analytics::run_command(args).await.map(|_| true)?,
        Command::Console(args) => console::run(args).await.map(|_| true)?,
        Command::Store(args) => store::run(args).await.map(|_| true)?,
        Command::Mailbox(args) => mailbox::run(args).await.map(|_| true)?,
        Command::Bench(args) => bench::run(args).await.map(|_| true)?,
        Command::Soak(args) => soak::run(args).await?,
        Command::Worker {
            connect,
            id,
            buckets,
            window,
            record_cost_us,
        } => {
            tokio::task::spawn_blocking(move || {
                // The node writes this worker's TLS credentials to stdin and closes it.
                let mut credentials = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut credentials)?;
                mcloud_cloud::elastic::remote::serve_worker(
                    &connect,
                    &credentials,
                    id,
                    buckets,
                    window,
                    std::time::Duration::from_micros(record_cost_us),
                )?;
                anyhow::Ok(())
            })
            .await??;
            true
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
