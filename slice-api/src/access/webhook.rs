//! The admission webhook's requests on the hub cluster.

use crate::rbac::Access;
use crate::rbac::Scope::Cluster;

const G: &str = "slicenet.io";

/// `slice-webhooks --hub-api` on the hub: the SliceConfig validation reads every SliceConfig
/// (namespace claims) and every MemberCluster (pod and service CIDRs) through two reflectors,
/// each a list followed by a watch. It writes nothing.
pub const WEBHOOK_HUB: &[Access] = &[
    Access::new("list", G, "sliceconfigs", Cluster),
    Access::new("watch", G, "sliceconfigs", Cluster),
    Access::new("list", G, "memberclusters", Cluster),
    Access::new("watch", G, "memberclusters", Cluster),
];
