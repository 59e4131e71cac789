//! Benchmarks for `make bench` (written next).
