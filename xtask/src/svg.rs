//! Line charts as standalone SVG, written by hand so the report needs no font or drawing library:
//! one or more stacked panels, each with numeric or categorical x, linear or log y, a legend, and
//! series drawn as polylines with point markers.

use std::fmt::Write;

/// One line of a panel.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points; x is the category index on a categorical axis. Non-finite y are skipped.
    pub points: Vec<(f64, f64)>,
    /// Dashed line (e.g. the fixed-weight curves of Fig. 5).
    pub dashed: bool,
    /// Palette index (default: the series' position), to pair related lines.
    pub color: Option<usize>,
}

/// One chart area.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    /// Title above the area.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Category labels of a categorical x axis (x = 0, 1, …), or empty for a numeric axis.
    pub categories: Vec<String>,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const PALETTE: [&str; 10] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"];
const FONT: f64 = 12.0;

/// Renders `panels` stacked vertically under `title`, `width` pixels wide.
pub fn render(title: &str, panels: &[Panel], width: f64) -> String {
    let legend_w = panels
        .iter()
        .flat_map(|p| p.series.iter().map(|s| text_width(&s.name)))
        .fold(0.0, f64::max)
        + 40.0;
    let (left, right) = (70.0, legend_w + 20.0);
    let panel_h = |p: &Panel| {
        let label_h = p.categories.iter().map(|c| text_width(c) * 0.7).fold(0.0, f64::max);
        (260.0, 40.0 + label_h + 30.0)
    };
    let top = 40.0;
    let total_h: f64 = top + panels.iter().map(|p| panel_h(p).0 + panel_h(p).1 + 30.0).sum::<f64>();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{total_h:.0}" viewBox="0 0 {width:.0} {total_h:.0}" font-family="DejaVu Sans, Arial, sans-serif" font-size="{FONT}">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#, width / 2.0, esc(title));
    let mut y0 = top;
    for panel in panels {
        let (h, below) = panel_h(panel);
        draw_panel(&mut s, panel, left, y0 + 20.0, width - left - right, h);
        y0 += h + below + 30.0;
    }
    s.push_str("</svg>\n");
    s
}

fn draw_panel(s: &mut String, p: &Panel, x0: f64, y0: f64, w: f64, h: f64) {
    let ys: Vec<f64> = p.series.iter().flat_map(|x| x.points.iter().map(|q| q.1)).filter(|v| v.is_finite() && (!p.log_y || *v > 0.0)).collect();
    let xs: Vec<f64> = p.series.iter().flat_map(|x| x.points.iter().map(|q| q.0)).filter(|v| v.is_finite()).collect();
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14">{}</text>"#, x0 + w / 2.0, y0 - 6.0, esc(&p.title));
    let _ = writeln!(s, r##"<rect x="{x0:.1}" y="{y0:.1}" width="{w:.1}" height="{h:.1}" fill="none" stroke="#333"/>"##);
    if ys.is_empty() || xs.is_empty() {
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"#, x0 + w / 2.0, y0 + h / 2.0);
        return;
    }
    let tf = |v: f64| if p.log_y { v.log10() } else { v };
    let (mut ymin, mut ymax) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(tf(v)), b.max(tf(v))));
    if ymax - ymin < 1e-9 {
        ymin -= 0.5;
        ymax += 0.5;
    }
    let pad = (ymax - ymin) * 0.05;
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let (xmin, xmax) = if p.categories.is_empty() {
        let (a, b) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if b - a < 1e-9 { (a - 1.0, b + 1.0) } else { (a, b) }
    } else {
        (-0.5, p.categories.len() as f64 - 0.5)
    };
    let px = |x: f64| x0 + (x - xmin) / (xmax - xmin) * w;
    let py = |y: f64| y0 + h - (tf(y) - ymin) / (ymax - ymin) * h;
    // Y ticks and grid.
    let ticks = if p.log_y { log_ticks(ymin, ymax) } else { nice_ticks(ymin, ymax, 6) };
    for t in ticks {
        let y = py(t);
        let _ = writeln!(s, r##"<line x1="{x0:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##, x0 + w);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, x0 - 5.0, y + 4.0, fmt_tick(t));
    }
    // X ticks.
    if p.categories.is_empty() {
        for t in nice_ticks(xmin, xmax, 8) {
            let x = px(t);
            let _ = writeln!(s, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{:.1}" stroke="#eee"/>"##, y0 + h);
            let _ = writeln!(s, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, y0 + h + 16.0, fmt_tick(t));
        }
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, x0 + w / 2.0, y0 + h + 36.0, esc(&p.x_label));
    } else {
        for (i, c) in p.categories.iter().enumerate() {
            let x = px(i as f64);
            let _ = writeln!(s, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{:.1}" stroke="#f2f2f2"/>"##, y0 + h);
            let ty = y0 + h + 10.0;
            let _ = writeln!(s, r#"<text x="{x:.1}" y="{ty:.1}" text-anchor="end" transform="rotate(-45 {x:.1} {ty:.1})" font-size="11">{}</text>"#, esc(c));
        }
    }
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>"#, x0 - 52.0, y0 + h / 2.0, x0 - 52.0, y0 + h / 2.0, esc(&p.y_label));
    // Series and legend.
    for (k, series) in p.series.iter().enumerate() {
        let color = PALETTE[series.color.unwrap_or(k) % PALETTE.len()];
        let pts: Vec<(f64, f64)> = series.points.iter().filter(|q| q.1.is_finite() && (!p.log_y || q.1 > 0.0)).map(|&(x, y)| (px(x), py(y))).collect();
        let dash = if series.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let line: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>"#, line.join(" "));
        for (x, y) in &pts {
            let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.6" fill="{color}"/>"#);
        }
        let ly = y0 + 12.0 + k as f64 * 18.0;
        let lx = x0 + w + 14.0;
        let _ = writeln!(s, r#"<line x1="{lx:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2.5"{dash}/>"#, lx + 22.0);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, lx + 28.0, ly + 4.0, esc(&series.name));
    }
}

/// About 0.6 em per character.
fn text_width(t: &str) -> f64 {
    t.chars().count() as f64 * FONT * 0.6
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Round tick positions covering `[lo, hi]`, about `n` of them.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let raw = (hi - lo) / n.max(1) as f64;
    let e = raw.log10().floor() as i32;
    let mag = 10f64.powi(e);
    let m = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().find(|m| m * mag >= raw).unwrap_or(10.0);
    // i·m is exact; one division or multiplication by a power of ten keeps 0.6 as 0.6.
    let at = |i: f64| if e < 0 { i * m / 10f64.powi(-e) } else { i * m * mag };
    let step = m * mag;
    let (first, last) = ((lo / step - 1e-9).ceil() as i64, (hi / step + 1e-9).floor() as i64);
    (first..=last).map(|i| at(i as f64) + 0.0).collect()
}

/// Ticks at 1, 2, 5 × 10^k inside `[lo, hi]` (log10 units); values, not logs.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mults: &[f64] = if hi - lo > 3.0 { &[1.0] } else { &[1.0, 2.0, 5.0] };
    for k in lo.floor() as i32..=hi.ceil() as i32 {
        for m in mults {
            let v = m * 10f64.powi(k);
            if (lo..=hi).contains(&v.log10()) {
                out.push(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 1.0, 5), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(3.0, 97.0, 4), [25.0, 50.0, 75.0]);
        assert_eq!(log_ticks(-0.5, 2.1), [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
    }

    #[test]
    fn renders_every_series_with_escaped_text() {
        let panel = Panel {
            title: "a <b>".into(),
            categories: vec!["x".into(), "y".into()],
            series: vec![
                Series { name: "s1".into(), points: vec![(0.0, 1.0), (1.0, 2.0)], ..Default::default() },
                Series { name: "s&2".into(), points: vec![(0.0, f64::NAN), (1.0, 3.0)], dashed: true, color: None },
            ],
            ..Default::default()
        };
        let svg = render("t", &[panel], 600.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3, "the NaN point is skipped");
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("s&amp;2") && svg.contains("stroke-dasharray"));
    }
}
