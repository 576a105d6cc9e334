//! The latency picture, written as plain SVG: left, the latency percentile
//! distribution on a "number of nines" axis (p50, p90, p99, p99.9, p99.99);
//! right, completed messages per second over the run. One line per target.
//! Hand-written because two line charts do not justify a plotting stack.

use std::fmt::Write;

/// Whole picture, pixels.
const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 480.0;
/// Space around each panel's plotting area: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (70.0, 20.0, 80.0, 55.0);
/// Line colours, one per series (colour-blind friendly pair first).
const COLOURS: [&str; 4] = ["#0072b2", "#d55e00", "#009e73", "#cc79a7"];
/// Percentiles marked on the latency axis.
const PERCENTILE_TICKS: [(f64, &str); 5] = [
    (50.0, "p50"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (99.99, "p99.99"),
];

/// One line in each panel.
pub struct Series {
    pub label: String,
    /// (percentile, ms).
    pub latency: Vec<(f64, f64)>,
    /// Completed messages in each second.
    pub per_second: Vec<f64>,
}

/// A panel's plotting area, in pixels.
struct Area {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-9).log10()
}

/// A round axis maximum at or above `v` and its tick step.
fn nice_axis(v: f64) -> (f64, f64) {
    if !(v.is_finite() && v > 0.0) {
        return (1.0, 0.2);
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [0.1, 0.2, 0.25, 0.5, 1.0, 2.0] {
        let step = step * magnitude;
        let top = (v / step).ceil() * step;
        if top / step <= 6.0 {
            return (top, step);
        }
    }
    (v, v / 5.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The SVG document for `series` under `title`.
pub fn render(title: &str, series: &[Series]) -> String {
    let panel_w = WIDTH / 2.0;
    let left = Area {
        x: MARGIN.0,
        y: MARGIN.2,
        w: panel_w - MARGIN.0 - MARGIN.1,
        h: HEIGHT - MARGIN.2 - MARGIN.3,
    };
    let right = Area {
        x: panel_w + MARGIN.0,
        y: MARGIN.2,
        w: panel_w - MARGIN.0 - MARGIN.1,
        h: HEIGHT - MARGIN.2 - MARGIN.3,
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    latency_panel(&mut svg, &left, series);
    throughput_panel(&mut svg, &right, series);
    legend(&mut svg, series);
    svg.push_str("</svg>\n");
    svg
}

fn frame(svg: &mut String, area: &Area, title: &str, x_label: &str, y_label: &str) {
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        area.x, area.y, area.w, area.h
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        area.x + area.w / 2.0,
        area.y - 10.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        area.x + area.w / 2.0,
        area.y + area.h + 40.0,
        escape(x_label)
    );
    let (cx, cy) = (area.x - 52.0, area.y + area.h / 2.0);
    let _ = writeln!(
        svg,
        r#"<text x="{cx}" y="{cy}" text-anchor="middle" transform="rotate(-90 {cx} {cy})">{}</text>"#,
        escape(y_label)
    );
}

fn y_ticks(svg: &mut String, area: &Area, top: f64, step: f64, unit: &str) {
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let y = area.y + area.h - area.h * v / top;
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            area.x,
            area.x + area.w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}{unit}</text>"#,
            area.x - 6.0,
            y + 4.0,
            short(v)
        );
        v += step;
    }
}

fn polyline(svg: &mut String, points: &[(f64, f64)], colour: &str) {
    if points.is_empty() {
        return;
    }
    let path: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
        path.join(" ")
    );
}

fn latency_panel(svg: &mut String, area: &Area, series: &[Series]) {
    frame(
        svg,
        area,
        "Latency by percentile",
        "percentile (log scale of 1 − p)",
        "latency (ms)",
    );
    let x_min = nines(50.0);
    let x_max = nines(99.99);
    let top = series
        .iter()
        .flat_map(|s| s.latency.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let (top, step) = nice_axis(top);
    y_ticks(svg, area, top, step, "");
    for (percentile, label) in PERCENTILE_TICKS {
        let x = area.x + area.w * (nines(percentile) - x_min) / (x_max - x_min);
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/>"##,
            area.y,
            area.y + area.h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
            area.y + area.h + 18.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = s
            .latency
            .iter()
            .filter(|(p, _)| *p >= 50.0 - 1e-9)
            .map(|&(p, ms)| {
                let x = area.x + area.w * ((nines(p) - x_min) / (x_max - x_min)).clamp(0.0, 1.0);
                (x, area.y + area.h - area.h * ms / top)
            })
            .collect();
        polyline(svg, &points, COLOURS[i % COLOURS.len()]);
    }
}

fn throughput_panel(svg: &mut String, area: &Area, series: &[Series]) {
    frame(
        svg,
        area,
        "Throughput over time",
        "seconds since start",
        "messages per second",
    );
    let seconds = series.iter().map(|s| s.per_second.len()).max().unwrap_or(0).max(1);
    let top = series
        .iter()
        .flat_map(|s| s.per_second.iter().copied())
        .fold(0.0, f64::max);
    let (top, step) = nice_axis(top);
    y_ticks(svg, area, top, step, "");
    let (x_top, x_step) = nice_axis(seconds as f64);
    let mut t = 0.0;
    while t <= x_top + x_step / 2.0 {
        let x = area.x + area.w * t / x_top;
        let _ = writeln!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            area.y + area.h + 18.0,
            short(t)
        );
        t += x_step;
    }
    for (i, s) in series.iter().enumerate() {
        // Each second's count is drawn at the middle of that second.
        let points: Vec<(f64, f64)> = s
            .per_second
            .iter()
            .enumerate()
            .map(|(second, &v)| {
                let x = area.x + area.w * (second as f64 + 0.5) / x_top;
                (x, area.y + area.h - area.h * v / top)
            })
            .collect();
        polyline(svg, &points, COLOURS[i % COLOURS.len()]);
        for &(x, y) in &points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{}"/>"#,
                COLOURS[i % COLOURS.len()]
            );
        }
    }
}

fn legend(svg: &mut String, series: &[Series]) {
    let mut x = MARGIN.0;
    let y = 48.0;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="3"/>"#,
            x + 24.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 30.0,
            y + 4.0,
            escape(&s.label)
        );
        x += 40.0 + 8.0 * s.label.chars().count() as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_two_series() {
        let series = vec![
            Series {
                label: "parley".into(),
                latency: vec![(50.0, 1.0), (99.0, 3.0), (99.99, 8.0)],
                per_second: vec![100.0, 120.0],
            },
            Series {
                label: "nats <core>".into(),
                latency: vec![(50.0, 0.5), (99.99, 2.0)],
                per_second: vec![300.0],
            },
        ];
        let svg = render("relay & co", &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("relay &amp; co"));
        assert!(svg.contains("nats &lt;core&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 4);
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(7.3), (8.0, 2.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        let (top, step) = nice_axis(123_456.0);
        assert!(top >= 123_456.0 && top / step <= 6.0);
    }
}
