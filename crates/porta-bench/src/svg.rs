//! Hand-written SVG bar charts: one file per workload, one panel per metric, one bar per runtime
//! (the median) with a min–max whisker, labelled with the median and the ratio to native.

use crate::results::{Better, Load, Record, Status};
use std::fmt::Write;

const W: f64 = 760.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Fixed colour per runtime, so that plots are comparable.
pub fn colour(runtime: &str) -> &'static str {
    match runtime {
        "native" => "#7f7f7f",
        "porta" => "#1f77b4",
        "porta-nowatch" => "#aec7e8",
        "porta-strict" => "#17becf",
        "porta-strict-nowatch" => "#9edae5",
        "porta-overlay" => "#ff7f0e",
        "porta-kernel" => "#9467bd",
        "baseline-porta" => "#393b79",
        "baseline-porta-strict" => "#6b6ecf",
        "baseline-porta-kernel" => "#8c6d31",
        "runc" => "#2ca02c",
        "runc-fuse-overlayfs" => "#98df8a",
        "crun" => "#bcbd22",
        "runsc" => "#d62728",
        _ => "#8c564b",
    }
}

/// Escapes text for use in SVG/XML character data and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Formats a value with 3 significant digits (no exponent for the usual ranges).
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// A "nice" axis maximum at or above `v` (1, 2, 2.5 or 5 times a power of ten).
pub fn nice_ceil(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v * (1.0 - 1e-12) {
            return m * p;
        }
    }
    10.0 * p
}

/// Renders the SVG for one workload from its records (all metrics of that workload, in the
/// order they appear). Runtimes that were skipped or failed get an empty slot with a note.
pub fn workload_svg(workload: &str, records: &[&Record]) -> String {
    let mut metrics: Vec<&str> = Vec::new();
    for r in records {
        if !metrics.contains(&r.metric.as_str()) {
            metrics.push(&r.metric);
        }
    }
    let h = PANEL_H * metrics.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (pi, metric) in metrics.iter().enumerate() {
        let rows: Vec<&&Record> = records.iter().filter(|r| r.metric == *metric).collect();
        let y0 = pi as f64 * PANEL_H;
        let unit = rows.first().map(|r| r.unit.as_str()).unwrap_or("");
        let better = match rows.first().map(|r| r.better) {
            Some(Better::Lower) => "lower is better",
            _ => "higher is better",
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="15" font-weight="bold">{} — {} ({}, {})</text>"#,
            LEFT,
            y0 + 22.0,
            escape(workload),
            escape(metric),
            escape(unit),
            better
        );
        let top = y0 + TOP;
        let plot_h = PANEL_H - TOP - BOTTOM;
        let base = top + plot_h;
        let vmax = rows
            .iter()
            .filter_map(|r| r.max.or(r.median))
            .fold(0.0, f64::max);
        let vmin = rows
            .iter()
            .filter_map(|r| r.min.or(r.median))
            .fold(0.0, f64::min);
        // Values can be negative (host memory growth): the axis then extends below zero.
        let axis_min = if vmin < 0.0 { -nice_ceil(-vmin) } else { 0.0 };
        let axis_max = if vmax > 0.0 || axis_min == 0.0 {
            nice_ceil(vmax)
        } else {
            0.0
        };
        let span = axis_max - axis_min;
        let y = |v: f64| base - plot_h * ((v - axis_min) / span).clamp(0.0, 1.0);
        // Axis and grid lines.
        for k in 0..=4 {
            let v = axis_min + span * k as f64 / 4.0;
            let y = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{base}" stroke="#000"/>"##
        );
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#000"/>"##,
            y(0.0),
            W - RIGHT,
            y(0.0)
        );
        // One slot per runtime; with --load two bars in it: quiet (solid), loaded (light).
        let mut slots: Vec<Vec<&Record>> = Vec::new();
        for r in &rows {
            match slots.iter_mut().find(|v| v[0].runtime == r.runtime) {
                Some(v) => v.push(r),
                None => slots.push(vec![r]),
            }
        }
        let n = slots.len().max(1) as f64;
        let slot = (W - LEFT - RIGHT) / n;
        for (i, bars) in slots.iter().enumerate() {
            let cx0 = LEFT + slot * (i as f64 + 0.5);
            let _ = writeln!(
                s,
                r#"<text x="{cx0:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                base + 18.0,
                escape(&bars[0].runtime)
            );
            let k = bars.len() as f64;
            let bw = if bars.len() == 1 {
                (slot * 0.6).min(70.0)
            } else {
                (slot * 0.8 / k).min(40.0)
            };
            for (j, r) in bars.iter().enumerate() {
                let cx = cx0 + (j as f64 - (k - 1.0) / 2.0) * bw * 1.1;
                let loaded = r.load == Load::Loaded;
                match (r.status, r.median) {
                    (Status::Ok, Some(med)) => {
                        let _ = writeln!(
                            s,
                            r#"<rect x="{:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{}"{}><title>{}{}: median {} {}</title></rect>"#,
                            cx - bw / 2.0,
                            y(med).min(y(0.0)),
                            (y(0.0) - y(med)).abs(),
                            colour(&r.runtime),
                            if loaded {
                                r#" fill-opacity="0.45""#
                            } else {
                                ""
                            },
                            escape(&r.runtime),
                            if loaded { " under load" } else { "" },
                            fmt_num(med),
                            escape(unit)
                        );
                        if let (Some(lo), Some(hi)) = (r.min, r.max) {
                            let (ylo, yhi) = (y(lo), y(hi));
                            let _ = writeln!(
                                s,
                                r##"<line x1="{cx:.1}" y1="{ylo:.1}" x2="{cx:.1}" y2="{yhi:.1}" stroke="#000" stroke-width="1.5"/><line x1="{:.1}" y1="{ylo:.1}" x2="{:.1}" y2="{ylo:.1}" stroke="#000"/><line x1="{:.1}" y1="{yhi:.1}" x2="{:.1}" y2="{yhi:.1}" stroke="#000"/>"##,
                                cx - 8.0,
                                cx + 8.0,
                                cx - 8.0,
                                cx + 8.0
                            );
                        }
                        let label = match r.ratio_to_native {
                            Some(x) => format!("{} (×{:.2})", fmt_num(med), x),
                            None => fmt_num(med),
                        };
                        if bars.len() == 1 {
                            let ly = (y(r.max.unwrap_or(med)) - 6.0).max(top - 4.0);
                            let _ = writeln!(
                                s,
                                r#"<text x="{cx:.1}" y="{ly:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                                escape(&label)
                            );
                        } else {
                            // Stacked above the slot's highest whisker: one line per load.
                            let hi = bars
                                .iter()
                                .filter_map(|b| b.max.or(b.median))
                                .fold(f64::NEG_INFINITY, f64::max);
                            let hi = if hi.is_finite() { hi } else { med };
                            let ly = (y(hi) - 6.0 - 12.0 * (k - 1.0 - j as f64))
                                .max(top - 16.0 + 12.0 * j as f64);
                            let _ = writeln!(
                                s,
                                r#"<text x="{cx0:.1}" y="{ly:.1}" text-anchor="middle" font-size="10">{}{}</text>"#,
                                if loaded { "L " } else { "Q " },
                                escape(&label)
                            );
                        }
                    }
                    _ => {
                        let what = if r.status == Status::Failed {
                            "failed"
                        } else {
                            "skipped"
                        };
                        let _ = writeln!(
                            s,
                            r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#999" font-style="italic"{}>{what}</text>"##,
                            base - 10.0 - if loaded { 14.0 } else { 0.0 },
                            if bars.len() > 1 {
                                r#" font-size="10""#
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
        }
        if rows.iter().any(|r| r.load == Load::Loaded) {
            let _ = writeln!(
                s,
                r##"<text x="{LEFT}" y="{:.1}" fill="#555" font-size="11">per runtime: left/solid (Q) quiet, right/light (L) beside CPU hogs (--load)</text>"##,
                base + 54.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{:.1}" fill="#555" font-size="11">bars: median of counted runs; whiskers: min–max; (×N): ratio to native in the same run</text>"##,
            base + 40.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{finalize, Cell};

    fn recs() -> Vec<Record> {
        let c = |rt: &str, m: &str, v: &[f64], st: Status| Cell {
            workload: "seqio".into(),
            runtime: rt.into(),
            metric: m.into(),
            unit: "MB/s".into(),
            better: Better::Higher,
            load: crate::results::Load::Quiet,
            values: v.to_vec(),
            status: st,
            reason: (st != Status::Ok).then(|| "missing <binary>".into()),
        };
        finalize(&[
            c("native", "write", &[100.0, 110.0, 90.0], Status::Ok),
            c("runc", "write", &[95.0, 99.0, 80.0], Status::Ok),
            c("porta", "write", &[], Status::Skipped),
            c("native", "read", &[1000.0, 1100.0, 900.0], Status::Ok),
            c("runc", "read", &[950.0, 990.0, 800.0], Status::Ok),
            c("porta", "read", &[], Status::Skipped),
        ])
    }

    #[test]
    fn svg_is_well_formed_and_complete() {
        let r = recs();
        let refs: Vec<&Record> = r.iter().collect();
        let s = workload_svg("seqio", &refs);
        assert!(s.starts_with("<svg "));
        assert!(s.trim_end().ends_with("</svg>"));
        // One panel per metric, one bar per measured runtime and panel, whiskers on each.
        assert_eq!(s.matches("<rect x=").count(), 4);
        assert!(s.contains("seqio — write (MB/s, higher is better)"));
        assert!(s.contains("seqio — read (MB/s, higher is better)"));
        assert_eq!(s.matches(">skipped<").count(), 2);
        assert!(s.contains("(×1.00)"));
        // Every opened element is closed or self-closed: count tags roughly.
        assert_eq!(s.matches("<svg").count(), s.matches("</svg>").count());
        assert_eq!(s.matches("<text").count(), s.matches("</text>").count());
        assert!(!s.contains("NaN"));
    }

    #[test]
    fn bars_scale_to_values() {
        let r = recs();
        let refs: Vec<&Record> = r.iter().filter(|x| x.metric == "write").collect();
        let s = workload_svg("seqio", &refs);
        // axis max is nice_ceil(110) = 200: native's bar (median 100) is half the plot height.
        let plot_h = PANEL_H - TOP - BOTTOM;
        let want = format!("height=\"{:.1}\"", plot_h * 0.5);
        assert!(s.contains(&want), "{want} not in {s}");
    }

    #[test]
    fn negative_values_extend_the_axis() {
        let r = finalize(&[Cell {
            workload: "density".into(),
            runtime: "native".into(),
            metric: "host-used".into(),
            unit: "MiB".into(),
            better: Better::Lower,
            load: crate::results::Load::Quiet,
            values: vec![-3.0, 1.0, -1.0],
            status: Status::Ok,
            reason: None,
        }]);
        let s = workload_svg("density", &r.iter().collect::<Vec<_>>());
        assert!(s.contains(">-5.00<"), "axis from -5: {s}");
        assert!(!s.contains("height=\"-"), "no negative heights");
    }

    #[test]
    fn loaded_bars_beside_quiet_ones() {
        let mut cells: Vec<Cell> = Vec::new();
        for (load, v) in [(Load::Quiet, 100.0), (Load::Loaded, 50.0)] {
            for rt in ["native", "porta"] {
                cells.push(Cell {
                    workload: "seqio".into(),
                    runtime: rt.into(),
                    metric: "write".into(),
                    unit: "MB/s".into(),
                    better: Better::Higher,
                    load,
                    values: vec![v],
                    status: Status::Ok,
                    reason: None,
                });
            }
        }
        let r = finalize(&cells);
        let s = workload_svg("seqio", &r.iter().collect::<Vec<_>>());
        assert_eq!(s.matches("<rect x=").count(), 4);
        assert_eq!(s.matches(r#"fill-opacity="0.45""#).count(), 2);
        assert_eq!(
            s.matches(">porta</text>").count(),
            1,
            "one slot per runtime"
        );
        assert!(s.contains("beside CPU hogs"));
        assert_eq!(s.matches("<text").count(), s.matches("</text>").count());
        // Without loaded records the legend line is absent.
        let q: Vec<&Record> = r.iter().filter(|x| x.load == Load::Quiet).collect();
        assert!(!workload_svg("seqio", &q).contains("CPU hogs"));
    }

    #[test]
    fn helpers() {
        assert_eq!(nice_ceil(110.0), 200.0);
        assert_eq!(nice_ceil(0.7), 1.0);
        assert_eq!(nice_ceil(2.2), 2.5);
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(fmt_num(1234.6), "1235");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(escape("a<b>&\""), "a&lt;b&gt;&amp;&quot;");
    }
}
