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
/// `ratio_to_runc` are `median / median of native (runc)` for the same workload and metric in
/// the same invocation, or null when that reference was not measured.
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
    /// The counted values, in run order.
    pub values: Vec<f64>,
    /// What happened to this runtime in this workload.
    pub status: Status,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
}

/// Summarizes cells into records and fills in the ratios from the `native` and `runc` rows of
/// the same workload and metric.
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
    let reference = |out: &[Record], w: &str, m: &str, rt: &str| {
        out.iter()
            .find(|r| r.workload == w && r.metric == m && r.runtime == rt && r.status == Status::Ok)
            .and_then(|r| r.median)
    };
    for i in 0..out.len() {
        if let Some(med) = out[i].median {
            let native = reference(&out, &out[i].workload, &out[i].metric, "native");
            let runc = reference(&out, &out[i].workload, &out[i].metric, "runc");
            out[i].ratio_to_native = ratio(med, native);
            out[i].ratio_to_runc = ratio(med, runc);
        }
    }
    out
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
            ] {
                assert!(o.contains_key(k), "missing {k}");
            }
        }
        assert_eq!(arr[0]["median"], 2.0);
        assert_eq!(arr[0]["runs"], serde_json::json!([1.0, 2.0, 3.0]));
        assert_eq!(arr[0]["better"], "lower");
        assert_eq!(arr[1]["status"], "skipped");
        assert!(arr[1]["median"].is_null());
        let back: Vec<Record> = serde_json::from_value(v).unwrap();
        assert_eq!(back, recs);
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
