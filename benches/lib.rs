//! Benchmarks live in `hot_paths.rs` (criterion) and `queue-proxy.sh` (load).
