//! `--plot`: throughput against write size (log-scale x) for every
//! transport and baseline, as a hand-written SVG: the median as a line and
//! point, min to max as a whisker.

use std::fmt::Write as _;
use std::path::Path;

use crate::cli::human_size;

/// One line of the plot.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Drawn dashed (typed items).
    pub dashed: bool,
    /// (write size, median, min, max) in bytes and bytes per second.
    pub points: Vec<(usize, f64, f64, f64)>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// A round step for about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Renders the plot.
pub fn render(series: &[Series]) -> String {
    let (w, h) = (900.0, 540.0);
    let (left, right, top, bottom) = (70.0, 190.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let mut sizes: Vec<usize> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let lx = |s: usize| (s.max(1) as f64).log2();
    let (x0, x1) = match (sizes.first(), sizes.last()) {
        (Some(&a), Some(&b)) if a != b => (lx(a) - 0.5, lx(b) + 0.5),
        (Some(&a), _) => (lx(a) - 1.0, lx(a) + 1.0),
        _ => (0.0, 1.0),
    };
    let ymax_data = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.3 / 1e9))
        .fold(0.0f64, f64::max);
    let step = nice_step(ymax_data.max(0.1), 6.0);
    let ymax = (ymax_data / step).ceil().max(1.0) * step;
    let px = |s: usize| left + (lx(s) - x0) / (x1 - x0) * pw;
    let py = |v: f64| top + ph - (v / 1e9) / ymax * ph;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">shmbus-bench throughput (median, whiskers min–max)</text>"#,
        left + pw / 2.0
    );
    let mut t = 0.0;
    while t <= ymax + step / 2.0 {
        let y = top + ph - t / ymax * ph;
        let _ = writeln!(
            o,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{t}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0
        );
        t += step;
    }
    for &s in &sizes {
        let x = px(s);
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            human_size(s)
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">write size (log scale)</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        o,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">GB/s</text>"#,
        top + ph / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        for p in &s.points {
            let x = px(p.0);
            let _ = writeln!(
                o,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{c}"/><circle cx="{x:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                py(p.2),
                py(p.3),
                py(p.1)
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx0 = left + pw + 15.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx0:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx0 + 28.0,
            lx0 + 34.0,
            ly + 4.0,
            s.label
        );
    }
    o.push_str("</svg>\n");
    o
}

/// Writes the plot to `path`.
pub fn write(path: &Path, series: &[Series]) -> std::io::Result<()> {
    std::fs::write(path, render(series))
}
