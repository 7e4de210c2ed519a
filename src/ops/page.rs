//! The dashboard's HTML, rendered on the server from a [`DashboardView`]: the page `GET /`
//! arrives with its data (a browser, a headless screenshot or `curl` sees the numbers without
//! running a script), and `GET /api/dashboard/html` is the same data part alone, which the
//! page's script fetches every 30 s (and with the bearer token of a `#token=` fragment).
//!
//! One renderer: the script only swaps the part in. Every text is escaped here.

use std::fmt::Write;

use super::chart_svg;
use super::dashboard::{DashboardView, PAGE, StateCount};

/// Where the data part goes in [`PAGE`] (it holds a waiting note there until then).
const PART_START: &str = "<!--dashboard-->";
const PART_END: &str = "<!--/dashboard-->";

/// The page with `part` in it (`Ok`), or with an error in its banner (`Err`).
pub fn page(part: Result<&str, &str>) -> String {
    let (start, end) = match (PAGE.find(PART_START), PAGE.find(PART_END)) {
        (Some(start), Some(end)) if start < end => (start, end + PART_END.len()),
        _ => return PAGE.to_owned(),
    };
    let mut html = String::with_capacity(PAGE.len() + 16_384);
    match part {
        Ok(part) => {
            html.push_str(&PAGE[..start].replacen("<body>", "<body data-loaded=\"true\">", 1));
            html.push_str(part);
        }
        Err(error) => {
            let banner = format!(
                "<div id=\"error\" role=\"alert\" style=\"display: block\">Cannot load the \
                 dashboard: {}</div>",
                esc(error)
            );
            html.push_str(&PAGE[..start].replacen(
                "<div id=\"error\" role=\"alert\"></div>",
                &banner,
                1,
            ));
        }
    }
    html.push_str(&PAGE[end..]);
    html
}

/// `& < > " '` escaped, for text and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Local RFC 3339 `2030-06-15T10:00:00+08:00` → `2030-06-15 10:00:00`; `–` when unset.
pub(super) fn when(rfc3339: Option<&str>) -> String {
    match rfc3339 {
        Some(at) if at.len() >= 19 => at[..19].replacen('T', " ", 1),
        Some(at) => at.to_owned(),
        None => "–".into(),
    }
}

/// `8000` fen → `80.00 CNY`.
fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02} CNY", abs / 100, abs % 100)
}

fn seconds(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 120.0 {
        format!("{secs:.1} s")
    } else if secs < 7200.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

/// The counts' names as people read them.
fn count_label(name: &str) -> &str {
    match name {
        "to_grace" => "→ GRACE",
        "to_locked" => "→ LOCKED",
        "to_recycled_from_locked" => "recycled (locked)",
        "to_recycled_unactivated" => "recycled (unactivated)",
        "expiring_notified" => "VALIDITY_EXPIRING notices",
        other => other,
    }
}

/// The data part: the status line, the manual clock's banner, and the sections.
pub fn part(view: &DashboardView) -> String {
    let mut html = String::with_capacity(16_384);
    status_line(&mut html, view);
    if view.clock == "manual" {
        let _ = write!(
            html,
            "<div id=\"clock-banner\" class=\"banner\">Manual clock (<code>--clock manual</code>): \
             the service's time is <b id=\"clock-now\">{}</b> ({}). Lifecycle dates, today, \
             the recharges and the next sweep follow it; dead-letter times are real time.</div>",
            esc(&when(Some(&view.generated_at))),
            esc(&view.timezone)
        );
    }
    html.push_str("<main>");
    accounts(&mut html, &view.accounts, &view.accounts_now);
    recharges_and_sweep(&mut html, view);
    webhook(&mut html, view);
    dead_letters(&mut html, view);
    recycles(&mut html, view);
    chart_svg::charts(
        &mut html,
        view.charts
            .as_ref()
            .ok_or(view.charts_error.as_deref().unwrap_or("no charts")),
    );
    sweeps(&mut html, view);
    html.push_str("</main>");
    html
}

fn status_line(html: &mut String, view: &DashboardView) {
    let (class, readiness) = match (&view.readiness.ready, &view.readiness.reason) {
        (true, _) => ("ok", "ready".to_owned()),
        (false, reason) => (
            "warn",
            format!("not ready: {}", reason.as_deref().unwrap_or("")),
        ),
    };
    let _ = write!(
        html,
        "<div class=\"status\">\
         <span class=\"meta\">version <span id=\"version\">{}</span></span>\
         <span class=\"meta\">time zone <span id=\"timezone\">{}</span></span>\
         <span class=\"meta\">today <span id=\"today\">{}</span></span>\
         <span class=\"meta\">as of <span id=\"generated-at\">{}</span> (database read \
         <span id=\"read-at\">{}</span>)</span>\
         <span class=\"meta\">clock <span id=\"clock\">{}</span></span>\
         <span class=\"meta\">readiness <span id=\"readiness\" class=\"{class}\">{}</span></span>\
         </div>",
        esc(view.version),
        esc(&view.timezone),
        esc(&view.today),
        esc(&when(Some(&view.generated_at))),
        esc(&when(Some(&view.read_at))),
        esc(view.clock),
        esc(&readiness),
    );
}

fn accounts(html: &mut String, stored: &[StateCount], now: &[StateCount]) {
    html.push_str(
        "<section><h2>Accounts</h2><table><thead><tr><th>state</th>\
         <th class=\"num\">stored</th><th class=\"num\">now</th></tr></thead><tbody>",
    );
    let (mut stored_total, mut now_total) = (0, 0);
    for (i, s) in stored.iter().enumerate() {
        let effective = now.get(i).map_or(s.count, |n| n.count);
        stored_total += s.count;
        now_total += effective;
        let state = esc(s.state);
        let _ = write!(
            html,
            "<tr><th>{state}</th><td class=\"num\" id=\"state-{state}\">{}</td>\
             <td class=\"num\" id=\"now-{state}\">{effective}</td></tr>",
            s.count
        );
    }
    let _ = write!(
        html,
        "</tbody><tfoot><tr><th>total</th><td class=\"num\" id=\"state-total\">{stored_total}</td>\
         <td class=\"num\" id=\"now-total\">{now_total}</td></tr></tfoot></table>\
         <p class=\"sub\"><b>stored</b>: as the requests and the last sweep left them; \
         <b>now</b>: the effective state at the service's time (what a sweep now would \
         materialise).</p></section>"
    );
}

fn recharges_and_sweep(html: &mut String, view: &DashboardView) {
    let r = &view.recharges_today;
    let _ = write!(
        html,
        "<section><h2>Recharges today</h2><div class=\"big\" id=\"recharges-count\">{}</div>\
         <div>recharges, <span id=\"recharges-amount\">{}</span></div>\
         <p class=\"sub\">RECHARGE history rows since <span id=\"recharges-since\">{}</span> \
         (local midnight).</p><h2>Next scheduled sweep</h2>",
        r.count,
        yuan(r.amount),
        esc(&when(Some(&r.since)))
    );
    let sweep = &view.next_sweep;
    if sweep.scheduler {
        let at = match &sweep.at {
            Some(at) => when(Some(at)),
            None => "none (cron has no further time)".into(),
        };
        let _ = write!(
            html,
            "<div class=\"big\" id=\"next-sweep\">{}</div><p class=\"sub\" \
             id=\"next-sweep-cron\">sweep.cron {} (operator time zone)</p>",
            esc(&at),
            esc(sweep.cron.as_deref().unwrap_or(""))
        );
        if let Some(forecast) = &sweep.forecast {
            html.push_str("<table class=\"compact\" id=\"next-sweep-forecast\"><tbody>");
            for c in forecast {
                let _ = write!(
                    html,
                    "<tr><th>{}</th><td class=\"num\" id=\"next-{}\">{}</td></tr>",
                    esc(count_label(c.name)),
                    esc(c.name),
                    c.count
                );
            }
            html.push_str(
                "</tbody></table><p class=\"sub\">What it would do as of its time \
                 (forecast).</p>",
            );
        }
    } else {
        html.push_str(
            "<div class=\"big\" id=\"next-sweep\">scheduler off</div><p class=\"sub\" \
             id=\"next-sweep-cron\">sweep.scheduler = false: only AdvanceStates and \
             <code>ocs-lifecycle sweep</code> sweep</p>",
        );
    }
    let last = view
        .last_sweep_seconds
        .map_or_else(|| "none since start".to_owned(), seconds);
    let _ = write!(
        html,
        "<p class=\"sub\">Last sweep took <span id=\"last-sweep-duration\">{}</span> \
         (this process, real time).</p></section>",
        esc(&last)
    );
}

fn webhook(html: &mut String, view: &DashboardView) {
    html.push_str("<section><h2>Webhook</h2>");
    match &view.webhook {
        Some(w) => {
            let _ = write!(
                html,
                "<table class=\"compact\"><tbody>\
                 <tr><th>lag</th><td class=\"num\" id=\"webhook-lag\">{}</td></tr>\
                 <tr><th>backlog</th><td class=\"num\" id=\"webhook-backlog\">{}</td></tr>\
                 <tr><th>oldest undelivered</th><td class=\"num\">{}</td></tr>\
                 </tbody></table><p class=\"sub\">Lag: age of the oldest event neither \
                 delivered nor dead-lettered; backlog: how many there are.</p>",
                esc(&seconds(w.lag_seconds)),
                w.backlog,
                esc(&when(w.oldest_undelivered.as_deref()))
            );
        }
        None => html.push_str(
            "<div class=\"big\" id=\"webhook-lag\">off</div>\
             <p class=\"sub\">No <code>bss.webhook_url</code>: the BSS reads the Subscribe \
             stream.</p>",
        ),
    }
    let _ = write!(
        html,
        "<h2>Dead letters</h2><div class=\"big\" id=\"dead-count\">{}</div>\
         <div class=\"sub\">webhook events that exhausted their attempts (redeliver with \
         <code>ocs-lifecycle dead-letters redeliver</code>)</div></section>",
        view.dead_letters.count
    );
}

fn dead_letters(html: &mut String, view: &DashboardView) {
    let dead = &view.dead_letters;
    html.push_str(
        "<section class=\"wide\"><h2>Latest dead letters</h2><table class=\"dead\">\
         <thead><tr><th class=\"num\">seq</th><th>type</th><th>msisdn</th>\
         <th class=\"num\">attempts</th><th>dead at (real time)</th><th>last error</th></tr>\
         </thead><tbody id=\"dead-letters\">",
    );
    if dead.latest.is_empty() {
        html.push_str("<tr><td colspan=\"6\" class=\"sub\">none</td></tr>");
    }
    for d in &dead.latest {
        let _ = write!(
            html,
            "<tr class=\"dead-letter-row\" title=\"event {}\"><td class=\"num\">{}</td>\
             <td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td class=\"error-text\">{}</td></tr>",
            esc(&d.event_id),
            d.sequence,
            esc(d.event_type),
            esc(&d.msisdn),
            d.attempts,
            esc(&when(Some(&d.dead_at))),
            esc(&d.last_error)
        );
    }
    html.push_str("</tbody></table></section>");
}

fn recycles(html: &mut String, view: &DashboardView) {
    let recycles = &view.upcoming_recycles;
    let total: i64 = recycles.days.iter().map(|d| d.count).sum();
    let _ = write!(
        html,
        "<section class=\"wide\"><h2>Upcoming recycles, next 30 days</h2><div class=\"sub\">\
         Accounts recycled at 00:00 of each local day (LOCKED and GRACE: the day after \
         <code>lock_until</code>; UNACTIVATED: the day after <code>card_expiry</code>) · total \
         <span id=\"recycles-total\">{total}</span> · overdue (not swept yet) \
         <span id=\"recycles-overdue\">{}</span></div><div class=\"scroll\">",
        recycles.overdue
    );
    let (bar_width, gap, chart_height, top, bottom, left) = (30, 6, 160, 18, 34, 4);
    let width = left + recycles.days.len() as i64 * (bar_width + gap);
    let height = top + chart_height + bottom;
    let max = recycles
        .days
        .iter()
        .map(|d| d.count)
        .max()
        .unwrap_or(0)
        .max(1);
    let _ = write!(
        html,
        "<svg id=\"recycle-chart\" role=\"img\" aria-label=\"upcoming recycles per day\" \
         width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\
         <line x1=\"0\" x2=\"{width}\" y1=\"{base}\" y2=\"{base}\" stroke=\"#c9cfd9\"></line>",
        base = top + chart_height
    );
    for (i, day) in recycles.days.iter().enumerate() {
        let x = left + i as i64 * (bar_width + gap);
        let h = (chart_height as f64 * day.count as f64 / max as f64).round() as i64;
        let date = esc(&day.date);
        let _ = write!(
            html,
            "<g class=\"recycle-day\" data-date=\"{date}\" data-count=\"{}\">\
             <title>{date}: {} recycled</title>",
            day.count, day.count
        );
        let mid = x + bar_width / 2;
        if day.count > 0 {
            let _ = write!(
                html,
                "<rect class=\"bar\" x=\"{x}\" y=\"{}\" width=\"{bar_width}\" height=\"{h}\" \
                 rx=\"2\"></rect><text class=\"bar-count\" x=\"{mid}\" y=\"{}\" \
                 text-anchor=\"middle\">{}</text>",
                top + chart_height - h,
                top + chart_height - h - 4,
                day.count
            );
        }
        day_label(html, &day.date, i == 0, mid, top + chart_height);
        html.push_str("</g>");
    }
    html.push_str("</svg></div></section>");
}

/// The label under a day's bar centred at `mid` below the baseline `base`: its day of the
/// month; on the chart's `first` day and on each 1st, the month too.
pub(super) fn day_label(html: &mut String, date: &str, first: bool, mid: i64, base: i64) {
    let mut parts = date.splitn(3, '-').skip(1);
    let (month, dom) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let _ = write!(
        html,
        "<text x=\"{mid}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        base + 14,
        esc(dom)
    );
    if first || dom == "01" {
        let _ = write!(
            html,
            "<text x=\"{mid}\" y=\"{}\" text-anchor=\"middle\">{}/{}</text>",
            base + 28,
            esc(month),
            esc(dom)
        );
    }
}

fn sweeps(html: &mut String, view: &DashboardView) {
    html.push_str(
        "<section class=\"wide\"><h2>Recent sweeps</h2><div class=\"scroll\"><table>\
         <thead><tr><th class=\"num\">run</th><th>as of</th><th>started</th><th>finished</th>\
         <th>status</th><th class=\"num\">examined</th><th class=\"num\">→ grace</th>\
         <th class=\"num\">→ locked</th><th class=\"num\">recycled (locked)</th>\
         <th class=\"num\">recycled (unactivated)</th><th class=\"num\">expiry notices</th>\
         </tr></thead><tbody id=\"sweeps\">",
    );
    if view.recent_sweeps.is_empty() {
        html.push_str("<tr><td colspan=\"11\" class=\"sub\">no sweep has run yet</td></tr>");
    }
    for s in &view.recent_sweeps {
        let title = s
            .error
            .as_deref()
            .map(|e| format!(" title=\"{}\"", esc(e)))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr class=\"sweep-row\" data-id=\"{}\"{title}><td class=\"num\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"status-{}\">{}</td>",
            s.id,
            s.id,
            esc(&when(Some(&s.as_of))),
            esc(&when(Some(&s.started_at))),
            esc(&when(s.finished_at.as_deref())),
            esc(s.status),
            esc(s.status)
        );
        let counts = std::iter::once(s.counts.examined).chain(s.counts.named().map(|(_, n)| n));
        for count in counts {
            let _ = write!(html, "<td class=\"num\">{count}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_part_goes_where_the_page_waits_for_it() {
        assert_eq!(
            esc("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
        let html = page(Ok("<main>DATA</main>"));
        assert!(html.contains("<body data-loaded=\"true\">"));
        assert!(html.contains("<main>DATA</main>"));
        assert!(!html.contains(PART_START) && !html.contains("id=\"waiting\""));
        let failed = page(Err("the database <is> down"));
        assert!(failed.contains("Cannot load the dashboard: the database &lt;is&gt; down"));
        assert!(!failed.contains("data-loaded"));
        assert_eq!(
            when(Some("2030-06-15T10:00:00+08:00")),
            "2030-06-15 10:00:00"
        );
        assert_eq!(yuan(8000), "80.00 CNY");
    }
}
