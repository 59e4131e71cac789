//! Section 5: across clusters over the lab's WAN, `slice-gateway` against wireguard-go and
//! OpenVPN, side by side in one run over the same WAN namespaces.
//!
//! A lab made for the purpose (prefix [`LAB`]) with a WAN and two clusters of one node each
//! (`c1`, `c2`), slice `bench` across them made by the lab's control plane ([`crate::control`]:
//! a gateway pod per cluster running `slice-gateway` as the worker's Deployment says, a UDP port
//! forward on each edge for its NodePort), one member pod per cluster. Every path starts in c1 and ends in c2, crossing c1's edge (NAT), the
//! WAN bridge and c2's edge (port forward):
//!
//! - the WAN without a tunnel (the limit): c1's gateway pod to c2's public address, TCP and
//!   ICMP forwarded by c2's edge to c2's gateway pod;
//! - `slice-gateway`, pod to pod through the whole slice path: member pod `slice0` → router
//!   namespace → gateway pod → `slice-gateway` → WAN → `slice-gateway` → router → member pod;
//! - `slice-gateway` alone, gateway pod to gateway pod (`slice0` to `slice0`): where the
//!   competitors run;
//! - the competitors of [`super::tunnel::Kind`] between the two gateway pods, each with its own
//!   UDP port forwarded by c2's edge (c1 stays behind its NAT: it initiates, as a gateway
//!   behind NAT does).
//!
//! One path at a time; the `slice-gateway`s idle while the competitors run. Per path: ping,
//! `iperf3` one stream and `-P 4`, CPU of the tunnel processes per Gbit ([`tunnel::measure`]).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::Value;

use super::place::{Iperf, Place};
use super::process::check_interrupted;
use super::tunnel::{self, Ends, IPERF_PORT, Kind, TunnelFigures, TunnelSection};
use crate::control::{self, ControlPlane, GATEWAY_MTU, PUBLIC_PORT};
use crate::{Lab, Pod, PodSpec};
use slice_api::crd::GATEWAY_NAMESPACE;

/// The section's lab prefix.
pub(crate) const LAB: &str = "bxwan";
const MEMBER_NS: &str = "bench";
const SLICE: &str = "bench";
const SLICE_SUBNET: &str = "10.81.0.0/16";
/// c2's public TCP port forwarded to the iperf3 server in its gateway pod.
const WAN_IPERF_PORT: u16 = 35201;
/// c2's public UDP port for a competitor's port `p` is `p +` this.
const PUBLIC_OFFSET: u16 = 10_000;

/// Markers around this section in `docs/benchmarks.md` (the section rewrites only itself).
pub(crate) const BEGIN: &str = "<!-- slicenet-bench across: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench across: end -->";

fn mtu(pod: &Pod, ifname: &str) -> Result<u32> {
    let json = pod.exec_ok(&["ip", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&json).context("`ip -j link` output is not JSON")?;
    v[0]["mtu"].as_u64().map(|m| m as u32).context("no mtu in `ip -j link`")
}

/// Runs section 5. The lab is torn down on every path (its `Drop` on error).
pub(crate) fn run(seconds: u32, pings: u32) -> Result<TunnelSection> {
    let t = Instant::now();
    let mut lab = Lab::new(LAB)?;
    let mut cp = ControlPlane::new();
    let figures = control::across_manifest(SLICE, SLICE_SUBNET, &[MEMBER_NS], &[("c1", 1, false), ("c2", 1, false)])
        .and_then(|manifest| cp.apply(&mut lab, &manifest))
        .and_then(|()| {
            eprintln!("slicenet-bench:   lab {LAB} and slice across c1, c2 up in {:.1} s", t.elapsed().as_secs_f64());
            measure(&lab, &cp, seconds, pings)
        });
    let deleted = cp.delete_all(&mut lab);
    let torn = lab.teardown();
    deleted?;
    let figures = figures?;
    torn?;
    Ok(figures)
}

/// One cluster's gateway, as the section uses it.
struct Gateway<'a> {
    pod: &'a Pod,
    eth0: std::net::Ipv4Addr,
    slice_address: std::net::Ipv4Addr,
}

fn gateway<'a>(cp: &'a ControlPlane, cluster: &str) -> Result<Gateway<'a>> {
    let pod = cp.gateway_pod(SLICE, cluster).with_context(|| format!("{cluster} runs no gateway"))?;
    let slice_address = cp.gateway_address(SLICE, cluster).with_context(|| format!("{cluster} runs no gateway"))?;
    Ok(Gateway { pod, eth0: pod.ipv4("eth0")?, slice_address })
}

fn measure(lab: &Lab, cp: &ControlPlane, seconds: u32, pings: u32) -> Result<TunnelSection> {
    let step = std::time::Duration::from_secs(20);
    let client = control::run_pod_retrying(lab.node("c1", "n1"), &PodSpec::new(MEMBER_NS, "client"), step)?;
    let server = control::run_pod_retrying(lab.node("c2", "n1"), &PodSpec::new(MEMBER_NS, "server"), step)?;
    let (gw1, gw2) = (gateway(cp, "c1")?, gateway(cp, "c2")?);
    let gateway_pids: Vec<u32> = ["c1", "c2"].iter().filter_map(|c| cp.gateway_pid(SLICE, c)).collect();
    let c2 = lab.cluster("c2");
    let public = c2.public_address().context("the lab has no WAN")?;
    c2.forward_tcp(WAN_IPERF_PORT, gw2.eth0, IPERF_PORT)?;
    // Echo requests to the public address go on to the gateway pod too, so that the WAN's ping
    // is pod to pod like every other row (without it ICMP ends at the edge).
    let icmp = format!(
        "add rule ip {} prerouting iifname \"wan\" icmp type echo-request dnat to {}",
        crate::wan::NFT_TABLE,
        gw2.eth0
    );
    let out = c2.edge_exec(&["nft", &icmp])?;
    if !out.status.success() {
        anyhow::bail!("nft {icmp}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let (gw1_pod, gw2_pod) = (Place::Pod(gw1.pod), Place::Pod(gw2.pod));
    let on_slice = |client, server, to, bind| Iperf { client, server, to, port: IPERF_PORT, listen: IPERF_PORT, bind };

    let mut s = TunnelSection { seconds, pings, versions: tunnel::versions(), ..TunnelSection::default() };
    let pick = std::env::var("SLICENET_BENCH_TUNNELS").ok();
    let picked = |key: &str| pick.as_deref().is_none_or(|p| p.split(',').any(|k| k.trim() == key));

    if picked("veth") || picked("wan") {
        let mut f =
            TunnelFigures::new("WAN without a tunnel (the limit), gateway pod to gateway pod", mtu(gw1.pod, "eth0")?);
        let wan = Iperf {
            client: gw1_pod,
            server: gw2_pod,
            to: public,
            port: WAN_IPERF_PORT,
            listen: IPERF_PORT,
            bind: None,
        };
        eprintln!("slicenet-bench:   WAN …");
        s.congestion = tunnel::measure(&mut f, &wan, &[], seconds, pings)?;
        s.rows.push(f);
    }
    if picked("slice-gateway") {
        check_interrupted()?;
        let mut f = TunnelFigures::new(
            format!("{}, pod to pod through the whole slice path", Kind::SliceGateway.name()),
            format!("{} (gateway TUN {})", mtu(&client, "slice0")?, GATEWAY_MTU),
        );
        f.ours = true;
        let path = on_slice(Place::Pod(&client), Place::Pod(&server), server.ipv4("slice0")?, None);
        eprintln!("slicenet-bench:   slice path …");
        s.congestion = tunnel::measure(&mut f, &path, &gateway_pids, seconds, pings)?;
        s.rows.push(f);

        check_interrupted()?;
        let mut f = TunnelFigures::new(
            format!("{}, gateway pod to gateway pod (the tunnel alone)", Kind::SliceGateway.name()),
            GATEWAY_MTU,
        );
        let path = on_slice(gw1_pod, gw2_pod, gw2.slice_address, Some(gw1.slice_address));
        eprintln!("slicenet-bench:   slice-gateway, gateway pod to gateway pod …");
        s.congestion = tunnel::measure(&mut f, &path, &gateway_pids, seconds, pings)?;
        s.rows.push(f);
    }

    let dir = lab.root().join("bench-tunnels");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let reach_b = |port: u16| {
        let public_port = port.checked_add(PUBLIC_OFFSET).context("port too high to forward")?;
        c2.forward_udp(public_port, gw2.eth0, port)?;
        Ok(std::net::SocketAddr::from((public, public_port)))
    };
    let ends = Ends { a: gw1_pod, b: gw2_pod, dir: &dir, tag: "bxw", reach_b: &reach_b, reach_a: None };
    for kind in Kind::COMPETITORS {
        check_interrupted()?;
        if !picked(kind.key()) {
            continue;
        }
        let mut f = TunnelFigures::new(format!("{}, gateway pod to gateway pod", kind.name()), kind.mtu());
        f.competitor = true;
        let iperf = |to| on_slice(gw1_pod, gw2_pod, to, None);
        if let Some(cc) = tunnel::measure_tunnel(&mut f, kind, &ends, &[], iperf, seconds, pings) {
            s.congestion = cc;
        }
        s.rows.push(f);
    }
    Ok(s)
}

/// The markdown table of section 5 with its heading.
pub(crate) fn table(s: &TunnelSection) -> String {
    let mut t = format!(
        "### 5. Across clusters over one WAN (iperf3 -t {} BBR, 1 and 4 streams; ping -c {} -i 0.2)\n\n",
        s.seconds, s.pings
    );
    t += &tunnel::comparison(&s.rows, "WAN without a tunnel");
    let _ = write!(
        t,
        "\nCongestion control: {}. Everything (both clusters, the WAN, the tunnel processes, iperf3) shares \
         this machine's CPUs, so these are CPU-cost figures: compare the ratios. CPU s per Gbit: utime + stime \
         of both tunnel processes over the iperf3 run divided by the Gbit it carried (kernel softirq work is \
         not counted; the WAN row has no process).\n",
        s.congestion
    );
    t
}

/// The section as it goes into `docs/benchmarks.md`, between [`BEGIN`] and [`END`].
pub(crate) fn doc_section(s: &TunnelSection, command: &str) -> String {
    let mut r =
        format!("{BEGIN}\n## 5. Across clusters over one WAN: slice-gateway against wireguard-go and OpenVPN\n\n");
    let _ = write!(
        r,
        "The comparison the goals are about: every path from cluster c1 to cluster c2 over the same WAN \
         namespaces, side by side in one run. A lab made for this section (prefix `{LAB}`): a WAN bridge and \
         two clusters of one node each, `c1` and `c2`, each behind its own edge namespace (public address on \
         the WAN, NAT outbound, port forwards inbound). Slice `{SLICE}` ({SLICE_SUBNET}) is \
         made across both by the lab's control plane (`e2e::control`: a SliceConfig, the hub's and the \
         workers' passes): real node agents, a gateway pod per cluster (namespace `{GATEWAY_NAMESPACE}`, \
         through containerd's CRI and `slice-cni`) running `slice-gateway` (release build) as the worker's \
         Deployment says, c2's edge forwarding UDP {PUBLIC_PORT} (the gateways' NodePort) to its gateway pod; one member pod per cluster \
         (namespace `{MEMBER_NS}`). The limit is the same WAN without a tunnel: from c1's gateway pod to c2's \
         public address, TCP {WAN_IPERF_PORT} and ICMP echo forwarded by c2's edge to c2's gateway pod. The \
         competitors run in the two gateway pods, so they cross the same edges and WAN: Debian's \
         `wireguard-go` configured with `wg setconf`, OpenVPN in point-to-point TLS mode (a throw-away CA, \
         `--dh none`, UDP, `--sndbuf/--rcvbuf 4 MiB`) with AES-256-GCM and with KubeSlice's gateway \
         settings (AES-256-CBC, `--auth SHA256`, `--tun-mtu 1300`); c2's edge forwards UDP port \
         p + {PUBLIC_OFFSET} to each one's port p in c2's gateway pod, and c1's end, behind its NAT, \
         initiates. Every path goes from c1 to c2 through c1's edge (NAT), the WAN bridge and c2's edge \
         (port forward); the slice path is member pod `slice0` → router namespace → gateway pod → \
         `slice-gateway` → … → `slice-gateway` → router namespace → member pod, two namespace hops per side \
         more than the gateway-pod rows. One path at a time, in the order of the table; the ratio compares \
         `slice-gateway` through the whole slice path (pod to pod) with the best competitor between the \
         gateway pods (the tunnel alone), and the added RTT is over the WAN row (ping: mean and median of \
         the replies). Software: {}. \
         {command}\n\n",
        s.versions.join("; ")
    );
    r += super::body(&table(s));
    r += &format!("{END}\n");
    r
}
