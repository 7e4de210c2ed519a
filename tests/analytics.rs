//! The lifecycle analytics (`LifecycleAnalytics`, docs/analytics.md) through the real API on
//! SQLite and PostgreSQL: a known population built with the manual clock over 2030 and 2031
//! (activations, recharges on every channel, expiries materialised by sweeps, a win-back, unlocks
//! with and without a recharge, recycles of both kinds, a re-provisioned number), and every
//! figure of every report checked against numbers worked out by hand below. Requests outside
//! the limits are INVALID_ARGUMENT. (Which roles may call the reports: tests/auth.rs, where
//! `analyst` reaches the four reports and nothing else, mutations included.)
//!
//! Time zone Asia/Shanghai (UTC+8, no DST): every step happens at 12:00 local (04:00Z) of its
//! day and first runs the sweep, so every boundary is written at its own 00:00 local. Default
//! periods: GRACE 90 days, LOCKED 30 more, card life 540 days; tariff 500 → 7 days, 1000/2000
//! → 30, 3000 → 90, 5000 → 180, 10000 → 365.
//!
//! The population (valid_until V, GRACE from V+1, LOCKED from V+91, RECYCLED from V+121):
//! - A (…01), generation 1: activated 2030-01-10 with 30 days (V 02-09); GRACE 02-10; recharged
//!   1000 ONLINE in GRACE 02-20 (a win-back; V 03-22); GRACE 03-23; LOCKED 06-21; RECYCLED
//!   07-21. Generation 2: re-provisioned and activated 2030-08-01 with 30 days (V 08-31);
//!   10000 BANK 08-05 on a zero balance (V = max(08-31, 08-05 + 365) = 2031-08-05); GRACE
//!   2031-08-06; LOCKED 11-04; RECYCLED 12-04.
//! - B (…02): activated 2030-01-15 with 30 days (V 02-14); GRACE 02-15; LOCKED 05-16; unlocked
//!   without a recharge 06-01 (GRACE through 08-30); 3000 CARD_10011 07-01 (V 09-29); GRACE
//!   09-30; LOCKED 12-29; RECYCLED 2031-01-28.
//! - C (…03): activated 2030-02-01 with 30 days (V 03-03); GRACE 03-04; LOCKED 06-02; unlocked
//!   with 5000 on 06-10 (V 12-07); GRACE 12-08; LOCKED 2031-03-08; RECYCLED 2031-04-07.
//! - D (…04): provisioned 2030-01-05, never activated; 1000 ONLINE 01-06 (balance only);
//!   card_expiry 01-05 + 540 = 2031-06-29, RECYCLED 2031-06-30.
//! - E (…05): activated 2030-03-10 with 180 days (V 09-06); 10000 BANK 04-01 on a zero balance
//!   (V = max(09-06, 2031-04-01)); 1000 ONLINE 05-01 (V 2031-04-01 + 30 = 2031-05-01); GRACE
//!   2031-05-02; LOCKED 07-31; RECYCLED 08-30.
//! - F (…06): activated 2031-11-01 with 60 days (V 12-31); 500 ONLINE 11-02 (V max(12-31,
//!   11-09) = 12-31).
//! - G (…07): activated 2031-11-01 with 50 days (V 12-21); 2000 BANK 11-03 (V max(12-21, 12-03)
//!   = 12-21); 800 ONLINE 12-15 on a balance of 2000 (V 12-21 + 7 = 12-28).
//! - H (…08): activated 2031-12-01 with 10 days (V 12-11); GRACE 12-12 (grace_until 2032-03-10).
//!
//! "Now" at the end: 2031-12-20 12:00 local.

#[macro_use]
mod common;

use common::api::{Api, activated, on};
use common::{TestServer, assert_rejected};
use ocs_lifecycle::proto::lifecycle_analytics_client::LifecycleAnalyticsClient;
use ocs_lifecycle::proto::{
    self, AccountState, ChannelRecharges, Granularity, PeriodFlows, RechargeChannel, StageCounts,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SERVICE: &str = "ocs.lifecycle.v1.LifecycleAnalytics";

both_backends! {
    every_report_matches_the_hand_worked_population,
    requests_outside_the_limits_are_invalid_arguments,
    the_service_reports_serving_and_reflection_lists_it,
    the_report_commands_print_tables_json_and_csv,
    reports_answer_while_a_sweep_batch_holds_the_write_path,
    sums_kept_beside_the_history_saturate_instead_of_failing_a_recharge,
}

const A: &str = "8613800000001";
const B: &str = "8613800000002";
const C: &str = "8613800000003";
const D: &str = "8613800000004";
const E: &str = "8613800000005";
const F: &str = "8613800000006";
const G: &str = "8613800000007";
const H: &str = "8613800000008";
const HALL: (&str, &str) = ("op1", "hall-1");

async fn provision(api: &mut Api, msisdn: &str, days: u32) {
    api.provision_with(msisdn, 0, true, days).await;
}

async fn recharge(api: &mut Api, msisdn: &str, amount: i64, channel: RechargeChannel) -> String {
    let done = api.try_recharge(msisdn, amount, channel).await;
    let result = common::api::answer("Recharge", done);
    result.account.expect("account").valid_until
}

/// Builds the population of the module doc; checks the validity dates worked out there.
async fn build_population(server: &TestServer) -> Api {
    use RechargeChannel::{Bank, Card10011, Online};
    let mut api = Api::of(server);
    on(server, &mut api, "2030-01-05").await;
    provision(&mut api, D, 0).await;
    on(server, &mut api, "2030-01-06").await;
    recharge(&mut api, D, 1000, Online).await;
    on(server, &mut api, "2030-01-10").await;
    activated(&mut api, A, 30).await;
    on(server, &mut api, "2030-01-15").await;
    activated(&mut api, B, 30).await;
    on(server, &mut api, "2030-02-01").await;
    activated(&mut api, C, 30).await;
    on(server, &mut api, "2030-02-20").await;
    assert_eq!(recharge(&mut api, A, 1000, Online).await, "2030-03-22");
    on(server, &mut api, "2030-03-10").await;
    activated(&mut api, E, 0).await;
    on(server, &mut api, "2030-04-01").await;
    assert_eq!(recharge(&mut api, E, 10000, Bank).await, "2031-04-01");
    on(server, &mut api, "2030-05-01").await;
    assert_eq!(recharge(&mut api, E, 1000, Online).await, "2031-05-01");
    on(server, &mut api, "2030-06-01").await;
    let b = api.unlock(B, HALL, 0).await;
    assert_eq!(
        (b.state, b.grace_until.as_str()),
        (AccountState::Grace as i32, "2030-08-30")
    );
    on(server, &mut api, "2030-06-10").await;
    let c = api.unlock(C, HALL, 5000).await;
    assert_eq!(
        (c.state, c.valid_until.as_str()),
        (AccountState::Valid as i32, "2030-12-07")
    );
    on(server, &mut api, "2030-07-01").await;
    assert_eq!(recharge(&mut api, B, 3000, Card10011).await, "2030-09-29");
    on(server, &mut api, "2030-08-01").await;
    activated(&mut api, A, 30).await;
    on(server, &mut api, "2030-08-05").await;
    assert_eq!(recharge(&mut api, A, 10000, Bank).await, "2031-08-05");
    on(server, &mut api, "2031-11-01").await;
    activated(&mut api, F, 60).await;
    activated(&mut api, G, 50).await;
    on(server, &mut api, "2031-11-02").await;
    assert_eq!(recharge(&mut api, F, 500, Online).await, "2031-12-31");
    on(server, &mut api, "2031-11-03").await;
    assert_eq!(recharge(&mut api, G, 2000, Bank).await, "2031-12-21");
    on(server, &mut api, "2031-12-01").await;
    activated(&mut api, H, 10).await;
    on(server, &mut api, "2031-12-15").await;
    assert_eq!(recharge(&mut api, G, 800, Online).await, "2031-12-28");
    on(server, &mut api, "2031-12-20").await;
    let a = api.get(A).await;
    assert_eq!((a.generation, a.state), (2, AccountState::Recycled as i32));
    api
}

fn counts(unactivated: i64, valid: i64, grace: i64, locked: i64, recycled: i64) -> StageCounts {
    StageCounts {
        unactivated,
        valid,
        grace,
        locked,
        recycled,
    }
}

async fn composition(
    analytics: &mut LifecycleAnalyticsClient<Channel>,
    from: &str,
    to: &str,
) -> proto::StageCompositionResponse {
    analytics
        .stage_composition(proto::StageCompositionRequest {
            from_date: from.into(),
            to_date: to.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("StageComposition {from}..{to}: {e:?}"))
        .into_inner()
}

fn days(response: &proto::StageCompositionResponse) -> Vec<(&str, StageCounts)> {
    response
        .days
        .iter()
        .map(|d| (d.date.as_str(), d.counts.expect("counts")))
        .collect()
}

fn channel(channel: RechargeChannel, count: i64, amount: i64) -> ChannelRecharges {
    ChannelRecharges {
        channel: channel as i32,
        count,
        amount,
    }
}

/// A period's flows with the given counts (every other figure 0).
#[derive(Default)]
struct Expected {
    activations: i64,
    valid_to_grace: i64,
    win_backs: i64,
    grace_to_locked: i64,
    unlocks_to_valid: i64,
    unlocks_to_grace: i64,
    recycled_lock_expired: i64,
    recycled_unactivated_expired: i64,
    reprovisioned: i64,
    recharges: Vec<ChannelRecharges>,
    entered_grace: i64,
    won_back: i64,
    still_in_grace: i64,
}

fn expected(first: &str, last: &str, e: Expected) -> PeriodFlows {
    let rate = if e.entered_grace == 0 {
        0.0
    } else {
        e.won_back as f64 / e.entered_grace as f64
    };
    PeriodFlows {
        first_day: first.into(),
        last_day: last.into(),
        activations: e.activations,
        valid_to_grace: e.valid_to_grace,
        win_backs: e.win_backs,
        grace_to_locked: e.grace_to_locked,
        unlocks_to_valid: e.unlocks_to_valid,
        unlocks_to_grace: e.unlocks_to_grace,
        recycled_lock_expired: e.recycled_lock_expired,
        recycled_unactivated_expired: e.recycled_unactivated_expired,
        reprovisioned: e.reprovisioned,
        recharges: e.recharges,
        entered_grace: e.entered_grace,
        won_back: e.won_back,
        still_in_grace: e.still_in_grace,
        win_back_rate: rate,
    }
}

async fn every_report_matches_the_hand_worked_population(server: TestServer) {
    use RechargeChannel::{Bank, BusinessHall, Card10011, Online};
    build_population(&server).await;
    let mut analytics = LifecycleAnalyticsClient::new(server.channel());

    // Composition now (2031-12-20): F and G VALID, H GRACE, A (generation 2), B, C, D and E
    // RECYCLED; nothing UNACTIVATED or LOCKED.
    let now = composition(&mut analytics, "", "").await;
    assert_eq!(now.today, "2031-12-20");
    assert_eq!(now.timezone, "Asia/Shanghai");
    assert_eq!(now.now, Some(counts(0, 2, 1, 0, 5)));
    assert!(now.days.is_empty());

    // End of 2030-02-14: D UNACTIVATED; A GRACE (since 02-10); B and C VALID. B enters GRACE
    // at 00:00 of 02-15.
    let feb = composition(&mut analytics, "2030-02-14", "2030-02-16").await;
    assert_eq!(
        days(&feb),
        [
            ("2030-02-14", counts(1, 2, 1, 0, 0)),
            ("2030-02-15", counts(1, 1, 2, 0, 0)),
            ("2030-02-16", counts(1, 1, 2, 0, 0)),
        ]
    );
    // End of 2030-07-31: A RECYCLED (07-21), B (recharged 07-01), C (unlocked with a recharge)
    // and E VALID, D UNACTIVATED. On 08-01 A's number is re-provisioned and activated: out of
    // RECYCLED, into VALID.
    let august = composition(&mut analytics, "2030-07-31", "2030-08-01").await;
    assert_eq!(
        days(&august),
        [
            ("2030-07-31", counts(1, 3, 0, 0, 1)),
            ("2030-08-01", counts(1, 4, 0, 0, 0)),
        ]
    );
    // End of 2031-12-03: A LOCKED (11-04 through 12-03), F, G and H VALID, B, C, D and E
    // RECYCLED; A is RECYCLED from 12-04.
    let december = composition(&mut analytics, "2031-12-03", "2031-12-04").await;
    assert_eq!(
        days(&december),
        [
            ("2031-12-03", counts(0, 3, 0, 1, 4)),
            ("2031-12-04", counts(0, 3, 0, 0, 5)),
        ]
    );
    // Today's figure is the state so far: the same as "now" once the sweep has run.
    let today = composition(&mut analytics, "2031-12-20", "2031-12-20").await;
    assert_eq!(days(&today), [("2031-12-20", counts(0, 2, 1, 0, 5))]);

    // Flows of 2030 by month (from a mid-month range: whole months are reported).
    let flows = analytics
        .flows(proto::FlowsRequest {
            granularity: Granularity::Month as i32,
            from_date: "2030-01-15".into(),
            to_date: "2030-12-01".into(),
        })
        .await
        .expect("Flows")
        .into_inner();
    assert_eq!(flows.timezone, "Asia/Shanghai");
    let want = [
        // January: A and B activated (D only provisioned); D's 1000 ONLINE.
        expected(
            "2030-01-01",
            "2030-01-31",
            Expected {
                activations: 2,
                recharges: vec![channel(Online, 1, 1000)],
                ..Default::default()
            },
        ),
        // February: C activated; A (02-10) and B (02-15) VALID → GRACE; A won back 02-20 by
        // 1000 ONLINE. Of the two who entered GRACE, A was won back and B went on to LOCKED
        // (05-16): rate 1 ÷ 2.
        expected(
            "2030-02-01",
            "2030-02-28",
            Expected {
                activations: 1,
                valid_to_grace: 2,
                win_backs: 1,
                recharges: vec![channel(Online, 1, 1000)],
                entered_grace: 2,
                won_back: 1,
                ..Default::default()
            },
        ),
        // March: E activated; C (03-04) and A (03-23) enter GRACE, both later LOCKED: rate 0.
        expected(
            "2030-03-01",
            "2030-03-31",
            Expected {
                activations: 1,
                valid_to_grace: 2,
                entered_grace: 2,
                ..Default::default()
            },
        ),
        // April: E's 10000 BANK.
        expected(
            "2030-04-01",
            "2030-04-30",
            Expected {
                recharges: vec![channel(Bank, 1, 10000)],
                ..Default::default()
            },
        ),
        // May: E's 1000 ONLINE; B LOCKED (05-16).
        expected(
            "2030-05-01",
            "2030-05-31",
            Expected {
                grace_to_locked: 1,
                recharges: vec![channel(Online, 1, 1000)],
                ..Default::default()
            },
        ),
        // June: C (06-02) and A (06-21) LOCKED; B unlocked to GRACE (06-01); C unlocked to
        // VALID with 5000, a business-hall recharge (06-10), not a win-back.
        expected(
            "2030-06-01",
            "2030-06-30",
            Expected {
                grace_to_locked: 2,
                unlocks_to_valid: 1,
                unlocks_to_grace: 1,
                recharges: vec![channel(BusinessHall, 1, 5000)],
                ..Default::default()
            },
        ),
        // July: B back to VALID by 3000 CARD_10011 from the GRACE of its unlock (a win-back in
        // the flow; no GRACE entry of July); A RECYCLED (07-21).
        expected(
            "2030-07-01",
            "2030-07-31",
            Expected {
                win_backs: 1,
                recycled_lock_expired: 1,
                recharges: vec![channel(Card10011, 1, 3000)],
                ..Default::default()
            },
        ),
        // August: A's number re-provisioned (generation 2) and activated; 10000 BANK.
        expected(
            "2030-08-01",
            "2030-08-31",
            Expected {
                activations: 1,
                reprovisioned: 1,
                recharges: vec![channel(Bank, 1, 10000)],
                ..Default::default()
            },
        ),
        // September: B enters GRACE (09-30), LOCKED 12-29: rate 0.
        expected(
            "2030-09-01",
            "2030-09-30",
            Expected {
                valid_to_grace: 1,
                entered_grace: 1,
                ..Default::default()
            },
        ),
        expected("2030-10-01", "2030-10-31", Expected::default()),
        expected("2030-11-01", "2030-11-30", Expected::default()),
        // December: C enters GRACE (12-08; LOCKED 2031-03-08); B LOCKED (12-29).
        expected(
            "2030-12-01",
            "2030-12-31",
            Expected {
                valid_to_grace: 1,
                grace_to_locked: 1,
                entered_grace: 1,
                ..Default::default()
            },
        ),
    ];
    assert_eq!(flows.periods.len(), want.len());
    for (got, want) in flows.periods.iter().zip(&want) {
        assert_eq!(got, want, "{}", want.first_day);
    }

    // By ISO week around December 2031 (2031-12-01 is a Monday): H activated and A RECYCLED
    // in the first week; H enters GRACE (12-12) and is still there; G's 800 ONLINE (12-15).
    let weeks = analytics
        .flows(proto::FlowsRequest {
            granularity: Granularity::Week as i32,
            from_date: "2031-12-03".into(),
            to_date: "2031-12-16".into(),
        })
        .await
        .expect("Flows by week")
        .into_inner();
    assert_eq!(
        weeks.periods,
        [
            expected(
                "2031-12-01",
                "2031-12-07",
                Expected {
                    activations: 1,
                    recycled_lock_expired: 1,
                    ..Default::default()
                }
            ),
            expected(
                "2031-12-08",
                "2031-12-14",
                Expected {
                    valid_to_grace: 1,
                    entered_grace: 1,
                    still_in_grace: 1,
                    ..Default::default()
                }
            ),
            expected(
                "2031-12-15",
                "2031-12-21",
                Expected {
                    recharges: vec![channel(Online, 1, 800)],
                    ..Default::default()
                }
            ),
        ]
    );
    // By day: D's card life ends with 2031-06-29; it is RECYCLED at 00:00 of 06-30.
    let day = analytics
        .flows(proto::FlowsRequest {
            granularity: Granularity::Day as i32,
            from_date: "2031-06-30".into(),
            to_date: "2031-06-30".into(),
        })
        .await
        .expect("Flows by day")
        .into_inner();
    assert_eq!(
        day.periods,
        [expected(
            "2031-06-30",
            "2031-06-30",
            Expected {
                recycled_unactivated_expired: 1,
                ..Default::default()
            }
        )]
    );

    churn_warnings(&mut analytics).await;
    cohorts(&mut analytics).await;
    let db = server.db().await;
    db.assert_totals_match_history("two years of the population")
        .await;
    server.stop().await;
}

async fn churn(
    analytics: &mut LifecycleAnalyticsClient<Channel>,
    request: proto::ChurnWarningsRequest,
) -> proto::ChurnWarningsResponse {
    analytics
        .churn_warnings(request)
        .await
        .expect("ChurnWarnings")
        .into_inner()
}

fn warning(
    msisdn: &str,
    state: AccountState,
    ends: &str,
    days_left: i64,
    total: i64,
    count: i64,
) -> (String, i32, String, i64, i64, i64) {
    (
        msisdn.into(),
        state as i32,
        ends.into(),
        days_left,
        total,
        count,
    )
}

fn warnings(response: &proto::ChurnWarningsResponse) -> Vec<(String, i32, String, i64, i64, i64)> {
    response
        .warnings
        .iter()
        .map(|w| {
            (
                w.msisdn.clone(),
                w.state,
                w.stage_ends.clone(),
                w.days_left,
                w.recharge_total,
                w.recharge_count,
            )
        })
        .collect()
}

/// Today is 2031-12-20: F is VALID through 12-31 (11 days left), last recharged 11-02, value
/// 500; G through 12-28 (8 days), recharged 12-15, value 2000 + 800 = 2800; H is in GRACE
/// through 2032-03-10 (11 + 31 + 29 + 10 = 81 days), value 0.
async fn churn_warnings(analytics: &mut LifecycleAnalyticsClient<Channel>) {
    use AccountState::{Grace, Valid};
    let valid =
        |within_days, no_recharge_days, page_size, page_token: &str| proto::ChurnWarningsRequest {
            stage: Valid as i32,
            within_days,
            no_recharge_days,
            page_size,
            page_token: page_token.into(),
            mask_msisdn: false,
        };
    // Ending by 2032-01-03, no recharge since 2031-11-20: G recharged on 12-15, only F is left.
    let quiet = churn(analytics, valid(14, 30, 0, "")).await;
    assert_eq!(quiet.today, "2031-12-20");
    assert_eq!(
        warnings(&quiet),
        [warning(F, Valid, "2031-12-31", 11, 500, 1)]
    );
    assert!(quiet.next_page_token.is_empty());
    // Without the recharge condition both, the higher value first, one per page.
    let first = churn(analytics, valid(14, 0, 1, "")).await;
    assert_eq!(
        warnings(&first),
        [warning(G, Valid, "2031-12-28", 8, 2800, 2)]
    );
    assert!(!first.next_page_token.is_empty());
    let second = churn(analytics, valid(14, 0, 1, &first.next_page_token)).await;
    assert_eq!(
        warnings(&second),
        [warning(F, Valid, "2031-12-31", 11, 500, 1)]
    );
    assert!(second.next_page_token.is_empty());
    // Ending by 12-30: G only; by 12-27: nobody.
    let soon = churn(analytics, valid(10, 0, 0, "")).await;
    assert_eq!(
        warnings(&soon),
        [warning(G, Valid, "2031-12-28", 8, 2800, 2)]
    );
    assert!(
        churn(analytics, valid(7, 0, 0, ""))
            .await
            .warnings
            .is_empty()
    );
    // GRACE within 90 days (by 2032-03-19), masked for a campaign list.
    let grace = churn(
        analytics,
        proto::ChurnWarningsRequest {
            stage: Grace as i32,
            within_days: 90,
            mask_msisdn: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        warnings(&grace),
        [warning("861******0008", Grace, "2032-03-10", 81, 0, 0)]
    );
    assert!(!grace.warnings[0].account_id.is_empty());
}

fn retention(cohort: &proto::Cohort) -> Vec<(u32, i64, i64)> {
    cohort
        .retention
        .iter()
        .map(|r| (r.age_days, r.reached, r.active))
        .collect()
}

/// Retention days (activation date + N, VALID or GRACE at its end):
/// - January 2030, A (2030-01-10) and B (01-15). Day 30: A 02-09 VALID, B 02-14 VALID. Day 90:
///   A 04-10 GRACE, B 04-15 GRACE. Day 180: A 07-09 LOCKED, B 07-14 VALID. Day 365: A
///   2031-01-10 RECYCLED, B 2031-01-15 LOCKED. Recharges: A 1000, B 3000.
/// - February 2030, C (02-01): 03-03 VALID, 05-02 GRACE, 07-31 VALID (its unlock's 5000),
///   2031-02-01 GRACE.
/// - March 2030, E (03-10): VALID through 2031-05-01, so at every age; 10000 + 1000.
/// - August 2030, A's generation 2 (08-01): VALID through 2031-08-05, day 365 is 2031-08-01;
///   10000.
/// - November 2031, F and G (11-01): day 30 (12-01) VALID both; day 90 not yet reached.
///   Recharges 500 and 2000 + 800.
/// - December 2031, H (12-01): day 30 is 12-31, not reached; no recharge.
async fn cohorts(analytics: &mut LifecycleAnalyticsClient<Channel>) {
    let report = |from: &str, to: &str| proto::CohortsRequest {
        from_month: from.into(),
        to_month: to.into(),
    };
    let y2030 = analytics
        .cohorts(report("2030-01", "2030-08"))
        .await
        .expect("Cohorts")
        .into_inner()
        .cohorts;
    let months: Vec<_> = y2030.iter().map(|c| c.month.as_str()).collect();
    assert_eq!(
        months,
        [
            "2030-01", "2030-02", "2030-03", "2030-04", "2030-05", "2030-06", "2030-07", "2030-08"
        ]
    );
    let (jan, feb, mar, aug) = (&y2030[0], &y2030[1], &y2030[2], &y2030[7]);
    assert_eq!(jan.accounts, 2);
    assert_eq!(
        retention(jan),
        [(30, 2, 2), (90, 2, 2), (180, 2, 1), (365, 2, 0)]
    );
    assert_eq!(jan.retention[2].share, 0.5);
    // 1000 + 3000 = 4000 over 2 accounts and 2 recharges; LTVs 1000 and 3000: the median is
    // the 1st of 2 (rank ⌈0.5 × 2⌉ = 1), p90 and p99 the 2nd.
    assert_eq!((jan.recharge_total, jan.recharge_count), (4000, 2));
    assert_eq!((jan.arpu, jan.recharges_per_account), (2000.0, 1.0));
    assert_eq!((jan.ltv_p50, jan.ltv_p90, jan.ltv_p99), (1000, 3000, 3000));

    assert_eq!(feb.accounts, 1);
    assert_eq!(
        retention(feb),
        [(30, 1, 1), (90, 1, 1), (180, 1, 1), (365, 1, 1)]
    );
    assert_eq!(
        (feb.recharge_total, feb.recharge_count, feb.arpu),
        (5000, 1, 5000.0)
    );
    assert_eq!((feb.ltv_p50, feb.ltv_p99), (5000, 5000));

    assert_eq!(
        retention(mar),
        [(30, 1, 1), (90, 1, 1), (180, 1, 1), (365, 1, 1)]
    );
    assert_eq!((mar.recharge_total, mar.recharge_count), (11000, 2));
    assert_eq!((mar.arpu, mar.recharges_per_account), (11000.0, 2.0));

    for empty in &y2030[3..7] {
        assert_eq!(
            (empty.accounts, empty.recharge_total, empty.ltv_p50),
            (0, 0, 0)
        );
        assert!(
            empty
                .retention
                .iter()
                .all(|r| r.reached == 0 && r.share == 0.0)
        );
    }
    assert_eq!(aug.accounts, 1);
    assert_eq!(
        retention(aug),
        [(30, 1, 1), (90, 1, 1), (180, 1, 1), (365, 1, 1)]
    );
    assert_eq!((aug.recharge_total, aug.ltv_p90), (10000, 10000));

    let late = analytics
        .cohorts(report("2031-11", "2031-12"))
        .await
        .expect("Cohorts")
        .into_inner()
        .cohorts;
    let (nov, dec) = (&late[0], &late[1]);
    assert_eq!(nov.accounts, 2);
    assert_eq!(
        retention(nov),
        [(30, 2, 2), (90, 0, 0), (180, 0, 0), (365, 0, 0)]
    );
    // 500 + 2800 = 3300 over 2 accounts, 3 recharges; LTVs 500 and 2800.
    assert_eq!((nov.recharge_total, nov.recharge_count), (3300, 3));
    assert_eq!((nov.arpu, nov.recharges_per_account), (1650.0, 1.5));
    assert_eq!((nov.ltv_p50, nov.ltv_p90, nov.ltv_p99), (500, 2800, 2800));
    assert_eq!(dec.accounts, 1);
    assert_eq!(
        retention(dec),
        [(30, 0, 0), (90, 0, 0), (180, 0, 0), (365, 0, 0)]
    );
    assert_eq!((dec.recharge_total, dec.ltv_p50), (0, 0));
}

async fn requests_outside_the_limits_are_invalid_arguments(server: TestServer) {
    server.set_time("2030-03-01T04:00:00Z").await;
    let mut analytics = LifecycleAnalyticsClient::new(server.channel());
    let db = server.db().await;
    let before = db.counts().await;
    let composition = |from: &str, to: &str| proto::StageCompositionRequest {
        from_date: from.into(),
        to_date: to.into(),
    };
    for (request, says) in [
        (composition("2030-02-01", ""), "to_date"),
        (composition("2030-2-1", "2030-02-02"), "from_date"),
        (composition("2030-02-02", "2030-02-01"), "after to_date"),
        (composition("2030-02-01", "2030-03-02"), "after today"),
        (composition("2027-01-01", "2030-01-01"), "1000 days"),
    ] {
        let refused = analytics.stage_composition(request).await;
        let status = assert_rejected(refused, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert!(status.message().contains(says), "{says}: {status:?}");
    }
    let flows = |granularity: Granularity, from: &str, to: &str| proto::FlowsRequest {
        granularity: granularity as i32,
        from_date: from.into(),
        to_date: to.into(),
    };
    for (request, says) in [
        (
            flows(Granularity::Unspecified, "2030-01-01", "2030-01-02"),
            "granularity",
        ),
        (
            flows(Granularity::Day, "2030-01-02", "2030-01-01"),
            "after to_date",
        ),
        (
            flows(Granularity::Day, "2027-01-01", "2030-01-01"),
            "1000 periods",
        ),
        (
            flows(Granularity::Month, "2030-01-01", "tomorrow"),
            "to_date",
        ),
    ] {
        let refused = analytics.flows(request).await;
        let status = assert_rejected(refused, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert!(status.message().contains(says), "{says}: {status:?}");
    }
    let churn = |stage: AccountState, within_days, no_recharge_days, page_size, token: &str| {
        proto::ChurnWarningsRequest {
            stage: stage as i32,
            within_days,
            no_recharge_days,
            page_size,
            page_token: token.into(),
            mask_msisdn: false,
        }
    };
    for (request, says) in [
        (churn(AccountState::Unspecified, 7, 0, 0, ""), "stage"),
        (churn(AccountState::Locked, 7, 0, 0, ""), "VALID or"),
        (churn(AccountState::Valid, 541, 0, 0, ""), "within_days"),
        (
            churn(AccountState::Valid, 7, 3651, 0, ""),
            "no_recharge_days",
        ),
        (churn(AccountState::Valid, 7, 0, 1001, ""), "page_size"),
        (churn(AccountState::Valid, 7, 0, 0, "garbage"), "page_token"),
    ] {
        let refused = analytics.churn_warnings(request).await;
        let status = assert_rejected(refused, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert!(status.message().contains(says), "{says}: {status:?}");
    }
    let cohorts = |from: &str, to: &str| proto::CohortsRequest {
        from_month: from.into(),
        to_month: to.into(),
    };
    for (request, says) in [
        (cohorts("2030-13", "2030-12"), "from_month"),
        (cohorts("2030-01", "2030-01-01"), "to_month"),
        (cohorts("2030-02", "2030-01"), "after to_month"),
        (cohorts("2010-01", "2030-01"), "120 months"),
    ] {
        let refused = analytics.cohorts(request).await;
        let status = assert_rejected(refused, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert!(status.message().contains(says), "{says}: {status:?}");
    }
    // The limits themselves are accepted: 1000 days, 120 months, page_size 1000.
    let widest = analytics
        .stage_composition(composition("2027-06-06", "2030-03-01"))
        .await
        .expect("1000 days");
    assert_eq!(widest.into_inner().days.len(), 1000);
    analytics
        .cohorts(cohorts("2020-04", "2030-03"))
        .await
        .expect("120 months");
    analytics
        .churn_warnings(churn(AccountState::Grace, 540, 3650, 1000, ""))
        .await
        .expect("the largest churn request");
    // Reports write nothing.
    assert_eq!(db.counts().await, before);
    server.stop().await;
}

async fn the_service_reports_serving_and_reflection_lists_it(server: TestServer) {
    let health = server
        .health()
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .expect("health of the analytics service")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let outbound = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let mut answers = ServerReflectionClient::new(server.channel())
        .server_reflection_info(outbound)
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers.next().await.expect("one answer").expect("answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list: {answer:?}");
    };
    assert!(
        list.service.iter().any(|s| s.name == SERVICE),
        "{SERVICE} missing from {list:?}"
    );
    server.stop().await;
}

/// `ocs-lifecycle report ARGS --server <server>`: exit code, stdout, stderr.
async fn report(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    let mut command = common::binary::ocs(std::env::temp_dir().as_path());
    command
        .arg("report")
        .args(args)
        .args(["--server", &format!("http://{}", server.addr)]);
    let output = tokio::task::spawn_blocking(move || common::binary::run(command))
        .await
        .expect("the binary ran");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A churn CSV line without its account_id (a UUID).
fn without_account_id<'a>(line: &[&'a str]) -> Vec<&'a str> {
    [&line[..1], &line[2..]].concat()
}

/// The CLI over the same population (figures as in the report tests above).
async fn the_report_commands_print_tables_json_and_csv(server: TestServer) {
    build_population(&server).await;

    // February 2030 as CSV: 1 activation (C), 2 entered GRACE (A, B), A won back by 1000 ONLINE.
    let (code, csv, stderr) = report(
        &server,
        &[
            "flows",
            "--period",
            "month",
            "--from",
            "2030-02-01",
            "--to",
            "2030-02-28",
            "--csv",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        [
            "first_day,last_day,activations,valid_to_grace,win_backs,grace_to_locked,\
             unlocks_to_valid,unlocks_to_grace,recycled_lock_expired,\
             recycled_unactivated_expired,reprovisioned,recharges,recharge_amount,\
             recharges_by_channel,entered_grace,won_back,still_in_grace,win_back_rate",
            "2030-02-01,2030-02-28,1,2,1,0,0,0,0,0,0,1,1000,ONLINE 1/1000,2,1,0,0.5000",
        ]
    );

    // The churn list for an SMS campaign: every page (one account each), masked, as CSV.
    let (code, csv, stderr) = report(
        &server,
        &[
            "churn",
            "--stage",
            "valid",
            "--within-days",
            "14",
            "--mask",
            "--page-size",
            "1",
            "--all",
            "--csv",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        lines[0],
        [
            "msisdn",
            "account_id",
            "state",
            "stage_ends",
            "days_left",
            "recharge_total",
            "recharge_count",
            "balance"
        ]
    );
    assert_eq!(lines.len(), 3, "{csv}");
    // G: 2000 + 800 recharged, nothing charged; F: 500.
    assert_eq!(
        without_account_id(&lines[1]),
        [
            "861******0007",
            "VALID",
            "2031-12-28",
            "8",
            "2800",
            "2",
            "2800"
        ]
    );
    assert_eq!(
        without_account_id(&lines[2]),
        [
            "861******0006",
            "VALID",
            "2031-12-31",
            "11",
            "500",
            "1",
            "500"
        ]
    );

    // January 2030's cohort as JSON.
    let (code, json, stderr) = report(
        &server,
        &["cohorts", "--from", "2030-01", "--to", "2030-01", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let document: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    let jan = &document["rows"][0];
    assert_eq!(jan["month"], "2030-01");
    assert_eq!(jan["accounts"], 2);
    assert_eq!(jan["active_180d"], "1/2");
    assert_eq!(jan["active_365d"], "0/2");
    assert_eq!(jan["arpu"], "2000.00");
    assert_eq!(jan["ltv_p90"], 3000);
    assert_eq!(document["timezone"], "Asia/Shanghai");

    // Composition now, as a table.
    let (code, table, stderr) = report(&server, &["composition"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "DATE",
            "UNACTIVATED",
            "VALID",
            "GRACE",
            "LOCKED",
            "RECYCLED"
        ]
    );
    assert_eq!(lines[1], ["now", "0", "2", "1", "0", "5"]);
    assert!(table.contains("today: 2031-12-20"), "{table}");

    // A request the server refuses: exit 2 (INVALID_ARGUMENT), one line on stderr.
    let (code, _, stderr) = report(
        &server,
        &["flows", "--from", "2030-02-02", "--to", "2030-02-01"],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("after to_date"), "{stderr}");
    server.stop().await;
}

/// No report waits for the write path: with a sweep batch of another store open on the same
/// database (SQLite: its write transaction; PostgreSQL: the claimed rows locked), every report
/// answers, from the read connections.
async fn reports_answer_while_a_sweep_batch_holds_the_write_path(server: TestServer) {
    use std::sync::Arc;
    use std::time::Duration;

    let mut api = Api::of(&server);
    on(&server, &mut api, "2030-01-10").await;
    activated(&mut api, A, 30).await;
    activated(&mut api, B, 30).await;
    // Both VALID through 2030-02-09, GRACE from 02-10: due, and no sweep has run since.
    server.set_time("2030-03-01T04:00:00Z").await;
    let rules = Arc::new(ocs_lifecycle::lifecycle::Rules::default());
    let store =
        ocs_lifecycle::store::connect(&server.database_url, 2, Duration::from_secs(5), rules)
            .await
            .expect("a second store on the database");
    let mut batch = store.begin_sweep_batch().await.expect("a sweep batch");
    let as_of = chrono::DateTime::parse_from_rfc3339("2030-03-01T04:00:00Z")
        .expect("instant")
        .with_timezone(&chrono::Utc);
    let claimed = batch.claim_due(as_of, 10).await.expect("claim");
    assert_eq!(claimed.len(), 2);

    // Safety bound only: a report stuck behind the batch would fail here, not be timed.
    let bound = Duration::from_secs(30);
    let mut analytics = LifecycleAnalyticsClient::new(server.channel());
    let now = tokio::time::timeout(
        bound,
        composition(&mut analytics, "2030-01-10", "2030-03-01"),
    )
    .await
    .expect("composition answers while the batch is open");
    // Effective states at now count the boundary the batch has not written yet.
    assert_eq!(now.now, Some(counts(0, 0, 2, 0, 0)));
    let flows = tokio::time::timeout(
        bound,
        analytics.flows(proto::FlowsRequest {
            granularity: Granularity::Month as i32,
            from_date: "2030-01-01".into(),
            to_date: "2030-03-01".into(),
        }),
    )
    .await
    .expect("flows answer while the batch is open")
    .expect("Flows");
    assert_eq!(flows.into_inner().periods[0].activations, 2);
    let churn = tokio::time::timeout(
        bound,
        analytics.churn_warnings(proto::ChurnWarningsRequest {
            stage: AccountState::Grace as i32,
            within_days: 90,
            ..Default::default()
        }),
    )
    .await
    .expect("churn answers while the batch is open")
    .expect("ChurnWarnings");
    assert_eq!(churn.into_inner().warnings.len(), 2);
    let cohorts = tokio::time::timeout(
        bound,
        analytics.cohorts(proto::CohortsRequest {
            from_month: "2030-01".into(),
            to_month: "2030-01".into(),
        }),
    )
    .await
    .expect("cohorts answer while the batch is open")
    .expect("Cohorts");
    assert_eq!(cohorts.into_inner().cohorts[0].accounts, 2);
    batch.rollback().await.expect("rollback");
    server.stop().await;
}

/// The sums kept with every commit (`history_totals`, `generation_values`) stop at i64::MAX
/// instead of failing the recharge that would take them past it: a second recharge of
/// i64::MAX in one quarter hour was refused as STORAGE_ERROR once (bigint out of range on
/// PostgreSQL, when it met the first one's totals row).
async fn sums_kept_beside_the_history_saturate_instead_of_failing_a_recharge(server: TestServer) {
    let (mut api, db) = Api::at_t0(&server).await;
    // More recharges than the server has connections: on PostgreSQL (a totals row per
    // connection) two of them add to one row whatever connections they take.
    for msisdn in [A, B, C, D, E, F] {
        api.active(msisdn).await;
        assert_eq!(api.recharge(msisdn, i64::MAX).await.balance_after, i64::MAX);
    }
    // One generation's recharges past i64::MAX in all.
    api.charge(A, i64::MAX).await;
    assert_eq!(api.recharge(A, i64::MAX).await.balance_after, i64::MAX);
    let most = |column: &str, table: &str| format!("SELECT MAX({column}) FROM {table}");
    assert_eq!(
        db.scalar(&most("amount_total", "history_totals")).await,
        i64::MAX
    );
    assert_eq!(
        db.scalar(&most("recharge_total", "generation_values"))
            .await,
        i64::MAX
    );
    assert_eq!(
        db.scalar("SELECT CAST(SUM(row_count) AS BIGINT) FROM history_totals WHERE code % 100000 / 10000 = 4")
            .await,
        7,
        "every recharge counted"
    );
    db.close().await;
}
