//! The `make demo` scenario (written next).
