//! The router's table as nft text (`nft list table` style), rendered from the JSON objects
//! [`super::table`] builds, for people: `slicectl policy show` prints what a node's
//! configuration compiles to. Only the shapes slicenet writes are known; anything else is
//! printed as its JSON, so nothing is silently left out.

use std::fmt::Write;

use serde_json::Value;

/// The objects of one table (as [`super::table`] returns them) as nft text.
pub fn render(objects: &[Value]) -> String {
    let mut out = String::new();
    let Some(table) = objects.iter().find_map(|o| o.get("table")) else { return out };
    let _ = writeln!(out, "table {} {} {{", text(&table["family"]), text(&table["name"]));
    for o in objects {
        if let Some(set) = o.get("set").or_else(|| o.get("map")) {
            let kind = if o.get("map").is_some() { "map" } else { "set" };
            let _ = writeln!(out, "\t{kind} {} {{", text(&set["name"]));
            let mut set_type = match &set["type"] {
                Value::Array(parts) => parts.iter().map(text).collect::<Vec<_>>().join(" . "),
                other => text(other),
            };
            if let Some(data) = set.get("map") {
                set_type = format!("{set_type} : {}", text(data));
            }
            let _ = writeln!(out, "\t\ttype {set_type}");
            if let Some(Value::Array(flags)) = set.get("flags") {
                let _ = writeln!(out, "\t\tflags {}", flags.iter().map(text).collect::<Vec<_>>().join(","));
            }
            if let Some(Value::Array(elem)) = set.get("elem") {
                let elements: Vec<String> = elem
                    .iter()
                    .map(|e| match e {
                        Value::Array(pair) if pair.len() == 2 => {
                            format!("{} : {}", value(&pair[0]), statement(&pair[1]))
                        }
                        other => value(other),
                    })
                    .collect();
                let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
            }
            let _ = writeln!(out, "\t}}\n");
        }
    }
    for o in objects {
        let Some(chain) = o.get("chain") else { continue };
        let name = text(&chain["name"]);
        let _ = writeln!(out, "\tchain {name} {{");
        if let Some(hook) = chain.get("hook") {
            let _ = writeln!(
                out,
                "\t\ttype {} hook {} priority {}; policy {};",
                text(&chain["type"]),
                text(hook),
                value(&chain["prio"]),
                text(&chain["policy"])
            );
        }
        for r in objects.iter().filter_map(|o| o.get("rule")).filter(|r| r["chain"] == chain["name"]) {
            let mut line: Vec<String> = r["expr"].as_array().into_iter().flatten().map(statement).collect();
            if let Some(comment) = r.get("comment") {
                line.push(format!("comment {comment}"));
            }
            let _ = writeln!(out, "\t\t{}", line.join(" "));
        }
        let _ = writeln!(out, "\t}}\n");
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out.push_str("}\n");
    out
}

/// What a node agent configuration compiles to, slice by slice (only `slice` when given): a
/// heading with the policy counts, then the table as nft text, or why there is none.
///
/// # Errors
/// When `slice` is given and the configuration has no such slice.
pub fn show(config: &slice_api::node::NodeAgentConfig, slice: Option<&str>) -> Result<String, String> {
    let mut out = String::new();
    let slices: Vec<_> = config.slices.iter().filter(|s| slice.is_none_or(|name| s.name == name)).collect();
    if let Some(name) = slice
        && slices.is_empty()
    {
        return Err(format!("node {} has no slice {name}", config.node));
    }
    for s in slices {
        let _ = write!(out, "# slice {} on node {}: ", s.name, config.node);
        match (super::policy::compile(s), super::table(s)) {
            (Ok((_, count)), Ok(table)) => {
                let _ = writeln!(
                    out,
                    "{} policies, {} pod(s) of this node isolated for ingress, {} for egress",
                    count.policies, count.ingress_isolated, count.egress_isolated
                );
                match table {
                    Some(objects) => out.push_str(&render(&objects)),
                    None => out.push_str("# no table: no service and no policy\n"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = writeln!(out, "{e}; the agent keeps the table in force");
            }
        }
    }
    Ok(out)
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// An expression on the left of a match, or a key.
fn expression(v: &Value) -> String {
    if let Some(p) = v.get("payload") {
        return format!("{} {}", text(&p["protocol"]), text(&p["field"]));
    }
    if let Some(m) = v.get("meta") {
        return match m["key"].as_str() {
            Some(key @ ("iifname" | "oifname")) => key.to_string(),
            _ => format!("meta {}", text(&m["key"])),
        };
    }
    if let Some(c) = v.get("ct") {
        return format!("ct {}", text(&c["key"]));
    }
    if let Some(f) = v.get("fib") {
        let flags: Vec<String> = f["flags"].as_array().into_iter().flatten().map(text).collect();
        return format!("fib {} {}", flags.join(" . "), text(&f["result"]));
    }
    if let Some(Value::Array(parts)) = v.get("concat") {
        return parts.iter().map(expression).collect::<Vec<_>>().join(" . ");
    }
    if let Some(n) = v.get("numgen") {
        return format!("numgen {} mod {}", text(&n["mode"]), value(&n["mod"]));
    }
    value(v)
}

/// A value on the right of a match, or an element.
fn value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(false) => "missing".into(),
        Value::Bool(true) => "exists".into(),
        Value::Array(items) => items.iter().map(value).collect::<Vec<_>>().join(","),
        Value::Object(_) => {
            if let Some(Value::Array(items)) = v.get("set") {
                return format!("{{ {} }}", items.iter().map(value).collect::<Vec<_>>().join(", "));
            }
            if let Some(Value::Array(r)) = v.get("range") {
                return format!("{}-{}", value(&r[0]), value(&r[1]));
            }
            if let Some(p) = v.get("prefix") {
                return format!("{}/{}", value(&p["addr"]), value(&p["len"]));
            }
            if let Some(Value::Array(parts)) = v.get("concat") {
                return parts.iter().map(value).collect::<Vec<_>>().join(" . ");
            }
            expression(v)
        }
        Value::Null => String::new(),
    }
}

/// One statement of a rule (a match or a verdict).
fn statement(s: &Value) -> String {
    if let Some(m) = s.get("match") {
        let left = expression(&m["left"]);
        let right = value(&m["right"]);
        return match m["op"].as_str() {
            Some("==" | "in") => format!("{left} {right}"),
            Some(op) => format!("{left} {op} {right}"),
            None => format!("{left} {right}"),
        };
    }
    for verdict in ["accept", "drop", "return", "continue"] {
        if s.get(verdict).is_some() {
            return verdict.into();
        }
    }
    if let Some(j) = s.get("jump").or_else(|| s.get("goto")) {
        let kind = if s.get("jump").is_some() { "jump" } else { "goto" };
        return format!("{kind} {}", text(&j["target"]));
    }
    if let Some(v) = s.get("vmap") {
        return format!("{} vmap {}", expression(&v["key"]), value(&v["data"]));
    }
    if let Some(d) = s.get("dnat") {
        let to = match d["addr"].get("map") {
            Some(map) => format!("{} map {}", expression(&map["key"]), map_value(&map["data"])),
            None => match d.get("port") {
                Some(port) => format!("{}:{}", value(&d["addr"]), value(port)),
                None => value(&d["addr"]),
            },
        };
        return format!("dnat {} to {to}", text(&d["family"]));
    }
    if let Some(r) = s.get("reject") {
        return match r.get("expr") {
            Some(e) => format!("reject with {} {}", text(&r["type"]), text(e)),
            None => format!("reject with {}", text(&r["type"])),
        };
    }
    s.to_string()
}

/// An anonymous map `{ key : value, … }`.
fn map_value(v: &Value) -> String {
    match v.get("set") {
        Some(Value::Array(items)) => {
            let pairs: Vec<String> = items
                .iter()
                .map(|p| match p {
                    Value::Array(kv) if kv.len() == 2 => format!("{} : {}", value(&kv[0]), value(&kv[1])),
                    other => value(other),
                })
                .collect();
            format!("{{ {} }}", pairs.join(", "))
        }
        _ => value(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_policy_table_reads_like_nft_list() {
        let slice: slice_api::node::SliceOnNode = serde_json::from_value(json!({
            "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.0.0/26",
            "policies": [{"namespace": "x", "name": "web", "spec": {"ingress": [{"from": [
                {"ipBlock": {"cidr": "10.80.0.0/24", "except": ["10.80.0.9/32"]}}], "ports": [{"port": 80, "endPort": 90}]}]}}],
            "pods": [{"namespace": "x", "labels": {"pod": "a"}, "addresses": ["10.80.0.2"]}],
            "services": [{"name": "x/web", "ip": "10.80.255.10", "ports": [
                {"protocol": "TCP", "port": 80, "backends": ["10.80.0.2:80", "10.80.0.3:80"]}]}]
        }))
        .unwrap();
        let text = render(&crate::firewall::table(&slice).unwrap().unwrap());
        for want in [
            "table inet slicenet {",
            "\tset except-0 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.80.0.9 }\n\t}",
            "\tmap policy-ingress-pods {\n\t\ttype ipv4_addr : verdict\n\t\telements = { 10.80.0.2 : jump ingress-0 }",
            "\t\ttype filter hook prerouting priority -300; policy accept;\n\t\tmeta nfproto ipv6 iifname != lo fib saddr . iif oif missing drop comment",
            "\t\tip saddr 10.80.0.0/24 ip saddr != @except-0 tcp dport 80-90 accept comment \"x/web ingress[0]\"",
            "\t\tct state established,related accept\n\t\tct state invalid drop\n\t\tip saddr vmap @policy-egress-pods",
            "dnat ip to numgen random mod 2 map { 0 : 10.80.0.2 . 80, 1 : 10.80.0.3 . 80 }",
            "reject with tcp reset",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.ends_with("\t}\n}\n"), "{text}");
        assert_eq!(render(&[]), "");

        let config = slice_api::node::NodeAgentConfig::example(vec![slice.clone()]);
        let shown = show(&config, Some("blue")).unwrap();
        assert!(shown.starts_with("# slice blue on node n1: 1 policies, 1 pod(s) of this node isolated for ingress, 0 for egress\ntable inet slicenet {"), "{shown}");
        assert_eq!(show(&config, Some("red")), Err("node n1 has no slice red".into()));
        let mut broken = config;
        broken.slices[0].policies[0].spec.policy_types = vec!["Sideways".into()];
        let shown = show(&broken, None).unwrap();
        assert!(
            shown.contains("policy x/web cannot be compiled: policyTypes: \"Sideways\"")
                && shown.contains("keeps the table in force"),
            "{shown}"
        );
    }
}
