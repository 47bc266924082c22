//! A deployment whose every role is its own OS process on loopback: catalog voters and clouds
//! run `mcloud node` with one-role configs written here, and each can be SIGKILLed and
//! restarted on the same address and data. Used by `mcloud demo --processes` and by the
//! tests that kill real processes.

use crate::netns::Network;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One long-running role of the deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Catalog voter, 0-based (Raft node id = index + 1).
    Catalog(usize),
    /// Cloud of this party.
    Cloud(usize),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Catalog(i) => write!(f, "catalog voter {} (node id {})", i, i + 1),
            Role::Cloud(i) => write!(f, "cloud {i}"),
        }
    }
}

impl Role {
    pub fn name(&self) -> String {
        match self {
            Role::Catalog(i) => format!("catalog{i}"),
            Role::Cloud(i) => format!("cloud{i}"),
        }
    }
}

/// Local-directory sources of a process deployment's storage (`sources/0`, ...).
pub const STORAGE_SOURCES: u8 = 3;

#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// The `mcloud` binary every process runs.
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub parties: usize,
    /// Catalog voters started with the deployment.
    pub voters: usize,
    /// Catalog nodes written with `join = true`, started only on request, to be added with
    /// `mcloud catalog add-voter`.
    pub spare_catalogs: usize,
    pub partitions: u32,
    pub window_secs: u64,
    pub grace_secs: u64,
    /// The clouds' `retention_secs` (None: their default).
    pub retention_secs: Option<u64>,
    /// The voters' `keep_decided_secs` (None: their default).
    pub keep_decided_secs: Option<u64>,
    /// Each role in a network namespace of its own ([`Network`]), so the links between
    /// roles can be cut; needs root. Otherwise every role listens on loopback.
    pub namespaces: bool,
    /// Robust mode: every cloud gets a `[cloud.robust]` section (one verification key, written
    /// to `trust/verify.key`) and `deployment.toml` says `robust = true`.
    pub robust: bool,
    /// The clouds archive windows past their retention in the encrypted storage (`storage =`
    /// in `[cloud]`), as `examples/local` does; otherwise they drop them.
    pub archive: bool,
}

impl ProcessSpec {
    /// Three clouds and three catalog voters on loopback, one partition, 60 s windows with a
    /// 60 s grace, the clouds' default retention and archive on (as `examples/local`): what a
    /// caller changes is then all it states.
    pub fn new(bin: PathBuf, dir: PathBuf) -> ProcessSpec {
        ProcessSpec {
            bin,
            dir,
            parties: 3,
            voters: 3,
            spare_catalogs: 0,
            partitions: 1,
            window_secs: 60,
            grace_secs: 60,
            retention_secs: None,
            keep_decided_secs: None,
            namespaces: false,
            robust: false,
            archive: true,
        }
    }
}

pub struct ProcessCluster {
    spec: ProcessSpec,
    network: Option<Network>,
    catalog_ports: Vec<u16>,
    cloud_ports: Vec<u16>,
    catalogs: Vec<Option<Child>>,
    clouds: Vec<Option<Child>>,
}

/// A port free right now, for a process that binds it moments later. Drawn below Linux's
/// ephemeral range (32768 and up): a port the kernel handed out for `bind(0)` is just as
/// likely to be taken by the next outgoing connection of the processes already running.
/// A port is handed out once per process, so two roles never get the same one.
pub fn free_port() -> Result<u16> {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port found in 20000..32000 on 127.0.0.1")
}

impl ProcessCluster {
    /// Writes every role's config and `deployment.toml` under `spec.dir`; starts nothing.
    pub fn write(spec: ProcessSpec) -> Result<ProcessCluster> {
        if spec.voters == 0 || spec.parties == 0 {
            bail!("a deployment needs at least one catalog voter and one cloud");
        }
        std::fs::create_dir_all(spec.dir.join("logs"))?;
        let catalog_ports = (0..spec.voters + spec.spare_catalogs)
            .map(|_| free_port())
            .collect::<Result<Vec<_>>>()?;
        let cloud_ports = (0..spec.parties)
            .map(|_| free_port())
            .collect::<Result<Vec<_>>>()?;
        let network = if spec.namespaces {
            Some(Network::create(catalog_ports.len() + spec.parties)?)
        } else {
            None
        };
        let cluster = ProcessCluster {
            network,
            catalogs: (0..catalog_ports.len()).map(|_| None).collect(),
            clouds: (0..spec.parties).map(|_| None).collect(),
            spec,
            catalog_ports,
            cloud_ports,
        };
        // Every member's credentials, from an authority made for this deployment.
        let addresses: Vec<String> = match &cluster.network {
            Some(net) => (0..cluster.catalog_ports.len() + cluster.spec.parties)
                .map(|i| net.address(i).to_string())
                .collect(),
            None => Vec::new(),
        };
        crate::authority::write_local_with_names(
            &cluster.spec.dir.join("trust"),
            cluster.spec.parties as u16,
            cluster.catalog_ports.len() as u16,
            &addresses,
        )?;
        let mut peers = String::new();
        for i in 0..cluster.spec.voters {
            peers += &format!(
                "[[catalog.peers]]\nid = {}\nurl = \"{}\"\nca = \"{}\"\n",
                i + 1,
                cluster.catalog_url(i),
                cluster.party_ca_of_voter(i)
            );
        }
        for i in 0..cluster.catalog_ports.len() {
            let join = i >= cluster.spec.voters;
            // A joining node names only itself: it learns its peers from the leader.
            let peers = if join {
                format!(
                    "[[catalog.peers]]\nid = {}\nurl = \"{}\"\nca = \"{}\"\n",
                    i + 1,
                    cluster.catalog_url(i),
                    cluster.party_ca_of_voter(i)
                )
            } else {
                peers.clone()
            };
            let text = format!(
                "data_dir = \"catalog{i}\"\n[catalog]\nlisten = \"{}:{}\"\nnode_id = {}\n\
                 credentials = \"trust/voter{i}\"\npartitions = {}\njoin = {join}\n\
                 storage = \"storage.toml\"\n{}{peers}",
                cluster.host_of(Role::Catalog(i)),
                cluster.catalog_ports[i],
                i + 1,
                cluster.spec.partitions,
                cluster
                    .spec
                    .keep_decided_secs
                    .map(|s| format!("keep_decided_secs = {s}\n"))
                    .unwrap_or_default(),
            );
            cluster.write_file(&format!("catalog{i}.toml"), &text)?;
        }
        for party in 0..cluster.spec.parties {
            let first = party % cluster.spec.voters;
            let others: Vec<String> = (0..cluster.spec.voters)
                .filter(|v| *v != first)
                .map(|v| cluster.catalog_endpoint(v))
                .collect();
            let text = format!(
                "data_dir = \"cloud{party}\"\n[cloud]\nlisten = \"{}:{}\"\nparty = {party}\n\
                 credentials = \"trust/cloud{party}\"\n\
                 parties = {}\nwindow_secs = {}\ngrace_secs = {}\ncatalog = {}\ncatalog_nodes = [{}]\n",
                cluster.host_of(Role::Cloud(party)),
                cluster.cloud_ports[party],
                cluster.spec.parties,
                cluster.spec.window_secs,
                cluster.spec.grace_secs,
                cluster.catalog_endpoint(first),
                others.join(", ")
            );
            let mut text = match cluster.spec.retention_secs {
                Some(secs) => format!("{text}retention_secs = {secs}\n"),
                None => text,
            };
            if cluster.spec.archive {
                text += "storage = \"storage.toml\"\n";
            }
            if cluster.spec.robust {
                let clouds: Vec<String> = (0..cluster.spec.parties)
                    .map(|p| {
                        format!(
                            "{{ url = \"{}\", ca = \"trust/party{p}.pem\" }}",
                            cluster.cloud_url(p)
                        )
                    })
                    .collect();
                text += &format!(
                    "[cloud.robust]\nverify_key = \"trust/verify.key\"\nclouds = [{}]\n",
                    clouds.join(", ")
                );
            }
            cluster.write_file(&format!("cloud{party}.toml"), &text)?;
        }
        if cluster.spec.robust {
            let key = mcloud_core::robust::VerifyKey::random();
            crate::config::write_secret(&cluster.spec.dir.join("trust/verify.key"), &key.to_hex())?;
        }
        let others: Vec<String> = (1..cluster.spec.voters)
            .map(|v| cluster.catalog_endpoint(v))
            .collect();
        let mut text = format!(
            "catalog = {}\ncatalog_nodes = [{}]\nrobust = {}\nstorage = \"storage.toml\"\n\n[credentials]\nsensor = \"trust/sensor.toml\"\n\
             app = \"trust/owner.token\"\nadmin = \"trust/admin\"\n\n",
            cluster.catalog_endpoint(0),
            others.join(", "),
            cluster.spec.robust
        );
        for party in 0..cluster.spec.parties {
            text += &format!(
                "[[clouds]]\nurl = \"{}\"\nca = \"trust/party{party}.pem\"\n",
                cluster.cloud_url(party)
            );
        }
        cluster.write_file("deployment.toml", &text)?;
        // The encrypted storage's sources: local directories every role of this machine
        // reaches (the voters free packets there, `mcloud store` writes there).
        let mut storage = String::new();
        for id in 0..STORAGE_SOURCES {
            storage += &format!("[[sources]]\nid = {id}\npath = \"sources/{id}\"\n");
        }
        cluster.write_file("storage.toml", &storage)?;
        Ok(cluster)
    }

    fn write_file(&self, name: &str, text: &str) -> Result<()> {
        let path = self.spec.dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn catalog_endpoint(&self, i: usize) -> String {
        format!(
            "{{ url = \"{}\", ca = \"{}\" }}",
            self.catalog_url(i),
            self.party_ca_of_voter(i)
        )
    }

    /// The CA of catalog node `i`'s party, relative to the deployment's directory.
    fn party_ca_of_voter(&self, i: usize) -> String {
        let party = crate::authority::voter_party(i as u16, self.spec.parties as u16);
        format!("trust/party{party}.pem")
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    pub fn deployment_path(&self) -> PathBuf {
        self.spec.dir.join("deployment.toml")
    }

    pub fn config_path(&self, role: Role) -> PathBuf {
        self.spec.dir.join(format!("{}.toml", role.name()))
    }

    /// Where a catalog node's peers find it.
    pub fn catalog_url(&self, i: usize) -> String {
        format!(
            "https://{}:{}",
            self.host_of(Role::Catalog(i)),
            self.catalog_ports[i]
        )
    }

    /// The CA of catalog node `i`'s party, which its peers pin.
    pub fn catalog_ca(&self, i: usize) -> PathBuf {
        self.spec.dir.join(self.party_ca_of_voter(i))
    }

    pub fn cloud_url(&self, party: usize) -> String {
        format!(
            "https://{}:{}",
            self.host_of(Role::Cloud(party)),
            self.cloud_ports[party]
        )
    }

    /// The namespaces the roles run in, when [`ProcessSpec::namespaces`] asked for them.
    pub fn network(&self) -> Option<&Network> {
        self.network.as_ref()
    }

    /// `role`'s index among the network's members: catalog nodes first, then clouds.
    pub fn member(&self, role: Role) -> usize {
        match role {
            Role::Catalog(i) => i,
            Role::Cloud(p) => self.catalog_ports.len() + p,
        }
    }

    /// The address `role` listens on.
    fn host_of(&self, role: Role) -> String {
        match &self.network {
            Some(net) => net.address(self.member(role)).to_string(),
            None => "127.0.0.1".into(),
        }
    }

    /// Every catalog node, spares included.
    pub fn catalog_nodes(&self) -> usize {
        self.catalog_ports.len()
    }

    fn slot(&mut self, role: Role) -> &mut Option<Child> {
        match role {
            Role::Catalog(i) => &mut self.catalogs[i],
            Role::Cloud(i) => &mut self.clouds[i],
        }
    }

    /// Starts `role` (again), appending its stderr to `logs/<role>.log`.
    pub fn start(&mut self, role: Role) -> Result<()> {
        if self.slot(role).is_some() {
            bail!("{role} is already running");
        }
        let log_path = self.spec.dir.join(format!("logs/{}.log", role.name()));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = match &self.network {
            Some(net) => net.command(self.member(role), &self.spec.bin),
            None => Command::new(&self.spec.bin),
        };
        let child = command
            .args(["node", "--config"])
            .arg(self.config_path(role))
            // The error, not a backtrace, belongs at the end of the log.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {role} ({})", self.spec.bin.display()))?;
        *self.slot(role) = Some(child);
        Ok(())
    }

    /// Starts every catalog voter and every cloud (not the spare catalog nodes).
    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.spec.voters {
            self.start(Role::Catalog(i))?;
        }
        for party in 0..self.spec.parties {
            self.start(Role::Cloud(party))?;
        }
        Ok(())
    }

    /// SIGKILLs `role`: no shutdown, no flush, as a crash would.
    pub fn kill(&mut self, role: Role) -> Result<()> {
        let Some(mut child) = self.slot(role).take() else {
            bail!("{role} is not running");
        };
        child.kill().with_context(|| format!("killing {role}"))?;
        let _ = child.wait();
        Ok(())
    }

    /// The process id of `role`, while it runs.
    pub fn pid(&mut self, role: Role) -> Option<u32> {
        self.slot(role).as_ref().map(Child::id)
    }

    pub fn is_running(&mut self, role: Role) -> bool {
        match self.slot(role) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Roles started here that exited on their own, with the end of their log.
    pub fn exited(&mut self) -> Vec<String> {
        let roles: Vec<Role> = (0..self.catalogs.len())
            .map(Role::Catalog)
            .chain((0..self.clouds.len()).map(Role::Cloud))
            .collect();
        let mut out = Vec::new();
        for role in roles {
            let status = match self.slot(role) {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = status {
                *self.slot(role) = None;
                out.push(format!(
                    "{role} exited ({status}):\n{}",
                    self.log_tail(&role.name(), 10)
                ));
            }
        }
        out
    }

    /// The last `lines` lines of `logs/<name>.log`.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let path = self.spec.dir.join(format!("logs/{name}.log"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A client pinning every party's CA, showing no credential (status pages).
    pub fn http(&self) -> Result<reqwest::Client> {
        let pems = (0..self.spec.parties)
            .map(|p| mcloud_core::tls::read_ca(&self.spec.dir.join(format!("trust/party{p}.pem"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(mcloud_core::tls::client(&pems)?)
    }

    /// Catalog node `i`'s status page, if it answers.
    pub async fn catalog_status(
        &self,
        http: &reqwest::Client,
        i: usize,
    ) -> Option<serde_json::Value> {
        let url = format!("{}/v1/status", self.catalog_url(i));
        let response = http
            .get(url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// The catalog node (0-based) that says it leads `partition`.
    pub async fn catalog_leader(&self, http: &reqwest::Client, partition: usize) -> Option<usize> {
        for i in 0..self.catalog_nodes() {
            if let Some(s) = self.catalog_status(http, i).await {
                if s["partitions"][partition]["state"] == "Leader" {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until every partition has a leader and every cloud answers its health check.
    pub async fn wait_ready(&mut self, give_up: Duration) -> Result<reqwest::Client> {
        let started = Instant::now();
        loop {
            let exited = self.exited();
            if !exited.is_empty() {
                bail!("{}", exited.join("\n"));
            }
            let http = self.http()?;
            let mut ready = true;
            for p in 0..self.spec.partitions as usize {
                ready &= self.catalog_leader(&http, p).await.is_some();
            }
            for party in 0..self.spec.parties {
                let url = format!("{}/v1/health", self.cloud_url(party));
                ready &= http
                    .get(url)
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            }
            if ready {
                return Ok(http);
            }
            if started.elapsed() > give_up {
                bail!(
                    "the deployment in {} was not ready within {give_up:?}; see its logs/",
                    self.spec.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A child process that is killed when its owner goes away, error paths included.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.catalogs.iter_mut().chain(&mut self.clouds).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
