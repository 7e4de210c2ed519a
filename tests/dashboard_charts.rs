//! The dashboard's lifecycle charts on SQLite and PostgreSQL: a known population built through
//! the real API with the manual clock, then the page `GET /` as the server sends it (no script)
//! read for the charts' numbers, which must be the LifecycleAnalytics reports' own for the same
//! ranges (StageComposition over the last 30 days, Flows per week over the last 12 weeks) and
//! the figures worked out by hand below; the same in `GET /api/dashboard`. A server without data
//! shows the charts' empty state, in the served page and in a real headless Chromium.
//!
//! Default periods (GRACE 90 days, LOCKED 30 more, card life 540 days); time zone
//! Asia/Shanghai. Every step happens at 12:00 local of its day and first runs the sweep, so
//! every boundary is written at its own 00:00 local. With V the last valid day: GRACE from V+1,
//! LOCKED from V+91, RECYCLED from V+121.
//! - X (…01): provisioned 2029-06-09, never activated: card_expiry 2030-12-01, RECYCLED 12-02.
//! - A (…02): activated 2030-06-01 with 30 days (V 07-01): GRACE 07-02, LOCKED 09-30, RECYCLED
//!   10-30.
//! - G (…03): activated 2030-08-01 with 30 days (V 08-31): GRACE 09-01, LOCKED 11-30; unlocked
//!   with 5000 on 12-05 → VALID.
//! - B (…04): activated 2030-09-01 with 30 days (V 10-01): GRACE 10-02; 1000 on 10-20 (a
//!   win-back, V 11-19); GRACE 11-20.
//! - C (…05): activated 2030-10-15 with 30 days (V 11-14): GRACE 11-15.
//! - D (…06): activated 2030-11-25 with 180 days; E, F (…07, …08): activated 12-10.
//! - Y (…09): provisioned 2030-12-01, not activated.
//!
//! Today: Friday 2030-12-20. The 30 days: 11-21 to 12-20. The 12 weeks: Monday 09-30 to Sunday
//! 12-22. At the end of 12-20: UNACTIVATED 1 (Y), VALID 4 (D, E, F, G), GRACE 2 (B, C), LOCKED 0,
//! RECYCLED 2 (A, X). In the 12 weeks: activations 4 (C, D, E, F); VALID → GRACE 3 (B twice, C);
//! win-backs 1 (B); GRACE → LOCKED 2 (A, G); recycles 2 (A, X); 3 stays in GRACE began, 1 won
//! back (B's first, in the week of 09-30), 2 not ended.

#[macro_use]
mod common;
#[path = "dashboard/browser.rs"]
#[allow(dead_code)]
mod browser;

use browser::{chromium_or_skip, get_html, get_json, run_chromium, text_after};
use common::api::{Api, activated, on};
use common::{Backend, TestDb, TestServer};
use ocs_lifecycle::proto::lifecycle_analytics_client::LifecycleAnalyticsClient;
use ocs_lifecycle::proto::{self, Granularity, RechargeChannel};
use serde_json::Value;

both_backends! {
    the_charts_show_the_reports_figures_for_the_last_30_days_and_12_weeks,
    without_data_the_charts_show_their_empty_state,
}

const X: &str = "8613800000001";
const A: &str = "8613800000002";
const G: &str = "8613800000003";
const B: &str = "8613800000004";
const C: &str = "8613800000005";
const D: &str = "8613800000006";
const E: &str = "8613800000007";
const F: &str = "8613800000008";
const Y: &str = "8613800000009";

const TODAY: &str = "2030-12-20";

/// The population of the module doc.
async fn build_population(server: &TestServer) {
    let mut api = Api::of(server);
    on(server, &mut api, "2029-06-09").await;
    api.provision_with(X, 0, true, 0).await;
    on(server, &mut api, "2030-06-01").await;
    activated(&mut api, A, 30).await;
    on(server, &mut api, "2030-08-01").await;
    activated(&mut api, G, 30).await;
    on(server, &mut api, "2030-09-01").await;
    activated(&mut api, B, 30).await;
    on(server, &mut api, "2030-10-15").await;
    activated(&mut api, C, 30).await;
    on(server, &mut api, "2030-10-20").await;
    let won_back = api.try_recharge(B, 1000, RechargeChannel::Online).await;
    let won_back = common::api::answer("Recharge", won_back);
    assert_eq!(won_back.account.expect("account").valid_until, "2030-11-19");
    on(server, &mut api, "2030-11-25").await;
    activated(&mut api, D, 180).await;
    on(server, &mut api, "2030-12-01").await;
    api.provision_with(Y, 0, true, 0).await;
    on(server, &mut api, "2030-12-05").await;
    api.unlock(G, ("op1", "hall-1"), 5000).await;
    on(server, &mut api, "2030-12-10").await;
    activated(&mut api, E, 30).await;
    activated(&mut api, F, 30).await;
    on(server, &mut api, TODAY).await;
}

/// The value of attribute `name` of every element whose start tag holds `class="{class}"`,
/// in page order.
fn attributes(html: &str, class: &str, name: &str) -> Vec<String> {
    let marker = format!("class=\"{class}\"");
    html.match_indices(&marker)
        .map(|(at, _)| {
            let tag = &html[at..at + html[at..].find('>').expect("end of the start tag")];
            let key = format!("{name}=\"");
            let start = tag
                .find(&key)
                .unwrap_or_else(|| panic!("no {name} in {tag}"))
                + key.len();
            tag[start..start + tag[start..].find('"').expect("end of the value")].to_owned()
        })
        .collect()
}

/// The number cells of the table row whose start tag ends with `data-{key}="{value}"`.
fn row_cells(html: &str, key: &str, value: &str) -> Vec<String> {
    let marker = format!("data-{key}=\"{value}\"><th>");
    let row = &html[html
        .find(&marker)
        .unwrap_or_else(|| panic!("no row {marker}"))..];
    let row = &row[..row.find("</tr>").expect("end of the row")];
    row.split("<td class=\"num\">")
        .skip(1)
        .map(|cell| cell[..cell.find('<').unwrap_or(cell.len())].to_owned())
        .collect()
}

async fn the_charts_show_the_reports_figures_for_the_last_30_days_and_12_weeks(server: TestServer) {
    build_population(&server).await;
    let mut analytics = LifecycleAnalyticsClient::new(server.channel());
    let composition = analytics
        .stage_composition(proto::StageCompositionRequest {
            from_date: "2030-11-21".into(),
            to_date: TODAY.into(),
        })
        .await
        .expect("StageComposition")
        .into_inner();
    let flows = analytics
        .flows(proto::FlowsRequest {
            granularity: Granularity::Week as i32,
            from_date: "2030-10-04".into(),
            to_date: TODAY.into(),
        })
        .await
        .expect("Flows")
        .into_inner();
    assert_eq!(composition.days.len(), 30);
    assert_eq!(flows.periods.len(), 12);

    let page = get_html(&server.http_url("/")).await;
    assert!(page.contains("<body data-loaded=\"true\">"), "{page}");
    assert!(!page.contains("id=\"charts-error\""), "{page}");

    // The composition: each day's bar and table row are the report's day.
    let expected: Vec<(String, String)> = composition
        .days
        .iter()
        .map(|day| {
            let c = day.counts.expect("counts");
            let counts = [c.unactivated, c.valid, c.grace, c.locked, c.recycled];
            (day.date.clone(), counts.map(|n| n.to_string()).join(","))
        })
        .collect();
    let dates = attributes(&page, "composition-day", "data-date");
    let counts = attributes(&page, "composition-day", "data-counts");
    let shown: Vec<(String, String)> = dates.into_iter().zip(counts).collect();
    assert_eq!(shown, expected);
    for (date, counts) in &expected {
        let cells = row_cells(&page, "date", date);
        let total: i64 = counts.split(',').map(|n| n.parse::<i64>().unwrap()).sum();
        assert_eq!(cells.join(","), format!("{counts},{total}"), "{date}");
    }
    // By hand: the start and the end of the window, and the latest counts' labels.
    // 11-21: X UNACTIVATED; G, B, C GRACE; A RECYCLED.
    assert_eq!(shown[0], ("2030-11-21".to_owned(), "1,0,3,0,1".to_owned()));
    assert_eq!(shown[29], (TODAY.to_owned(), "1,4,2,0,2".to_owned()));
    for (state, count) in [
        ("UNACTIVATED", "1"),
        ("VALID", "4"),
        ("GRACE", "2"),
        ("LOCKED", "0"),
        ("RECYCLED", "2"),
    ] {
        assert_eq!(text_after(&page, &format!("id=\"latest-{state}\"")), count);
    }

    // The flows: each week's bars (activations, VALID → GRACE, win-backs, GRACE → LOCKED,
    // recycles of both reasons) and win-back cohort are the report's week.
    let expected: Vec<(String, String, String)> = flows
        .periods
        .iter()
        .map(|p| {
            let figures = [
                p.activations,
                p.valid_to_grace,
                p.win_backs,
                p.grace_to_locked,
                p.recycled_lock_expired + p.recycled_unactivated_expired,
            ];
            (
                p.first_day.clone(),
                figures.map(|n| n.to_string()).join(","),
                format!("{}/{}/{}", p.won_back, p.entered_grace, p.still_in_grace),
            )
        })
        .collect();
    let shown: Vec<(String, String, String)> = attributes(&page, "flow-week", "data-first-day")
        .into_iter()
        .zip(attributes(&page, "flow-week", "data-flows"))
        .zip(attributes(&page, "flow-week", "data-win-back"))
        .map(|((first, flows), win_back)| (first, flows, win_back))
        .collect();
    assert_eq!(shown, expected);
    for p in &flows.periods {
        let cells = row_cells(&page, "first-day", &p.first_day);
        let rate = if p.entered_grace == 0 {
            "–".to_owned()
        } else {
            format!("{:.0}%", 100.0 * p.win_back_rate)
        };
        let figures = [
            p.activations,
            p.valid_to_grace,
            p.win_backs,
            p.grace_to_locked,
            p.recycled_lock_expired,
            p.recycled_unactivated_expired,
            p.entered_grace,
            p.won_back,
            p.still_in_grace,
        ];
        let mut expected: Vec<String> = figures.iter().map(i64::to_string).collect();
        expected.push(rate);
        assert_eq!(cells, expected, "week of {}", p.first_day);
    }
    // By hand: the weeks' totals and the win-back rate over them.
    let total = |i: usize| -> i64 {
        shown
            .iter()
            .map(|(_, flows, _)| flows.split(',').nth(i).unwrap().parse::<i64>().unwrap())
            .sum()
    };
    assert_eq!((0..5).map(total).collect::<Vec<_>>(), [4, 3, 1, 2, 2]);
    assert_eq!(shown[0].0, "2030-09-30");
    assert_eq!(shown[0].2, "1/1/0", "B's first stay in GRACE, won back");
    assert_eq!(text_after(&page, "id=\"win-back-rate\""), "33%");
    assert_eq!(text_after(&page, "id=\"won-back\""), "1");
    assert_eq!(text_after(&page, "id=\"entered-grace\""), "3");
    assert_eq!(text_after(&page, "id=\"still-in-grace\""), "2");

    // The JSON has the same figures.
    let json = get_json(&server.http_url("/api/dashboard")).await;
    let charts = &json["charts"];
    assert_eq!(json["charts_error"], Value::Null);
    assert_eq!(charts["composition"].as_array().map(Vec::len), Some(30));
    assert_eq!(
        charts["composition"][29],
        serde_json::json!({"date": TODAY, "unactivated": 1, "valid": 4, "grace": 2,
                           "locked": 0, "recycled": 2})
    );
    let weeks = charts["weekly_flows"].as_array().expect("weekly flows");
    assert_eq!(weeks.len(), 12);
    for (week, p) in weeks.iter().zip(&flows.periods) {
        assert_eq!(week["first_day"], p.first_day.as_str());
        assert_eq!(week["last_day"], p.last_day.as_str());
        assert_eq!(week["activations"], p.activations);
        assert_eq!(week["win_backs"], p.win_backs);
        assert_eq!(week["entered_grace"], p.entered_grace);
        assert_eq!(week["win_back_rate"], p.win_back_rate);
    }
    server.stop().await;
}

async fn without_data_the_charts_show_their_empty_state(server: TestServer) {
    server.set_time("2030-03-01T02:00:00Z").await;
    let page = get_html(&server.http_url("/")).await;
    assert!(page.contains("<body data-loaded=\"true\">"), "{page}");
    assert!(!page.contains("id=\"charts-error\""), "{page}");
    assert_eq!(
        text_after(&page, "id=\"composition-empty\""),
        "No accounts yet"
    );
    assert!(page.contains("id=\"flows-empty\""), "{page}");
    let counts = attributes(&page, "composition-day", "data-counts");
    assert_eq!(counts, vec!["0,0,0,0,0"; 30]);
    let flows = attributes(&page, "flow-week", "data-flows");
    assert_eq!(flows, vec!["0,0,0,0,0"; 12]);
    assert_eq!(text_after(&page, "id=\"win-back-rate\""), "–");
    server.stop().await;
}

/// The empty charts as a real browser renders them: no error, the empty notes shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_renders_the_empty_charts_without_errors() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    let server = TestServer::start_on(db, ocs_lifecycle::config::ClockMode::Manual).await;
    server.set_time("2030-03-01T02:00:00Z").await;
    let dom = run_chromium(
        chromium,
        vec!["--virtual-time-budget=5000".into(), "--dump-dom".into()],
        server.http_url("/"),
    )
    .await;
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    assert_eq!(text_after(&dom, "id=\"error\""), "", "no error banner");
    assert_eq!(
        text_after(&dom, "id=\"composition-empty\""),
        "No accounts yet"
    );
    assert!(dom.contains("id=\"flows-empty\""), "{dom}");
    assert_eq!(dom.matches("class=\"composition-day\"").count(), 30);
    assert_eq!(dom.matches("class=\"flow-week\"").count(), 12);
    server.stop().await;
}
