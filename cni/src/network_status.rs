//! The Multus `k8s.v1.cni.cncf.io/network-status` entry of the slice attachment.
//!
//! As a Multus delegate, slice-cni only returns its result: Multus turns the sandbox interface
//! and its `ips` into the entry itself. Chained, there is no Multus, so slice-cni builds the same
//! entry ([`entry`]) and records it for the pod (`slice_api::network_status`: the record file
//! under `statusDir`, written atomically on ADD and removed on DEL and GC); an agent patches it
//! into the pod's annotation, so `kubectl get pod -o yaml` shows the slice address either way.

use serde_json::{Map, Value, json};
pub use slice_api::network_status::{PodRecord, load, record_file_container_id, record_path, remove, store};

/// The network-status entry for interface `ifname` of a CNI result, as Multus writes it: `name`,
/// `interface`, `ips` (addresses without prefix length), `mac`, `mtu` when the result has it,
/// `dns`. `None` when the result has no such interface inside the sandbox.
pub fn entry(network_name: &str, result: &Value, ifname: &str) -> Option<Value> {
    let interfaces = result.get("interfaces")?.as_array()?;
    let (index, iface) = interfaces.iter().enumerate().find(|(_, i)| {
        i.get("name").and_then(Value::as_str) == Some(ifname)
            && i.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
    })?;
    let ips: Vec<Value> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| ip.get("interface").and_then(Value::as_u64) == Some(index as u64))
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .map(|a| Value::String(a.split('/').next().unwrap_or(a).to_owned()))
        .collect();
    let mut out = Map::new();
    out.insert("name".into(), json!(network_name));
    out.insert("interface".into(), json!(ifname));
    out.insert("ips".into(), Value::Array(ips));
    if let Some(mac) = iface.get("mac").and_then(Value::as_str) {
        out.insert("mac".into(), json!(mac));
    }
    if let Some(mtu) = iface.get("mtu").and_then(Value::as_u64) {
        out.insert("mtu".into(), json!(mtu));
    }
    // The slice never carries the pod's default route (`default` is omitted when false, as
    // Multus does); DNS stays with the primary network.
    out.insert("dns".into(), json!({}));
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chained_result() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:00"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/x"},
                {"name": "slice0", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/x", "mtu": 1450}
            ],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2},
                    {"address": "10.80.0.2/32", "interface": 3}],
            "routes": [{"dst": "10.80.0.0/16", "gw": "10.80.0.1"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        })
    }

    #[test]
    fn entry_from_a_chained_result() {
        let e = entry("shop/slice-blue", &chained_result(), "slice0").unwrap();
        assert_eq!(
            e,
            json!({"name": "shop/slice-blue", "interface": "slice0", "ips": ["10.80.0.2"],
                   "mac": "02:00:00:00:00:01", "mtu": 1450, "dns": {}})
        );
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["name", "interface", "ips", "mac", "mtu", "dns"]);
        // Host-side interfaces and unknown names give nothing.
        assert_eq!(entry("x", &chained_result(), "cni0"), None);
        assert_eq!(entry("x", &chained_result(), "net9"), None);
        assert_eq!(entry("x", &json!({}), "slice0"), None);
    }

    #[test]
    fn entry_from_a_delegate_result_without_mtu() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:07", "sandbox": "/proc/1/ns/net"}],
            "ips": [{"address": "fd00:80::5/128", "interface": 0}], "dns": {}
        });
        assert_eq!(
            entry("shop/slice-blue", &result, "net1").unwrap(),
            json!({"name": "shop/slice-blue", "interface": "net1", "ips": ["fd00:80::5"], "mac": "02:00:00:00:00:07", "dns": {}})
        );
    }
}
