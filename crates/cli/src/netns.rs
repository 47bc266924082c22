//! Real network partitions between the processes of a deployment: each role runs in a Linux
//! network namespace of its own, attached to one bridge, and a link between two roles is cut
//! by a blackhole route on each side (packets vanish, as when a network partitions; nothing
//! answers with a quick refusal). The harness itself sits on the bridge too, so a sensor or a
//! query run from it reaches every role until its own link to one is cut.
//!
//! Packet loss is an nftables rule in a member's namespace that drops a random share of what
//! crosses its link, both ways: `tc netem` would do the same (and add delay), but it needs the
//! `sch_netem` module, which not every kernel has, while nftables' `numgen random` is built
//! into the ones that filter at all.
//!
//! Needs root (or CAP_NET_ADMIN) and the `ip` tool; packet loss also needs `nft` (nftables).

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::Command;

/// Namespaces on one bridge, one per role, in a /24 of their own.
pub struct Network {
    /// The third octet of 10.201.x.0/24, unique among the networks on this machine.
    subnet: u8,
    members: usize,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Network {
    /// Whether namespaces can be made here: root and iproute2.
    pub fn available() -> bool {
        let probe = format!("mcprobe{}", std::process::id());
        if ip(&["netns", "add", &probe]).is_err() {
            return false;
        }
        let _ = ip(&["netns", "del", &probe]);
        true
    }

    /// A bridge with the harness on it (10.201.x.1) and `members` namespaces, each with
    /// loopback up and one address (10.201.x.10 and up).
    pub fn create(members: usize) -> Result<Network> {
        if members > 200 {
            bail!("{members} namespaces; at most 200 fit in one /24");
        }
        // The bridge's name claims the subnet: creating it fails if another network has it.
        let start = (std::process::id() % 200) as u8;
        let subnet = (0..200u8)
            .map(|i| (start + i) % 200)
            .find(|s| ip(&["link", "add", &format!("mcb{s}"), "type", "bridge"]).is_ok())
            .context("no free bridge name mcb0..mcb199 (or no permission to create one)")?;
        let mut net = Network { subnet, members: 0 };
        let bridge = net.bridge();
        ip(&["addr", "add", &format!("{}/24", net.host()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..members {
            let ns = net.namespace(i);
            let veth = format!("mcv{}x{i}", net.subnet);
            ip(&["netns", "add", &ns])?;
            net.members = i + 1;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            let addr = format!("{}/24", net.address(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("mcb{}", self.subnet)
    }

    /// The harness's address on the bridge.
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.subnet, 1)
    }

    /// Member `i`'s address.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.subnet, 10 + i as u8)
    }

    /// Member `i`'s namespace, for `ip netns exec`.
    pub fn namespace(&self, i: usize) -> String {
        format!("mc{}n{i}", self.subnet)
    }

    /// The command that runs `program` inside member `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace(i)]).arg(program);
        c
    }

    /// Cuts the link between members `a` and `b` (both ways) until [`Network::heal`].
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        self.route("add", a, self.address(b))?;
        self.route("add", b, self.address(a))
    }

    pub fn heal(&self, a: usize, b: usize) -> Result<()> {
        self.route("del", a, self.address(b))?;
        self.route("del", b, self.address(a))
    }

    /// Cuts member `i` off from the harness (the sensor and queries run there).
    pub fn cut_host(&self, i: usize) -> Result<()> {
        self.route("add", i, self.host())
    }

    pub fn heal_host(&self, i: usize) -> Result<()> {
        self.route("del", i, self.host())
    }

    /// Whether [`Network::lose`] can work here: the `nft` tool is installed.
    pub fn loss_available() -> bool {
        Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Member `i` drops `per_mille`/1000 of the packets it sends and of those it receives on
    /// its link, each packet drawn at random, until [`Network::stop_losing`]. A packet between
    /// two lossy members crosses two such draws.
    pub fn lose(&self, i: usize, per_mille: u16) -> Result<()> {
        if per_mille > 1000 {
            bail!("{per_mille} per mille is more than every packet");
        }
        let rules = format!(
            "table inet mcloss {{
               chain inbound {{ type filter hook input priority 0; iifname \"eth0\" numgen random mod 1000 < {per_mille} counter drop; }}
               chain outbound {{ type filter hook output priority 0; oifname \"eth0\" numgen random mod 1000 < {per_mille} counter drop; }}
             }}"
        );
        self.nft(i, &["-f", "-"], Some(&rules)).map(drop)
    }

    /// Stops the loss on member `i`; returns how many packets it dropped, both ways.
    pub fn stop_losing(&self, i: usize) -> Result<u64> {
        let listing = self.nft(i, &["list", "table", "inet", "mcloss"], None)?;
        // Each rule lists as `... counter packets N bytes M drop`.
        let dropped = listing
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        self.nft(i, &["delete", "table", "inet", "mcloss"], None)?;
        Ok(dropped)
    }

    /// Runs `nft` in member `i`'s namespace; returns what it printed.
    fn nft(&self, i: usize, args: &[&str], stdin: Option<&str>) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespace(i), "nft"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running `nft` (nftables) in a namespace")?;
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(stdin.unwrap_or_default().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft {} in {}: {}",
                args.join(" "),
                self.namespace(i),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A blackhole route in member `i`'s namespace: what it sends to `to` is dropped, so
    /// neither a connection from it nor an answer to one from `to` gets through.
    fn route(&self, verb: &str, i: usize, to: Ipv4Addr) -> Result<()> {
        ip(&[
            "-n",
            &self.namespace(i),
            "route",
            verb,
            "blackhole",
            &format!("{to}/32"),
        ])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for i in 0..self.members {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
