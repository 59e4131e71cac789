//! A lab cluster's DNS, in the shape a cluster has it:
//!
//! - **slice-dns**, as its Deployment runs it: one pod in `slicenet-system` on the cluster's
//!   first node, serving what the cluster's API holds as MCS objects (the `ServiceImport`s and
//!   the EndpointSlices labelled `multicluster.kubernetes.io/service-name` that the worker
//!   writes). The lab hands them over as `slice-dns --objects FILE` reads them (the file
//!   rewritten atomically when they change; slice-dns re-reads it): the same records its
//!   `--kube` mode reads from an API server, without one.
//! - **The cluster's resolver on every node**, at [`crate::NODE_LOCAL_DNS`] where NodeLocal
//!   DNSCache listens (dnsmasq, standing in for CoreDNS), configured from the cluster's
//!   `kube-system/coredns` ConfigMap as CoreDNS would be: the zones of the slicenet stanza the
//!   worker writes there (`clusterset.local`, `slice.local`) go where its `forward` says — the
//!   `slicenet-system/slice-dns` Service's cluster IP, which the lab resolves to the slice-dns pod
//!   as kube-proxy would. Without the stanza the resolver forwards nothing (no upstream in the
//!   lab) and every name fails: the chain holds only through the worker's edit. Names under
//!   the cluster domain are NXDOMAIN (the lab serves no `cluster.local` records), so a pod's
//!   search path walks on to the name as written. It restarts
//!   when the stanza changes, as CoreDNS's `reload` would.
//! - **A pod's `/etc/resolv.conf`** as the kubelet writes it for `dnsPolicy: ClusterFirst`
//!   (the resolver, the namespace's search path, `ndots:5`), bind-mounted for commands run in
//!   the pod ([`crate::netns::command_with_resolv_conf`]).
//!
//! It starts with the first MCS object of the cluster (a ServiceExport or a ServiceImport),
//! or when a pod's resolver configuration is first asked for, so that labs without
//! multi-cluster services run no DNS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use slice_api::crd::SYSTEM_NAMESPACE;
use slice_api::mcs;
use slice_kube::memory::MemoryApi;

use crate::{Lab, Pod, PodProcess, PodSpec};

/// The port slice-dns and the resolvers listen on.
pub const DNS_PORT: u16 = 53;
/// The cluster domain of the lab's clusters (kubelet's `--cluster-domain`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// What runs one cluster's DNS.
#[derive(Default)]
pub(crate) struct ClusterDns {
    /// The slice-dns pod and its process.
    server: Option<(Pod, PodProcess)>,
    /// The resolver on each node, by node name.
    resolvers: Vec<(String, PodProcess)>,
    /// Where the resolvers forward the slice zones (from the Corefile), as they were started.
    forward: Vec<SocketAddr>,
    /// The objects file as last written.
    objects: String,
    /// Set once something asked for DNS in this cluster.
    wanted: bool,
}

impl ClusterDns {
    /// The slice-dns address, once it runs.
    pub fn server(&self) -> Option<SocketAddr> {
        let (pod, _) = self.server.as_ref()?;
        Some(SocketAddr::new(pod.ipv4("eth0").ok()?.into(), DNS_PORT))
    }

    /// The slice-dns process's PID, once it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|(_, p)| p.id())
    }

    /// The slice-dns log so far (empty before it runs).
    pub fn server_log(&self) -> String {
        self.server.as_ref().map(|(_, p)| p.log_text()).unwrap_or_default()
    }

    /// Asks for DNS in this cluster from the next step on.
    pub fn want(&mut self) {
        self.wanted = true;
    }

    /// Writes the cluster's MCS objects for slice-dns and starts what is not running yet
    /// (again, when it exited). True when something changed.
    ///
    /// # Errors
    /// When the file cannot be written or a process cannot be started.
    pub fn step(&mut self, lab: &Lab, api: &MemoryApi<String>, cluster: &str, timeout: Duration) -> Result<bool> {
        let objects = mcs_objects(api, cluster);
        self.wanted |= !objects.is_empty() || has_exports(api, cluster);
        if !self.wanted {
            return Ok(false);
        }
        let mut changed = false;
        let text = render_objects(&objects)?;
        let file = objects_file(lab, cluster);
        if text != self.objects || !file.exists() {
            write_atomically(&file, &text)?;
            self.objects = text;
            changed = true;
        }
        if let Some((_, process)) = &mut self.server
            && !process.is_running()
        {
            bail!("{cluster}: slice-dns exited; log:\n{}", process.log_text());
        }
        if self.server.is_none() {
            self.server = Some(start_server(lab, cluster, &file, timeout)?);
            changed = true;
        }
        let server = self.server().context("slice-dns has an address")?;
        let forward = corefile_forwards(api, cluster, server);
        if forward != self.forward {
            for (_, mut process) in std::mem::take(&mut self.resolvers) {
                process.stop()?;
            }
            self.forward = forward;
        }
        for node in lab.cluster(cluster).nodes() {
            match self.resolvers.iter_mut().find(|(n, _)| n == node.name()) {
                Some((_, process)) => {
                    if !process.is_running() {
                        bail!("{cluster}/{}: the resolver exited; log:\n{}", node.name(), process.log_text());
                    }
                }
                None => {
                    let process = start_resolver(lab, node, &self.forward, timeout)?;
                    self.resolvers.push((node.name().to_owned(), process));
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Stops the resolvers and slice-dns and removes its pod.
    ///
    /// # Errors
    /// When a process cannot be stopped or the pod removed.
    pub fn teardown(&mut self, lab: &Lab, cluster: &str) -> Result<()> {
        for (_, mut process) in std::mem::take(&mut self.resolvers) {
            process.stop()?;
        }
        if let Some((pod, mut process)) = self.server.take() {
            process.stop()?;
            lab.cluster(cluster).node(&pod.node).remove_pod(&pod)?;
        }
        Ok(())
    }
}

/// The cluster's ServiceImports and MCS EndpointSlices, in a stable order.
fn mcs_objects(api: &MemoryApi<String>, cluster: &str) -> Vec<Value> {
    let side = cluster.to_owned();
    let imports = api.list(&side, &format!("/apis/{}/v1alpha1/serviceimports", mcs::GROUP));
    let slices = api
        .list(&side, "/apis/discovery.k8s.io/v1/endpointslices")
        .into_iter()
        .filter(|s| s["metadata"]["labels"][mcs::SERVICE_NAME_LABEL].is_string());
    let mut all: Vec<Value> = imports.into_iter().chain(slices).collect();
    all.sort_by_key(|o| {
        let m = &o["metadata"];
        (o["kind"].to_string(), m["namespace"].to_string(), m["name"].to_string())
    });
    all
}

fn has_exports(api: &MemoryApi<String>, cluster: &str) -> bool {
    !api.list(&cluster.to_owned(), &format!("/apis/{}/v1alpha1/serviceexports", mcs::GROUP)).is_empty()
}

/// The objects as a YAML stream (what `slice-dns --objects` reads).
fn render_objects(objects: &[Value]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(o).context("an MCS object as YAML")?);
    }
    Ok(out)
}

/// Where cluster `cluster`'s objects file is.
pub(crate) fn objects_file(lab: &Lab, cluster: &str) -> PathBuf {
    lab.root().join("dns").join(format!("{cluster}-objects.yaml"))
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().context("a file in a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

/// The slice-dns pod on the cluster's first node, serving `file` on its pod address.
fn start_server(lab: &Lab, cluster: &str, file: &Path, timeout: Duration) -> Result<(Pod, PodProcess)> {
    let bin = lab.options().bin_dir.join("slice-dns");
    if !bin.exists() {
        bail!("{} does not exist: build it or set SLICENET_BIN_DIR", bin.display());
    }
    let node = &lab.cluster(cluster).nodes()[0];
    let spec = PodSpec::new(SYSTEM_NAMESPACE, "slice-dns-lab").label("app.kubernetes.io/name", "slice-dns");
    let pod = super::run_pod_retrying(node, &spec, timeout).with_context(|| format!("{cluster}: the slice-dns pod"))?;
    let listen = SocketAddr::new(pod.ipv4("eth0")?.into(), DNS_PORT).to_string();
    let argv = [bin.display().to_string(), "--objects".into(), file.display().to_string(), "--listen".into(), listen];
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let process = pod.spawn(&args)?;
    let probe = ["dig", "+short", "+time=1", "+tries=1", "-p", "53", "TXT"];
    let mut probe: Vec<String> = probe.iter().map(|s| (*s).to_owned()).collect();
    probe.push(format!("@{}", pod.ipv4("eth0")?));
    probe.push(format!("dns-version.{}", mcs::CLUSTERSET_ZONE));
    wait_answering(&pod.netns_path, &probe, timeout)
        .with_context(|| format!("{cluster}: slice-dns; log:\n{}", process.log_text()))?;
    Ok((pod, process))
}

/// Where the cluster's CoreDNS would forward the slice zones: the `forward` of the slicenet
/// stanza in `kube-system/coredns`, the slice-dns Service's cluster IP taken to `server` (the
/// pod behind it). Empty without the stanza.
fn corefile_forwards(api: &MemoryApi<String>, cluster: &str, server: SocketAddr) -> Vec<SocketAddr> {
    let side = cluster.to_owned();
    let path = format!("/api/v1/namespaces/kube-system/configmaps/{}", slice_api::names::COREDNS_CONFIG_MAP);
    let Some(map) = api.get(side.clone(), &path) else { return Vec::new() };
    let corefile = map["data"][slice_api::corefile::COREFILE_KEY].as_str().unwrap_or_default();
    let service = format!("/api/v1/namespaces/{SYSTEM_NAMESPACE}/services/{}", slice_api::names::SLICE_DNS_SERVICE);
    let service_ip = api.get(side, &service).and_then(|s| s["spec"]["clusterIP"].as_str()?.parse::<IpAddr>().ok());
    let mut inside = false;
    let mut out = Vec::new();
    for line in corefile.lines() {
        let line = line.trim();
        if line.starts_with("# slicenet:begin") {
            inside = true;
        } else if line == slice_api::corefile::END_MARKER {
            inside = false;
        } else if inside && let Some(targets) = line.strip_prefix("forward . ") {
            for target in targets.split_whitespace().filter_map(|t| t.parse::<IpAddr>().ok()) {
                // kube-proxy's part: the Service's cluster IP leads to its pod.
                out.push(if Some(target) == service_ip { server } else { SocketAddr::new(target, DNS_PORT) });
            }
        }
    }
    out
}

/// The resolver on `node`: dnsmasq at [`crate::NODE_LOCAL_DNS`], forwarding the slice zones to
/// `forward` (nothing when it is empty) and answering nothing else.
fn start_resolver(lab: &Lab, node: &crate::Node, forward: &[SocketAddr], timeout: Duration) -> Result<PodProcess> {
    let mut argv: Vec<String> = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file",
        "--log-facility=-",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.push(format!("--listen-address={}", crate::NODE_LOCAL_DNS));
    argv.push(format!("--port={DNS_PORT}"));
    // The cluster's own zone is CoreDNS's `kubernetes` block: names it does not know are
    // NXDOMAIN there (so a search path walks on), never forwarded.
    argv.push(format!("--local=/{CLUSTER_DOMAIN}/"));
    for zone in [mcs::CLUSTERSET_ZONE, mcs::SLICE_ZONE] {
        for to in forward {
            argv.push(format!("--server=/{zone}/{}#{}", to.ip(), to.port()));
        }
    }
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let label = format!("{}/{}/resolver", node.cluster(), node.name());
    let mut process = crate::pod::spawn_in(lab.root(), &node.netns_path(), &label, &args)?;
    if forward.is_empty() {
        // Nothing to ask it that it would answer: wait until it listens.
        let deadline = Instant::now() + timeout;
        while !listening(&node.netns_path())? {
            if !process.is_running() || Instant::now() > deadline {
                bail!("{label}: dnsmasq did not start; log:\n{}", process.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(process);
    }
    let probe: Vec<String> = ["dig", "+short", "+time=1", "+tries=1", "TXT"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([format!("@{}", crate::NODE_LOCAL_DNS), format!("dns-version.{}", mcs::CLUSTERSET_ZONE)])
        .collect();
    wait_answering(&node.netns_path(), &probe, timeout)
        .with_context(|| format!("{label}: dnsmasq; log:\n{}", process.log_text()))?;
    Ok(process)
}

/// Whether something listens on UDP port 53 at the node-local DNS address in `netns`.
fn listening(netns: &Path) -> Result<bool> {
    let out = crate::netns::exec(netns, &["ss", "-Hlun", &format!("src {}:{DNS_PORT}", crate::NODE_LOCAL_DNS)])?;
    Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
}

/// Waits until `dig` run in `netns` prints the version record.
fn wait_answering(netns: &Path, dig: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = crate::netns::exec(netns, dig)?;
        if String::from_utf8_lossy(&out.stdout).contains(mcs::DNS_SPEC_VERSION) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no answer to `{}` within {timeout:?}", dig.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `/etc/resolv.conf` of a pod in `namespace` of a lab cluster (`dnsPolicy: ClusterFirst`),
/// written under the lab directory; its path.
///
/// # Errors
/// When it cannot be written.
pub fn resolv_conf(lab: &Lab, namespace: &str) -> Result<PathBuf> {
    let path = lab.root().join("dns").join(format!("resolv-{namespace}.conf"));
    let text = format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\nnameserver {}\noptions ndots:5\n",
        crate::NODE_LOCAL_DNS
    );
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        write_atomically(&path, &text)?;
    }
    Ok(path)
}

/// The resolver address pods use.
#[must_use]
pub fn resolver() -> Ipv4Addr {
    crate::NODE_LOCAL_DNS
}

/// The Corefile a kubeadm cluster starts with (`kube-system/coredns`), which the lab's clusters
/// start with too.
pub const KUBEADM_COREFILE: &str = ".:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
";

/// The cluster IP of the `slicenet-system/slice-dns` Service in the lab's clusters.
pub const SLICE_DNS_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);

/// The DNS objects a lab cluster starts with: `kube-system` and its CoreDNS ConfigMap (the
/// kubeadm Corefile), and the slice-dns Service slicenet's install creates.
pub(crate) fn cluster_objects() -> Vec<Value> {
    vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": slice_api::names::COREDNS_CONFIG_MAP, "namespace": "kube-system"},
            "data": {slice_api::corefile::COREFILE_KEY: KUBEADM_COREFILE}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": slice_api::names::SLICE_DNS_SERVICE, "namespace": SYSTEM_NAMESPACE,
                         "labels": {"app.kubernetes.io/name": "slice-dns"}},
            "spec": {"clusterIP": SLICE_DNS_CLUSTER_IP.to_string(),
                     "ports": [{"name": "dns", "port": DNS_PORT, "protocol": "UDP"},
                               {"name": "dns-tcp", "port": DNS_PORT, "protocol": "TCP"}]}}),
    ]
}

/// What `dig +noall +comments +answer` printed: the response code and each answer's data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigAnswer {
    /// `NOERROR`, `NXDOMAIN`, …; empty when no reply came.
    pub status: String,
    /// The data of each answer record (`10.80.0.3`, `0 50 5432 db-0.c1.db…`), sorted.
    pub data: Vec<String>,
}

/// Parses the output of `dig +noall +comments +answer`.
#[must_use]
pub fn parse_dig(text: &str) -> DigAnswer {
    let status = text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or_default().to_owned();
    let mut data: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() > 4).then(|| fields[4..].join(" "))
        })
        .collect();
    data.sort();
    DigAnswer { status, data }
}

/// `dig +noall +comments +answer ARGS` in pod `namespace/name` of `cluster`, through the pod's
/// own resolver configuration ([`super::ControlPlane::exec`]).
///
/// # Errors
/// When the pod does not exist or dig cannot run.
pub fn dig(
    cp: &mut super::ControlPlane,
    lab: &Lab,
    (cluster, namespace, name): (&str, &str, &str),
    args: &[&str],
) -> Result<DigAnswer> {
    let mut argv = vec!["dig", "+noall", "+comments", "+answer", "+time=2", "+tries=2"];
    argv.extend_from_slice(args);
    let out = cp.exec(lab, cluster, namespace, name, &argv)?;
    Ok(parse_dig(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dig_output_gives_the_code_and_the_data() {
        let text = ";; Got answer:\n;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n\
                    ;; flags: qr aa rd; QUERY: 1, ANSWER: 2\n\n\
                    _pg._tcp.db.shop.svc.clusterset.local. 5 IN SRV 0 50 5432 db-1.c2.db.shop.svc.clusterset.local.\n\
                    _pg._tcp.db.shop.svc.clusterset.local. 5 IN SRV 0 50 5432 db-0.c1.db.shop.svc.clusterset.local.\n";
        let a = parse_dig(text);
        assert_eq!(a.status, "NOERROR");
        assert_eq!(
            a.data,
            ["0 50 5432 db-0.c1.db.shop.svc.clusterset.local.", "0 50 5432 db-1.c2.db.shop.svc.clusterset.local."]
        );
        let none = parse_dig(";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 2\n");
        assert_eq!((none.status.as_str(), none.data.len()), ("NXDOMAIN", 0));
        assert_eq!(parse_dig(";; connection timed out; no servers could be reached\n").status, "");
    }
}
