//! Workload programs run inside containers by the benchmark harness.
