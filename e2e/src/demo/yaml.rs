//! `make demo`, part three, and `slicectl lab up -f FILE`: a slice declared in SliceConfig YAML
//! and run through the hub's planner and the worker's logic ([`crate::control`]), then changed:
//! a MultiNetworkPolicy admits only some pods of other clusters and is removed, a cluster's WAN
//! link is cut and restored (the tunnels' state and `diagnose` follow), a cluster joins
//! (with the time from apply to the first packet), one of c1's two gateway replicas is killed
//! under a ping at 100/s, then the other, a cluster leaves, the slice is deleted and nothing of
//! it is left.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::ResourceExt;
use serde_json::{Value, json};
use slice_api::crd::{MemberCluster, MemberClusterSpec};

use crate::control::{self, ControlPlane, Manifest, parse_manifest, run_pod_retrying, workloads};
use crate::demo::{indent, table};
use crate::{Lab, Pod, PodSpec};

/// The example the demo applies (also in the repository as `deploy/examples/lab-slice.yaml`).
pub const EXAMPLE: &str = include_str!("../../../deploy/examples/lab-slice.yaml");

const STEP: Duration = Duration::from_secs(20);

/// Prints the control plane's view: the report `slicectl status --hub-kubeconfig` prints for a
/// hub (slices, clusters, each cluster's share, tunnels, problems), and the gateways' keys.
pub fn print_status(cp: &ControlPlane) {
    println!("{}", slice_api::hub_view::render(&cp.hub_view()));
    let rows: Vec<Vec<String>> = cp
        .workers()
        .iter()
        .map(|w| {
            let key = w.status.as_ref().and_then(|s| s.gateway_public_key.clone()).unwrap_or_default();
            vec![w.spec.slice.clone(), w.spec.cluster.clone(), key.chars().take(10).collect::<String>() + "…"]
        })
        .collect();
    println!("{}", table(&["SLICE", "CLUSTER", "GATEWAY KEY"], &rows));
}

fn addr(pod: &Pod) -> Result<Ipv4Addr> {
    pod.ipv4("slice0")
}

fn with_clusters(base: &Manifest, clusters: &[&str]) -> Manifest {
    let mut m = base.clone();
    for s in &mut m.slices {
        s.spec.clusters = clusters.iter().map(|c| (*c).to_owned()).collect();
    }
    m
}

/// Part three of the demo under `prefix`.
///
/// # Errors
/// When a step fails or reachability differs from what slicenet promises.
pub fn run(prefix: &str) -> Result<()> {
    let started = Instant::now();
    println!("\nslicenet demo, part 3: a slice from SliceConfig YAML, changed while it runs\n");
    let mut base = parse_manifest(EXAMPLE)?;
    let mut c4 = MemberCluster::new("c4", MemberClusterSpec::default());
    c4.annotations_mut().insert(control::NODES_ANNOTATION.into(), "1".into());
    base.clusters.push(c4);
    println!("▶ deploy/examples/lab-slice.yaml: SliceConfig blue over c1, c2, c3 (c3 behind NAT), namespaces");
    println!("  shop everywhere and db in c1 and c2; the same planner as the hub controller and the same");
    println!("  worker logic as a member cluster turn it into node-agent configs and gateways. c4 is");
    println!("  registered too, not yet in the slice.");
    let mut lab = Lab::new(prefix)?;
    let mut cp = ControlPlane::new();
    cp.apply(&mut lab, &with_clusters(&base, &["c1", "c2", "c3"]))?;
    println!("  applied in {:.1} s (including building 4 clusters)\n", started.elapsed().as_secs_f64());
    print_status(&cp);

    let a = run_pod_retrying(lab.node("c1", "n2"), &PodSpec::new("shop", "a"), STEP)?;
    let b = run_pod_retrying(lab.node("c2", "n1"), &PodSpec::new("shop", "b"), STEP)?;
    let c = run_pod_retrying(lab.node("c3", "n1"), &PodSpec::new("shop", "c"), STEP)?;
    let b_addr = addr(&b)?;
    let mut failures = 0;
    println!("\n▶ Pods shop/a (c1), shop/b (c2), shop/c (c3):");
    failures += expect_reach("a → b (c1 → c2)", &a, b_addr, true);
    failures += expect_reach("a → c (c1 → c3, behind NAT)", &a, addr(&c)?, true);
    failures += expect_reach("c → b (c3 → c2)", &c, b_addr, true);

    failures += policy_step(&mut cp, &lab, &a, b_addr)?;
    failures += outage_step(&mut cp, &lab, &a, b_addr)?;
    failures += replica_step(&mut cp, &lab, &a, b_addr)?;

    println!("\n▶ c4 joins the slice (SliceConfig spec.clusters += c4):");
    let t0 = Instant::now();
    cp.apply(&mut lab, &with_clusters(&base, &["c1", "c2", "c3", "c4"]))?;
    let applied = t0.elapsed();
    let gw4 = cp.gateway_address("blue", "c4").context("c4 runs no gateway")?;
    let first = control::first_packet(&a, gw4, t0, STEP)?;
    println!(
        "  control plane done in {:.0} ms; first packet c1 → c4 {:.0} ms after the change (goal < 2000 ms)",
        applied.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    );
    let d = run_pod_retrying(lab.node("c4", "n1"), &PodSpec::new("shop", "d"), STEP)?;
    failures += expect_reach("a → d (c1 → c4)", &a, addr(&d)?, true);

    println!("\n▶ c2 leaves the slice:");
    cp.apply(&mut lab, &with_clusters(&base, &["c1", "c3", "c4"]))?;
    failures += expect_reach("a → b (c2 left)", &a, b_addr, false);
    failures += expect_reach("a → c", &a, addr(&c)?, true);
    failures += expect_reach("d → c", &d, addr(&c)?, true);
    println!();
    cp.refresh_status(&lab)?;
    print_status(&cp);

    println!("\n▶ Deleting the SliceConfig:");
    let pids = cp.gateway_pids();
    cp.delete_all(&mut lab)?;
    let alive = pids.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists()).count();
    let forwards: usize =
        lab.clusters().iter().filter(|c| !c.behind_nat()).map(|c| c.forwards().map(|f| f.len()).unwrap_or(0)).sum();
    println!(
        "  WorkerSlices {}, gateways still running {alive} of {}, edge port forwards {forwards}",
        cp.workers().len(),
        pids.len()
    );
    if alive > 0 || forwards > 0 || !cp.workers().is_empty() {
        failures += 1;
    }
    println!("\n▶ Tearing the lab down…");
    lab.teardown()?;
    println!("  part 3 done in {:.1} s", started.elapsed().as_secs_f64());
    if failures > 0 {
        bail!("{failures} check(s) of part 3 differ from what slicenet promises");
    }
    Ok(())
}

/// Brings the WAN's link to a cluster back up however the step ends.
struct CutLink {
    wan: String,
    link: String,
}

impl CutLink {
    fn new(wan: &str, cluster: &str) -> Result<Self> {
        let cut = Self { wan: wan.to_owned(), link: format!("to-{cluster}") };
        crate::cmd::ip(&["-n", &cut.wan, "link", "set", &cut.link, "down"])?;
        Ok(cut)
    }
}

impl Drop for CutLink {
    fn drop(&mut self) {
        let _ = crate::cmd::ip(&["-n", &self.wan, "link", "set", &self.link, "up"]);
    }
}

/// The tunnels of the hub's view as (from, to, state, reason).
fn tunnel_states(cp: &ControlPlane) -> Vec<(String, String, String, String)> {
    cp.hub_view()
        .workers
        .iter()
        .flat_map(|w| {
            w.status
                .iter()
                .flat_map(|s| &s.peers)
                .map(|p| (w.spec.cluster.clone(), p.cluster.clone(), p.state.clone(), p.reason.clone()))
        })
        .collect()
}

/// Runs the lab's rounds (a second apart, as the controllers' checks) until `done` holds for
/// the tunnels; the time it took.
fn rounds_until(
    cp: &mut ControlPlane,
    lab: &Lab,
    done: impl Fn(&[(String, String, String, String)]) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        cp.tick(lab)?;
        if done(&tunnel_states(cp)) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the tunnels did not follow within 120 s: {:?}", tunnel_states(cp));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The demo's outage step: c2's WAN link cut, the tunnels' state and `slicectl diagnose`
/// following, then the link back. The number of checks that differ from what slicenet promises.
fn outage_step(cp: &mut ControlPlane, lab: &Lab, a: &Pod, b_addr: Ipv4Addr) -> Result<usize> {
    println!("\n▶ Tunnel health: c2's WAN link cut (ip link set to-c2 down in the WAN), then restored;");
    println!("  the gateways probe their peers every second and call a silent one Down after three:");
    let wan = lab.wan_netns().context("the lab has no WAN")?.to_owned();
    let mut failures = 0;
    let cut = CutLink::new(&wan, "c2")?;
    let touches_c2 = |t: &(String, String, String, String)| t.0 == "c2" || t.1 == "c2";
    let took = rounds_until(cp, lab, |ts| ts.iter().any(|t| touches_c2(t) && t.2 == "Down"))?;
    for (from, to, state, reason) in tunnel_states(cp).iter().filter(|t| touches_c2(t)) {
        println!("  {from} → {to}: {state}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") });
    }
    println!("  ✓ seen in the WorkerSlice statuses {:.0} s after the cut", took.as_secs_f64());
    failures += expect_reach("a → b (c1 → c2, cut)", a, b_addr, false);
    let report = cp.diagnose_report(lab);
    println!("  slicectl diagnose --lab (its failures; the console, slicectl lab console, shows the same):");
    for f in report.findings.iter().filter(|f| f.severity == slice_api::diagnose::Severity::Fail).take(8) {
        println!("    FAIL {} — {}", f.check, f.place);
    }
    let names_c2 =
        report.findings.iter().any(|f| f.check == slice_api::diagnose::check::TUNNEL && f.place.contains("c2"));
    let mark = if report.failed() && names_c2 { "✓" } else { "✗" };
    println!("  {mark} diagnose fails and names the tunnels to c2");
    failures += usize::from(!(report.failed() && names_c2));
    drop(cut);
    let took = rounds_until(cp, lab, |ts| ts.iter().all(|t| t.2 == "Up"))?;
    println!("  link restored: every tunnel Up again {:.0} s later", took.as_secs_f64());
    failures += expect_reach("a → b (c1 → c2, restored)", a, b_addr, true);
    // Every replica's own tunnels come back too (each gateway's probes, read from its metrics
    // between rounds), a moment after the slice's: rounds until diagnose passes, with a deadline.
    let start = Instant::now();
    let healthy = loop {
        if !cp.diagnose_report(lab).failed() {
            break true;
        }
        if start.elapsed() > Duration::from_secs(120) {
            break false;
        }
        std::thread::sleep(Duration::from_secs(1));
        cp.tick(lab)?;
    };
    println!(
        "  {} diagnose passes again ({:.0} s later)",
        if healthy { "✓" } else { "✗" },
        start.elapsed().as_secs_f64()
    );
    failures += usize::from(!healthy);
    Ok(failures)
}

/// Pings of [`replica_step`]: 3 s at 100/s, the kill after 1 s.
const FAILOVER_PINGS: u32 = 300;

/// The demo's gateway replica step: the example names no `gateway.replicas`, so every cluster
/// asks for the default two; c1 (two nodes) runs both, the one-node clusters say why their
/// second is Pending. Each of c1's replicas is SIGKILLed in turn under a ping at 100/s from `a`
/// (c1) to `b` (c2), and waited for until it is back. The number of checks that differ from
/// what slicenet promises (a gap of a second or more, a replica not back).
fn replica_step(cp: &mut ControlPlane, lab: &Lab, a: &Pod, b_addr: Ipv4Addr) -> Result<usize> {
    println!("\n▶ Gateway replicas: two per cluster by default, on different nodes, both carrying traffic:");
    let mut rows = Vec::new();
    for w in cp.workers() {
        for r in w.status.iter().flat_map(|s| &s.gateway_replicas) {
            rows.push(vec![
                w.spec.cluster.clone(),
                r.ordinal.to_string(),
                r.state.clone(),
                r.node.clone().unwrap_or_else(|| "-".into()),
                if r.reason.is_empty() { "-".into() } else { r.reason.clone() },
            ]);
        }
    }
    print!("{}", indent(&table(&["cluster", "replica", "state", "node", "why not Up"], &rows)));
    let mut failures = 0;
    for ordinal in [0, 1] {
        cp.wait_replica_back(lab, "blue", "c1", ordinal, Duration::from_secs(90))?;
    }
    for ordinal in [0, 1] {
        let count = FAILOVER_PINGS.to_string();
        let to = b_addr.to_string();
        let mut ping = a.spawn(&["ping", "-n", "-i", "0.01", "-W", "5", "-c", &count, &to])?;
        std::thread::sleep(Duration::from_secs(1));
        cp.kill_replica("blue", "c1", ordinal)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ping.is_running() {
            if Instant::now() > deadline {
                bail!("the ping a → b is still running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (answered, gap) = crate::probe::ping_outcome(&ping.log_text(), FAILOVER_PINGS);
        let ok = gap < 100;
        failures += usize::from(!ok);
        println!(
            "  {} c1's replica {ordinal} SIGKILLed: a → b answered {answered} of {FAILOVER_PINGS} pings, longest gap {} ms \
             (goal < 1000 ms)",
            if ok { "✓" } else { "✗" },
            gap * 10
        );
        let t0 = Instant::now();
        match cp.wait_replica_back(lab, "blue", "c1", ordinal, Duration::from_secs(90)) {
            Ok(()) => {
                println!("    restarted and live at every peer again {:.1} s later", t0.elapsed().as_secs_f64());
                // The node agents' probes (every 200 ms) take it back into their groups.
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                println!("    ✗ not back: {e:#}");
                failures += 1;
            }
        }
    }
    Ok(failures)
}

/// Whether `from` reaches `to` as expected (a ping, waited for up to [`STEP`] when it should
/// answer, 2 s when it should not); prints a line and returns 1 for a mismatch.
fn expect_reach(what: &str, from: &Pod, to: Ipv4Addr, expect: bool) -> usize {
    let timeout = if expect { STEP } else { Duration::from_secs(2) };
    let ok = control::first_packet(from, to, Instant::now(), timeout).is_ok();
    let mark = if ok == expect { "✓" } else { "✗" };
    println!("  {mark} {what}: {}", if ok { "reaches" } else { "no answer" });
    usize::from(ok != expect)
}

/// Waits until the policy table in every slice router of `cluster` is the one its node agent's
/// current configuration yields (the agent applies its file asynchronously).
fn wait_enforced(lab: &Lab, cluster: &str, slice: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    for node in lab.cluster(cluster).nodes() {
        loop {
            let (want, got) = control::policy_tables(node, slice)?;
            if got == want {
                break;
            }
            if Instant::now() > deadline {
                bail!("the policy table of {} is not its agent's configuration's after 90 s", node.netns_name());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The demo's MultiNetworkPolicy step: pods as Pod objects (the lab's kubelet runs them), a
/// policy in c2 that lets only `role=front` pods of any cluster reach `app=db`, then its
/// removal. The number of checks that differ from what slicenet promises.
fn policy_step(cp: &mut ControlPlane, lab: &Lab, a: &Pod, b_addr: Ipv4Addr) -> Result<usize> {
    println!("\n▶ MultiNetworkPolicy on the slice: pods shop/front (c1, role=front), shop/other (c3) and");
    println!("  shop/db (c2, app=db) from Pod objects; then, in c2, a policy for the slice's network");
    println!(
        "  ({}: {}) letting only role=front pods, in any cluster, reach app=db:",
        slice_api::policy::POLICY_FOR_ANNOTATION,
        slice_api::multus::nad_name("blue")
    );
    let pod = |name: &str, labels: &str| -> Result<Vec<Value>> {
        workloads::parse_objects(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{{labels}}}}}\n\
             spec: {{containers: [{{name: main}}]}}\n"
        ))
    };
    cp.apply_in(lab, "c1", &pod("front", "role: front")?)?;
    cp.apply_in(lab, "c3", &pod("other", "role: other")?)?;
    cp.apply_in(lab, "c2", &pod("db", "app: db")?)?;
    let get = |cp: &ControlPlane, cluster: &str, name: &str| -> Result<Pod> {
        cp.pod(cluster, "shop", name).cloned().with_context(|| format!("no pod shop/{name} in {cluster}"))
    };
    let (front, other, db) = (get(cp, "c1", "front")?, get(cp, "c3", "other")?, get(cp, "c2", "db")?);
    let db_addr = addr(&db)?;
    let mut failures = expect_reach("other (c3) → db (c2), no policy yet", &other, db_addr, true);
    let policy = json!({
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": "db-from-front", "namespace": "shop",
            "annotations": {slice_api::policy::POLICY_FOR_ANNOTATION: slice_api::multus::nad_name("blue")},
        },
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "front"}}}]}],
        },
    });
    cp.apply_in(lab, "c2", std::slice::from_ref(&policy))?;
    wait_enforced(lab, "c2", "blue")?;
    failures += expect_reach("front (c1, role=front) → db (c2)", &front, db_addr, true);
    failures += expect_reach("other (c3) → db (c2)", &other, db_addr, false);
    failures += expect_reach("a → b (b is not selected)", a, b_addr, true);
    println!("  the policy deleted:");
    cp.delete_in(lab, "c2", &[policy])?;
    wait_enforced(lab, "c2", "blue")?;
    failures += expect_reach("other (c3) → db (c2)", &other, db_addr, true);
    Ok(failures)
}
