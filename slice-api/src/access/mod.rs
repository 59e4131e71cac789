//! The Kubernetes API requests each controller makes, as [`Access`](crate::rbac::Access)
//! lists. The controllers' mock-API tests check every request they make against these lists,
//! and `slicectl install` builds the RBAC rules from them, so RBAC grants what the requests need
//! and nothing else.
//! Edit a list together with the code that makes the request.

mod hub;
mod node_agent;
mod webhook;
mod worker;

pub use hub::HUB;
pub use node_agent::NODE_AGENT;
pub use webhook::WEBHOOK_HUB;
pub use worker::{WORKER_CLUSTER, WORKER_HUB};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_have_no_repeats() {
        for list in [HUB, WORKER_HUB, WORKER_CLUSTER, NODE_AGENT, WEBHOOK_HUB] {
            let mut v = list.to_vec();
            v.sort();
            v.dedup();
            assert_eq!(v.len(), list.len());
        }
    }
}
