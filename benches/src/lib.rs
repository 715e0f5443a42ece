//! dropshim's criterion benchmarks live in `benches/benches/`. This crate
//! holds nothing else; end-to-end throughput is measured by `dropshim bench`.
