//! The result schema (`results.json`): a list of [`Record`]s, one per workload × runtime ×
//! metric.

use crate::stats::{ratio, summarize};
use serde::{Deserialize, Serialize};

/// Whether a larger or a smaller value is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Smaller is better (times, latencies).
    Lower,
    /// Larger is better (rates, bandwidths).
    Higher,
}

/// Whether a measurement ran on a quiet machine or beside CPU hogs (`--load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// Nothing but the harness and the environment under test (the default; results files
    /// written before the `load` field existed read as quiet).
    #[default]
    Quiet,
    /// Two busy loops per online CPU ran for the whole measurement (`--load`).
    Loaded,
}

impl Load {
    /// `quiet` or `loaded`, as in results.json.
    pub fn name(self) -> &'static str {
        match self {
            Load::Quiet => "quiet",
            Load::Loaded => "loaded",
        }
    }
}

/// What happened to one runtime in one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// All counted runs were measured.
    Ok,
    /// Not run at all (runtime missing or its probe container failed).
    Skipped,
    /// Started but a run failed; no summary is given.
    Failed,
}

/// One row of `results.json`.
///
/// `runs` holds the counted (post-warm-up) values in run order. `ratio_to_native` and
/// `ratio_to_runc` are `median / median of native (runc)` for the same workload, metric and
/// load in the same invocation, or null when that reference was not measured. `load` is
/// `quiet` or `loaded` (absent in files written before `--load` existed: quiet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Workload name.
    pub workload: String,
    /// Environment name.
    pub runtime: String,
    /// Metric name within the workload.
    pub metric: String,
    /// Unit of the values.
    pub unit: String,
    /// Whether larger or smaller is better.
    pub better: Better,
    /// Quiet machine or CPU hogs beside the measurement.
    #[serde(default)]
    pub load: Load,
    /// What happened to this runtime in this workload.
    pub status: Status,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// Median of the counted runs.
    pub median: Option<f64>,
    /// Smallest counted run.
    pub min: Option<f64>,
    /// Largest counted run.
    pub max: Option<f64>,
    /// The counted values, in run order.
    pub runs: Vec<f64>,
    /// Median ÷ native's median.
    pub ratio_to_native: Option<f64>,
    /// Median ÷ runc's median.
    pub ratio_to_runc: Option<f64>,
}

/// What the harness gathered for one workload × runtime × metric, before summarizing.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Workload name.
    pub workload: String,
    /// Environment name.
    pub runtime: String,
    /// Metric name within the workload.
    pub metric: String,
    /// Unit of the values.
    pub unit: String,
    /// Whether larger or smaller is better.
    pub better: Better,
    /// Quiet machine or CPU hogs beside the measurement.
    pub load: Load,
    /// The counted values, in run order.
    pub values: Vec<f64>,
    /// What happened to this runtime in this workload.
    pub status: Status,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
}

/// Summarizes cells into records and fills in the ratios from the `native` and `runc` rows of
/// the same workload, metric and load.
pub fn finalize(cells: &[Cell]) -> Vec<Record> {
    let mut out: Vec<Record> = cells
        .iter()
        .map(|c| {
            let s = if c.status == Status::Ok {
                summarize(&c.values)
            } else {
                None
            };
            let (status, reason) = match (c.status, s) {
                (Status::Ok, None) => (Status::Failed, Some("no valid measurement".to_string())),
                (st, _) => (st, c.reason.clone()),
            };
            Record {
                workload: c.workload.clone(),
                runtime: c.runtime.clone(),
                metric: c.metric.clone(),
                unit: c.unit.clone(),
                better: c.better,
                load: c.load,
                status,
                reason,
                median: s.map(|s| s.median),
                min: s.map(|s| s.min),
                max: s.map(|s| s.max),
                runs: c.values.clone(),
                ratio_to_native: None,
                ratio_to_runc: None,
            }
        })
        .collect();
    for i in 0..out.len() {
        if let Some(med) = out[i].median {
            let native = reference(
                &out,
                &out[i].workload,
                &out[i].metric,
                "native",
                out[i].load,
            );
            let runc = reference(&out, &out[i].workload, &out[i].metric, "runc", out[i].load);
            out[i].ratio_to_native = ratio(med, native);
            out[i].ratio_to_runc = ratio(med, runc);
        }
    }
    out
}

/// The median of `runtime` for `workload`, `metric` and `load`, if it was measured.
pub fn reference(
    records: &[Record],
    workload: &str,
    metric: &str,
    runtime: &str,
    load: Load,
) -> Option<f64> {
    records
        .iter()
        .find(|r| {
            r.workload == workload
                && r.metric == metric
                && r.runtime == runtime
                && r.load == load
                && r.status == Status::Ok
        })
        .and_then(|r| r.median)
}

/// True when some record was measured under load (`--load`).
pub fn has_load(records: &[Record]) -> bool {
    records.iter().any(|r| r.load == Load::Loaded)
}

/// Checks the invariants every record must satisfy; returns a description of the first
/// violation.
pub fn validate(records: &[Record]) -> Result<(), String> {
    for r in records {
        let id = format!("{}/{}/{}", r.workload, r.runtime, r.metric);
        if r.workload.is_empty() || r.runtime.is_empty() || r.metric.is_empty() || r.unit.is_empty()
        {
            return Err(format!("{id}: empty name field"));
        }
        match r.status {
            Status::Ok => {
                let (Some(med), Some(min), Some(max)) = (r.median, r.min, r.max) else {
                    return Err(format!("{id}: ok without median/min/max"));
                };
                if r.runs.is_empty() {
                    return Err(format!("{id}: ok without runs"));
                }
                if !(min <= med && med <= max) {
                    return Err(format!(
                        "{id}: min {min} <= median {med} <= max {max} violated"
                    ));
                }
                if r.runs.iter().any(|v| *v < min || *v > max) {
                    return Err(format!("{id}: a run lies outside min..max"));
                }
            }
            Status::Skipped | Status::Failed => {
                if r.reason.as_deref().unwrap_or("").is_empty() {
                    return Err(format!("{id}: {:?} without a reason", r.status));
                }
                if r.median.is_some() || r.ratio_to_native.is_some() || r.ratio_to_runc.is_some() {
                    return Err(format!("{id}: {:?} with a median or ratio", r.status));
                }
            }
        }
        if r.runtime == "native"
            && r.status == Status::Ok
            && r.ratio_to_native.map(|x| (x - 1.0).abs() > 1e-9) == Some(true)
        {
            return Err(format!("{id}: native ratio_to_native is not 1"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(rt: &str, values: &[f64], status: Status) -> Cell {
        Cell {
            workload: "primes".into(),
            runtime: rt.into(),
            metric: "time".into(),
            unit: "s".into(),
            better: Better::Lower,
            load: Load::Quiet,
            values: values.to_vec(),
            status,
            reason: (status != Status::Ok).then(|| "porta not found".to_string()),
        }
    }

    #[test]
    fn ratios_from_same_run() {
        let recs = finalize(&[
            cell("native", &[1.0, 2.0, 3.0], Status::Ok),
            cell("runc", &[2.0, 4.0, 6.0], Status::Ok),
            cell("porta", &[], Status::Skipped),
            cell("crun", &[3.0, 3.0, 3.0], Status::Ok),
        ]);
        validate(&recs).unwrap();
        assert_eq!(recs[0].ratio_to_native, Some(1.0));
        assert_eq!(recs[0].ratio_to_runc, Some(0.5));
        assert_eq!(recs[1].ratio_to_native, Some(2.0));
        assert_eq!(recs[3].ratio_to_native, Some(1.5));
        assert_eq!(recs[3].ratio_to_runc, Some(0.75));
        assert_eq!(recs[2].median, None);
        assert_eq!(recs[2].ratio_to_native, None);
    }

    #[test]
    fn no_reference_no_ratio() {
        let recs = finalize(&[cell("crun", &[3.0], Status::Ok)]);
        assert_eq!(recs[0].ratio_to_native, None);
        assert_eq!(recs[0].ratio_to_runc, None);
    }

    #[test]
    fn schema_field_names() {
        let recs = finalize(&[
            cell("native", &[1.0, 2.0, 3.0], Status::Ok),
            cell("porta", &[], Status::Skipped),
        ]);
        let v = serde_json::to_value(&recs).unwrap();
        let arr = v.as_array().expect("a list");
        for o in arr {
            let o = o.as_object().unwrap();
            for k in [
                "workload",
                "runtime",
                "metric",
                "unit",
                "median",
                "min",
                "max",
                "runs",
                "ratio_to_native",
                "ratio_to_runc",
                "status",
                "reason",
                "better",
                "load",
            ] {
                assert!(o.contains_key(k), "missing {k}");
            }
        }
        assert_eq!(arr[0]["median"], 2.0);
        assert_eq!(arr[0]["runs"], serde_json::json!([1.0, 2.0, 3.0]));
        assert_eq!(arr[0]["better"], "lower");
        assert_eq!(arr[1]["status"], "skipped");
        assert_eq!(arr[0]["load"], "quiet");
        assert!(arr[1]["median"].is_null());
        let back: Vec<Record> = serde_json::from_value(v).unwrap();
        assert_eq!(back, recs);
    }

    #[test]
    fn old_files_without_load_read_as_quiet() {
        let old = r#"[{"workload":"primes","runtime":"native","metric":"time","unit":"s",
            "better":"lower","status":"ok","reason":null,"median":1.0,"min":1.0,"max":1.0,
            "runs":[1.0],"ratio_to_native":1.0,"ratio_to_runc":null}]"#;
        let recs: Vec<Record> = serde_json::from_str(old).unwrap();
        assert_eq!(recs[0].load, Load::Quiet);
        validate(&recs).unwrap();
        assert!(!has_load(&recs));
    }

    #[test]
    fn ratios_stay_within_one_load() {
        let mut cells = vec![
            cell("native", &[1.0], Status::Ok),
            cell("runc", &[2.0], Status::Ok),
            cell("native", &[4.0], Status::Ok),
            cell("runc", &[6.0], Status::Ok),
        ];
        cells[2].load = Load::Loaded;
        cells[3].load = Load::Loaded;
        let recs = finalize(&cells);
        assert_eq!(recs[1].ratio_to_native, Some(2.0));
        assert_eq!(recs[3].ratio_to_native, Some(1.5));
        assert_eq!(recs[3].load, Load::Loaded);
        assert!(has_load(&recs));
        let v = serde_json::to_value(&recs).unwrap();
        assert_eq!(v[3]["load"], "loaded");
        assert_eq!(
            reference(&recs, "primes", "time", "runc", Load::Loaded),
            Some(6.0)
        );
        assert_eq!(
            reference(&recs, "primes", "time", "crun", Load::Loaded),
            None
        );
    }

    #[test]
    fn validate_catches_bad_rows() {
        let mut recs = finalize(&[cell("native", &[1.0, 2.0, 3.0], Status::Ok)]);
        recs[0].min = Some(2.5);
        assert!(validate(&recs).is_err());
        let mut recs = finalize(&[cell("porta", &[], Status::Skipped)]);
        recs[0].reason = None;
        assert!(validate(&recs).is_err());
    }
}
