//! The QoS plan without root: the tree from a configuration, the changes against what the kernel
//! holds (through `dataplane::tc::FakeTc`), idempotence, in-place changes, removal.

use dataplane::tc::FakeTc;
use serde_json::json;
use slice_api::qos::SliceQos;

use super::*;

#[derive(Default)]
struct FakeTable(Option<Vec<Value>>, usize);

impl QosTable for FakeTable {
    fn list(&mut self) -> Result<Option<Vec<Value>>, dataplane::Error> {
        Ok(self.0.clone())
    }
    fn replace(&mut self, objects: &[Value]) -> Result<(), dataplane::Error> {
        self.0 = Some(objects.to_vec());
        self.1 += 1;
        Ok(())
    }
    fn delete(&mut self) -> Result<(), dataplane::Error> {
        self.0 = None;
        self.1 += 1;
        Ok(())
    }
}

fn qos(guaranteed: u64, ceiling: u64, priority: u8, port: u16) -> SliceQos {
    SliceQos {
        guaranteed_kbps: guaranteed,
        ceiling_kbps: Some(ceiling),
        priority,
        gateway_port: port,
        uplink_kbps: 40_000,
    }
}

/// Two QoS slices (blue 10/30 prio 1, red 20/40 prio 3) and one without QoS.
fn config() -> NodeAgentConfig {
    let slice = |name: &str, vni: u32, net: &str, q: Option<SliceQos>| {
        json!({"name": name, "vni": vni, "sliceSubnet": format!("{net}.0.0/16"), "nodePrefix": format!("{net}.0.0/26"),
               "qos": q})
    };
    let c: NodeAgentConfig = serde_json::from_value(json!({
        "node": "n1", "underlayAddress": "198.18.0.11",
        "slices": [slice("blue", 100, "10.80", Some(qos(10_000, 30_000, 1, 51820))),
                   slice("red", 101, "10.81", Some(qos(20_000, 40_000, 3, 51821))),
                   slice("green", 102, "10.82", None)],
    }))
    .unwrap();
    c.validate().unwrap();
    c
}

fn fake() -> FakeTc {
    FakeTc {
        addresses: vec![("198.18.0.11".parse().unwrap(), "eth0".into())],
        leaf: "pfifo".into(),
        ..FakeTc::default()
    }
}

#[test]
fn the_tree_has_a_root_at_the_uplink_a_default_and_a_class_per_qos_slice() {
    let tree = desired(&config()).unwrap();
    assert_eq!(tree.classes[0], HtbClass { minor: 1, parent: None, rate_kbps: 40_000, ceil_kbps: 40_000, prio: 0 });
    // The default class gets what the guarantees leave (10 Mbit/s), and may use the whole uplink.
    assert_eq!(tree.classes[1], HtbClass { minor: 2, parent: Some(1), rate_kbps: 10_000, ceil_kbps: 40_000, prio: 7 });
    let by_slice: BTreeMap<&str, &SliceClass> = tree.slices.iter().map(|s| (s.slice.as_str(), s)).collect();
    assert_eq!(by_slice.len(), 2, "green has no QoS: default class");
    let blue = &by_slice["blue"].class;
    assert_eq!((blue.rate_kbps, blue.ceil_kbps, blue.prio, blue.parent), (10_000, 30_000, 1, Some(1)));
    assert_eq!(by_slice["red"].gateway_port, 51821);
    assert!(blue.minor >= 0x10 && blue.minor != by_slice["red"].class.minor);
    // No QoS slice: no tree.
    let mut none = config();
    none.slices.iter_mut().for_each(|s| s.qos = None);
    assert_eq!(desired(&none), None);
}

#[test]
fn minors_are_stable_and_distinct() {
    let a = minors(["blue", "red"]);
    let b = minors(["red", "blue", "green"]);
    assert_eq!(a["blue"], b["blue"]);
    assert_eq!(a["red"], b["red"]);
    let many = minors((0..2000).map(|i| format!("s{i}")).collect::<Vec<_>>().iter().map(String::as_str));
    let distinct: BTreeSet<u16> = many.values().copied().collect();
    assert_eq!(distinct.len(), 2000);
    assert!(distinct.iter().all(|m| (0x10..0xfff0).contains(m)));
}

#[test]
fn the_table_classifies_each_gateway_port_on_the_uplink() {
    let tree = desired(&config()).unwrap();
    let t = table(&tree, "eth0");
    assert_eq!(t[0], TABLE.object());
    assert_eq!(t[1]["chain"]["hook"], "postrouting");
    let rules: Vec<&Value> = t.iter().filter_map(|o| o.get("rule")).collect();
    assert_eq!(rules.len(), 2);
    for (rule, s) in rules.iter().zip(&tree.slices) {
        assert_eq!(rule["expr"][0]["match"]["right"], "eth0");
        assert_eq!(rule["expr"][1]["match"]["right"], s.gateway_port);
        assert_eq!(rule["expr"][2]["mangle"]["value"], format!("5c:{:x}", s.class.minor));
    }
}

#[test]
fn a_fresh_node_gets_the_whole_tree_and_a_second_pass_changes_nothing() {
    let c = config();
    let (mut tc, mut nft) = (fake(), FakeTable::default());
    let first = reconcile(&c, &mut tc, &mut nft).unwrap();
    assert_eq!(first.device.as_deref(), Some("eth0"));
    assert_eq!(first.leaf.as_deref(), Some("pfifo"));
    assert_eq!(first.tc[0], TcChange::ReplaceRoot { default_minor: 2 });
    assert_eq!(first.tc.iter().filter(|c| matches!(c, TcChange::AddClass(_))).count(), 4);
    assert_eq!(first.tc.iter().filter(|c| matches!(c, TcChange::ReplaceLeaf { .. })).count(), 3, "no leaf on the root");
    assert!(first.table_changed);
    let again = reconcile(&c, &mut tc, &mut nft).unwrap();
    assert!(again.tc.is_empty() && !again.table_changed, "{again:?}");
    assert_eq!(nft.1, 1);
}

#[test]
fn a_profile_change_is_made_in_place_and_a_removed_slice_loses_its_class() {
    let mut c = config();
    let (mut tc, mut nft) = (fake(), FakeTable::default());
    reconcile(&c, &mut tc, &mut nft).unwrap();
    let blue_minor = minors(["blue", "red"])["blue"];

    c.slices[0].qos = Some(qos(15_000, 35_000, 0, 51820));
    let changed = reconcile(&c, &mut tc, &mut nft).unwrap();
    let blue = HtbClass { minor: blue_minor, parent: Some(1), rate_kbps: 15_000, ceil_kbps: 35_000, prio: 0 };
    let default = HtbClass { minor: 2, parent: Some(1), rate_kbps: 5_000, ceil_kbps: 40_000, prio: 7 };
    assert_eq!(changed.tc, [TcChange::ChangeClass(default), TcChange::ChangeClass(blue)], "no root, no leaf touched");
    assert!(!changed.table_changed);

    c.slices.remove(0);
    let removed = reconcile(&c, &mut tc, &mut nft).unwrap();
    assert_eq!(removed.tc[0], TcChange::DeleteClass { minor: blue_minor });
    assert!(removed.table_changed);
    let rules = nft.0.as_ref().unwrap().iter().filter(|o| o.get("rule").is_some()).count();
    assert_eq!(rules, 1);
    let state = &tc.devices["eth0"];
    assert!(
        !state.classes.iter().any(|c| c.minor == blue_minor) && !state.leaves.iter().any(|(m, _)| *m == blue_minor)
    );

    // The last QoS slice gone: table first, then the tree.
    c.slices.iter_mut().for_each(|s| s.qos = None);
    let gone = reconcile(&c, &mut tc, &mut nft).unwrap();
    assert_eq!(gone.tc, [TcChange::DeleteRoot]);
    assert!(nft.0.is_none());
    assert!(!tc.devices["eth0"].is_ours());
    assert_eq!(reconcile(&c, &mut tc, &mut nft).unwrap(), QosOutcome::default());
}

#[test]
fn someone_elses_root_is_replaced_only_when_there_is_qos_and_left_alone_otherwise() {
    let mut tc = fake();
    tc.devices.insert("eth0".into(), TcState { root: Some(("pfifo_fast".into(), 0)), ..TcState::default() });
    let mut none = config();
    none.slices.iter_mut().for_each(|s| s.qos = None);
    let out = reconcile(&none, &mut tc, &mut FakeTable::default()).unwrap();
    assert!(out.tc.is_empty());
    assert_eq!(tc.devices["eth0"].root, Some(("pfifo_fast".into(), 0)));
    let out = reconcile(&config(), &mut tc, &mut FakeTable::default()).unwrap();
    assert_eq!(out.tc[0], TcChange::ReplaceRoot { default_minor: 2 });
}

#[test]
fn a_failed_change_is_an_error_and_the_next_pass_completes_the_tree() {
    let c = config();
    let (mut tc, mut nft) = (fake(), FakeTable::default());
    tc.fail_at = Some(3);
    let err = reconcile(&c, &mut tc, &mut nft).unwrap_err();
    assert!(err.to_string().contains("changing the QoS tree on eth0"), "{err}");
    let out = reconcile(&c, &mut tc, &mut nft).unwrap();
    assert!(!out.tc.is_empty());
    assert!(reconcile(&c, &mut tc, &mut nft).unwrap().tc.is_empty());
    assert_eq!(tc.devices["eth0"].classes.len(), 4);
}

#[test]
fn no_device_with_the_underlay_address_is_waited_for() {
    let mut tc = FakeTc { leaf: "pfifo".into(), ..FakeTc::default() };
    let err = reconcile(&config(), &mut tc, &mut FakeTable::default()).unwrap_err();
    assert!(err.is_only_waiting(), "{err}");
    assert!(err.to_string().contains("198.18.0.11"));
}

#[test]
fn the_status_names_device_leaf_and_classes() {
    let c = config();
    let (mut tc, mut nft) = (fake(), FakeTable::default());
    let out = reconcile(&c, &mut tc, &mut nft).unwrap();
    let s = status(desired(&c).as_ref(), &out);
    assert_eq!(s["leafQdisc"], "pfifo");
    assert_eq!(s["device"], "eth0");
    assert_eq!(s["slices"].as_array().unwrap().len(), 2);
    assert_eq!(status(None, &QosOutcome::default()), json!({"enabled": false}));
}
