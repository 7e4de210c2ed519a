//! A time zone with daylight saving time end to end (America/New_York), on SQLite and
//! PostgreSQL, with the manual clock: validities that end on the day clocks spring forward
//! (2030-03-10, 02:00 → 03:00, a gap) and on the day they fall back (2030-11-03, 02:00 → 01:00, a
//! fold) end at that day's local midnight — 05:00Z under EST, 04:00Z under EDT — through
//! Activate, GetAccount, a sweep (AdvanceStates) one second before and at the boundary, and the
//! outbox event's `effective_at`. (Asia/Shanghai, the default, has no DST; the lifecycle core's
//! New York dates are fuzzed in tests/fuzz.rs.)

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::America::New_York;
use common::api::Api;
use common::{TestDb, TestServer};
use ocs_lifecycle::config::{ClockMode, Config};
use ocs_lifecycle::proto::{self, AccountState};

both_databases! {
    sqlite, postgres:
    validities_ending_on_dst_days_end_at_that_days_local_midnight,
}

/// (MSISDN, the day its validity ends after, that day's local midnight in UTC.)
const CASES: [(&str, &str, &str); 2] = [
    // Spring forward: midnight is still EST (UTC-5).
    ("8613800000601", "2030-03-10", "2030-03-10T05:00:00Z"),
    // Fall back: midnight is still EDT (UTC-4).
    ("8613800000602", "2030-11-03", "2030-11-03T04:00:00Z"),
];

fn date(text: &str) -> NaiveDate {
    text.parse().expect("a date")
}

fn instant(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().expect("an RFC 3339 instant")
}

/// Local noon of `day` in New York, as RFC 3339 UTC.
fn new_york_noon(day: NaiveDate) -> String {
    New_York
        .from_local_datetime(&day.and_time(NaiveTime::from_hms_opt(12, 0, 0).expect("noon")))
        .single()
        .expect("noon exists once")
        .with_timezone(&Utc)
        .to_rfc3339()
}

/// A real sweep at the server's current time: its count of VALID → GRACE.
async fn sweep_to_grace(server: &TestServer) -> u64 {
    server
        .accounts()
        .advance_states(proto::AdvanceStatesRequest {
            as_of: None,
            dry_run: false,
        })
        .await
        .expect("AdvanceStates")
        .into_inner()
        .to_grace
}

async fn validities_ending_on_dst_days_end_at_that_days_local_midnight(db: Arc<TestDb>) {
    let config = Config {
        timezone: "America/New_York".into(),
        ..common::test_config(ClockMode::Manual)
    };
    let server = TestServer::start_with(db, config).await;
    let check = server.db().await;
    let mut api = Api::of(&server);
    for (msisdn, boundary_day, boundary) in CASES {
        // Activated 180 days before its last valid day, at local noon.
        let last_valid_day = date(boundary_day) - Days::new(1);
        let activation_day = last_valid_day - Days::new(180);
        server.set_time(&new_york_noon(activation_day)).await;
        api.provision(msisdn).await;
        let activated = api.activate(msisdn).await;
        assert_eq!(
            activated.valid_until,
            last_valid_day.to_string(),
            "{msisdn}"
        );

        // One second before local midnight still VALID, the sweep moves nothing; at local
        // midnight GRACE, by the sweep.
        let boundary = instant(boundary);
        let before = boundary - chrono::Duration::seconds(1);
        for (at, to_grace, state) in [
            (before, 0, AccountState::Valid),
            (boundary, 1, AccountState::Grace),
        ] {
            server.set_time(&at.to_rfc3339()).await;
            assert_eq!(sweep_to_grace(&server).await, to_grace, "{msisdn} at {at}");
            assert_eq!(api.get(msisdn).await.state(), state, "{msisdn} at {at}");
        }
        // The event is effective at that instant.
        let events: Vec<_> = check
            .outbox()
            .await
            .into_iter()
            .filter(|e| e.msisdn == msisdn && e.to_state == AccountState::Grace as i32)
            .collect();
        assert_eq!(events.len(), 1, "{msisdn}: {events:?}");
        assert_eq!(events[0].effective_at, boundary, "{msisdn}");
        assert_eq!(events[0].reason, "VALIDITY_EXPIRED");
    }
    check.close().await;
    server.stop().await;
}
