//! The WAN between clusters: a shared namespace holding a bridge, and per cluster an *edge*
//! namespace between the cluster's underlay bridge and the WAN, doing what a cloud's NAT gateway
//! and load balancer do: masquerade of everything leaving to the WAN, NodePort-like forwarding
//! of public ports to pod addresses (none for a cluster behind NAT), and nothing else inbound.
//!
//! | what | value (prefix `P`, cluster `C` with 0-based index `c`) |
//! | --- | --- |
//! | WAN namespace (bridge `br0`, "internet host" `198.19.0.1/24`) | `P-wan` |
//! | edge namespace | `P-C-edge` |
//! | edge on the underlay (`ul`, port `edge` of the underlay bridge) | `198.18.c.1/24` |
//! | edge on the WAN (`wan`, port `to-C` of the WAN bridge): the public address | `198.19.0.(10+c)/24` |
//! | node default route | via `198.18.c.1` |
//! | edge route to node `nK`'s pod CIDR `10.244.K.0/24` | via `198.18.c.(10+K)` |
//!
//! In a dual-stack lab ([`crate::LabOptions::ipv6`]) each of these has an IPv6 twin:
//!
//! | what | value |
//! | --- | --- |
//! | WAN "internet host" | [`WAN_HOST6`] `2001:db8:2::1/64` |
//! | edge on the underlay | `2001:db8:1:c::1/64` |
//! | edge on the WAN: the public IPv6 address | `2001:db8:2::(10+c)/64` (hex) |
//! | node default IPv6 route | via `2001:db8:1:c::1` |
//! | edge route to node `nK`'s IPv6 pod CIDR | via the node's IPv6 underlay address |
//!
//! and the edge does the same for IPv6 in a table of family `ip6` of the same name: masquerade
//! (NAT66: a cluster behind NAT has no inbound IPv6 either), forwards of public ports to pods'
//! IPv6 addresses, nothing else inbound. WAN loss and delay apply to IPv4 only.
//!
//! The edge's rules are one nftables table, [`NFT_TABLE`], in the edge namespace (it goes with
//! the namespace: cleanup needs nothing more). Impairment, always on the *receiving* edge's
//! prerouting (LAB-FACTS: on the sender's egress NFQUEUE stalls TCP): loss is an nftables
//! `numgen random` drop; delay is an iptables `NFQUEUE --queue-bypass` rule in the raw table
//! (nft's own `queue` statement is refused by this kernel) and `e2e/delay/delay.c`, a small
//! program in the edge namespace that holds each packet D ms, in order, then accepts it. Its PID
//! is recorded like a pod process, so teardown and crash cleanup stop it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::{cmd, netns};

/// The nftables table (family `ip`) of an edge.
pub const NFT_TABLE: &str = "slicenet_lab";

/// The WAN's "internet host" address (on the WAN bridge), for probes from outside.
pub const WAN_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

/// The WAN's IPv6 "internet host" address, in a dual-stack lab.
pub const WAN_HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// Name of the WAN namespace of lab `prefix`.
pub(crate) fn wan_netns(prefix: &str) -> String {
    format!("{prefix}-wan")
}

/// Creates the WAN namespace: bridge `br0` up, [`WAN_HOST`]`/24` on it (and [`WAN_HOST6`]`/64`
/// when `ipv6`).
pub(crate) fn create_wan(prefix: &str, ipv6: bool) -> Result<String> {
    let wan = wan_netns(prefix);
    netns::add(&wan)?;
    cmd::ip(&["-n", &wan, "link", "add", "br0", "type", "bridge"])?;
    cmd::ip(&["-n", &wan, "addr", "add", &format!("{WAN_HOST}/24"), "dev", "br0"])?;
    if ipv6 {
        cmd::ip(&["-n", &wan, "addr", "add", &format!("{WAN_HOST6}/64"), "dev", "br0", "nodad"])?;
    }
    cmd::ip(&["-n", &wan, "link", "set", "br0", "up"])?;
    Ok(wan)
}

/// How a cluster sits on the WAN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// No inbound forwarding at all (only masquerade): [`crate::Cluster::forward_udp`] refuses.
    pub behind_nat: bool,
}

impl ClusterOptions {
    /// A cluster behind NAT.
    pub fn behind_nat() -> Self {
        Self { behind_nat: true }
    }
}

/// A cluster's edge namespace.
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub(crate) netns: String,
    pub(crate) public: Ipv4Addr,
    pub(crate) inside: Ipv4Addr,
    /// The public IPv6 address, in a dual-stack lab.
    pub(crate) public6: Option<Ipv6Addr>,
    /// Where rule files for `nft -f` and the delay log are written.
    pub(crate) dir: PathBuf,
    /// The lab's root (where the delay program's PID is recorded).
    pub(crate) lab_root: PathBuf,
}

/// The public address of cluster index `c`.
pub(crate) fn public_address(cluster_index: usize) -> Result<Ipv4Addr> {
    let last = u8::try_from(10 + cluster_index).ok().filter(|l| *l < 255).context("too many clusters for the WAN")?;
    Ok(Ipv4Addr::new(198, 19, 0, last))
}

/// The public IPv6 address of cluster index `c`.
pub(crate) fn public_address6(cluster_index: usize) -> Result<Ipv6Addr> {
    let last = u16::try_from(10 + cluster_index).context("too many clusters for the WAN")?;
    Ok(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, last))
}

/// What a node contributes to its edge: namespace name, underlay address, pod CIDR, and in a
/// dual-stack lab its IPv6 underlay address and pod CIDR.
pub(crate) struct EdgeNode<'a> {
    pub(crate) netns: &'a str,
    pub(crate) underlay: Ipv4Addr,
    pub(crate) pod_cidr: String,
    pub(crate) ipv6: Option<(Ipv6Addr, ipnet::Ipv6Net)>,
}

/// The edge's rules for one family (`ip` or `ip6`): masquerade out of the WAN port, forwards
/// added to `prerouting`, nothing else inbound.
fn edge_table(family: &str) -> String {
    format!(
        "table {family} {NFT_TABLE} {{\n\
         \tchain impair {{ type filter hook prerouting priority raw; policy accept; }}\n\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"wan\" masquerade\n\t}}\n\
         \tchain forward {{ type filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"wan\" ct state established,related accept\n\
         \t\tiifname \"wan\" ct status dnat accept\n\
         \t\tiifname \"wan\" counter drop\n\t}}\n\
         }}\n"
    )
}

/// Builds cluster `name`'s edge between its underlay namespace `ul` and the WAN namespace `wan`,
/// routes the nodes through it and loads its nftables table.
pub(crate) fn attach_edge(
    prefix: &str,
    name: &str,
    cluster_index: usize,
    ul: &str,
    wan: &str,
    nodes: &[EdgeNode<'_>],
    lab_root: &Path,
) -> Result<Edge> {
    let edge = Edge {
        netns: format!("{prefix}-{name}-edge"),
        public: public_address(cluster_index)?,
        inside: Ipv4Addr::new(198, 18, u8::try_from(cluster_index).context("cluster index")?, 1),
        public6: if nodes.iter().any(|n| n.ipv6.is_some()) { Some(public_address6(cluster_index)?) } else { None },
        dir: lab_root.join(name).join("edge"),
        lab_root: lab_root.to_path_buf(),
    };
    let e = edge.netns.as_str();
    netns::add(e)?;
    cmd::ip(&["-n", ul, "link", "add", "edge", "type", "veth", "peer", "name", "ul", "netns", e])?;
    cmd::ip(&["-n", ul, "link", "set", "edge", "master", "br0", "up"])?;
    cmd::ip(&["-n", e, "addr", "add", &format!("{}/24", edge.inside), "dev", "ul"])?;
    cmd::ip(&["-n", e, "link", "set", "ul", "up"])?;
    let wan_port = format!("to-{name}");
    cmd::ip(&["-n", wan, "link", "add", &wan_port, "type", "veth", "peer", "name", "wan", "netns", e])?;
    cmd::ip(&["-n", wan, "link", "set", &wan_port, "master", "br0", "up"])?;
    cmd::ip(&["-n", e, "addr", "add", &format!("{}/24", edge.public), "dev", "wan"])?;
    cmd::ip(&["-n", e, "link", "set", "wan", "up"])?;
    sysctl(&netns::path(e), "net.ipv4.ip_forward=1")?;
    for node in nodes {
        cmd::ip(&["-n", e, "route", "replace", &node.pod_cidr, "via", &node.underlay.to_string()])?;
        cmd::ip(&["-n", node.netns, "route", "replace", "default", "via", &edge.inside.to_string()])?;
        sysctl(&netns::path(node.netns), "net.ipv4.ip_forward=1")?;
    }
    let mut rules = edge_table("ip");
    if let Some(public6) = edge.public6 {
        let inside6 =
            Ipv6Addr::new(0x2001, 0xdb8, 1, u16::try_from(cluster_index).context("cluster index")?, 0, 0, 0, 1);
        cmd::ip(&["-n", e, "addr", "add", &format!("{inside6}/64"), "dev", "ul", "nodad"])?;
        cmd::ip(&["-n", e, "addr", "add", &format!("{public6}/64"), "dev", "wan", "nodad"])?;
        sysctl(&netns::path(e), "net.ipv6.conf.all.forwarding=1")?;
        for node in nodes {
            let Some((underlay6, pod_cidr6)) = node.ipv6 else { continue };
            let (cidr, via) = (pod_cidr6.to_string(), underlay6.to_string());
            cmd::ip(&["-n", e, "-6", "route", "replace", &cidr, "via", &via])?;
            cmd::ip(&["-n", node.netns, "-6", "route", "replace", "default", "via", &inside6.to_string()])?;
        }
        rules += &edge_table("ip6");
    }
    edge.nft(&rules).with_context(|| format!("edge {e}: loading the nftables tables"))?;
    Ok(edge)
}

fn sysctl(ns: &Path, setting: &str) -> Result<()> {
    let out = netns::exec(ns, &["sysctl", "-qw", setting])?;
    if !out.status.success() {
        bail!("sysctl {setting} in {}: {}", ns.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

impl Edge {
    /// Runs `nft -f` on `rules` inside the edge namespace.
    pub(crate) fn nft(&self, rules: &str) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let file = self.dir.join(format!("{}.nft", self.netns));
        std::fs::write(&file, rules).with_context(|| format!("cannot write {}", file.display()))?;
        let file = file.display().to_string();
        let out = netns::exec(&netns::path(&self.netns), &["nft", "-f", &file])?;
        if !out.status.success() {
            bail!("nft -f in {}: {}\nrules:\n{rules}", self.netns, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Forwards `proto` `public_port` on the public address to `pod_ip:pod_port`.
    pub(crate) fn forward(&self, proto: Proto, public_port: u16, pod_ip: Ipv4Addr, pod_port: u16) -> Result<()> {
        let p = proto.as_str();
        self.nft(&format!(
            "add rule ip {NFT_TABLE} prerouting iifname \"wan\" {p} dport {public_port} dnat to {pod_ip}:{pod_port}\n"
        ))
    }

    /// Forwards `proto` `public_port` on the public IPv6 address to `[pod_ip]:pod_port`.
    pub(crate) fn forward6(&self, proto: Proto, public_port: u16, pod_ip: Ipv6Addr, pod_port: u16) -> Result<()> {
        if self.public6.is_none() {
            bail!("edge {} has no IPv6 (not a dual-stack lab)", self.netns);
        }
        let p = proto.as_str();
        self.nft(&format!(
            "add rule ip6 {NFT_TABLE} prerouting iifname \"wan\" {p} dport {public_port} dnat to [{pod_ip}]:{pod_port}\n"
        ))
    }

    /// The families whose tables the edge has.
    fn families(&self) -> &'static [&'static str] {
        if self.public6.is_some() { &["ip", "ip6"] } else { &["ip"] }
    }

    /// The port forwards of every family (the `dnat` rules of the prerouting chains).
    pub(crate) fn forwards(&self) -> Result<Vec<String>> {
        let ns = netns::path(&self.netns);
        let mut out = Vec::new();
        for family in self.families() {
            let listed = netns::exec(&ns, &["nft", "list", "chain", family, NFT_TABLE, "prerouting"])?;
            let text = String::from_utf8_lossy(&listed.stdout);
            out.extend(text.lines().filter(|l| l.contains("dnat")).map(|l| l.trim().to_owned()));
        }
        Ok(out)
    }

    /// Removes the forwards of `proto` `public_port` in every family (no such forward is fine).
    pub(crate) fn remove_forward(&self, proto: Proto, public_port: u16) -> Result<()> {
        let ns = netns::path(&self.netns);
        for family in self.families() {
            let out = netns::exec(&ns, &["nft", "-a", "list", "chain", family, NFT_TABLE, "prerouting"])?;
            if !out.status.success() {
                bail!("nft list chain in {}: {}", self.netns, String::from_utf8_lossy(&out.stderr).trim());
            }
            let needle = format!("{} dport {public_port} ", proto.as_str());
            for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&needle)) {
                let Some(handle) = line.rsplit_once("# handle ").map(|(_, h)| h.trim().to_owned()) else { continue };
                let argv = ["nft", "delete", "rule", family, NFT_TABLE, "prerouting", "handle", &handle];
                let out = netns::exec(&ns, &argv)?;
                if !out.status.success() {
                    bail!("nft delete rule in {}: {}", self.netns, String::from_utf8_lossy(&out.stderr).trim());
                }
            }
        }
        Ok(())
    }

    /// Delays every packet arriving from the WAN by `ms` (0 removes the delay): stops the
    /// running delay program (`child`) and its rule, then starts a new one.
    pub(crate) fn set_delay(&self, ms: u32, child: &mut Option<Child>) -> Result<()> {
        let ns = netns::path(&self.netns);
        let out = netns::exec(&ns, &["iptables", "-t", "raw", "-F", "PREROUTING"])?;
        if !out.status.success() {
            bail!("iptables -t raw -F in {}: {}", self.netns, String::from_utf8_lossy(&out.stderr).trim());
        }
        if let Some(mut c) = child.take() {
            crate::agent::stop_child(&mut c, Duration::from_secs(5))?;
        }
        if ms == 0 {
            return Ok(());
        }
        let binary = delay_binary()?;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let log_path = self.dir.join("delay.log");
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let ms_arg = ms.to_string();
        let argv = [binary.display().to_string(), "0".into(), ms_arg];
        let mut command = netns::command(&ns, &argv);
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let mut c = command.spawn().with_context(|| format!("cannot start `{}`", cmd::describe(&command)))?;
        if let Err(e) = crate::cleanup::record_pod_process(&self.lab_root, c.id() as i32) {
            let _ = crate::agent::stop_child(&mut c, Duration::from_secs(1));
            return Err(e);
        }
        // Bound to the queue once it says so.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::fs::read_to_string(&log_path).unwrap_or_default().contains("delay: queue") {
                break;
            }
            if let Some(status) = c.try_wait()? {
                bail!("the delay program exited ({status}): {}", std::fs::read_to_string(&log_path)?);
            }
            if Instant::now() > deadline {
                let _ = crate::agent::stop_child(&mut c, Duration::from_secs(1));
                bail!("the delay program did not bind its queue in {}", self.netns);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *child = Some(c);
        let rule = ["iptables", "-t", "raw", "-A", "PREROUTING", "-i", "wan", "-j", "NFQUEUE", "--queue-num", "0"];
        let out = netns::exec(&ns, &[&rule[..], &["--queue-bypass"]].concat())?;
        if !out.status.success() {
            bail!("iptables NFQUEUE in {}: {}", self.netns, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Drops each packet arriving from the WAN with probability `loss` (0 removes the loss).
    pub(crate) fn set_loss(&self, loss: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&loss) {
            bail!("loss {loss} is not a probability");
        }
        let mut rules = format!("flush chain ip {NFT_TABLE} impair\n");
        let per_million = (loss * 1_000_000.0).round() as u32;
        if per_million >= 1_000_000 {
            rules.push_str(&format!("add rule ip {NFT_TABLE} impair iifname \"wan\" counter drop\n"));
        } else if per_million > 0 {
            rules.push_str(&format!(
                "add rule ip {NFT_TABLE} impair iifname \"wan\" numgen random mod 1000000 < {per_million} counter drop\n"
            ));
        }
        self.nft(&rules)
    }
}

const DELAY_SOURCE: &str = include_str!("../../delay/delay.c");

/// Builds (or reuses, cached by source hash beside the pause image) the delay program.
fn delay_binary() -> Result<PathBuf> {
    let dir = crate::pause::build_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let hash: String = Sha256::digest(DELAY_SOURCE.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let binary = dir.join(format!("delay-{hash}"));
    if binary.exists() {
        return Ok(binary);
    }
    let src = tempfile::Builder::new().prefix("delay-").suffix(".c").tempfile_in(&dir)?;
    std::fs::write(src.path(), DELAY_SOURCE).context("cannot write delay.c")?;
    let out = tempfile::Builder::new().prefix("delay-bin-").tempfile_in(&dir)?;
    cmd::run(Command::new("cc").args(["-static", "-O2", "-o"]).arg(out.path()).arg(src.path()))
        .context("cannot compile the delay program (needs gcc and libc6-dev)")?;
    out.persist(&binary).map_err(|e| e.error).with_context(|| format!("cannot store {}", binary.display()))?;
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", binary.display()))?;
    Ok(binary)
}
