//! `slice-cni`'s input: the `CNI_*` environment and the network configuration on stdin, through
//! everything that reads them before the plugin touches the system (environment and config
//! checks, version check, membership decision, the result built on `prevResult`).
//!
//! Input format: `KEY=VALUE` environment lines, an empty line, then the stdin bytes. Without an
//! empty line the whole input is stdin and the environment is empty.

use std::collections::BTreeMap;

use serde_json::Value;
use slice_api::NodeState;
use slice_cni::attach::Attached;
use slice_cni::config::{NetConf, NodePaths};
use slice_cni::membership::{self, Decision, States};
use slice_cni::result::{self, SliceInterface};
use slice_cni::spec::{self, CniError, Command, Env, code};

use crate::MAX_INPUT;

pub const DICTIONARY: &[&str] = &[
    "CNI_COMMAND=",
    "CNI_CONTAINERID=",
    "CNI_NETNS=",
    "CNI_IFNAME=",
    "CNI_ARGS=",
    "CNI_PATH=",
    "ADD",
    "DEL",
    "CHECK",
    "VERSION",
    "STATUS",
    "GC",
    "K8S_POD_NAMESPACE=",
    "K8S_POD_NAME=",
    ";",
    "cniVersion",
    "name",
    "type",
    "slice",
    "sliceInterface",
    "stateDir",
    "ipamDir",
    "statusDir",
    "logFile",
    "runtimeConfig",
    "prevResult",
    "io.kubernetes.cri.pod-annotations",
    "slicenet.io/slice",
    "slicenet.io/exclude",
    "cni.dev/valid-attachments",
    "containerID",
    "ifname",
    "interfaces",
    "ips",
    "sandbox",
    "1.1.0",
    "1.0.0",
    "0.4.0",
    "0.3.1",
    "blue",
    "shop",
];

/// The node states the membership decision sees: one readable slice, one unreadable.
fn states() -> States {
    let blue = NodeState {
        slice: "blue".into(),
        vni: 100,
        router_netns: "/run/netns/fuzz".into(),
        node_prefix: "10.80.1.0/26".parse().expect("literal"),
        router_address: "10.80.0.1".parse().expect("literal"),
        slice_subnet: "10.80.0.0/16".parse().expect("literal"),
        mtu: 1400,
        namespaces: vec!["shop".into(), "both".into()],
        gateway_namespace: Some("slicenet-gateway".into()),
        secondary: None,
    };
    let mut red = blue.clone();
    red.slice = "red".into();
    red.namespaces = vec!["both".into()];
    BTreeMap::from([
        ("blue".to_owned(), Ok(blue)),
        ("red".to_owned(), Ok(red)),
        ("broken".to_owned(), Err("unreadable".to_owned())),
    ])
}

fn assert_error(e: &CniError, codes: &[u32], what: &str) {
    assert!(codes.contains(&e.code), "{what}: code {} not in {codes:?}: {e}", e.code);
    assert!(!e.msg.is_empty(), "{what}: error without a message");
}

pub fn run(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let (env_text, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 2..]),
        None => (String::new(), data),
    };
    let vars: BTreeMap<String, String> =
        env_text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let get = |k: &str| vars.get(k).cloned();

    // The VERSION path and every refusal before the config is accepted are pure, so the real
    // entry point runs too.
    let command_name = vars.get("CNI_COMMAND").map(String::as_str);
    let env = match Env::from_lookup(get) {
        Ok(env) => env,
        Err(e) => {
            assert_error(&e, &[code::INVALID_ENV], "environment");
            return;
        }
    };
    // CNI_ARGS prints back to what it parsed from.
    let printed: Vec<String> = env.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(spec::parse_args(&printed.join(";")).expect("printed CNI_ARGS re-parse"), env.args);
    for e in [env.require_container_id().err(), env.require_ifname().err(), env.require_netns().err()].iter().flatten()
    {
        assert_error(e, &[code::INVALID_ENV], "CNI_* check");
    }
    let command = command_name.filter(|c| !c.is_empty()).map(Command::parse);
    if let Some(Err(e)) = &command {
        assert_error(e, &[code::INVALID_ENV], "CNI_COMMAND");
    }
    let conf = NetConf::parse(stdin);
    if command_name == Some("VERSION") || conf.is_err() || command.is_none() {
        let (out, failed) = slice_cni::invoke(|k| vars.get(k).cloned(), &mut &stdin[..]);
        if failed {
            assert!(out["code"].is_u64() && out["msg"].is_string(), "error output: {out}");
            assert!(out["cniVersion"].is_string(), "error output without cniVersion: {out}");
        } else {
            assert_eq!(command_name, Some("VERSION"), "only VERSION succeeds without a config: {out}");
            assert!(out["supportedVersions"].is_array(), "VERSION output: {out}");
        }
    }
    let conf = match conf {
        Ok(conf) => conf,
        Err(e) => {
            assert_error(&e, &[code::DECODE, code::INVALID_CONFIG], "config");
            return;
        }
    };
    // A delegate config (a NAD) never chooses a path: only the node's environment or defaults.
    let node = match NodePaths::from_lookup(|k| vars.get(k).cloned()) {
        Ok(node) => node,
        Err(e) => {
            assert_error(&e, &[code::INVALID_ENV], "node paths");
            return;
        }
    };
    let given = [&conf.state_dir, &conf.ipam_dir, &conf.status_dir, &conf.log_file].map(Option::is_some);
    let conf = conf.with_node_paths(&node);
    if conf.standalone() {
        assert_eq!(
            (&conf.state_dir, &conf.ipam_dir, &conf.status_dir, &conf.log_file),
            (&node.state_dir, &node.ipam_dir, &node.status_dir, &node.log_file),
            "a delegate config chose a path"
        );
        assert_eq!(conf.ignored_path_keys.len(), given.iter().filter(|g| **g).count());
    }
    assert!(!conf.name.is_empty() && !conf.plugin_type.is_empty(), "accepted without name or type");
    if let Some(Ok(command)) = command
        && let Err(e) = spec::check_version(&conf.cni_version, command)
    {
        assert_error(&e, &[code::INCOMPATIBLE_VERSION], "version");
    }
    let _ = (conf.state_dir(), conf.ipam_dir(), conf.status_dir(), conf.standalone());
    let pod = membership::Pod {
        requested_by_config: conf.slice.as_deref(),
        namespace: env.pod_namespace(),
        annotations: conf.annotations(),
    };
    let state = match membership::decide(pod, &states()) {
        Ok(Decision::Attach(state)) => Some(state),
        Ok(Decision::Skip(why)) => {
            assert!(!why.is_empty());
            None
        }
        Err(e) => {
            let codes = [code::INVALID_ENV, code::TRY_AGAIN, code::NOT_A_MEMBER, code::AMBIGUOUS_SLICE];
            assert_error(&e, &codes, "membership");
            None
        }
    };
    if let Some(prev) = &conf.prev_result {
        let _ = slice_cni::network_status::entry("shop/slice-blue", prev, "slice0");
    }
    if let Some(state) = state {
        let ifname = conf.slice_interface.as_deref().unwrap_or("slice0");
        let attached = Attached { mac: [2, 0, 0, 0, 0, 1], mtu: state.mtu };
        let ips = ["10.80.1.2".parse().expect("literal")];
        let slice = SliceInterface { ifname, sandbox: "/run/netns/pod", ips: &ips, attached: &attached, state: &state };
        let base = conf.prev_result.clone().unwrap_or_else(|| result::empty(&conf.cni_version));
        let out = result::with_slice(base, &conf.cni_version, &slice);
        let last = out["interfaces"].as_array().and_then(|l| l.last()).cloned().unwrap_or(Value::Null);
        assert_eq!(last["name"], ifname, "the slice interface is the result's last: {out}");
        // What chained mode records for Multus is found in that result.
        assert!(slice_cni::network_status::entry("shop/slice-blue", &out, ifname).is_some(), "{out}");
    }
}
