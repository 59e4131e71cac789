//! `make demo`, part four: a dual-stack slice across three clusters over an IPv6 WAN (issue 17).
//! The lab is dual-stack (`LabOptions::dual_stack`): underlay, pod network, edges and WAN have
//! IPv6 addresses, the clusters publish their IPv6 address, c3 is behind NAT66. Slice `blue` has
//! 10.80.0.0/16 and fd00:80::/48: every pod gets one address of each family on `slice0` and
//! reaches every other pod of the slice over both, through gateways whose WireGuard runs over
//! IPv6; c1's two nodes are joined by a VXLAN over the IPv6 underlay.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control::{self, ControlPlane, LabEnv, THREE_CLUSTERS, run_pod_retrying};
use crate::demo::{indent, table};
use crate::{Lab, LabOptions, Pod, PodSpec};

fn ping_within(from: &Pod, to: IpAddr, timeout: Duration) -> bool {
    let family = if to.is_ipv6() { "-6" } else { "-4" };
    let deadline = Instant::now() + timeout;
    loop {
        let argv = ["ping", family, "-n", "-q", "-c", "1", "-W", "1", &to.to_string()];
        let ok = from.exec(&argv).is_ok_and(|o| o.status.success());
        if ok || Instant::now() >= deadline {
            return ok;
        }
    }
}

/// Builds the dual-stack three-cluster lab under `prefix`, shows the pods' addresses, who
/// reaches whom over each family and the gateways' IPv6 endpoints, and tears it down.
///
/// # Errors
/// When the lab cannot be built, or a pod does not reach another over a family.
pub fn run(prefix: &str) -> Result<()> {
    let started = Instant::now();
    println!("\nslicenet demo, part 4: a dual-stack slice across three clusters over an IPv6 WAN\n");
    println!(
        "▶ Building lab {prefix:?} with IPv6 everywhere: underlay 2001:db8:1:<cluster>::/64, WAN 2001:db8:2::/64,"
    );
    println!("  pods fd44:0:0:<node>::/64 beside 10.244.<node>.0/24; c3 behind NAT66 (nothing reaches into it)");
    let mut env = LabEnv { cp: ControlPlane::new(), lab: Some(Lab::with_options(prefix, LabOptions::dual_stack())?) };
    let LabEnv { cp, lab } = &mut env;
    let lab = lab.as_mut().context("the lab")?;
    let mut manifest = control::across_manifest("blue", "10.80.0.0/16", &["shop"], &THREE_CLUSTERS)?;
    manifest.slices[0].spec.secondary_slice_subnet = Some("fd00:80::/48".into());
    cp.apply(lab, &manifest)?;
    println!("  up with agents and gateways, every tunnel up, in {:.1} s", started.elapsed().as_secs_f64());

    let plan = [("c1", "n1", "web"), ("c1", "n2", "api"), ("c2", "n1", "cart"), ("c3", "n1", "pay")];
    let mut pods = Vec::new();
    for (cluster, node, name) in plan {
        pods.push(run_pod_retrying(lab.node(cluster, node), &PodSpec::new("shop", name), Duration::from_secs(20))?);
    }
    println!("\n▶ Slice blue (10.80.0.0/16 + fd00:80::/48): pods through containerd's CRI, one address per family:");
    let mut rows = Vec::new();
    for p in &pods {
        let eth0: Vec<String> = p.ips("eth0")?.iter().map(ToString::to_string).collect();
        let slice0: Vec<String> = p.ips("slice0")?.iter().map(ToString::to_string).collect();
        rows.push(vec![p.lab_name(), eth0.join(" "), slice0.join(" ")]);
    }
    print!("{}", indent(&table(&["pod", "eth0", "slice0"], &rows)));

    println!("\n▶ Reachability over slice0, each family (ping):");
    let mut rows = Vec::new();
    let mut failures = 0;
    for from in &pods {
        for to in pods.iter().filter(|t| t.lab_name() != from.lab_name()) {
            let mut cells = vec![from.lab_name(), to.lab_name()];
            for addr in to.ips("slice0")? {
                let reached = ping_within(from, addr, Duration::from_secs(8));
                failures += usize::from(!reached);
                cells.push(format!("{} {addr}", if reached { "✓" } else { "✗" }));
            }
            rows.push(cells);
        }
    }
    print!("{}", indent(&table(&["from", "to", "IPv4", "IPv6"], &rows)));
    if failures == 0 {
        println!(
            "\n✓ Every pod reaches every other over IPv4 and IPv6: within c1 over the VXLAN on the IPv6 underlay,"
        );
        println!("  to and from c3 behind NAT66 through tunnels on the IPv6 WAN.");
    }

    let interface = cp.gateway_interface("blue", "c1").context("c1 runs no gateway")?;
    println!(
        "\n▶ `wg show {interface} endpoints` in c1's slice-gateway: IPv6 peers (c3's is its edge's NAT66 address):"
    );
    print!("{}", indent(&cp.gateway_wg("blue", "c1", &["show", &interface, "endpoints"])?));

    println!("\n▶ Tearing the lab down…");
    if let Some(mut lab) = env.lab.take() {
        env.cp.delete_all(&mut lab)?;
        lab.teardown()?;
    }
    println!("  done (part 4 took {:.1} s)", started.elapsed().as_secs_f64());
    if failures > 0 {
        bail!("{failures} ping(s) over slice0 failed where slicenet promises reachability");
    }
    Ok(())
}
