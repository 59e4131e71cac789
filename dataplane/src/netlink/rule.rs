//! Policy routing rules (`ip rule`) of the form `iif <dev> lookup <table>`: list, add
//! (exclusive), delete.

use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

use super::*;

/// A rule `priority <priority> iif <iif> lookup <table>` of one family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub v6: bool,
    pub priority: u32,
    /// The input device the rule matches (`iif`).
    pub iif: String,
    pub table: u32,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IPv{} rule priority {} iif {} lookup {}",
            if self.v6 { 6 } else { 4 },
            self.priority,
            self.iif,
            self.table
        )
    }
}

impl Netlink {
    /// The rules of one family that match on an input device and look up a table, and nothing
    /// else (the kernel's default rules have no `iif` and are not listed).
    pub fn rules(&mut self, v6: bool) -> Result<Vec<Rule>> {
        let mut query = RuleMessage::default();
        query.header.family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let msgs =
            self.dump(RouteNetlinkMessage::GetRule(query), || format!("listing IPv{} rules", if v6 { 6 } else { 4 }))?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRule(r) = m else {
                continue;
            };
            if r.header.action != RuleAction::ToTable || r.header.dst_len != 0 || r.header.src_len != 0 {
                continue;
            }
            let mut table = u32::from(r.header.table);
            let mut priority = 0;
            let mut iif = None;
            let mut other = false;
            for attr in &r.attributes {
                match attr {
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::Priority(p) => priority = *p,
                    RuleAttribute::Iifname(n) => iif = Some(n.clone()),
                    RuleAttribute::Protocol(_) => {}
                    // The kernel reports "unset" as all ones.
                    RuleAttribute::SuppressPrefixLen(u32::MAX) | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
                    // A selector this type cannot express: not a rule of ours.
                    RuleAttribute::FwMark(_)
                    | RuleAttribute::Oifname(_)
                    | RuleAttribute::Source(_)
                    | RuleAttribute::Destination(_)
                    | RuleAttribute::UidRange(_)
                    | RuleAttribute::IpProtocol(_)
                    | RuleAttribute::SourcePortRange(_)
                    | RuleAttribute::DestinationPortRange(_)
                    | RuleAttribute::SuppressPrefixLen(_)
                    | RuleAttribute::SuppressIfGroup(_) => other = true,
                    _ => {}
                }
            }
            if let (Some(iif), false) = (iif, other) {
                out.push(Rule { v6, priority, iif, table });
            }
        }
        Ok(out)
    }

    fn rule_message(rule: &Rule) -> RuleMessage {
        let mut msg = RuleMessage::default();
        msg.header.family = if rule.v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.table = u8::try_from(rule.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        msg.header.action = RuleAction::ToTable;
        msg.attributes.push(RuleAttribute::Priority(rule.priority));
        msg.attributes.push(RuleAttribute::Iifname(rule.iif.clone()));
        msg.attributes.push(RuleAttribute::Table(rule.table));
        msg
    }

    /// Adds a rule that must not exist yet (`EEXIST` when the same rule is there).
    pub fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        let msg = Self::rule_message(rule);
        self.ack(RouteNetlinkMessage::NewRule(msg), NLM_F_CREATE | NLM_F_EXCL, || format!("adding {rule}"))
    }

    /// Deletes a rule; `Ok(false)` when it was not there.
    pub fn del_rule(&mut self, rule: &Rule) -> Result<bool> {
        let msg = Self::rule_message(rule);
        match self.ack(RouteNetlinkMessage::DelRule(msg), 0, || format!("deleting {rule}")) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
