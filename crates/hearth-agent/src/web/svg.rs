//! Pictures drawn on the server as inline SVG, so pages that show them need no script: a row
//! of day bars (uptime), a timeline of spans (incidents), and meters of used against offered
//! (a host's capacity), and line charts over time (a VM's load). Pure functions from data to
//! markup; every text they carry is escaped, and each shape has a `<title>` tooltip.

use super::html::escape;

/// One bar of a row: its tooltip and its colour.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub title: String,
    pub fill: &'static str,
}

/// Grey: nothing known.
pub const UNKNOWN: &str = "#d4d4cc";
pub const GOOD: &str = "#2e8540";
pub const FAIR: &str = "#8fb339";
pub const POOR: &str = "#e0a526";
pub const BAD: &str = "#b9312c";

/// The colour of an uptime share (0 to 1): green from 99.9 %, yellow-green from 99 %,
/// amber from 95 %, red below; grey when nothing is known.
pub fn uptime_fill(ratio: Option<f64>) -> &'static str {
    match ratio {
        None => UNKNOWN,
        Some(r) if r >= 0.999 => GOOD,
        Some(r) if r >= 0.99 => FAIR,
        Some(r) if r >= 0.95 => POOR,
        Some(_) => BAD,
    }
}

const BAR_WIDTH: usize = 5;
const BAR_STEP: usize = 6;
const BAR_HEIGHT: usize = 30;

/// A row of equal bars, left to right, labelled `label` for screen readers.
pub fn bars(id: &str, label: &str, bars: &[Bar]) -> String {
    let width = (bars.len() * BAR_STEP)
        .saturating_sub(BAR_STEP - BAR_WIDTH)
        .max(1);
    let mut svg = format!(
        "<svg class=\"bars\" id=\"{}\" viewBox=\"0 0 {width} {BAR_HEIGHT}\" role=\"img\" aria-label=\"{}\">",
        escape(id),
        escape(label)
    );
    for (i, bar) in bars.iter().enumerate() {
        svg.push_str(&format!(
            "<rect x=\"{}\" y=\"0\" width=\"{BAR_WIDTH}\" height=\"{BAR_HEIGHT}\" rx=\"1\" fill=\"{}\"><title>{}</title></rect>",
            i * BAR_STEP,
            bar.fill,
            escape(&bar.title)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// One span of a timeline: from `start` to `end` in days since the timeline's first day
/// (fractions allowed; clipped to the timeline), drawn in `fill` with `label` beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub start: f64,
    pub end: f64,
    pub label: String,
    pub title: String,
    pub fill: &'static str,
}

const DAY_WIDTH: f64 = 10.0;
const ROW: usize = 18;

/// A timeline `days` wide, one row per span, with a tick at each 30 days.
pub fn timeline(id: &str, label: &str, days: u32, spans: &[Span]) -> String {
    let width = f64::from(days) * DAY_WIDTH;
    let height = (spans.len().max(1) * ROW + 4) as f64;
    let mut svg = format!(
        "<svg class=\"timeline\" id=\"{}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">",
        escape(id),
        escape(label)
    );
    let mut tick = 0;
    while tick <= days {
        let x = f64::from(tick) * DAY_WIDTH;
        svg.push_str(&format!(
            "<line x1=\"{x}\" y1=\"0\" x2=\"{x}\" y2=\"{height}\" stroke=\"#ddd\" stroke-width=\"1\"/>"
        ));
        tick += 30;
    }
    for (row, span) in spans.iter().enumerate() {
        let start = span.start.clamp(0.0, f64::from(days));
        let end = span.end.clamp(start, f64::from(days));
        let x = start * DAY_WIDTH;
        let w = ((end - start) * DAY_WIDTH).max(3.0);
        let y = (row * ROW + 4) as f64;
        svg.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"12\" rx=\"2\" fill=\"{}\"><title>{}</title></rect>",
            span.fill,
            escape(&span.title)
        ));
        // The label goes after the span, or before it in the timeline's right half.
        let (tx, anchor) = if x < width / 2.0 {
            (x + w + 4.0, "start")
        } else {
            (x - 4.0, "end")
        };
        svg.push_str(&format!(
            "<text x=\"{tx:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"{anchor}\" fill=\"#333\">{}</text>",
            y + 10.0,
            escape(&span.label)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// One meter: `used` of `offered`, with its label and the figure written beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Meter {
    pub label: String,
    pub used: u64,
    pub offered: u64,
    pub text: String,
}

/// The colour of a load: green below 80 %, amber to 100 %, red above (over-committed, or
/// something placed where nothing is offered).
pub fn load_fill(used: u64, offered: u64) -> &'static str {
    match (used, offered) {
        (0, _) => GOOD,
        (_, 0) => BAD,
        (u, o) if u > o => BAD,
        (u, o) if u * 10 >= o * 8 => POOR,
        _ => GOOD,
    }
}

const METER_X: f64 = 58.0;
const METER_WIDTH: f64 = 130.0;

/// Meters one under another: label, a track filled to used/offered (capped at full), figure.
pub fn meters(id: &str, label: &str, meters: &[Meter]) -> String {
    let height = meters.len() * ROW + 2;
    let mut svg = format!(
        "<svg class=\"meters\" id=\"{}\" viewBox=\"0 0 300 {height}\" role=\"img\" aria-label=\"{}\">",
        escape(id),
        escape(label)
    );
    for (row, meter) in meters.iter().enumerate() {
        let y = (row * ROW + 2) as f64;
        let share = match meter.offered {
            0 if meter.used > 0 => 1.0,
            0 => 0.0,
            offered => (meter.used as f64 / offered as f64).min(1.0),
        };
        let title = escape(&format!("{}: {}", meter.label, meter.text));
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"12\" fill=\"#333\">{}</text>\
<rect x=\"{METER_X}\" y=\"{y}\" width=\"{METER_WIDTH}\" height=\"13\" rx=\"2\" fill=\"#e6e6df\"><title>{title}</title></rect>\
<rect class=\"used\" x=\"{METER_X}\" y=\"{y}\" width=\"{:.1}\" height=\"13\" rx=\"2\" fill=\"{}\"><title>{title}</title></rect>\
<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#333\">{}</text>",
            y + 11.0,
            escape(&meter.label),
            share * METER_WIDTH,
            load_fill(meter.used, meter.offered),
            METER_X + METER_WIDTH + 8.0,
            y + 11.0,
            escape(&meter.text),
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// One line of a chart: a value per time slot, `None` where nothing is known (the line
/// breaks there).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub color: &'static str,
    pub values: Vec<Option<f64>>,
}

/// The chart's frame: the plot area inside a 600 × 150 view box.
const PLOT: (f64, f64, f64, f64) = (56.0, 8.0, 592.0, 122.0);

/// A line chart of `lines` (all as long as one another) from 0 to `max`, the y axis marked
/// with `format(max)` and `format(max / 2)`, the x axis with `from` and `to`; a legend below.
pub fn chart(
    id: &str,
    label: &str,
    lines: &[Line],
    max: f64,
    format: impl Fn(f64) -> String,
    (from, to): (&str, &str),
) -> String {
    let (left, top, right, bottom) = PLOT;
    let mut svg = format!(
        "<svg class=\"chart\" id=\"{}\" viewBox=\"0 0 600 150\" role=\"img\" aria-label=\"{}\">\
<rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"#fff\" stroke=\"#ddd\"/>",
        escape(id),
        escape(label),
        right - left,
        bottom - top
    );
    for (value, y) in [(max, top), (max / 2.0, (top + bottom) / 2.0)] {
        svg.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y}\" x2=\"{right}\" y2=\"{y}\" stroke=\"#eee\"/>\
<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\" fill=\"#666\">{}</text>",
            left - 4.0,
            y + 4.0,
            escape(&format(value))
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\" fill=\"#666\">0</text>\
<text x=\"{left}\" y=\"136\" font-size=\"10\" fill=\"#666\">{}</text>\
<text x=\"{right}\" y=\"136\" font-size=\"10\" text-anchor=\"end\" fill=\"#666\">{}</text>",
        left - 4.0,
        bottom + 4.0,
        escape(from),
        escape(to)
    ));
    let y_of = |v: f64| bottom - (v / max).clamp(0.0, 1.0) * (bottom - top);
    let mut legend_x = left;
    for line in lines {
        let peak = line.values.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
        let latest = line.values.iter().rev().flatten().next();
        let title = format!(
            "{}: peak {}, latest {}",
            line.name,
            format(peak),
            latest.map_or("none".to_owned(), |v| format(*v))
        );
        let step = (right - left) / (line.values.len().max(2) - 1) as f64;
        let points = line
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| v.map(|v| (left + i as f64 * step, y_of(v))));
        svg.push_str(&runs(points, line.color, &escape(&title)));
        svg.push_str(&format!(
            "<rect x=\"{legend_x}\" y=\"140\" width=\"8\" height=\"8\" fill=\"{}\"/>\
<text x=\"{}\" y=\"148\" font-size=\"10\" fill=\"#333\">{}</text>",
            line.color,
            legend_x + 11.0,
            escape(&title)
        ));
        legend_x += 200.0;
    }
    svg.push_str("</svg>");
    svg
}

/// The shapes of one line: a polyline per unbroken run of points, a dot for a lone point.
fn runs(points: impl Iterator<Item = Option<(f64, f64)>>, color: &str, title: &str) -> String {
    let mut out = String::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    for point in points.chain(std::iter::once(None)) {
        match point {
            Some(p) => run.push(p),
            None if run.len() == 1 => {
                out.push_str(&format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.8\" fill=\"{color}\"><title>{title}</title></circle>",
                    run[0].0, run[0].1
                ));
                run.clear();
            }
            None if run.len() > 1 => {
                let points: Vec<String> =
                    run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                out.push_str(&format!(
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"><title>{title}</title></polyline>",
                    points.join(" ")
                ));
                run.clear();
            }
            None => {}
        }
    }
    out
}

/// A round top for a chart's y axis: the smallest 1, 2 or 5 × 10ⁿ at or above `peak`, and at
/// least `floor`.
pub fn nice_max(peak: f64, floor: f64) -> f64 {
    let peak = peak.max(floor);
    let magnitude = 10f64.powf(peak.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&top| top >= peak)
        .unwrap_or(10.0 * magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_fill_to_the_share_used_and_turn_red_when_over() {
        assert_eq!(load_fill(0, 0), GOOD);
        assert_eq!(load_fill(3, 4), GOOD);
        assert_eq!(load_fill(4, 5), POOR);
        assert_eq!(load_fill(4, 4), POOR);
        assert_eq!(load_fill(5, 4), BAD);
        assert_eq!(load_fill(1, 0), BAD);
        let meter = |label: &str, used, offered| Meter {
            label: label.into(),
            used,
            offered,
            text: format!("{used} of {offered}"),
        };
        let svg = meters(
            "capacity-w1",
            "w1",
            &[
                meter("vCPU", 1, 4),
                meter("memory", 8, 4),
                meter("disk", 0, 0),
            ],
        );
        assert!(svg.contains("viewBox=\"0 0 300 56\""), "{svg}");
        let used: Vec<&str> = svg
            .split("class=\"used\"")
            .skip(1)
            .map(|rest| {
                rest.split("width=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(used, ["32.5", "130.0", "0.0"], "{svg}");
        assert!(svg.contains("<title>memory: 8 of 4</title>"), "{svg}");
    }

    #[test]
    fn charts_break_lines_at_gaps_and_scale_to_the_top() {
        let line = Line {
            name: "read".into(),
            color: GOOD,
            values: vec![
                Some(0.0),
                Some(50.0),
                None,
                Some(100.0),
                None,
                Some(200.0),
                Some(25.0),
            ],
        };
        let svg = chart(
            "cpu",
            "CPU <%>",
            &[line],
            100.0,
            |v| format!("{v} %"),
            ("-1 day", "now"),
        );
        assert!(svg.contains("aria-label=\"CPU &lt;%&gt;\""), "{svg}");
        // Two runs of two points as polylines, and the lone point as a dot.
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        // 0 at the bottom (122), 50 half-way (65), 200 clipped to the top (8); x from 56 to 592.
        assert!(svg.contains("points=\"56.0,122.0 145.3,65.0\""), "{svg}");
        assert!(svg.contains("cx=\"324.0\" cy=\"8.0\""), "{svg}");
        assert!(svg.contains("points=\"502.7,8.0 592.0,93.5\""), "{svg}");
        assert!(svg.contains("read: peak 200 %, latest 25 %"), "{svg}");
        assert!(
            svg.contains(">100 %</text>") && svg.contains(">50 %</text>"),
            "{svg}"
        );
        assert_eq!(nice_max(0.0, 1024.0), 2000.0);
        assert_eq!(nice_max(3.2e6, 1.0), 5e6);
        assert_eq!(nice_max(10.0, 1.0), 10.0);
    }

    #[test]
    fn uptime_colours_follow_the_thresholds() {
        assert_eq!(uptime_fill(None), UNKNOWN);
        assert_eq!(uptime_fill(Some(1.0)), GOOD);
        assert_eq!(uptime_fill(Some(0.9995)), GOOD);
        assert_eq!(uptime_fill(Some(0.995)), FAIR);
        assert_eq!(uptime_fill(Some(0.96)), POOR);
        assert_eq!(uptime_fill(Some(0.5)), BAD);
    }

    #[test]
    fn bars_are_laid_out_left_to_right_with_escaped_tooltips() {
        let row: Vec<Bar> = (0..3)
            .map(|i| Bar {
                title: format!("day {i} <b>"),
                fill: GOOD,
            })
            .collect();
        let svg = bars("uptime-www", "www & co", &row);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains("viewBox=\"0 0 17 30\""), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("x=\"12\""), "{svg}");
        assert!(svg.contains("<title>day 2 &lt;b&gt;</title>"), "{svg}");
        assert!(svg.contains("aria-label=\"www &amp; co\""), "{svg}");
        assert!(!svg.contains("<b>"));
    }

    #[test]
    fn spans_are_clipped_to_the_timeline_and_labels_stay_inside() {
        let span = |start: f64, end: f64, label: &str| Span {
            start,
            end,
            label: label.into(),
            title: label.into(),
            fill: BAD,
        };
        let svg = timeline(
            "timeline",
            "incidents",
            90,
            &[
                span(-5.0, 2.0, "early"),
                span(80.0, 200.0, "late <x>"),
                span(10.0, 10.0, "instant"),
            ],
        );
        // Clipped at both ends: starts at 0, ends at 900.
        assert!(svg.contains("x=\"0.0\" y=\"4\" width=\"20.0\""), "{svg}");
        assert!(
            svg.contains("x=\"800.0\" y=\"22\" width=\"100.0\""),
            "{svg}"
        );
        // A span with no length still shows.
        assert!(svg.contains("x=\"100.0\" y=\"40\" width=\"3.0\""), "{svg}");
        // The right half's label is drawn before its span.
        assert!(svg.contains("x=\"796.0\" y=\"32\" font-size=\"11\" text-anchor=\"end\""));
        assert!(svg.contains(">late &lt;x&gt;</text>"), "{svg}");
        assert_eq!(svg.matches("<line").count(), 4);
    }
}
