//! porta-bench: runs workloads natively and in Porta, runc, crun and runsc, side by side, and
//! writes `results.json`, `report.md` and one SVG plot per workload. See docs/benchmarks.md.

pub mod bench;
pub mod env;
pub mod fsmark;
pub mod report;
pub mod results;
pub mod scratch;
pub mod stats;
pub mod svg;
pub mod sys;
pub mod targets;
