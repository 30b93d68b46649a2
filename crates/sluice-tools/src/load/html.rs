//! The `--html` page: one self-contained file (inline CSS and SVG, no script) with
//! the summary table, latency over time, throughput over time and the latency
//! distribution (percentile spectrum, as HdrHistogram plots it).

use std::fmt::Write;

use super::report::Report;

const W: f64 = 860.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 130.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// The whole page.
pub fn page(r: &Report) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sluice load: {mode:?} {model}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}\
         table{{border-collapse:collapse}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}\
         th{{text-align:left}}h1{{font-size:20px}}h2{{font-size:16px;margin-top:28px}}\
         svg{{background:#fff;border:1px solid #ccc}}text{{font:12px system-ui,sans-serif}}</style>\
         </head><body><h1>sluice load: {mode:?}, {model} model</h1>",
        mode = r.mode,
        model = r.model,
    );
    let _ = write!(s, "<table>");
    let rows: Vec<(&str, String)> = vec![
        ("URL", escape(&r.url)),
        ("stream", escape(&r.stream)),
        (
            "connections / concurrency",
            format!("{} / {}", r.connections, r.concurrency),
        ),
        (
            "target rate",
            r.rate_target
                .map(|t| format!("{t} req/s"))
                .unwrap_or_else(|| "none (closed model)".into()),
        ),
        (
            "batch × event size",
            format!("{} × {} B", r.batch, r.event_bytes),
        ),
        ("duration", format!("{:.3} s", r.duration_s)),
        (
            "requests",
            format!("{} ({:.1}/s)", r.requests, r.requests_per_s),
        ),
        ("events", format!("{} ({:.1}/s)", r.events, r.events_per_s)),
        ("errors", {
            let kinds: Vec<String> = r
                .errors_by_kind
                .iter()
                .map(|(k, v)| format!("{}: {v}", escape(k)))
                .collect();
            if kinds.is_empty() {
                r.errors.to_string()
            } else {
                format!("{} ({})", r.errors, kinds.join(", "))
            }
        }),
        (
            "latency p50 / p90 / p99 / p99.9 / max",
            format!(
                "{:.3} / {:.3} / {:.3} / {:.3} / {:.3} ms",
                r.latency_ms.p50,
                r.latency_ms.p90,
                r.latency_ms.p99,
                r.latency_ms.p999,
                r.latency_ms.max
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    let _ = write!(s, "</table>");

    let t = &r.timeline;
    let xs = |f: fn(&super::report::TimelinePoint) -> f64| -> Vec<(f64, f64)> {
        t.iter().map(|p| (p.t_s, f(p))).collect()
    };
    let time_ticks = ticks(0.0, t.last().map_or(1.0, |p| p.t_s), |v| format!("{v:.0}s"));
    let _ = write!(s, "<h2>Latency over time (ms, log scale)</h2>");
    s.push_str(&chart(
        &[
            Series {
                name: "p50",
                color: "#1b9e77",
                points: xs(|p| p.p50_ms),
            },
            Series {
                name: "p90",
                color: "#7570b3",
                points: xs(|p| p.p90_ms),
            },
            Series {
                name: "p99",
                color: "#d95f02",
                points: xs(|p| p.p99_ms),
            },
            Series {
                name: "max",
                color: "#e7298a",
                points: xs(|p| p.max_ms),
            },
        ],
        &time_ticks,
        true,
    ));
    let _ = write!(s, "<h2>Throughput over time (requests/s)</h2>");
    s.push_str(&chart(
        &[
            Series {
                name: "requests/s",
                color: "#1f78b4",
                points: xs(|p| p.requests_per_s),
            },
            Series {
                name: "errors",
                color: "#e31a1c",
                points: xs(|p| p.errors as f64),
            },
        ],
        &time_ticks,
        false,
    ));
    let _ = write!(s, "<h2>Latency distribution (ms by percentile)</h2>");
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-6).log10();
    let dist: Vec<(f64, f64)> = r
        .distribution
        .iter()
        .map(|d| (nines(d.percentile), d.latency_ms))
        .collect();
    let pct_ticks: Vec<(f64, String)> = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, l.to_string()))
        .collect();
    s.push_str(&chart(
        &[Series {
            name: "latency",
            color: "#d95f02",
            points: dist,
        }],
        &pct_ticks,
        false,
    ));
    s.push_str("</body></html>\n");
    s
}

/// An SVG line chart; `log_y` plots the y axis on a log10 scale.
fn chart(series: &[Series<'_>], x_ticks: &[(f64, String)], log_y: bool) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, f64::MIN);
    let mut y0 = f64::MAX;
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    for (x, _) in x_ticks {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
    }
    if x0 > x1 {
        return "<p>no data</p>".into();
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let fy: Box<dyn Fn(f64) -> f64> = if log_y {
        Box::new(|v: f64| v.max(1e-3).log10())
    } else {
        Box::new(|v: f64| v)
    };
    let (ly0, ly1) = if log_y {
        (
            fy(y0.max(1e-3)).floor(),
            fy(y1.max(1e-3)).ceil().max(fy(y0.max(1e-3)).floor() + 1.0),
        )
    } else {
        (0.0, nice(y1.max(1e-9)))
    };
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - (fy(y) - ly0) / (ly1 - ly0)) * (H - TOP - BOTTOM);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">");
    // y grid
    let y_ticks: Vec<(f64, String)> = if log_y {
        (ly0 as i32..=ly1 as i32)
            .map(|e| {
                let v = 10f64.powi(e);
                (v, fmt_num(v))
            })
            .collect()
    } else {
        (0..=5)
            .map(|i| {
                let v = ly1 * f64::from(i) / 5.0;
                (v, fmt_num(v))
            })
            .collect()
    };
    for (v, label) in &y_ticks {
        let y = py(*v);
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for (v, label) in x_ticks {
        let x = px(*v);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            H - BOTTOM,
            H - BOTTOM + 16.0,
            escape(label)
        );
    }
    let _ = write!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for (i, ser) in series.iter().enumerate() {
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            ser.color,
            pts.join(" ")
        );
        if ser.points.len() == 1 {
            let (x, y) = ser.points[0];
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                px(x),
                py(y),
                ser.color
            );
        }
        let ly = TOP + 14.0 + 18.0 * i as f64;
        let lx = W - RIGHT + 12.0;
        let _ = write!(
            s,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            lx + 18.0,
            ser.color,
            lx + 24.0,
            ly + 4.0,
            escape(ser.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// About 6 round ticks between `a` and `b`.
fn ticks(a: f64, b: f64, label: impl Fn(f64) -> String) -> Vec<(f64, String)> {
    let step = nice((b - a).max(1e-9) / 6.0);
    let mut v = (a / step).ceil() * step;
    let mut out = Vec::new();
    while v <= b + 1e-9 {
        out.push((v, label(v)));
        v += step;
    }
    out
}

/// The smallest 1, 2 or 5 × 10^k at or above `v`.
fn nice(v: f64) -> f64 {
    let e = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * e)
        .find(|c| *c >= v - 1e-12)
        .unwrap_or(10.0 * e)
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
