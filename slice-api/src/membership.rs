//! The membership ConfigMap: which namespaces of this cluster joined which slice, written by the
//! worker and read by the pod webhook (mounted as a directory, one file per key).
//!
//! `slicenet-system/slicenet-membership`, one key per slice, its member namespaces
//! comma-separated. The worker lists a namespace only when it is labelled
//! `slicenet.io/slice=<slice>` *and* the slice's `SliceConfig` allows it in this cluster; the
//! gateway namespace is never listed.

use std::collections::BTreeMap;

use crate::names::SYSTEM_NAMESPACE;

/// Name of the ConfigMap.
pub const CONFIG_MAP_NAME: &str = "slicenet-membership";
/// Its namespace.
pub const CONFIG_MAP_NAMESPACE: &str = SYSTEM_NAMESPACE;

/// The ConfigMap's data for `slices` (slice name → its member namespaces, in the order given).
#[must_use]
pub fn render<'a, I, S>(slices: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (&'a str, &'a [S])>,
    S: AsRef<str> + 'a,
{
    slices
        .into_iter()
        .map(|(slice, namespaces)| {
            let list: Vec<&str> = namespaces.iter().map(AsRef::as_ref).collect();
            (slice.to_owned(), list.join(","))
        })
        .collect()
}

/// Parses the ConfigMap's data: slice → comma-separated namespaces (white space around a name
/// and empty items are ignored).
#[must_use]
pub fn parse(data: &BTreeMap<String, String>) -> BTreeMap<String, Vec<String>> {
    data.iter()
        .map(|(slice, list)| {
            let namespaces = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            (slice.clone(), namespaces)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn one_key_per_slice_comma_separated() {
        let shop = ["shop".to_owned(), "cart".to_owned()];
        let none: [String; 0] = [];
        let data = render([("blue", &shop[..]), ("red", &none[..])]);
        assert_eq!(data["blue"], "shop,cart");
        assert_eq!(data["red"], "");
        let mut hand = BTreeMap::new();
        hand.insert("blue".to_owned(), " shop, cart ,".to_owned());
        assert_eq!(parse(&hand)["blue"], ["shop", "cart"]);
    }

    proptest! {
        /// What the worker writes, the webhook reads back as written.
        #[test]
        fn render_then_parse_is_the_same_membership(
            slices in proptest::collection::btree_map(
                "[a-z][a-z0-9-]{0,12}",
                proptest::collection::vec("[a-z][a-z0-9-]{0,20}", 0..5),
                0..5,
            )
        ) {
            let data = render(slices.iter().map(|(s, n)| (s.as_str(), n.as_slice())));
            prop_assert_eq!(parse(&data), slices);
        }
    }
}
