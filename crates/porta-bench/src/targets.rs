//! The performance targets Porta is held to (issue 18), evaluated from one harness run, quiet
//! and under load.
//!
//! Every target is a bound on a ratio between `porta` and a reference environment measured
//! in the same run under the same load. The ratio is oriented so that above 1 is better for
//! `porta`: `porta ÷ reference` for a ↑ metric (rates, bandwidths), `reference ÷ porta` for a
//! ↓ metric (times). A target is met when the ratio is at least its bound; a target over
//! several metrics takes the smallest of their ratios.

use crate::results::{reference, Better, Load, Record};
use crate::svg::fmt_num;
use std::fmt::Write;

/// The environment the targets are about.
pub const SUBJECT: &str = "porta";

/// The file-system metrics "every fs workload" means: (workload, metric).
pub const FS_METRICS: &[(&str, &str)] = &[
    ("fsmark-fsync", "rate"),
    ("fsmark-nosync", "rate"),
    ("fsmark-real", "nosync"),
    ("fsmark-real", "fsync"),
    ("stat-tree", "cold"),
    ("stat-tree", "warm"),
    ("smallfile", "rate"),
    ("smallio", "append"),
    ("smallio", "reopen"),
    ("seqio", "write"),
    ("seqio", "read"),
];

/// One target: `SUBJECT` against `reference` on `metrics`, at least `min`, under `loads`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// What the target says, for the table.
    pub label: &'static str,
    /// The (workload, metric) pairs it covers; the smallest ratio counts.
    pub metrics: &'static [(&'static str, &'static str)],
    /// The environment the ratio is taken against.
    pub reference: &'static str,
    /// The bound the ratio must reach.
    pub min: f64,
    /// The loads the target applies to.
    pub loads: &'static [Load],
}

const BOTH: &[Load] = &[Load::Quiet, Load::Loaded];

/// The targets of issue 18, in the order the report lists them.
pub const TARGETS: &[Target] = &[
    Target {
        label: "fsmark-nosync ≥ 0.30 × porta-kernel",
        metrics: &[("fsmark-nosync", "rate")],
        reference: "porta-kernel",
        min: 0.30,
        loads: BOTH,
    },
    Target {
        label: "fsmark-fsync ≥ 0.65 × porta-kernel",
        metrics: &[("fsmark-fsync", "rate")],
        reference: "porta-kernel",
        min: 0.65,
        loads: BOTH,
    },
    Target {
        label: "smallio reopen ≥ 0.12 × porta-kernel",
        metrics: &[("smallio", "reopen")],
        reference: "porta-kernel",
        min: 0.12,
        loads: BOTH,
    },
    Target {
        label: "smallfile ≥ 0.6 × porta-kernel",
        metrics: &[("smallfile", "rate")],
        reference: "porta-kernel",
        min: 0.6,
        loads: BOTH,
    },
    Target {
        label: "seqio write and read ≥ 0.95 × porta-kernel",
        metrics: &[("seqio", "write"), ("seqio", "read")],
        reference: "porta-kernel",
        min: 0.95,
        loads: BOTH,
    },
    Target {
        label: "stat-tree warm ≥ 0.95 × porta-kernel",
        metrics: &[("stat-tree", "warm")],
        reference: "porta-kernel",
        min: 0.95,
        loads: BOTH,
    },
    Target {
        label: "every fs workload ≥ 2 × runsc",
        metrics: FS_METRICS,
        reference: "runsc",
        min: 2.0,
        loads: BOTH,
    },
    Target {
        label: "every fs workload ≥ 1.5 × runc-fuse-overlayfs",
        metrics: FS_METRICS,
        reference: "runc-fuse-overlayfs",
        min: 1.5,
        loads: BOTH,
    },
    Target {
        label: "lifecycle ≤ crun (quiet)",
        metrics: &[("lifecycle", "time")],
        reference: "crun",
        min: 1.0,
        loads: &[Load::Quiet],
    },
    Target {
        label: "lifecycle ≤ runc (under load)",
        metrics: &[("lifecycle", "time")],
        reference: "runc",
        min: 1.0,
        loads: &[Load::Loaded],
    },
];

/// A target's ratio under one load.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The smallest oriented ratio over the metrics measured for both environments, with
    /// its (workload, metric); None when no metric of the target was.
    pub worst: Option<(f64, String)>,
    /// How many of the target's metrics were measured for both environments.
    pub measured: usize,
}

impl Evaluation {
    /// Met, not met, or None when nothing was measured.
    pub fn met(&self, min: f64) -> Option<bool> {
        self.worst.as_ref().map(|(r, _)| *r >= min)
    }
}

/// `subject` against `reference` for one metric, oriented so that above 1 is better for the
/// subject; None when either is missing or not positive.
pub fn oriented_ratio(subject: f64, reference: f64, better: Better) -> Option<f64> {
    if !(subject > 0.0 && reference > 0.0) {
        return None;
    }
    Some(match better {
        Better::Higher => subject / reference,
        Better::Lower => reference / subject,
    })
}

/// Evaluates `t` under `load` from the records of one run.
pub fn evaluate(records: &[Record], t: &Target, load: Load) -> Evaluation {
    let mut worst: Option<(f64, String)> = None;
    let mut measured = 0;
    for (w, m) in t.metrics {
        let Some(better) = records
            .iter()
            .find(|r| r.workload == *w && r.metric == *m)
            .map(|r| r.better)
        else {
            continue;
        };
        let (Some(s), Some(rf)) = (
            reference(records, w, m, SUBJECT, load),
            reference(records, w, m, t.reference, load),
        ) else {
            continue;
        };
        let Some(r) = oriented_ratio(s, rf, better) else {
            continue;
        };
        measured += 1;
        if worst.as_ref().is_none_or(|(x, _)| r < *x) {
            let name = if t.metrics.len() > 1 {
                format!("{w} {m}")
            } else {
                String::new()
            };
            worst = Some((r, name));
        }
    }
    Evaluation { worst, measured }
}

fn shown(t: &Target, e: &Evaluation) -> String {
    match (&e.worst, e.met(t.min)) {
        (Some((r, name)), Some(ok)) => {
            let mut s = format!("{} {}", fmt_ratio(*r), if ok { "✓" } else { "✗" });
            if !name.is_empty() {
                let _ = write!(
                    s,
                    " (worst: {name}; {} of {} measured)",
                    e.measured,
                    t.metrics.len()
                );
            }
            s
        }
        _ => "not measured".into(),
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        fmt_num(r)
    } else {
        format!("{r:.2}")
    }
}

/// The targets table: one row per target, the ratio quiet and under load with ✓ or ✗, and a
/// verdict. None when not one target could be evaluated (e.g. no `porta` in the run).
pub fn targets_table(records: &[Record]) -> Option<String> {
    let any_loaded = crate::results::has_load(records);
    let mut rows = String::new();
    let mut any = false;
    for t in TARGETS {
        let mut cells = Vec::new();
        let mut verdicts = Vec::new();
        for load in [Load::Quiet, Load::Loaded] {
            if !t.loads.contains(&load) {
                cells.push("n/a".to_string());
                continue;
            }
            if load == Load::Loaded && !any_loaded {
                cells.push("not run (no --load)".to_string());
                verdicts.push(None);
                continue;
            }
            let e = evaluate(records, t, load);
            any |= e.worst.is_some();
            cells.push(shown(t, &e));
            verdicts.push(e.met(t.min));
        }
        let verdict = if verdicts.contains(&Some(false)) {
            "**not met**"
        } else if verdicts.iter().all(|v| *v == Some(true)) {
            "met"
        } else if verdicts.contains(&Some(true)) {
            "met where measured"
        } else {
            "not measured"
        };
        let _ = writeln!(
            rows,
            "| {} | {SUBJECT} vs {} | {} | {} | {verdict} |",
            t.label, t.reference, cells[0], cells[1]
        );
    }
    if !any {
        return None;
    }
    Some(format!(
        "| target | ratio of | quiet | under load | verdict |\n|---|---|---:|---:|---|\n{rows}"
    ))
}

/// How the targets table's ratios are defined (printed above it).
pub const TARGETS_INTRO: &str = "Each target bounds a ratio between `porta` and a reference environment, both measured in this run under the same load (quiet, or beside the CPU hogs of `--load`). The ratio is oriented so that above 1 is better for porta: porta ÷ reference for ↑ metrics (rates, bandwidths), reference ÷ porta for ↓ metrics (the lifecycle time; so \"lifecycle ≤ crun\" is crun's time ÷ porta's ≥ 1). A target is met (✓) when its ratio is at least the bound; a target over several metrics shows its smallest ratio and that metric. Medians of the counted runs.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{finalize, Cell, Status};

    fn cell(w: &str, m: &str, rt: &str, better: Better, load: Load, v: f64) -> Cell {
        Cell {
            workload: w.into(),
            runtime: rt.into(),
            metric: m.into(),
            unit: "u".into(),
            better,
            load,
            values: vec![v],
            status: Status::Ok,
            reason: None,
        }
    }

    #[test]
    fn ratios_are_oriented_so_that_above_one_is_better() {
        assert_eq!(oriented_ratio(50.0, 100.0, Better::Higher), Some(0.5));
        assert_eq!(oriented_ratio(20.0, 40.0, Better::Lower), Some(2.0));
        assert_eq!(oriented_ratio(0.0, 40.0, Better::Lower), None);
        assert_eq!(oriented_ratio(1.0, -1.0, Better::Higher), None);
    }

    #[test]
    fn single_metric_targets_quiet_and_loaded() {
        let h = Better::Higher;
        let recs = finalize(&[
            cell("fsmark-nosync", "rate", "porta", h, Load::Quiet, 31.0),
            cell(
                "fsmark-nosync",
                "rate",
                "porta-kernel",
                h,
                Load::Quiet,
                100.0,
            ),
            cell("fsmark-nosync", "rate", "porta", h, Load::Loaded, 29.0),
            cell(
                "fsmark-nosync",
                "rate",
                "porta-kernel",
                h,
                Load::Loaded,
                100.0,
            ),
        ]);
        let t = &TARGETS[0];
        let q = evaluate(&recs, t, Load::Quiet);
        assert!((q.worst.as_ref().unwrap().0 - 0.31).abs() < 1e-9);
        assert_eq!(q.met(t.min), Some(true));
        let l = evaluate(&recs, t, Load::Loaded);
        assert_eq!(l.met(t.min), Some(false));
        // fsmark-fsync was not run.
        assert_eq!(evaluate(&recs, &TARGETS[1], Load::Quiet).met(0.65), None);
        let table = targets_table(&recs).unwrap();
        assert!(
            table.contains("| fsmark-nosync ≥ 0.30 × porta-kernel | porta vs porta-kernel | 0.31 ✓ | 0.29 ✗ | **not met** |"),
            "{table}"
        );
        assert!(table.contains("| fsmark-fsync ≥ 0.65 × porta-kernel | porta vs porta-kernel | not measured | not measured | not measured |"), "{table}");
    }

    #[test]
    fn several_metrics_take_the_smallest_ratio() {
        let h = Better::Higher;
        let q = Load::Quiet;
        let recs = finalize(&[
            cell("seqio", "write", "porta", h, q, 96.0),
            cell("seqio", "write", "porta-kernel", h, q, 100.0),
            cell("seqio", "read", "porta", h, q, 90.0),
            cell("seqio", "read", "porta-kernel", h, q, 100.0),
            cell("stat-tree", "warm", "porta", h, q, 300.0),
            cell("stat-tree", "warm", "runsc", h, q, 100.0),
            cell("smallio", "reopen", "porta", h, q, 150.0),
            cell("smallio", "reopen", "runsc", h, q, 100.0),
        ]);
        let seq = TARGETS
            .iter()
            .find(|t| t.label.starts_with("seqio"))
            .unwrap();
        let e = evaluate(&recs, seq, q);
        assert_eq!(e.measured, 2);
        let (r, name) = e.worst.clone().unwrap();
        assert!((r - 0.9).abs() < 1e-9 && name == "seqio read", "{e:?}");
        assert_eq!(e.met(seq.min), Some(false));
        let runsc = TARGETS.iter().find(|t| t.reference == "runsc").unwrap();
        let e = evaluate(&recs, runsc, q);
        assert_eq!(e.measured, 2);
        assert_eq!(e.worst.clone().unwrap().1, "smallio reopen");
        assert_eq!(e.met(2.0), Some(false));
        // Without --load the loaded column says so, and the verdict rests on quiet alone.
        let table = targets_table(&recs).unwrap();
        assert!(table.contains("| 1.50 ✗ (worst: smallio reopen; 2 of 11 measured) | not run (no --load) | **not met** |"), "{table}");
    }

    #[test]
    fn lifecycle_is_inverted_and_load_specific() {
        let l = Better::Lower;
        let recs = finalize(&[
            cell("lifecycle", "time", "porta", l, Load::Quiet, 20.0),
            cell("lifecycle", "time", "crun", l, Load::Quiet, 25.0),
            cell("lifecycle", "time", "runc", l, Load::Quiet, 10.0),
            cell("lifecycle", "time", "porta", l, Load::Loaded, 50.0),
            cell("lifecycle", "time", "runc", l, Load::Loaded, 40.0),
            cell("lifecycle", "time", "crun", l, Load::Loaded, 100.0),
        ]);
        let table = targets_table(&recs).unwrap();
        assert!(
            table.contains("| lifecycle ≤ crun (quiet) | porta vs crun | 1.25 ✓ | n/a | met |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| lifecycle ≤ runc (under load) | porta vs runc | n/a | 0.80 ✗ | **not met** |"
            ),
            "{table}"
        );
    }

    #[test]
    fn nothing_to_evaluate_no_table() {
        let recs = finalize(&[cell(
            "primes",
            "time",
            "native",
            Better::Lower,
            Load::Quiet,
            1.0,
        )]);
        assert!(targets_table(&recs).is_none());
        // Every target names metrics the harness measures.
        for t in TARGETS {
            for (w, m) in t.metrics {
                assert!(
                    crate::bench::metrics(w).iter().any(|x| x.0 == *m),
                    "{} names {w} {m}",
                    t.label
                );
            }
        }
    }
}
