//! Pictures drawn on the server as inline SVG, so pages that show them need no script: a row
//! of day bars (uptime) and a timeline of spans (incidents). Pure functions from data to
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

#[cfg(test)]
mod tests {
    use super::*;

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
