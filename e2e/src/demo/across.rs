//! `make demo`, part two: one slice across three clusters over a WAN, one cluster behind NAT,
//! every cluster with the same pod CIDR. Pods of the slice in every cluster reach each other
//! through one `slice-gateway` pod per cluster (WireGuard over the WAN); a pod outside the slice
//! reaches none of them. The slice is made as in a cluster: a SliceConfig applied to the hub,
//! the hub's and the workers' passes (`crate::control`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control::{self, ControlPlane, PUBLIC_PORT, run_pod_retrying};
use crate::demo::table;
use crate::{Lab, Pod, PodSpec};

struct DemoPod {
    pod: Pod,
    slice0: Option<Ipv4Addr>,
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn ping_within(from: &Pod, to: Ipv4Addr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let ok =
            from.exec(&["ping", "-n", "-q", "-c", "1", "-W", "1", &to.to_string()]).is_ok_and(|o| o.status.success());
        if ok || Instant::now() >= deadline {
            return ok;
        }
    }
}

/// Builds the three-cluster lab under `prefix`, shows the gateways, the pods and who reaches
/// whom, and tears it down.
///
/// # Errors
/// When the lab cannot be built, or a cell of the matrix differs from the expectation.
pub fn run(prefix: &str) -> Result<()> {
    let started = Instant::now();
    println!("\nslicenet demo, part 2: one slice across three clusters\n");
    println!("▶ Building lab {prefix:?}: a WAN namespace and clusters c1 (2 nodes), c2 (1 node) and c3 (1 node,");
    println!("  behind NAT: nothing on the WAN can reach into it); every cluster uses pod CIDR 10.244.0.0/16");
    let mut lab = Lab::new(prefix)?;
    let mut cp = ControlPlane::new();
    let manifest = control::blue_over(&["c1", "c2", "c3"])?;
    cp.apply(&mut lab, &manifest)?;
    println!("  up with agents and gateways, every tunnel up, in {:.1} s\n", started.elapsed().as_secs_f64());

    println!("▶ Slice blue 10.80.0.0/16: a cluster prefix each, one slice-gateway pod each (userspace WireGuard):");
    let mut rows: Vec<Vec<String>> = Vec::new();
    for w in cp.workers() {
        let cluster = lab.cluster(&w.spec.cluster);
        let status = w.status.clone().unwrap_or_default();
        rows.push(vec![
            w.spec.cluster.clone(),
            w.spec.cluster_prefix.clone(),
            cp.gateway_address("blue", &w.spec.cluster).context("a gateway")?.to_string(),
            match cluster.public_address() {
                Some(a) if !cluster.behind_nat() => format!("{a}:{PUBLIC_PORT}/udp → gateway pod"),
                _ => "none: behind NAT, its gateway dials out".into(),
            },
            format!("{}…", status.gateway_public_key.unwrap_or_default().chars().take(12).collect::<String>()),
        ]);
    }
    print!(
        "{}",
        indent(&table(&["cluster", "cluster prefix", "gateway slice0", "public endpoint", "public key"], &rows))
    );

    let plan: [(&str, &str, &str, &str); 5] = [
        ("c1", "n1", "shop", "web"),
        ("c1", "n2", "shop", "api"),
        ("c2", "n1", "shop", "cart"),
        ("c3", "n1", "shop", "pay"),
        ("c1", "n1", "plain", "tools"),
    ];
    let mut pods = Vec::new();
    for (cluster, node, ns, name) in plan {
        let pod = run_pod_retrying(lab.node(cluster, node), &PodSpec::new(ns, name), Duration::from_secs(20))?;
        let slice0 = pod.ipv4("slice0").ok();
        pods.push(DemoPod { pod, slice0 });
    }
    println!("\n▶ Pods through containerd's CRI (note the same eth0 addresses in different clusters):");
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            vec![
                p.pod.lab_name(),
                p.pod.ipv4("eth0").map_or("?".into(), |a| a.to_string()),
                p.slice0.map_or("—".into(), |a| a.to_string()),
            ]
        })
        .collect();
    print!("{}", indent(&table(&["pod", "eth0", "slice0"], &rows)));

    println!("\n▶ Reachability over slice0 (ping; the first packet to a cluster may wait for a handshake):");
    let mut rows = Vec::new();
    let mut mismatches = 0;
    for from in &pods {
        for to in &pods {
            let Some(addr) = to.slice0 else { continue };
            if std::ptr::eq(from, to) {
                continue;
            }
            let expected = from.slice0.is_some();
            let reached = ping_within(&from.pod, addr, if expected { Duration::from_secs(8) } else { Duration::ZERO });
            let ok = reached == expected;
            mismatches += usize::from(!ok);
            rows.push(vec![
                from.pod.lab_name(),
                to.pod.lab_name(),
                addr.to_string(),
                if reached { "✓" } else { "✗" }.into(),
                if expected { "✓" } else { "✗" }.into(),
                if ok { "ok" } else { "MISMATCH" }.into(),
            ]);
        }
    }
    print!("{}", indent(&table(&["from", "to", "address", "reached", "expected", ""], &rows)));
    if mismatches == 0 {
        println!("\n✓ Every pod of the slice reaches every other in every cluster, to and from c3 behind NAT;");
        println!("  the pod outside the slice reaches none.");
    }

    let interface = cp.gateway_interface("blue", "c1").context("c1 runs no gateway")?;
    println!("\n▶ `wg show {interface}` against c1's running slice-gateway (c3's endpoint is its NAT address,");
    println!("  learned from c3's keepalives):");
    print!("{}", indent(&cp.gateway_wg("blue", "c1", &["show", &interface])?));

    println!("\n▶ Tearing the lab down…");
    cp.delete_all(&mut lab)?;
    for p in &pods {
        lab.node(&p.pod.cluster, &p.pod.node).remove_pod(&p.pod)?;
    }
    lab.teardown()?;
    println!("  done (part 2 took {:.1} s)", started.elapsed().as_secs_f64());
    if mismatches > 0 {
        bail!("{mismatches} reachability cell(s) differ from what slicenet promises");
    }
    Ok(())
}
