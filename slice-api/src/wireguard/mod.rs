//! WireGuard contracts shared by the gateway, the worker and the lab: the key type ([`key`]) and
//! the `wg(8)` configuration file ([`config`]), so that the file the worker and the lab write and
//! the file the gateway reads are one model with one parser and one renderer.
//!
//! The pure part (32-byte keys, base64/hex, the file format) has no cryptography; the feature
//! `x25519` adds public-from-private and key generation (x25519-dalek, the curve code boringtun
//! uses), which the gateway and the worker turn on and the CNI plugin does not.

pub mod config;
pub mod key;

pub use config::{ParseError, WgConfig, WgInterface, WgPeer, parse_cidr, parse_endpoint};
pub use key::{Key, KeyError};
