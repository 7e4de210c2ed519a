use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use super::*;
use crate::lifecycle::{AccountState, HistoryKind, HistoryRecord, Msisdn, RechargeChannel, Rules};

use AccountState::{Grace, Locked, Recycled, Unactivated, Valid};

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// `h:mm` local (Asia/Shanghai, the default zone) on a day.
fn local(rules: &Rules, date: NaiveDate, hour: u32, minute: u32) -> DateTime<Utc> {
    rules
        .timezone
        .from_local_datetime(&date.and_hms_opt(hour, minute, 0).unwrap())
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

fn row(
    msisdn: &str,
    generation: u32,
    at: DateTime<Utc>,
    kind: HistoryKind,
    from: Option<AccountState>,
    to: AccountState,
    amount: i64,
) -> HistoryRecord {
    HistoryRecord {
        id: 0,
        msisdn: Msisdn::parse(msisdn).unwrap(),
        account_id: format!("{msisdn}-{generation}"),
        generation,
        at,
        kind,
        from_state: from,
        to_state: Some(to),
        amount,
        actor: "test".into(),
        request_id: None,
    }
}

#[test]
fn weeks_start_on_monday_and_months_on_the_first() {
    // 2026-12-02 is a Wednesday.
    let week = Period::containing(day(2026, 12, 2), Granularity::Week);
    assert_eq!(
        (week.first, week.last),
        (day(2026, 11, 30), day(2026, 12, 6))
    );
    let month = Period::containing(day(2024, 2, 17), Granularity::Month);
    assert_eq!(
        (month.first, month.last),
        (day(2024, 2, 1), day(2024, 2, 29))
    );
    let one = Period::containing(day(2024, 2, 17), Granularity::Day);
    assert_eq!((one.first, one.last), (day(2024, 2, 17), day(2024, 2, 17)));
}

#[test]
fn a_range_is_covered_by_whole_periods() {
    let months = periods(day(2025, 1, 15), day(2025, 3, 2), Granularity::Month, 100).unwrap();
    let firsts: Vec<_> = months.iter().map(|p| p.first).collect();
    assert_eq!(firsts, [day(2025, 1, 1), day(2025, 2, 1), day(2025, 3, 1)]);
    assert_eq!(months[2].last, day(2025, 3, 31));
    let weeks = periods(day(2026, 12, 6), day(2026, 12, 7), Granularity::Week, 100).unwrap();
    assert_eq!(weeks.len(), 2, "Sunday and the next Monday are two weeks");
    let days = periods(day(2025, 1, 1), day(2025, 12, 31), Granularity::Day, 1000).unwrap();
    assert_eq!(days.len(), 365);
    assert!(periods(day(2025, 1, 1), day(2025, 12, 31), Granularity::Day, 364).is_none());
}

#[test]
fn dates_and_months_are_parsed_strictly() {
    assert_eq!(parse_date("2025-03-01"), Some(day(2025, 3, 1)));
    for bad in ["2025-3-1", "2025-02-30", "", "2025-03-01T00:00"] {
        assert_eq!(parse_date(bad), None, "{bad}");
    }
    assert_eq!(parse_month("2025-03"), Some(day(2025, 3, 1)));
    for bad in ["2025-13", "2025-3", "2025-03-01"] {
        assert_eq!(parse_month(bad), None, "{bad}");
    }
}

#[test]
fn a_masked_msisdn_keeps_its_first_three_and_last_four_digits() {
    assert_eq!(mask_msisdn("8613800138000"), "861******8000");
    assert_eq!(mask_msisdn("12345678"), "123*5678");
}

#[test]
fn percentiles_are_by_nearest_rank() {
    let values: Vec<i64> = (1..=10).map(|v| v * 100).collect();
    assert_eq!(percentile(&values, 50), 500);
    assert_eq!(percentile(&values, 90), 900);
    assert_eq!(percentile(&values, 99), 1000);
    assert_eq!(percentile(&[7], 50), 7);
    assert_eq!(percentile(&[], 50), 0);
}

#[test]
fn provisioning_adds_an_msisdn_and_a_reprovisioning_takes_it_out_of_recycled() {
    let p = HistoryKind::Provisioned;
    assert_eq!(
        state_move(p, 1, None, Some(Unactivated)),
        Some(StateMove {
            from: None,
            to: Unactivated
        })
    );
    assert_eq!(
        state_move(p, 2, None, Some(Unactivated)),
        Some(StateMove {
            from: Some(Recycled),
            to: Unactivated
        })
    );
    assert_eq!(
        state_move(HistoryKind::Recharge, 1, Some(Valid), Some(Valid)),
        None
    );
    assert_eq!(
        state_move(HistoryKind::Recharge, 1, Some(Grace), Some(Valid)),
        Some(StateMove {
            from: Some(Grace),
            to: Valid
        })
    );
}

#[test]
fn a_move_counts_from_the_local_day_that_contains_it() {
    let rules = Rules::default();
    let moved = StateMove {
        from: Some(Valid),
        to: Grace,
    };
    let mut start = StageCounts::default();
    start.add(Valid, 2);
    // 00:00 local of 2025-03-02 is 16:00 UTC of 2025-03-01: it belongs to 2025-03-02.
    let moves = [
        (local(&rules, day(2025, 3, 2), 0, 0), moved),
        (local(&rules, day(2025, 3, 3), 23, 59), moved),
    ];
    let days = [day(2025, 3, 1), day(2025, 3, 2), day(2025, 3, 3)];
    let counts = daily_composition(start, &moves, &days, &rules);
    let valid_grace: Vec<_> = counts
        .iter()
        .map(|c| (c.get(Valid), c.get(Grace)))
        .collect();
    assert_eq!(valid_grace, [(2, 0), (1, 1), (0, 2)]);
    assert!(counts.iter().all(|c| c.total() == 2));
}

#[test]
fn flows_count_each_row_in_its_period_and_the_win_back_rate_in_the_entry_period() {
    let rules = Rules::default();
    let periods = periods(day(2025, 1, 1), day(2025, 2, 28), Granularity::Month, 10).unwrap();
    let jan = |d| local(&rules, day(2025, 1, d), 10, 0);
    let feb = |d| local(&rules, day(2025, 2, d), 10, 0);
    let a = "8613800000001";
    let rows = [
        row(
            a,
            1,
            jan(2),
            HistoryKind::Activated,
            Some(Unactivated),
            Valid,
            0,
        ),
        row(a, 2, jan(3), HistoryKind::Provisioned, None, Unactivated, 0),
        row(
            a,
            1,
            jan(4),
            HistoryKind::StateChanged,
            Some(Valid),
            Grace,
            0,
        ),
        row(
            a,
            1,
            feb(4),
            HistoryKind::StateChanged,
            Some(Grace),
            Locked,
            0,
        ),
        row(a, 1, feb(5), HistoryKind::Unlock, Some(Locked), Valid, 3000),
        row(a, 1, feb(6), HistoryKind::Unlock, Some(Locked), Grace, 0),
        row(
            a,
            1,
            feb(7),
            HistoryKind::StateChanged,
            Some(Locked),
            Recycled,
            0,
        ),
        row(
            a,
            1,
            feb(8),
            HistoryKind::StateChanged,
            Some(Unactivated),
            Recycled,
            0,
        ),
        // Outside the periods: ignored.
        row(
            a,
            1,
            local(&rules, day(2025, 3, 1), 0, 0),
            HistoryKind::Activated,
            None,
            Valid,
            0,
        ),
    ];
    let recharge = |at, amount, channel, from, to| Recharge {
        at,
        amount,
        channel,
        from: Some(from),
        to: Some(to),
    };
    let recharges = [
        recharge(jan(5), 1000, Some(RechargeChannel::Bank), Grace, Valid),
        recharge(jan(6), 500, Some(RechargeChannel::Bank), Valid, Valid),
        recharge(feb(1), 700, None, Unactivated, Unactivated),
    ];
    let entries = [
        GraceEntry {
            at: jan(4),
            end: GraceEnd::WonBack,
        },
        GraceEntry {
            at: jan(9),
            end: GraceEnd::Locked,
        },
        GraceEntry {
            at: jan(10),
            end: GraceEnd::Open,
        },
        GraceEntry {
            at: feb(9),
            end: GraceEnd::Locked,
        },
    ];
    let flows = tally_flows(&periods, &rows, &recharges, &entries, &rules);
    let (j, f) = (&flows[0], &flows[1]);
    assert_eq!(
        (j.activations, j.reprovisioned, j.valid_to_grace),
        (1, 1, 1)
    );
    assert_eq!(j.win_backs, 1);
    assert_eq!(j.recharges[&(RechargeChannel::Bank as i32)], (2, 1500));
    assert_eq!((j.entered_grace, j.won_back, j.still_in_grace), (3, 1, 1));
    assert!((j.win_back_rate() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(
        (f.grace_to_locked, f.unlocks_to_valid, f.unlocks_to_grace),
        (1, 1, 1)
    );
    assert_eq!(
        (f.recycled_lock_expired, f.recycled_unactivated_expired),
        (1, 1)
    );
    assert_eq!(f.activations, 0);
    assert_eq!(f.recharges[&0], (1, 700));
    // The unlock's recharge is a business-hall recharge, and no win-back.
    assert_eq!(
        f.recharges[&(RechargeChannel::BusinessHall as i32)],
        (1, 3000)
    );
    assert_eq!(f.win_backs, 0);
    assert_eq!(
        (f.entered_grace, f.won_back, f.win_back_rate()),
        (1, 0, 0.0)
    );
}

#[test]
fn cohort_retention_counts_only_accounts_that_reached_the_age() {
    let rules = Rules::default();
    let at = |d: NaiveDate| local(&rules, d, 12, 0);
    let midnight = |d: NaiveDate| local(&rules, d, 0, 0);
    let (a, b) = ("8613800000001", "8613800000002");
    let rows = [
        // a: activated 2025-01-10, VALID through 2025-02-15, GRACE from 2025-02-16.
        row(
            a,
            1,
            at(day(2025, 1, 1)),
            HistoryKind::Provisioned,
            None,
            Unactivated,
            0,
        ),
        row(
            a,
            1,
            at(day(2025, 1, 10)),
            HistoryKind::Activated,
            Some(Unactivated),
            Valid,
            0,
        ),
        row(
            a,
            1,
            at(day(2025, 1, 20)),
            HistoryKind::Recharge,
            Some(Valid),
            Valid,
            3000,
        ),
        row(
            a,
            1,
            midnight(day(2025, 2, 16)),
            HistoryKind::StateChanged,
            Some(Valid),
            Grace,
            0,
        ),
        row(
            a,
            1,
            midnight(day(2025, 5, 17)),
            HistoryKind::StateChanged,
            Some(Grace),
            Locked,
            0,
        ),
        // b: activated 2025-01-31, recharged 1000 twice, once by unlock.
        row(
            b,
            1,
            at(day(2025, 1, 31)),
            HistoryKind::Activated,
            Some(Unactivated),
            Valid,
            0,
        ),
        row(
            b,
            1,
            at(day(2025, 2, 1)),
            HistoryKind::Recharge,
            Some(Valid),
            Valid,
            1000,
        ),
        row(
            b,
            1,
            at(day(2025, 2, 2)),
            HistoryKind::Unlock,
            Some(Locked),
            Valid,
            1000,
        ),
    ];
    // Now: the end of 2025-03-02, so a (day 30 = 2025-02-09, ended) reached 30 days and b
    // (day 30 = 2025-03-02, ended at 00:00 of 03-03) too; nobody reached 90 days.
    let now = midnight(day(2025, 3, 3));
    let months = [day(2024, 12, 1), day(2025, 1, 1)];
    let figures = cohort_figures(&rows, &months, now, &rules);
    assert_eq!(figures[0].accounts, 0);
    let jan = &figures[1];
    assert_eq!(jan.accounts, 2);
    assert_eq!((jan.retention[0].reached, jan.retention[0].active), (2, 2));
    assert_eq!(
        (jan.retention[1].reached, jan.retention[1].share()),
        (0, 0.0)
    );
    assert_eq!((jan.recharge_total, jan.recharge_count), (5000, 3));
    assert_eq!(jan.arpu(), 2500.0);
    assert_eq!(jan.recharges_per_account(), 1.5);
    // LTVs 2000 and 3000: the median is 2000, p90 and p99 3000.
    assert_eq!((jan.ltv_p50, jan.ltv_p90, jan.ltv_p99), (2000, 3000, 3000));

    // At 90 days both are active: a (2025-04-10) in GRACE, b (2025-05-01) VALID.
    let later = cohort_figures(&rows, &months[1..], midnight(day(2026, 2, 1)), &rules);
    let r = &later[0].retention;
    assert_eq!((r[1].reached, r[1].active), (2, 2));
    // Day 180 of a is 2025-07-09: LOCKED, not active; b has no boundary rows, still VALID.
    assert_eq!((r[2].reached, r[2].active), (2, 1));
    assert_eq!((r[3].reached, r[3].active, r[3].share()), (2, 1, 0.5));
}

#[test]
fn a_recharge_channel_is_read_back_from_its_request_fingerprint() {
    use crate::lifecycle::{Amount, Command, recharge_channel_of};
    let amount = Amount::parse("amount", 5000).unwrap();
    let msisdn = Msisdn::parse("8613800138000").unwrap();
    for channel in [
        RechargeChannel::Card10011,
        RechargeChannel::Bank,
        RechargeChannel::BusinessHall,
        RechargeChannel::Online,
    ] {
        let recharge = Command::Recharge {
            amount,
            channel,
            validity_days: 30,
        };
        assert_eq!(
            recharge_channel_of(&recharge.fingerprint(&msisdn)),
            Some(channel)
        );
    }
    let charge = Command::Charge { amount };
    assert_eq!(recharge_channel_of(&charge.fingerprint(&msisdn)), None);
    assert_eq!(recharge_channel_of("Recharge|x|1|9|0"), None);
}
