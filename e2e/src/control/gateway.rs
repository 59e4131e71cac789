//! One slice across every cluster of a lab, joined by real gateways: per cluster a gateway pod
//! on node `n1` (a slice member through containerd's CRI and `slice-cni`) running
//! `slice-gateway`, peers = the other clusters (AllowedIPs = their cluster prefix), the node
//! agents routing the other clusters' prefixes to the local gateway pod.
//!
//! Clusters with inbound forwarding get a UDP port forward from their public address to their
//! gateway pod's `eth0` ([`SliceAcrossOptions::public_port`] → [`SliceAcrossOptions::listen_port`]);
//! the other gateways know them by that endpoint. A cluster behind NAT has no endpoint known to
//! the others: its gateway has endpoints for every reachable cluster and a persistent keepalive,
//! and the others learn its (NATed) endpoint by roaming.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use e2e::{ClusterOptions, Lab, LabSlice};
//! let mut lab = Lab::new("xcdoc")?;
//! lab.add_wan()?;
//! lab.add_cluster("c1", 2)?;
//! lab.add_cluster("c2", 1)?;
//! lab.add_cluster_with("c3", 1, ClusterOptions::behind_nat())?;
//! let slice = LabSlice::new("blue", 100, "10.80.0.0/16", &["shop", "slicenet-gw"]);
//! let across = e2e::gateway::build_slice_across_clusters(&lab, &e2e::gateway::SliceAcrossOptions::new(slice, "slicenet-gw"))?;
//! # let _ = across; Ok(()) }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use slice_api::gateway::{arg, flag, uapi_socket};
use slice_api::wireguard::{Key, WgConfig, WgInterface, WgPeer};

use crate::{Lab, LabSlice, Pod, PodProcess};

/// How to build the slice across clusters.
#[derive(Debug, Clone)]
pub struct SliceAcrossOptions {
    /// The slice as every cluster runs it (its namespaces must include `gateway_namespace`);
    /// remote routes are filled in per cluster.
    pub slice: LabSlice,
    /// The member namespace the gateway pods run in.
    pub gateway_namespace: String,
    /// The gateway's UDP port in its pod.
    pub listen_port: u16,
    /// The UDP port each reachable cluster's edge forwards to its gateway.
    pub public_port: u16,
    /// MTU of the gateway's TUN device.
    pub mtu: u32,
    /// PersistentKeepalive (seconds) of a gateway behind NAT towards its peers.
    pub keepalive: u16,
    /// How long to wait for agents, gateways and routes.
    pub timeout: Duration,
}

impl SliceAcrossOptions {
    /// Defaults: listen port 51820, public port 31820, MTU 1380, keepalive 5 s, timeout 30 s.
    pub fn new(slice: LabSlice, gateway_namespace: &str) -> Self {
        Self {
            slice,
            gateway_namespace: gateway_namespace.to_owned(),
            listen_port: 51820,
            public_port: 31820,
            mtu: 1380,
            keepalive: 5,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A WireGuard key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub private: Key,
    pub public: Key,
}

/// A fresh key pair (`slice_api`'s generator, the one the worker uses).
#[must_use]
pub fn keypair() -> KeyPair {
    let private = Key::generate();
    KeyPair { private, public: private.public() }
}

/// One cluster's gateway.
#[derive(Debug)]
pub struct ClusterGateway {
    /// Cluster name and index.
    pub cluster: String,
    pub index: usize,
    /// The cluster's slice prefix (what the other gateways route to this one).
    pub prefix: IpNet,
    /// The gateway pod (on `n1`).
    pub pod: Pod,
    /// The TUN interface (and UAPI socket) name: `<lab prefix><cluster>wg`.
    pub interface: String,
    /// The wg(8) configuration file (mode 0600: it holds the private key).
    pub config: PathBuf,
    pub keys: KeyPair,
    /// The pod's `slice0` address (the agents' next hop for the other clusters).
    pub slice_address: Ipv4Addr,
    /// The pod's primary (`eth0`) address.
    pub eth0: Ipv4Addr,
    /// The public endpoint others reach it at; `None` behind NAT.
    pub endpoint: Option<SocketAddrV4>,
    /// The other clusters' prefixes routed into the TUN device (the current peers).
    pub routes: Vec<IpNet>,
    process: Option<PodProcess>,
}

impl ClusterGateway {
    /// The PID of the running `slice-gateway`, if any.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(PodProcess::id)
    }

    /// The gateway's log so far.
    pub fn log_text(&self) -> String {
        self.process.as_ref().map(PodProcess::log_text).unwrap_or_default()
    }

    /// `wg ARGS…` against this gateway (run in its pod); the output.
    ///
    /// # Errors
    /// When `wg` fails.
    pub fn wg(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["wg"];
        argv.extend_from_slice(args);
        self.pod.exec_ok(&argv)
    }

    /// Kills the gateway with SIGKILL (a crash) and reaps it. Its TUN device and routes go.
    ///
    /// # Errors
    /// When it cannot be reaped.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            let pid = nix::unistd::Pid::from_raw(p.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            p.stop()?;
        }
        Ok(())
    }

    /// Starts `slice-gateway` with the same configuration and re-adds the routes into the TUN
    /// device, once it is up.
    ///
    /// # Errors
    /// When the process does not start or its interface does not appear within `timeout`.
    pub fn start(&mut self, bin: &std::path::Path, mtu: u32, timeout: Duration) -> Result<()> {
        if self.process.is_some() {
            bail!("gateway {} already runs", self.interface);
        }
        self.process = Some(spawn_gateway(&self.pod, bin, &self.interface, &self.config, mtu, timeout)?);
        for r in &self.routes {
            self.pod.exec_ok(&["ip", "route", "replace", &r.to_string(), "dev", &self.interface])?;
        }
        Ok(())
    }
}

/// The slice across every cluster of a lab, as [`build_slice_across_clusters`] made it.
#[derive(Debug)]
pub struct SliceAcross {
    pub options: SliceAcrossOptions,
    /// One per cluster, in the lab's cluster order.
    pub gateways: Vec<ClusterGateway>,
    bin: PathBuf,
}

impl SliceAcross {
    /// The gateway of cluster `name`.
    ///
    /// # Panics
    /// When there is no such cluster (a test bug).
    pub fn gateway(&self, name: &str) -> &ClusterGateway {
        self.gateways.iter().find(|g| g.cluster == name).unwrap_or_else(|| panic!("no gateway in {name}"))
    }

    /// The gateway of cluster `name`, mutable.
    ///
    /// # Panics
    /// When there is no such cluster.
    pub fn gateway_mut(&mut self, name: &str) -> &mut ClusterGateway {
        self.gateways.iter_mut().find(|g| g.cluster == name).unwrap_or_else(|| panic!("no gateway in {name}"))
    }

    /// Kills the gateway of `cluster` (SIGKILL by PID).
    ///
    /// # Errors
    /// See [`ClusterGateway::kill`].
    pub fn kill_gateway(&mut self, cluster: &str) -> Result<()> {
        self.gateway_mut(cluster).kill()
    }

    /// Starts the gateway of `cluster` again with the same configuration.
    ///
    /// # Errors
    /// See [`ClusterGateway::start`].
    pub fn start_gateway(&mut self, cluster: &str) -> Result<()> {
        let (bin, mtu, timeout) = (self.bin.clone(), self.options.mtu, self.options.timeout);
        self.gateway_mut(cluster).start(&bin, mtu, timeout)
    }

    /// The slice as cluster `index` runs it, with remote routes for `others` via its gateway.
    ///
    /// # Errors
    /// When a prefix cannot be carved.
    pub fn slice_for(&self, index: usize, others: &[usize]) -> Result<LabSlice> {
        let gw = self.gateways.iter().find(|g| g.index == index).context("no such cluster")?;
        self.options.slice.clone().via_gateway(index, others, IpAddr::V4(gw.slice_address))
    }

    /// Removes cluster `removed` from the slice: its peer from every other gateway (`wg set …
    /// peer … remove` through the UAPI), its prefix from their TUN routes and from their
    /// agents' remote routes. Its own gateway is left alone.
    ///
    /// # Errors
    /// When `wg` or a configuration update fails.
    pub fn remove_cluster(&mut self, lab: &Lab, removed: &str) -> Result<()> {
        let (gone_key, gone_prefix) = {
            let g = self.gateway(removed);
            (g.keys.public.to_base64(), g.prefix)
        };
        let remaining: Vec<usize> = self.gateways.iter().filter(|g| g.cluster != removed).map(|g| g.index).collect();
        for gw in self.gateways.iter_mut().filter(|g| g.cluster != removed) {
            gw.wg(&["set", &gw.interface, "peer", &gone_key, "remove"])?;
            gw.routes.retain(|r| *r != gone_prefix);
            let _ = gw.pod.exec(&["ip", "route", "del", &gone_prefix.to_string(), "dev", &gw.interface]);
        }
        for gw in self.gateways.iter().filter(|g| g.cluster != removed) {
            let slice = self.slice_for(gw.index, &remaining)?;
            lab.cluster(&gw.cluster).update_agent_configs(&[slice])?;
        }
        Ok(())
    }
}

/// Runs `slice-gateway --interface IFACE --config CONFIG --mtu MTU --forward slice0` in `pod`
/// (as the worker's Deployment does: the gateway turns forwarding on for its slice interface and
/// TUN device itself; the pod's `net.ipv4.ip_forward` stays off), waits until its TUN device and
/// UAPI socket exist, and sets the device up.
///
/// # Errors
/// When it cannot start, exits, or is not up within `timeout` (with its log).
pub(crate) fn spawn_gateway(
    pod: &Pod,
    bin: &std::path::Path,
    interface: &str,
    config: &std::path::Path,
    mtu: u32,
    timeout: Duration,
) -> Result<PodProcess> {
    let (bin, config, mtu) = (bin.display().to_string(), config.display().to_string(), mtu.to_string());
    let (interface_flag, config_flag, mtu_flag) = (arg(flag::INTERFACE), arg(flag::CONFIG), arg(flag::MTU));
    let (forward_flag, forward) = (arg(flag::FORWARD), slice_api::names::DEFAULT_SLICE_INTERFACE);
    let mut process =
        pod.spawn(&[&bin, &interface_flag, interface, &config_flag, &config, &mtu_flag, &mtu, &forward_flag, forward])?;
    let deadline = Instant::now() + timeout;
    loop {
        let up = pod.exec(&["ip", "link", "show", interface])?.status.success() && uapi_socket(interface).exists();
        if up {
            break;
        }
        if !process.is_running() || Instant::now() > deadline {
            bail!("gateway {interface} did not come up; log:\n{}", process.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pod.exec_ok(&["ip", "link", "set", interface, "up"])?;
    Ok(process)
}

fn router_has_route(router_netns: &str, prefix: &IpNet) -> bool {
    Command::new("ip")
        .args(["-n", router_netns, "route", "show", &prefix.to_string()])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// Waits until the slice router of every node of `cluster` routes `prefix` (or, with
/// `present = false`, no longer routes it).
///
/// # Errors
/// On timeout.
pub fn wait_router_route(
    lab: &Lab,
    cluster: &str,
    slice: &str,
    prefix: &IpNet,
    present: bool,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for node in lab.cluster(cluster).nodes() {
        let ns = format!("{}{slice}", node.router_netns_prefix());
        while router_has_route(&ns, prefix) != present {
            if Instant::now() > deadline {
                bail!("{ns}: route {prefix} still {}", if present { "missing" } else { "present" });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Builds `options.slice` across every cluster of `lab` (which must have a WAN): starts the
/// agents, runs a gateway pod on each cluster's `n1`, forwards the public UDP port of every
/// cluster not behind NAT, writes each gateway's wg(8) configuration, starts the gateways, routes
/// the other prefixes into their TUN devices, and points every agent's remote routes at its
/// local gateway; returns once every router has its remote routes.
///
/// # Errors
/// When a step fails or does not finish within `options.timeout`.
pub fn build_slice_across_clusters(lab: &Lab, options: &SliceAcrossOptions) -> Result<SliceAcross> {
    let slice = &options.slice;
    if !slice.namespaces.contains(&options.gateway_namespace) {
        bail!("the gateway namespace {} is not a member of slice {}", options.gateway_namespace, slice.name);
    }
    let bin = lab.options().bin_dir.join("slice-gateway");
    if !bin.exists() {
        bail!("{} does not exist: build it or set SLICENET_BIN_DIR", bin.display());
    }
    let indexes: Vec<usize> = lab.clusters().iter().map(|c| c.index()).collect();
    for cluster in lab.clusters() {
        cluster.start_agents(std::slice::from_ref(slice))?;
    }
    for cluster in lab.clusters() {
        for node in cluster.nodes() {
            node.wait_slice_ready(&slice.name, options.timeout)?;
        }
    }
    let dir = lab.root().join("gateways");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut gateways = Vec::new();
    for cluster in lab.clusters() {
        let pod = cluster.node("n1").run_gateway_pod(&options.gateway_namespace, "gateway")?;
        let eth0 = pod.ipv4("eth0")?;
        let endpoint = if cluster.behind_nat() {
            None
        } else {
            cluster.forward_udp(options.public_port, eth0, options.listen_port)?;
            let public = cluster.public_address().context("the lab has no WAN: call Lab::add_wan")?;
            Some(SocketAddrV4::new(public, options.public_port))
        };
        let prefix = slice.cluster_prefix(cluster.index())?;
        let interface = format!("{}{}wg", lab.prefix(), cluster.name());
        if interface.len() > 15 {
            bail!("interface name {interface} is longer than 15 bytes: use a shorter lab prefix");
        }
        gateways.push(ClusterGateway {
            cluster: cluster.name().to_owned(),
            index: cluster.index(),
            prefix,
            slice_address: pod.ipv4("slice0")?,
            pod,
            config: dir.join(format!("{}.conf", cluster.name())),
            interface,
            keys: keypair(),
            eth0,
            endpoint,
            routes: Vec::new(),
            process: None,
        });
    }
    for i in 0..gateways.len() {
        let me = &gateways[i];
        let behind_nat = me.endpoint.is_none();
        let mut conf = WgConfig {
            interface: WgInterface {
                private_key: Some(me.keys.private),
                listen_port: Some(options.listen_port),
                fwmark: None,
            },
            peers: Vec::new(),
        };
        let mut routes = Vec::new();
        for peer in gateways.iter().filter(|p| p.cluster != me.cluster) {
            conf.peers.push(WgPeer {
                comment: Some(format!("cluster {}", peer.cluster)),
                public_key: peer.keys.public,
                allowed_ips: vec![peer.prefix],
                endpoint: peer.endpoint.map(Into::into),
                persistent_keepalive: (behind_nat && peer.endpoint.is_some()).then_some(options.keepalive),
                ..WgPeer::default()
            });
            routes.push(peer.prefix);
        }
        std::fs::write(&me.config, conf.render()).with_context(|| format!("cannot write {}", me.config.display()))?;
        std::fs::set_permissions(&me.config, std::fs::Permissions::from_mode(0o600))?;
        gateways[i].routes = routes;
    }
    for gw in &mut gateways {
        gw.start(&bin, options.mtu, options.timeout)?;
    }
    let across = SliceAcross { options: options.clone(), gateways, bin };
    for cluster in lab.clusters() {
        cluster.update_agent_configs(&[across.slice_for(cluster.index(), &indexes)?])?;
    }
    for gw in &across.gateways {
        for other in across.gateways.iter().filter(|o| o.cluster != gw.cluster) {
            wait_router_route(lab, &gw.cluster, &slice.name, &other.prefix, true, options.timeout)?;
        }
    }
    Ok(across)
}
