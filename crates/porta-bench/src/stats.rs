//! Summary statistics of the counted runs.

/// Median, minimum and maximum of a set of runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// Median of the values (mean of the two middle values for an even count); `None` when empty or
/// when any value is not finite.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median, minimum and maximum; `None` when empty or when any value is not finite.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let median = median(values)?;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(Summary { median, min, max })
}

/// `value / reference`, when both exist, the reference is positive and the value is not
/// negative (a ratio involving a negative memory growth lost in noise means nothing).
pub fn ratio(value: f64, reference: Option<f64>) -> Option<f64> {
    match reference {
        Some(r) if r > 0.0 && r.is_finite() && value.is_finite() && value >= 0.0 => Some(value / r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_unsorted() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn summary_min_max() {
        let s = summarize(&[5.0, 9.0, 1.0, 4.0, 6.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                median: 5.0,
                min: 1.0,
                max: 9.0
            }
        );
        assert!(s.min <= s.median && s.median <= s.max);
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, Some(2.0)), Some(1.5));
        assert_eq!(ratio(3.0, None), None);
        assert_eq!(ratio(3.0, Some(0.0)), None);
        assert_eq!(ratio(3.0, Some(-1.0)), None);
        assert_eq!(ratio(-3.0, Some(1.0)), None);
    }
}
