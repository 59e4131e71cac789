//! slicenet's controllers. Today: the node agent ([`node_agent`]); the hub and worker
//! controllers come next (issue 4).

pub mod access;
pub mod node_agent;
