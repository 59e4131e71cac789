//! The lab itself, with `slice-cni` left out of the chain (bridge + host-local only): real CRI
//! pods through a per-node containerd, connectivity, pod removal and teardown without leaks.
//! Needs root; fails (does not skip) without it. Each test uses its own lab prefix, so tests
//! run in parallel.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{Lab, LabOptions, PodSpec};

fn lab(prefix: &str) -> Lab {
    Lab::with_options(prefix, LabOptions::without_slice_cni()).expect("lab (needs root)")
}

/// Nothing of lab `prefix` is left: namespaces, processes, mounts, directory.
fn assert_no_leftovers(prefix: &str) {
    let root = format!("{}/{prefix}", e2e::LAB_BASE);
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = netns.iter().filter(|n| n.starts_with(&format!("{prefix}-"))).collect();
    assert!(ours.is_empty(), "namespaces left: {ours:?}");
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&format!("{root}/")) {
                procs.push(format!("{:?}: {cmdline}", entry.file_name()));
            }
        }
    }
    assert!(procs.is_empty(), "processes left: {procs:#?}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&root)).collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    assert!(!Path::new(&root).exists(), "{root} left");
}

#[test]
fn pods_get_eth0_from_bridge_and_reach_each_other() {
    let mut lab = lab("lab1p");
    let started = Instant::now();
    lab.add_cluster("c1", 2).expect("cluster c1");
    eprintln!("1 cluster × 2 nodes up in {:?}", started.elapsed());

    let n1 = lab.node("c1", "n1");
    let a = n1.run_pod(PodSpec::new("lab1p-ns", "a").label("app", "a")).unwrap();
    let b = n1.run_pod(PodSpec::new("lab1p-ns", "b")).unwrap();
    let c = lab.node("c1", "n2").run_pod(PodSpec::new("lab1p-ns", "c")).unwrap();
    assert_eq!(a.lab_name(), "c1/lab1p-ns/a");

    let (ip_a, ip_b, ip_c) = (a.ipv4("eth0").unwrap(), b.ipv4("eth0").unwrap(), c.ipv4("eth0").unwrap());
    assert!(n1.pod_cidr().contains(&ip_a), "{ip_a} not in {}", n1.pod_cidr());
    assert!(n1.pod_cidr().contains(&ip_b), "{ip_b} not in {}", n1.pod_cidr());
    assert_ne!(ip_a, ip_b);
    assert_eq!(c.ipv4("eth0").unwrap().octets()[2], 2, "n2's pods come from 10.244.2.0/24: {ip_c}");
    // The node's namespace holds the bridge; the pods are not in it.
    assert!(n1.exec(&["ip", "link", "show", "cni0"]).unwrap().status.success());

    // The sandbox runs in this lab's cgroup parent (so a crashed lab's cgroups can be found).
    let pid = n1.pod_info(&a.sandbox_id).unwrap()["pid"].as_u64().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains("/slicenet-lab/lab1p/"), "{cgroups}");

    a.exec_ok(&["ping", "-c", "2", "-W", "2", &ip_b.to_string()]).unwrap();
    b.exec_ok(&["ping", "-c", "2", "-W", "2", &ip_a.to_string()]).unwrap();

    let pods = n1.list_pods().unwrap();
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|p| p.ready && p.namespace == "lab1p-ns"));

    // Stop + remove: the pod's namespace goes away, the sandbox is forgotten.
    assert!(a.netns_exists());
    n1.remove_pod(&a).unwrap();
    assert!(!a.netns_exists(), "{} still exists", a.netns_path.display());
    let pods = n1.list_pods().unwrap();
    assert_eq!(pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["b"]);

    // How long a kubelet-style pod cycle takes here.
    let cycles = 5;
    let mut total = Duration::ZERO;
    for i in 0..cycles {
        let t = Instant::now();
        let pod = n1.run_pod(PodSpec::new("lab1p-ns", format!("cycle{i}"))).unwrap();
        n1.remove_pod(&pod).unwrap();
        total += t.elapsed();
    }
    eprintln!("RunPodSandbox + Stop + Remove: {:?} per cycle (mean of {cycles})", total / cycles);

    let t = Instant::now();
    lab.teardown().unwrap();
    eprintln!("teardown with 2 pods left in {:?}", t.elapsed());
    assert_no_leftovers("lab1p");
}

#[test]
fn cni_errors_come_back_and_cleanup_recovers_a_crashed_lab() {
    let mut lab = lab("lab1t");
    lab.add_cluster("c7", 1).expect("cluster c7");
    let n1 = lab.node("c7", "n1");

    // A broken chain: RunPodSandbox fails with containerd's message naming the CNI problem.
    // (Break `bridge` itself: a failed host-local after bridge leaves a port-less cni0 whose
    // MAC the reference bridge plugin 1.1.1 then fails to set on the next ADD.)
    let bridge = n1.cni_bin_dir().join("bridge");
    std::fs::remove_file(&bridge).unwrap();
    let err = n1.run_pod(PodSpec::new("lab1t-ns", "broken")).unwrap_err().to_string();
    assert!(err.contains(r#"failed to find plugin "bridge""#), "{err}");
    assert!(err.contains("c7/lab1t-ns/broken"), "{err}");
    std::os::unix::fs::symlink("/usr/lib/cni/bridge", &bridge).unwrap();

    let pod = n1.run_pod(PodSpec::new("lab1t-ns", "survivor")).unwrap();
    assert!(pod.netns_exists());
    assert_eq!(pod.netns_path.file_name().unwrap().to_string_lossy().get(..4), Some("cni-"));
    assert!(!Path::new("/run/netns").join(pod.netns_path.file_name().unwrap()).exists());

    // A crash: the Lab value vanishes without its destructor; cleanup works from what is left.
    let pid_file = format!("{}/lab1t/c7/n1/containerd/containerd.pid", e2e::LAB_BASE);
    let containerd_pid: i32 = std::fs::read_to_string(pid_file).unwrap().trim().parse().unwrap();
    std::mem::forget(lab);
    e2e::cleanup("lab1t").unwrap();
    assert_no_leftovers("lab1t");
    // Reap the killed containerd, our child, which the forgotten Lab would have reaped.
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(containerd_pid), None).unwrap();
    e2e::cleanup("lab1t").unwrap(); // idempotent
}

/// A stand-in for `slice-operator node-agent`: writes a node-state file for every slice of its
/// configuration (a fixed state, enough for the plumbing), then waits for SIGTERM.
const FAKE_AGENT: &str = r#"#!/bin/sh
[ "$1" = node-agent ] && [ "$2" = --config ] || { echo "usage: node-agent --config FILE" >&2; exit 2; }
state=$(sed -n 's/^ *"stateDir": "\(.*\)",$/\1/p' "$3")
mkdir -p "$state"
# Log first: the test reads the log as soon as a state file appears.
echo "fake agent $$ in $(readlink /proc/self/ns/net)"
for slice in $(sed -n 's/^ *"name": "\([a-z0-9-]*\)",$/\1/p' "$3"); do
  cat > "$state/$slice.json.tmp" <<JSON
{"slice":"$slice","vni":100,"routerNetns":"/run/netns/x-$slice","nodePrefix":"10.80.0.0/26",
 "routerAddress":"10.80.0.1","sliceSubnet":"10.80.0.0/16","mtu":1450,"namespaces":["shop"]}
JSON
  mv "$state/$slice.json.tmp" "$state/$slice.json"
done
trap 'exit 0' TERM INT
while :; do sleep 0.05; done
"#;

#[test]
fn agent_plumbing_with_a_stand_in_agent() {
    let bin = tempfile::tempdir().unwrap();
    let agent = bin.path().join("slice-operator");
    std::fs::write(&agent, FAKE_AGENT).unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let options = LabOptions { bin_dir: bin.path().to_path_buf(), ..LabOptions::without_slice_cni() };
    let mut lab = Lab::with_options("lab1a", options).expect("lab (needs root)");
    lab.add_cluster("c1", 2).expect("cluster c1");
    let cluster = lab.cluster("c1");

    let slices = [e2e::LabSlice::new("blue", 100, "10.80.0.0/16", &["shop"])];
    let configs = cluster.agent_configs(&slices).unwrap();
    assert_eq!(configs[1].slices[0].node_prefix.to_string(), "10.80.0.64/26");
    assert_eq!(configs[1].slices[0].peers[0].underlay_address.to_string(), "198.18.0.11");
    assert_eq!(configs[0].router_netns("blue").to_string_lossy(), "/run/netns/lab1a-c1-n1-blue");
    cluster.start_agents(&slices).unwrap();

    let n1 = lab.node("c1", "n1");
    let state = n1.wait_slice_ready("blue", Duration::from_secs(30)).unwrap();
    assert_eq!(state.slice, "blue");
    assert!(n1.agent_running());
    // The agent runs inside the node's namespace (the stand-in logs its `net:[INODE]`).
    let log = std::fs::read_to_string(n1.agent_log()).unwrap();
    let node_ns = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(n1.netns_path()).unwrap());
    assert!(log.contains(&format!("net:[{node_ns}]")), "{log}");
    assert!(log.contains("fake agent"), "{log}");

    // Update: a second slice appears after a restart (the stand-in reads its file only once).
    let more = [slices[0].clone(), e2e::LabSlice::new("red", 200, "10.90.0.0/16", &["shop"])];
    cluster.update_agent_configs(&more).unwrap();
    n1.restart_agent().unwrap();
    n1.wait_slice_ready("red", Duration::from_secs(30)).unwrap();
    n1.stop_agent().unwrap();
    assert!(!n1.agent_running());
    n1.stop_agent().unwrap(); // stopping a stopped agent is fine

    // A missing state file times out with a message naming the slice.
    let err = n1.wait_slice_ready("green", Duration::from_millis(200)).unwrap_err().to_string();
    assert!(err.contains("green"), "{err}");

    // The other agent is still running: teardown stops it.
    assert!(lab.node("c1", "n2").agent_running());
    lab.teardown().unwrap();
    assert_no_leftovers("lab1a");
}
