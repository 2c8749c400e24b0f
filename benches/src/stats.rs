//! Small statistics: median with min and max over repeated runs, latency
//! percentiles from an HDR histogram, and the table cells that show them.

use hdrhistogram::Histogram;

/// Median, minimum and maximum of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// Summarizes the finite values; `None` when there are none.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// Round-trip or setup times, recorded in nanoseconds.
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty recorder covering 1 ns to 100 s at 3 significant digits.
    pub fn new() -> Self {
        Latencies {
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one time.
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Times recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// p50, p99 and p99.9, in nanoseconds.
    pub fn percentiles(&self) -> [u64; 3] {
        [50.0, 99.0, 99.9].map(|q| self.hist.value_at_quantile(q / 100.0))
    }
}

/// "median [min, max]" of the values times `scale`, or "—" without values.
pub fn range(values: &[f64], scale: f64, decimals: usize) -> String {
    match summarize(values) {
        Some(s) => format!(
            "{:.d$} [{:.d$}, {:.d$}]",
            s.median * scale,
            s.min * scale,
            s.max * scale,
            d = decimals
        ),
        None => "—".into(),
    }
}

/// The median of the values times `scale`, or "—".
pub fn median(values: &[f64], scale: f64, decimals: usize) -> String {
    summarize(values).map_or("—".into(), |s| {
        format!("{:.d$}", s.median * scale, d = decimals)
    })
}

/// The median as a count with a k/M/G suffix, or "—".
pub fn count(values: &[f64]) -> String {
    let Some(s) = summarize(values) else {
        return "—".into();
    };
    let v = s.median;
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(summarize(&[f64::NAN]).is_none());
    }

    #[test]
    fn percentiles_from_the_histogram() {
        let mut l = Latencies::new();
        for i in 1..=1000 {
            l.record(i * 1000);
        }
        let [p50, p99, _] = l.percentiles();
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        assert!((989_000..=991_000).contains(&p99), "{p99}");
    }
}
