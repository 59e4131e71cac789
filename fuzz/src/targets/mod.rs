//! One module per parser that reads input from outside.

pub mod admission;
pub mod cni;
pub mod slice_config;
pub mod uapi;
pub mod wg_config;
