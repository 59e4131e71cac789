//! The worker's export resolution and import objects on objects built in memory.

use super::*;
