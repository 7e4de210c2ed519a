//! The lifecycle charts drawn as inline SVG in the dashboard's HTML ([`super::charts`] has the
//! figures): no chart library, no external asset, nothing a script must run. Each chart has a
//! title, axis labels, a `<title>`/`<desc>` a screen reader reads, a `<title>` per bar with its
//! numbers, and the numbers again in a table under it (`<details>`). The bars carry their
//! numbers as `data-` attributes too (what the tests read). Every text is escaped.

use std::fmt::Write;

use super::charts::{Charts, DayComposition, WeekFlows};
use super::page::{day_label, esc, when};

/// Space left of the plot (the y axis' numbers and label), above it, and its height.
const LEFT: i64 = 56;
const TOP: i64 = 16;
const PLOT_HEIGHT: i64 = 200;

/// The stage composition's bars, and the column of latest counts right of them.
const DAY_BAR: i64 = 24;
const DAY_STEP: i64 = 32;
const LABELS_WIDTH: i64 = 210;

/// The flows' bars: five per week side by side, then a gap.
const FLOW_BAR: i64 = 14;
const WEEK_STEP: i64 = 5 * FLOW_BAR + 24;

/// The CSS classes (colours) of the five flows, in [`WeekFlows::series`] order.
const FLOW_CLASSES: [&str; 5] = [
    "c-activations",
    "c-to-grace",
    "c-win-backs",
    "c-to-locked",
    "c-recycles",
];

/// The two charts' sections, or one that says why they are missing.
pub fn charts(html: &mut String, charts: Result<&Charts, &str>) {
    match charts {
        Ok(charts) => {
            composition(html, charts);
            flows(html, charts);
        }
        Err(error) => {
            let _ = write!(
                html,
                "<section class=\"wide\"><h2>Lifecycle charts</h2><p class=\"warn\" \
                 id=\"charts-error\">{}</p></section>",
                esc(error)
            );
        }
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `max` (1 at least): the y axis' top.
fn axis_top(max: i64) -> i64 {
    let mut power = 1;
    while power * 10 <= max {
        power *= 10;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|m| m * power)
        .find(|top| *top >= max)
        .unwrap_or(power * 10)
}

/// The y of `value` on an axis of `top` (the plot's top is [`TOP`]).
fn y_of(value: i64, top: i64) -> i64 {
    TOP + PLOT_HEIGHT - (PLOT_HEIGHT as f64 * value as f64 / top as f64).round() as i64
}

/// The opening `<svg>` with its accessible name and description, the y axis (ticks, grid
/// lines, label) and the x axis' label under the plot's `plot_width`.
#[allow(clippy::too_many_arguments)]
fn open_chart(
    html: &mut String,
    id: &str,
    (width, height): (i64, i64),
    plot_width: i64,
    title: &str,
    desc: &str,
    top: i64,
    (y_label, x_label): (&str, &str),
) {
    let _ = write!(
        html,
        "<svg id=\"{id}\" role=\"img\" aria-labelledby=\"{id}-title {id}-desc\" \
         width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\
         <title id=\"{id}-title\">{}</title><desc id=\"{id}-desc\">{}</desc>",
        esc(title),
        esc(desc)
    );
    let ticks: &[i64] = if top >= 2 && top % 2 == 0 {
        &[0, top / 2, top]
    } else {
        &[0, top]
    };
    for tick in ticks {
        let y = y_of(*tick, top);
        let _ = write!(
            html,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"></line>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick}</text>",
            LEFT + plot_width,
            LEFT - 6,
            y + 4
        );
    }
    let _ = write!(
        html,
        "<text class=\"axis-label\" transform=\"translate(14 {}) rotate(-90)\" \
         text-anchor=\"middle\">{}</text>\
         <text class=\"axis-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        TOP + PLOT_HEIGHT / 2,
        esc(y_label),
        LEFT + plot_width / 2,
        height - 4,
        esc(x_label)
    );
}

/// The note in the middle of an empty plot.
fn empty_note(html: &mut String, id: &str, plot_width: i64, text: &str) {
    let _ = write!(
        html,
        "<text class=\"chart-empty\" id=\"{id}\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        LEFT + plot_width / 2,
        TOP + PLOT_HEIGHT / 2,
        esc(text)
    );
}

/// One row of a chart's numbers table: its start tag's attributes, its head cell's text and
/// its number cells.
struct NumbersRow {
    attributes: String,
    head: String,
    cells: Vec<String>,
}

/// A `<details>` with a chart's numbers: `head` (the header cells' HTML), then the rows.
fn numbers_table(html: &mut String, id: &str, head: &str, rows: impl Iterator<Item = NumbersRow>) {
    let _ = write!(
        html,
        "<details class=\"numbers\"><summary>The numbers</summary><table id=\"{id}\">\
         <thead><tr>{head}</tr></thead><tbody>"
    );
    for row in rows {
        let _ = write!(html, "<tr {}><th>{}</th>", row.attributes, esc(&row.head));
        for cell in &row.cells {
            let _ = write!(html, "<td class=\"num\">{}</td>", esc(cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></details>");
}

fn composition(html: &mut String, charts: &Charts) {
    let days = &charts.composition;
    let (Some(first), Some(latest)) = (days.first(), days.last()) else {
        return;
    };
    let _ = write!(
        html,
        "<section class=\"wide\"><h2>Accounts per state, last {} days</h2><div class=\"sub\">\
         At the end of each local day (today so far), from the history (as <code>ocs-lifecycle \
         report composition</code>); history read <span id=\"charts-read-at\">{}</span></div>\
         <div class=\"scroll\">",
        days.len(),
        esc(&when(Some(&charts.read_at)))
    );
    let plot_width = days.len() as i64 * DAY_STEP;
    let (width, height) = (
        LEFT + plot_width + 16 + LABELS_WIDTH,
        TOP + PLOT_HEIGHT + 50,
    );
    let top = axis_top(days.iter().map(DayComposition::total).max().unwrap_or(0));
    let latest_text = latest
        .counts()
        .iter()
        .map(|(state, n)| format!("{} {n}", state.name()))
        .collect::<Vec<_>>()
        .join(", ");
    open_chart(
        html,
        "composition-chart",
        (width, height),
        plot_width,
        &format!(
            "Accounts per state at the end of each day, {} to {}",
            first.date, latest.date
        ),
        &format!("On {}: {latest_text}.", latest.date),
        top,
        ("accounts", "local day"),
    );
    for (i, day) in days.iter().enumerate() {
        let x = LEFT + i as i64 * DAY_STEP + (DAY_STEP - DAY_BAR) / 2;
        let counts = day.counts();
        let listed = counts
            .iter()
            .map(|(state, n)| format!("{} {n}", state.name()))
            .collect::<Vec<_>>();
        let _ = write!(
            html,
            "<g class=\"composition-day\" data-date=\"{}\" data-counts=\"{}\">\
             <title>{}: {}</title>",
            esc(&day.date),
            counts.map(|(_, n)| n.to_string()).join(","),
            esc(&day.date),
            esc(&listed.join(", "))
        );
        // Stacked in lifecycle order from the baseline; each edge is rounded once, so the
        // segments meet.
        let mut below = 0;
        for (state, n) in counts {
            if n > 0 {
                let (y0, y1) = (y_of(below, top), y_of(below + n, top));
                let _ = write!(
                    html,
                    "<rect class=\"c-{}\" x=\"{x}\" y=\"{y1}\" width=\"{DAY_BAR}\" \
                     height=\"{}\"></rect>",
                    state.name(),
                    y0 - y1
                );
            }
            below += n;
        }
        day_label(html, &day.date, i == 0, x + DAY_BAR / 2, TOP + PLOT_HEIGHT);
        html.push_str("</g>");
    }
    if days.iter().all(|d| d.total() == 0) {
        empty_note(html, "composition-empty", plot_width, "No accounts yet");
    }
    // The latest counts, a row per state, in the stack's order (the top state first).
    let x = LEFT + plot_width + 16;
    let _ = write!(
        html,
        "<g id=\"composition-latest\"><text class=\"legend-head\" x=\"{x}\" y=\"{}\">\
         end of {}</text>",
        TOP + 4,
        esc(&latest.date)
    );
    for (row, (state, n)) in latest.counts().iter().rev().enumerate() {
        let y = TOP + 28 + row as i64 * 34;
        let name = state.name();
        let _ = write!(
            html,
            "<rect class=\"c-{name}\" x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" rx=\"2\">\
             </rect><text x=\"{}\" y=\"{y}\">{name}</text><text class=\"latest-count\" \
             id=\"latest-{name}\" x=\"{}\" y=\"{y}\" text-anchor=\"end\">{n}</text>",
            y - 10,
            x + 18,
            x + LABELS_WIDTH - 8
        );
    }
    html.push_str("</g></svg></div>");

    let rows = days.iter().map(|day| NumbersRow {
        attributes: format!("class=\"composition-row\" data-date=\"{}\"", esc(&day.date)),
        head: day.date.clone(),
        cells: day
            .counts()
            .iter()
            .map(|(_, n)| n)
            .chain([&day.total()])
            .map(i64::to_string)
            .collect(),
    });
    numbers_table(
        html,
        "composition-table",
        "<th>day</th><th class=\"num\">UNACTIVATED</th><th class=\"num\">VALID</th>\
         <th class=\"num\">GRACE</th><th class=\"num\">LOCKED</th><th class=\"num\">RECYCLED</th>\
         <th class=\"num\">total</th>",
        rows,
    );
    html.push_str("</section>");
}

/// `won ÷ entered` as a whole percentage, `–` when nobody entered.
fn rate(won: i64, entered: i64) -> String {
    if entered == 0 {
        "–".into()
    } else {
        format!("{:.0}%", 100.0 * won as f64 / entered as f64)
    }
}

fn flows(html: &mut String, charts: &Charts) {
    let weeks = &charts.weekly_flows;
    let (Some(first), Some(last)) = (weeks.first(), weeks.last()) else {
        return;
    };
    let sum = |figure: fn(&WeekFlows) -> i64| weeks.iter().map(figure).sum::<i64>();
    let (entered, won, open) = (
        sum(|w| w.entered_grace),
        sum(|w| w.won_back),
        sum(|w| w.still_in_grace),
    );
    let _ = write!(
        html,
        "<section class=\"wide\"><h2>Lifecycle flows per week, last {} weeks</h2>\
         <div class=\"sub\">ISO weeks (Monday to Sunday, this one so far), as <code>\
         ocs-lifecycle report flows --period week</code>. Win-back rate of the {} weeks: \
         <b id=\"win-back-rate\">{}</b> (<span id=\"won-back\">{won}</span> of \
         <span id=\"entered-grace\">{entered}</span> stays in GRACE that began in them ended \
         with a recharge, <span id=\"still-in-grace\">{open}</span> not ended yet)</div>\
         <div class=\"legend\">",
        weeks.len(),
        weeks.len(),
        rate(won, entered)
    );
    let totals: Vec<i64> = (0..5)
        .map(|i| weeks.iter().map(|w| w.series()[i].1).sum())
        .collect();
    for ((name, _), (class, total)) in first.series().iter().zip(FLOW_CLASSES.iter().zip(&totals)) {
        let _ = write!(
            html,
            "<span><i class=\"swatch {class}\"></i>{} <b>{total}</b></span>",
            esc(name)
        );
    }
    html.push_str("<span class=\"sub\">(totals of the weeks)</span></div><div class=\"scroll\">");

    let plot_width = weeks.len() as i64 * WEEK_STEP;
    let (width, height) = (LEFT + plot_width + 16, TOP + PLOT_HEIGHT + 66);
    let top = axis_top(
        weeks
            .iter()
            .flat_map(|w| w.series().map(|(_, n)| n))
            .max()
            .unwrap_or(0),
    );
    open_chart(
        html,
        "flows-chart",
        (width, height),
        plot_width,
        &format!(
            "Lifecycle flows per ISO week, {} to {}",
            first.first_day, last.last_day
        ),
        &format!(
            "Totals: {}. Win-back rate {}.",
            first
                .series()
                .iter()
                .zip(&totals)
                .map(|((name, _), total)| format!("{name} {total}"))
                .collect::<Vec<_>>()
                .join(", "),
            rate(won, entered)
        ),
        top,
        ("per week", "ISO week (its Monday)"),
    );
    let base = TOP + PLOT_HEIGHT;
    let _ = write!(
        html,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">win-back</text>",
        LEFT - 6,
        base + 44
    );
    for (i, week) in weeks.iter().enumerate() {
        let x0 = LEFT + i as i64 * WEEK_STEP + (WEEK_STEP - 5 * FLOW_BAR) / 2;
        let series = week.series();
        let listed = series
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            html,
            "<g class=\"flow-week\" data-first-day=\"{}\" data-last-day=\"{}\" \
             data-flows=\"{}\" data-win-back=\"{}/{}/{}\"><title>{} to {}: {}; win-back rate {} \
             ({} of {} won back, {} still in GRACE)</title>",
            esc(&week.first_day),
            esc(&week.last_day),
            series.map(|(_, n)| n.to_string()).join(","),
            week.won_back,
            week.entered_grace,
            week.still_in_grace,
            esc(&week.first_day),
            esc(&week.last_day),
            esc(&listed),
            rate(week.won_back, week.entered_grace),
            week.won_back,
            week.entered_grace,
            week.still_in_grace
        );
        for (j, ((_, n), class)) in series.iter().zip(FLOW_CLASSES).enumerate() {
            if *n > 0 {
                let y = y_of(*n, top);
                let _ = write!(
                    html,
                    "<rect class=\"{class}\" x=\"{}\" y=\"{y}\" width=\"{FLOW_BAR}\" \
                     height=\"{}\"></rect>",
                    x0 + j as i64 * FLOW_BAR,
                    base - y
                );
            }
        }
        let mid = x0 + 5 * FLOW_BAR / 2;
        let monday = week.first_day.get(5..).unwrap_or(week.first_day.as_str());
        let iso_week = chrono::NaiveDate::parse_from_str(&week.first_day, "%Y-%m-%d")
            .map(|d| d.format("W%V").to_string())
            .unwrap_or_default();
        let _ = write!(
            html,
            "<text x=\"{mid}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{mid}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text class=\"win-back\" x=\"{mid}\" y=\"{}\" text-anchor=\"middle\">{}</text></g>",
            base + 14,
            esc(monday),
            base + 28,
            esc(&iso_week),
            base + 44,
            esc(&rate(week.won_back, week.entered_grace))
        );
    }
    if totals.iter().all(|n| *n == 0) && entered == 0 {
        empty_note(
            html,
            "flows-empty",
            plot_width,
            "No activations, expiries, win-backs or recycles in these weeks",
        );
    }
    html.push_str("</svg></div>");

    let rows = weeks.iter().map(|w| {
        let figures = [
            w.activations,
            w.valid_to_grace,
            w.win_backs,
            w.grace_to_locked,
            w.recycled_lock_expired,
            w.recycled_unactivated_expired,
            w.entered_grace,
            w.won_back,
            w.still_in_grace,
        ];
        NumbersRow {
            attributes: format!(
                "class=\"flows-row\" data-first-day=\"{}\"",
                esc(&w.first_day)
            ),
            head: format!("{} – {}", w.first_day, w.last_day),
            cells: figures
                .iter()
                .map(i64::to_string)
                .chain([rate(w.won_back, w.entered_grace)])
                .collect(),
        }
    });
    numbers_table(
        html,
        "flows-table",
        "<th>week</th><th class=\"num\">activations</th><th class=\"num\">VALID → GRACE</th>\
         <th class=\"num\">win-backs</th><th class=\"num\">GRACE → LOCKED</th>\
         <th class=\"num\">recycled (locked)</th><th class=\"num\">recycled (unactivated)</th>\
         <th class=\"num\">entered GRACE</th><th class=\"num\">won back</th>\
         <th class=\"num\">still in GRACE</th><th class=\"num\">win-back rate</th>",
        rows,
    );
    html.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_y_axis_tops_at_one_two_or_five_times_a_power_of_ten() {
        let tops: Vec<i64> = [0, 1, 2, 3, 7, 10, 11, 49, 120, 5001]
            .into_iter()
            .map(axis_top)
            .collect();
        assert_eq!(tops, [1, 1, 2, 5, 10, 10, 20, 50, 200, 10000]);
        assert_eq!(y_of(0, 10), TOP + PLOT_HEIGHT);
        assert_eq!(y_of(10, 10), TOP);
        assert_eq!(rate(1, 3), "33%");
        assert_eq!(rate(0, 0), "–");
    }

    #[test]
    fn a_failed_read_says_why_in_the_charts_place() {
        let mut html = String::new();
        charts(&mut html, Err("cannot read the history: <timeout>"));
        assert!(html.contains("id=\"charts-error\">cannot read the history: &lt;timeout&gt;<"));
        assert!(!html.contains("<svg"));
    }

    #[test]
    fn stacked_segments_meet_and_reach_the_day_total() {
        let day = DayComposition {
            date: "2030-06-15".into(),
            unactivated: 1,
            valid: 3,
            grace: 0,
            locked: 2,
            recycled: 1,
        };
        let charts = Charts {
            read_at: "2030-06-15T10:00:00+08:00".into(),
            composition: vec![day],
            weekly_flows: Vec::new(),
        };
        let mut html = String::new();
        composition(&mut html, &charts);
        // Axis top 10: 20 px per account, from the baseline at TOP + PLOT_HEIGHT = 216.
        for rect in [
            "class=\"c-UNACTIVATED\" x=\"60\" y=\"196\" width=\"24\" height=\"20\"",
            "class=\"c-VALID\" x=\"60\" y=\"136\" width=\"24\" height=\"60\"",
            "class=\"c-LOCKED\" x=\"60\" y=\"96\" width=\"24\" height=\"40\"",
            "class=\"c-RECYCLED\" x=\"60\" y=\"76\" width=\"24\" height=\"20\"",
        ] {
            assert!(html.contains(rect), "{rect}: {html}");
        }
        assert!(
            !html.contains("class=\"c-GRACE\" x=\"60\""),
            "no empty segment"
        );
        assert!(html.contains("data-counts=\"1,3,0,2,1\""));
        assert!(html.contains("id=\"latest-VALID\" x=\"306\" y=\"146\" text-anchor=\"end\">3<"));
        assert!(!html.contains("composition-empty"));
    }
}
