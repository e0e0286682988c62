//! Shared fixtures of the end-to-end suite, the examples and the benchmarks.
