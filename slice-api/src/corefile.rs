//! The slice DNS stanza of a CoreDNS Corefile (pure): the worker adds one server block for
//! `clusterset.local` and `slice.local` that forwards to the slice-dns Service, between two
//! marker comments, so that it can rewrite it when the Service's address changes and remove it
//! on uninstall without touching anything else of the file.
//!
//! - [`with_stanza`] removes any stanza of ours, then appends the new one: applying twice gives
//!   the same text (idempotent), and [`without_stanza`] gives back exactly the text it started
//!   from (reversible), whitespace and a missing final newline included.
//! - A Corefile whose own server blocks (outside our markers) already serve one of the zones is
//!   refused ([`CorefileError::ZoneTaken`]): CoreDNS refuses two blocks with the same zone and
//!   port, so adding ours would stop it from starting.
//! - NodeLocal DNSCache: its Corefile `bind`s every block to the link-local address (and the
//!   kube-dns address it takes over), and a query for a zone it has no block for goes to its
//!   catch-all block, which forwards to the node's upstream resolvers — out of the cluster. So
//!   its stanza carries the same `bind` line as its other blocks ([`node_local_stanza`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::mcs::{CLUSTERSET_ZONE, SLICE_ZONE};

/// The first line of our stanza.
pub const BEGIN_MARKER: &str = "# slicenet:begin (managed by the slicenet worker; rewritten and removed by it)";
/// The same, when the file had no final newline before the stanza was added.
const BEGIN_MARKER_NO_EOL: &str =
    "# slicenet:begin no-eol (managed by the slicenet worker; rewritten and removed by it)";
/// The last line of our stanza.
pub const END_MARKER: &str = "# slicenet:end";

/// The key of the Corefile in CoreDNS's and NodeLocal DNSCache's ConfigMaps.
pub const COREFILE_KEY: &str = "Corefile";

/// Why a Corefile cannot take our stanza.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorefileError {
    /// One of the file's own server blocks already serves the zone.
    #[error("the Corefile already has a server block of its own for {zone} (line {line}); slicenet leaves it alone")]
    ZoneTaken { zone: String, line: usize },
    /// A begin marker without its end marker (a hand edit): nothing is changed.
    #[error("the Corefile has slicenet's begin marker on line {line} but no end marker after it; fix it by hand")]
    Unterminated { line: usize },
    /// NodeLocal DNSCache's Corefile has no `bind` line to copy.
    #[error("the NodeLocal DNSCache Corefile has no bind directive to copy")]
    NoBind,
}

/// What our server block says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// Where to forward: the slice-dns Service's cluster IP(s).
    pub upstreams: Vec<IpAddr>,
    /// The `bind` arguments (NodeLocal DNSCache), verbatim.
    pub bind: Option<String>,
    /// The port the block listens on (53).
    pub port: u16,
    /// Seconds CoreDNS may cache an answer.
    pub cache_seconds: u32,
}

impl Stanza {
    /// The stanza for a cluster's CoreDNS, forwarding to `upstreams`.
    #[must_use]
    pub fn coredns(upstreams: Vec<IpAddr>) -> Self {
        Self { upstreams, bind: None, port: 53, cache_seconds: 5 }
    }

    /// The server block between the markers (without them), lines ending in `\n`.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{CLUSTERSET_ZONE}:{port} {SLICE_ZONE}:{port} {{", port = self.port);
        s.push_str("    errors\n");
        if let Some(bind) = &self.bind {
            let _ = writeln!(s, "    bind {bind}");
        }
        let _ = writeln!(s, "    cache {}", self.cache_seconds);
        let ups: Vec<String> = self.upstreams.iter().map(IpAddr::to_string).collect();
        let _ = writeln!(s, "    forward . {}", ups.join(" "));
        s.push_str("}\n");
        s
    }
}

/// The stanza for NodeLocal DNSCache's Corefile `corefile`: the `bind` of its first block that
/// has one, and `upstreams`.
///
/// # Errors
/// [`CorefileError::NoBind`].
pub fn node_local_stanza(corefile: &str, upstreams: Vec<IpAddr>) -> Result<Stanza, CorefileError> {
    let (outside, _) = split(corefile)?;
    let bind = outside
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("bind ").map(|b| b.trim().to_owned()))
        .filter(|b| !b.is_empty())
        .ok_or(CorefileError::NoBind)?;
    Ok(Stanza { bind: Some(bind), ..Stanza::coredns(upstreams) })
}

/// `corefile` without our stanza, and whether it had one. (The text around the stanza as it
/// was before the stanza was added.)
fn split(corefile: &str) -> Result<(String, bool), CorefileError> {
    let mut lines = corefile.split_inclusive('\n').enumerate();
    let mut out = String::new();
    let mut found = false;
    while let Some((i, line)) = lines.next() {
        let marker = line.trim_end_matches(['\n', '\r']);
        if marker == BEGIN_MARKER || marker == BEGIN_MARKER_NO_EOL {
            // The separator line we added before the stanza goes with it.
            if out.ends_with("\n\n") {
                out.pop();
            }
            if marker == BEGIN_MARKER_NO_EOL && out.ends_with('\n') {
                out.pop();
            }
            if !lines.any(|(_, l)| l.trim_end_matches(['\n', '\r']) == END_MARKER) {
                return Err(CorefileError::Unterminated { line: i + 1 });
            }
            found = true;
            continue;
        }
        out.push_str(line);
    }
    Ok((out, found))
}

/// The zones of the server blocks' keys in `text` (`zone[:port]` before `{` at nesting depth
/// 0), with their line numbers.
fn server_zones(text: &str) -> Vec<(String, usize)> {
    let mut depth = 0usize;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default();
        if depth == 0 && line.contains('{') {
            let keys = line.split('{').next().unwrap_or_default();
            for key in keys.split([' ', '\t', ',']).filter(|k| !k.is_empty()) {
                let key = key.trim_start_matches("dns://");
                let zone = key.rsplit_once(':').map_or(key, |(z, _)| z);
                let zone = if zone.len() > 1 { zone.trim_end_matches('.') } else { zone };
                out.push((zone.to_ascii_lowercase(), i + 1));
            }
        }
        depth += line.matches('{').count();
        depth = depth.saturating_sub(line.matches('}').count());
    }
    out
}

/// `corefile` with our stanza `stanza` (any earlier one replaced), appended after a blank line.
///
/// # Errors
/// [`CorefileError::ZoneTaken`] when the file's own blocks serve `clusterset.local` or
/// `slice.local`; [`CorefileError::Unterminated`] for a begin marker without an end.
pub fn with_stanza(corefile: &str, stanza: &Stanza) -> Result<String, CorefileError> {
    let (mut out, _) = split(corefile)?;
    if let Some((zone, line)) = server_zones(&out).into_iter().find(|(z, _)| z == CLUSTERSET_ZONE || z == SLICE_ZONE) {
        return Err(CorefileError::ZoneTaken { zone, line });
    }
    let marker = if out.is_empty() || out.ends_with('\n') {
        BEGIN_MARKER
    } else {
        out.push('\n');
        BEGIN_MARKER_NO_EOL
    };
    if !out.is_empty() {
        out.push('\n');
    }
    let _ = write!(out, "{marker}\n{}{END_MARKER}\n", stanza.render());
    Ok(out)
}

/// `corefile` without our stanza: exactly the text before [`with_stanza`] added it.
///
/// # Errors
/// [`CorefileError::Unterminated`].
pub fn without_stanza(corefile: &str) -> Result<String, CorefileError> {
    split(corefile).map(|(text, _)| text)
}

/// Whether `corefile` carries our stanza.
#[must_use]
pub fn has_stanza(corefile: &str) -> bool {
    corefile.lines().any(|l| l == BEGIN_MARKER || l == BEGIN_MARKER_NO_EOL)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = include_str!("../tests/fixtures/corefile/kubeadm");
    const K3S: &str = include_str!("../tests/fixtures/corefile/k3s");
    const OTHER_STANZAS: &str = include_str!("../tests/fixtures/corefile/other-stanzas");
    const NODE_LOCAL: &str = include_str!("../tests/fixtures/corefile/node-local-dns");
    const TAKEN: &str = include_str!("../tests/fixtures/corefile/clusterset-taken");

    fn stanza() -> Stanza {
        Stanza::coredns(vec!["10.96.0.53".parse().unwrap()])
    }

    #[test]
    fn the_stanza_is_added_once_and_removed_exactly_on_real_corefiles() {
        for (name, text) in [("kubeadm", KUBEADM), ("k3s", K3S), ("other-stanzas", OTHER_STANZAS)] {
            let added = with_stanza(text, &stanza()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(added.starts_with(text), "{name}: the file's own text stays first and unchanged");
            assert!(has_stanza(&added) && !has_stanza(text), "{name}");
            assert!(added.contains("clusterset.local:53 slice.local:53 {\n"), "{name}");
            assert!(added.contains("    forward . 10.96.0.53\n"), "{name}");
            assert_eq!(with_stanza(&added, &stanza()).unwrap(), added, "{name}: idempotent");
            assert_eq!(without_stanza(&added).unwrap(), text, "{name}: reversible");
            assert_eq!(without_stanza(text).unwrap(), text, "{name}: nothing to remove");
            // A new address rewrites the stanza in place.
            let moved = with_stanza(&added, &Stanza::coredns(vec!["10.96.0.54".parse().unwrap()])).unwrap();
            assert!(moved.contains("forward . 10.96.0.54\n") && !moved.contains("10.96.0.53"), "{name}");
            assert_eq!(moved.matches(BEGIN_MARKER).count(), 1, "{name}");
            assert_eq!(without_stanza(&moved).unwrap(), text, "{name}");
        }
    }

    #[test]
    fn the_server_blocks_of_the_fixtures_are_found() {
        let zones: Vec<String> = server_zones(OTHER_STANZAS).into_iter().map(|(z, _)| z).collect();
        assert_eq!(zones, ["consul", "example.org", "."]);
        let kubeadm: Vec<String> = server_zones(KUBEADM).into_iter().map(|(z, _)| z).collect();
        assert_eq!(kubeadm, ["."], "the kubernetes plugin's own braces are not server blocks");
    }

    #[test]
    fn a_file_without_a_final_newline_comes_back_without_one() {
        let text = KUBEADM.trim_end();
        let added = with_stanza(text, &stanza()).unwrap();
        assert_eq!(without_stanza(&added).unwrap(), text);
        assert_eq!(with_stanza(&added, &stanza()).unwrap(), added);
        assert_eq!(without_stanza(&with_stanza("", &stanza()).unwrap()).unwrap(), "");
    }

    #[test]
    fn node_local_dns_gets_its_own_bind() {
        let s = node_local_stanza(NODE_LOCAL, vec!["10.96.0.53".parse().unwrap()]).unwrap();
        assert_eq!(s.bind.as_deref(), Some("__PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__"));
        let added = with_stanza(NODE_LOCAL, &s).unwrap();
        assert!(added.contains(
            "clusterset.local:53 slice.local:53 {\n    errors\n    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__\n"
        ));
        assert_eq!(without_stanza(&added).unwrap(), NODE_LOCAL);
        assert_eq!(node_local_stanza(KUBEADM, vec![]), Err(CorefileError::NoBind));
    }

    #[test]
    fn a_zone_the_file_already_serves_is_refused_and_nothing_changes() {
        let err = with_stanza(TAKEN, &stanza()).unwrap_err();
        assert_eq!(err, CorefileError::ZoneTaken { zone: "clusterset.local".into(), line: 1 });
    }

    #[test]
    fn a_begin_marker_without_end_is_refused() {
        let broken = format!("{KUBEADM}\n{BEGIN_MARKER}\nclusterset.local:53 {{\n}}\n");
        let err = with_stanza(&broken, &stanza()).unwrap_err();
        assert!(matches!(err, CorefileError::Unterminated { .. }), "{err}");
        assert!(without_stanza(&broken).is_err());
    }
}
