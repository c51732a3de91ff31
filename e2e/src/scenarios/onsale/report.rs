//! The on-sale's HTML report: the headline figures, every check with its verdict, and
//! plots over time (fans in line, admissions per second, sales per second, latencies),
//! drawn as inline SVG by `plotters`. One self-contained file: no scripts, no fonts or
//! styles from elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;

/// One second of the sale.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the first fan arrived.
    pub t_s: f64,
    /// Fans who joined and have been neither admitted nor told "sold out".
    pub in_line: u64,
    pub joined: u64,
    pub admitted: u64,
    pub orders: u64,
    pub tickets: u64,
    /// Latency percentiles of the requests that finished in this second (ms).
    pub join_p50_ms: Option<f64>,
    pub join_p99_ms: Option<f64>,
    pub hold_p99_ms: Option<f64>,
    pub checkout_p99_ms: Option<f64>,
}

/// A check and whether it held.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub value: String,
    pub floor: &'static str,
    pub ok: bool,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A named, coloured line of (x, y) points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One line chart (one or more series) as an SVG string.
fn chart(title: &str, y_label: &str, series: &[Series<'_>]) -> anyhow::Result<String> {
    let x_max = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).fold(1.0, f64::max);
    let y_max = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.08;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        c.configure_mesh()
            .x_desc("seconds since the first fan arrived")
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (name, color, points) in series {
            let color = *color;
            c.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        if series.len() > 1 {
            c.configure_series_labels()
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

fn rate(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].t_s - w[0].t_s).max(1e-3);
            (w[1].t_s, f(&w[1]).saturating_sub(f(&w[0])) as f64 / dt)
        })
        .collect()
}

fn points(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Vec<(f64, f64)> {
    samples.iter().filter_map(|s| f(s).map(|v| (s.t_s, v))).collect()
}

/// Writes the report; returns the HTML.
pub(crate) fn html(
    title: &str,
    summary: &BTreeMap<String, String>,
    checks: &[Check],
    samples: &[Sample],
    notes: &[String],
) -> anyhow::Result<String> {
    const BLUE_: RGBColor = RGBColor(31, 90, 160);
    const ORANGE_: RGBColor = RGBColor(190, 90, 0);
    const GREEN_: RGBColor = RGBColor(20, 120, 60);
    let figures = [
        (
            "Fans in line (joined, not yet admitted or told sold out)",
            chart(
                "Fans in line",
                "fans",
                &[("in line", BLUE_, points(samples, |s| Some(s.in_line as f64)))],
            )?,
        ),
        (
            "Admissions per second (fans told it is their turn)",
            chart(
                "Admissions per second",
                "fans/s",
                &[("admitted", BLUE_, rate(samples, |s| s.admitted))],
            )?,
        ),
        (
            "Sales per second: whole orders and tickets",
            chart(
                "Sales per second",
                "per second",
                &[
                    ("orders", BLUE_, rate(samples, |s| s.orders)),
                    ("tickets", GREEN_, rate(samples, |s| s.tickets)),
                ],
            )?,
        ),
        (
            "Join latency from the fan's intended arrival (open loop), in the second it finished",
            chart(
                "Join latency",
                "ms",
                &[
                    ("p50", GREEN_, points(samples, |s| s.join_p50_ms)),
                    ("p99", BLUE_, points(samples, |s| s.join_p99_ms)),
                ],
            )?,
        ),
        (
            "Purchase latency: p99 of holds and checkouts, in the second they finished",
            chart(
                "Purchase latency (p99)",
                "ms",
                &[
                    ("hold", ORANGE_, points(samples, |s| s.hold_p99_ms)),
                    ("checkout", GREEN_, points(samples, |s| s.checkout_p99_ms)),
                ],
            )?,
        ),
    ];
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#1a1a1a}}\
         table{{border-collapse:collapse;margin:1rem 0}}th,td{{border:1px solid #bbb;padding:.3rem .6rem;text-align:left}}\
         .ok{{color:#14603c}}.bad{{color:#a00000;font-weight:bold}}figure{{margin:1.5rem 0}}\
         svg{{max-width:100%;height:auto}}code{{background:#f2f2f2;padding:0 .2rem}}\
         </style></head><body><main><h1>{t}</h1>",
        t = escape(title)
    );
    h.push_str("<h2>Checks</h2><table><thead><tr><th scope=\"col\">Check</th><th scope=\"col\">Measured</th><th scope=\"col\">Floor</th><th scope=\"col\">Verdict</th></tr></thead><tbody>");
    for c in checks {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            escape(c.name),
            escape(&c.value),
            escape(c.floor),
            if c.ok { "ok" } else { "bad" },
            if c.ok { "held" } else { "FAILED" }
        );
    }
    h.push_str("</tbody></table>");
    if !notes.is_empty() {
        h.push_str("<h2>How this run was made</h2><ul>");
        for n in notes {
            let _ = write!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>Over time</h2>");
    for (caption, svg) in &figures {
        let _ = write!(
            h,
            "<figure role=\"img\" aria-label=\"{c}\">{svg}<figcaption>{c}</figcaption></figure>",
            c = escape(caption)
        );
    }
    h.push_str("<h2>Every figure</h2><table><tbody>");
    for (k, v) in summary {
        let _ = write!(
            h,
            "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    h.push_str("</tbody></table></main></body></html>\n");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_its_checks_and_five_plots() {
        let samples: Vec<Sample> = (0..30)
            .map(|i| Sample {
                t_s: f64::from(i),
                in_line: 1000 - 30 * i as u64,
                admitted: 30 * i as u64,
                orders: 20 * i as u64,
                tickets: 45 * i as u64,
                join_p99_ms: Some(12.0),
                hold_p99_ms: (i > 3).then_some(30.0),
                checkout_p99_ms: (i > 4).then_some(80.0),
                ..Sample::default()
            })
            .collect();
        let checks = [
            Check { name: "oversold", value: "0".into(), floor: "= 0", ok: true },
            Check { name: "tau <fifo>", value: "0.98".into(), floor: ">= 0.99", ok: false },
        ];
        let kv = BTreeMap::from([("fans".to_owned(), "1000".to_owned())]);
        let h = html("On-sale", &kv, &checks, &samples, &["n & m".into()]).unwrap();
        assert_eq!(h.matches("<svg").count(), 5);
        assert!(h.contains("tau &lt;fifo&gt;") && h.contains("FAILED") && h.contains("n &amp; m"));
        assert!(!h.contains("<script"));
    }
}
