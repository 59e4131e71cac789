//! `make demo`, part two: one slice across three clusters over a WAN, one cluster behind NAT,
//! every cluster with the same pod CIDR. Pods of the slice in every cluster reach each other
//! through one `slice-gateway` pod per cluster (WireGuard over the WAN); a pod outside the slice
//! reaches none of them. The slice is made as in a cluster: a SliceConfig applied to the hub,
//! the hub's and the workers' passes (`crate::control`). Then names: services exported from c1
//! and c2 (a headless one and a ClusterSetIP one) asked for by name from a pod in c3, and 100
//! connections to the ClusterSetIP.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control::{self, ControlPlane, PUBLIC_PORT, dns, run_pod_retrying, workloads};
use crate::demo::{indent, table};
use crate::probe::{Responder, connect_count};
use crate::{Lab, Pod, PodSpec};

struct DemoPod {
    pod: Pod,
    slice0: Option<Ipv4Addr>,
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

    let missing_names = names(&mut cp, &lab)?;

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
    if missing_names > 0 {
        bail!("{missing_names} name(s) were not answered as slicenet promises");
    }
    Ok(())
}

/// The names part: `db` (headless) and `web` (ClusterIP) exported from c1 and c2 as a user
/// applies them (`slicectl lab apply --cluster`), asked for by name from a pod in c3 through its
/// cluster's resolver, and 100 connections to `web`'s ClusterSetIP. The number of answers that
/// differ from what is promised.
fn names(cp: &mut ControlPlane, lab: &Lab) -> Result<usize> {
    println!("\n▶ Multi-cluster services: `db` (headless; pods db-0 in c1, db-1 in c2) and `web` (ClusterIP; pods");
    println!("  web-0 in c1, web-1 in c2), each exported with a ServiceExport; a client pod in c3 asks by name");
    println!("  through its own resolv.conf (c3's resolver → the worker's Corefile stanza → c3's slice-dns):");
    for (cluster, n) in [("c1", 0), ("c2", 1)] {
        cp.apply_in(lab, cluster, &workloads::exported_services(n)?)?;
    }
    let client = workloads::parse_objects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: shop}\nspec: {containers: [{name: c}]}\n",
    )?;
    cp.apply_in(lab, "c3", &client)?;
    let pod = |cp: &ControlPlane, cluster: &str, name: &str| -> Result<Pod> {
        cp.pod(cluster, "shop", name).cloned().with_context(|| format!("no pod {name} in {cluster}"))
    };
    let mut servers = Vec::new();
    for (cluster, name, port, tag) in [
        ("c1", "db-0", 5432, "db-0"),
        ("c2", "db-1", 5432, "db-1"),
        ("c1", "web-0", 8080, "c1"),
        ("c2", "web-1", 8080, "c2"),
    ] {
        servers.push(Responder::start(&pod(cp, cluster, name)?, port, tag)?);
    }
    let client = ("c3", "shop", "client");
    // The answers follow the imports within the records' TTL; wait for both clusters' db.
    let deadline = Instant::now() + Duration::from_secs(30);
    while dns::dig(cp, lab, client, &["db.shop.svc.clusterset.local"])?.data.len() < 2 && Instant::now() < deadline {
        cp.tick(lab)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let db = |cluster: &str, name: &str| -> Result<String> { Ok(pod(cp, cluster, name)?.ipv4("slice0")?.to_string()) };
    let (db0, db1) = (db("c1", "db-0")?, db("c2", "db-1")?);
    let vip = dns::dig(cp, lab, client, &["web.shop.svc.clusterset.local"])?.data;
    let queries: [(&str, &str, Vec<String>); 8] = [
        ("A", "db.shop.svc.clusterset.local", vec![db0.clone(), db1.clone()]),
        ("A", "db.shop.svc.slice.local", vec![db0.clone(), db1.clone()]),
        ("A", "db-1.c2.db.shop.svc.clusterset.local", vec![db1.clone()]),
        ("A", "c1.db.shop.svc.slice.local", vec![db0]),
        ("SRV", "_pg._tcp.db.shop.svc.clusterset.local", Vec::new()),
        ("A", "web.shop.svc.clusterset.local", vec![]),
        ("TXT", "dns-version.clusterset.local", vec!["\"1.0.0\"".into()]),
        ("A", "nothere.shop.svc.clusterset.local", vec![]),
    ];
    let mut rows = Vec::new();
    let mut wrong = 0;
    for (kind, name, want) in queries {
        let got = dns::dig(cp, lab, client, &[kind, name])?;
        let mut want = want;
        want.sort();
        // SRV: a target per db pod; web: one ClusterSetIP; nothere: NXDOMAIN.
        let ok = match (kind, name) {
            ("SRV", _) => got.data.len() == 2 && got.data.iter().all(|d| d.contains(" 5432 ")),
            (_, "web.shop.svc.clusterset.local") => got.data.len() == 1,
            (_, "nothere.shop.svc.clusterset.local") => got.status == "NXDOMAIN",
            _ => got.data == want,
        };
        wrong += usize::from(!ok);
        let answer = if got.data.is_empty() { format!("({})", got.status) } else { got.data.join("\n") };
        for (i, line) in answer.lines().enumerate() {
            let (k, n, mark) = if i == 0 { (kind, name, if ok { "✓" } else { "✗" }) } else { ("", "", "") };
            rows.push(vec![k.to_owned(), n.to_owned(), line.to_owned(), mark.to_owned()]);
        }
    }
    print!("{}", indent(&table(&["type", "name (asked from c3/shop/client)", "answer", ""], &rows)));
    if let Some(vip) = vip.first() {
        let to = std::net::SocketAddr::new(vip.parse().context("a ClusterSetIP")?, 80);
        let seen = connect_count(&pod(cp, "c3", "client")?, to, 100);
        println!("\n  100 connections from c3 to web's ClusterSetIP {to} (DNAT in c3's slice router, per connection):");
        for (tag, n) in &seen {
            println!("    {n:>3} answered by web in {tag}");
        }
        wrong += usize::from(!(seen.contains_key("c1") && seen.contains_key("c2")));
    }
    Ok(wrong)
}
