//! Quality of service of a slice: the DSCP class names, and what the node agent and the gateway
//! are given to enforce a slice's profile (pure; the profile itself is
//! [`crate::crd::QosProfile`] on `SliceConfig`, feature `crd`).
//!
//! Where it is enforced (docs/decisions.md, "QoS per slice"): one HTB tree on the egress of the
//! uplink of each node, its root at the cluster's uplink rate, a class per QoS slice and a
//! default class; a slice's gateway traffic is put into its class by an nftables `meta priority`
//! rule in the node's namespace (on its UDP source port), and the gateway writes the slice's DSCP
//! class on its outer packets (`IP_TOS`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// HTB priorities (0 is served first when classes borrow).
pub const MAX_PRIORITY: u8 = 7;
/// Priority of a QoS profile that names none: the middle, so that a slice can be put above or
/// below the others.
pub const DEFAULT_PRIORITY: u8 = 4;

/// A DSCP class by its standard name (RFC 2474 class selectors, RFC 2597 assured forwarding,
/// RFC 3246 expedited forwarding, RFC 5865 voice admit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
pub enum DscpClass {
    CS0,
    CS1,
    CS2,
    CS3,
    CS4,
    CS5,
    CS6,
    CS7,
    AF11,
    AF12,
    AF13,
    AF21,
    AF22,
    AF23,
    AF31,
    AF32,
    AF33,
    AF41,
    AF42,
    AF43,
    EF,
    VA,
}

impl DscpClass {
    /// Every class, in declaration order.
    pub const ALL: [DscpClass; 22] = [
        Self::CS0,
        Self::CS1,
        Self::CS2,
        Self::CS3,
        Self::CS4,
        Self::CS5,
        Self::CS6,
        Self::CS7,
        Self::AF11,
        Self::AF12,
        Self::AF13,
        Self::AF21,
        Self::AF22,
        Self::AF23,
        Self::AF31,
        Self::AF32,
        Self::AF33,
        Self::AF41,
        Self::AF42,
        Self::AF43,
        Self::EF,
        Self::VA,
    ];

    /// The 6-bit codepoint.
    #[must_use]
    pub fn codepoint(self) -> u8 {
        use DscpClass::*;
        match self {
            CS0 => 0,
            CS1 => 8,
            CS2 => 16,
            CS3 => 24,
            CS4 => 32,
            CS5 => 40,
            CS6 => 48,
            CS7 => 56,
            // AFxy = 8x + 2y.
            AF11 => 10,
            AF12 => 12,
            AF13 => 14,
            AF21 => 18,
            AF22 => 20,
            AF23 => 22,
            AF31 => 26,
            AF32 => 28,
            AF33 => 30,
            AF41 => 34,
            AF42 => 36,
            AF43 => 38,
            EF => 46,
            VA => 44,
        }
    }

    /// The IPv4 TOS byte (IPv6 traffic class) with this codepoint and ECN bits clear: what
    /// `IP_TOS`/`IPV6_TCLASS` take and what `tcpdump -v` prints as `tos 0x..`.
    #[must_use]
    pub fn tos(self) -> u8 {
        self.codepoint() << 2
    }

    /// The name, as written in a `SliceConfig` and on the gateway's command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        use DscpClass::*;
        match self {
            CS0 => "CS0",
            CS1 => "CS1",
            CS2 => "CS2",
            CS3 => "CS3",
            CS4 => "CS4",
            CS5 => "CS5",
            CS6 => "CS6",
            CS7 => "CS7",
            AF11 => "AF11",
            AF12 => "AF12",
            AF13 => "AF13",
            AF21 => "AF21",
            AF22 => "AF22",
            AF23 => "AF23",
            AF31 => "AF31",
            AF32 => "AF32",
            AF33 => "AF33",
            AF41 => "AF41",
            AF42 => "AF42",
            AF43 => "AF43",
            EF => "EF",
            VA => "VA",
        }
    }
}

impl fmt::Display for DscpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DscpClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
            format!("unknown DSCP class {s:?}: one of {}", names.join(", "))
        })
    }
}

/// A slice's share of the node's uplink, as the node agent is given it (in
/// [`crate::node::SliceOnNode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SliceQos {
    /// What the slice gets whatever the others do (HTB `rate`), kbit/s.
    pub guaranteed_kbps: u64,
    /// What the slice may take when others leave bandwidth idle (HTB `ceil`), kbit/s; the
    /// uplink rate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_kbps: Option<u64>,
    /// 0 (served first) to 7.
    pub priority: u8,
    /// The UDP port the slice's gateway sends from (its listen port): how the agent recognises
    /// the slice's traffic on the uplink.
    pub gateway_port: u16,
    /// The cluster's uplink rate, the root of the node's tree, kbit/s (the same in every
    /// slice of a node).
    pub uplink_kbps: u64,
}

impl SliceQos {
    /// Checks the values on their own and against the uplink rate.
    ///
    /// # Errors
    /// A message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.priority > MAX_PRIORITY {
            return Err(format!("qos priority {} must be 0..{MAX_PRIORITY}", self.priority));
        }
        if let Some(ceiling) = self.ceiling_kbps
            && ceiling < self.guaranteed_kbps
        {
            return Err(format!(
                "qos ceilingKbps {ceiling} is below guaranteedKbps {} (the guarantee must fit under the ceiling)",
                self.guaranteed_kbps
            ));
        }
        if self.gateway_port == 0 {
            return Err("qos gatewayPort must not be 0".into());
        }
        if self.uplink_kbps == 0 {
            return Err("qos uplinkKbps must be above 0".into());
        }
        if self.guaranteed_kbps > self.uplink_kbps {
            return Err(format!(
                "qos guaranteedKbps {} exceeds the uplink rate {} kbit/s",
                self.guaranteed_kbps, self.uplink_kbps
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dscp_names_and_codepoints() {
        assert_eq!(DscpClass::AF41.codepoint(), 34);
        assert_eq!(DscpClass::AF41.tos(), 0x88);
        assert_eq!(DscpClass::EF.tos(), 0xb8);
        assert_eq!(DscpClass::CS1.tos(), 0x20);
        for c in DscpClass::ALL {
            assert_eq!(c.name().parse::<DscpClass>(), Ok(c));
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(c.name()));
            assert!(c.codepoint() < 64);
        }
        let distinct: std::collections::BTreeSet<u8> = DscpClass::ALL.iter().map(|c| c.codepoint()).collect();
        assert_eq!(distinct.len(), DscpClass::ALL.len());
        assert_eq!("ef".parse::<DscpClass>(), Ok(DscpClass::EF));
        let err = "AF44".parse::<DscpClass>().unwrap_err();
        assert!(err.contains("AF44") && err.contains("AF41"), "{err}");
    }

    #[test]
    fn slice_qos_checks() {
        let q = SliceQos {
            guaranteed_kbps: 10_000,
            ceiling_kbps: Some(30_000),
            priority: 2,
            gateway_port: 51820,
            uplink_kbps: 40_000,
        };
        assert_eq!(q.validate(), Ok(()));
        let err = SliceQos { ceiling_kbps: Some(5_000), ..q.clone() }.validate().unwrap_err();
        assert!(err.contains("ceilingKbps 5000"), "{err}");
        assert!(SliceQos { priority: 8, ..q.clone() }.validate().unwrap_err().contains("priority 8"));
        let err = SliceQos { guaranteed_kbps: 50_000, ceiling_kbps: None, ..q.clone() }.validate().unwrap_err();
        assert!(err.contains("uplink rate 40000"), "{err}");
        assert!(SliceQos { gateway_port: 0, ..q.clone() }.validate().is_err());
        assert!(SliceQos { uplink_kbps: 0, ..q }.validate().is_err());
    }
}
