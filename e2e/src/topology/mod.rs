//! The lab's topology: clusters of network namespaces ([`lab`]), one containerd per node driven
//! through its CRI ([`containerd`], [`cri`]), pods and processes in them ([`pod`]), probes run
//! from inside pods ([`probe`]), node agents and remote routes ([`agent`]), the WAN and the
//! clusters' edges ([`wan`]), the pause image ([`pause`]), crash-proof teardown ([`cleanup`]),
//! and a headless browser for the web console ([`browser`]).

pub(crate) mod agent;
pub mod browser;
pub(crate) mod cleanup;
pub(crate) mod cmd;
pub(crate) mod containerd;
pub(crate) mod cri;
pub(crate) mod lab;
pub(crate) mod netns;
pub(crate) mod pause;
pub(crate) mod pod;
pub mod probe;
pub mod wan;
