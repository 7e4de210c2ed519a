use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use super::*;
use crate::lifecycle::{AccountState, HistoryKind, Msisdn, RechargeChannel, Rules};

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
        (local(&rules, day(2025, 3, 2), 0, 0), moved, 1),
        (local(&rules, day(2025, 3, 3), 23, 59), moved, 1),
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
    let group = |at, kind, generation, from, to: AccountState, rows, amount| RowGroup {
        at,
        kind,
        generation,
        from,
        to: Some(to),
        rows,
        amount,
    };
    let changed = HistoryKind::StateChanged;
    let rows = [
        group(
            jan(2),
            HistoryKind::Activated,
            1,
            Some(Unactivated),
            Valid,
            1,
            0,
        ),
        group(jan(3), HistoryKind::Provisioned, 2, None, Unactivated, 1, 0),
        // A first provisioning is no re-provisioning.
        group(jan(3), HistoryKind::Provisioned, 1, None, Unactivated, 4, 0),
        group(jan(4), changed, 1, Some(Valid), Grace, 1, 0),
        group(feb(4), changed, 1, Some(Grace), Locked, 1, 0),
        group(feb(5), HistoryKind::Unlock, 1, Some(Locked), Valid, 1, 3000),
        group(feb(6), HistoryKind::Unlock, 1, Some(Locked), Grace, 1, 0),
        group(feb(7), changed, 1, Some(Locked), Recycled, 1, 0),
        group(feb(8), changed, 1, Some(Unactivated), Recycled, 1, 0),
        // A win-back moves the MSISDN too, but counts from the recharges.
        group(
            jan(5),
            HistoryKind::Recharge,
            1,
            Some(Grace),
            Valid,
            1,
            1000,
        ),
        // Outside the periods: ignored.
        group(
            local(&rules, day(2025, 3, 1), 0, 0),
            HistoryKind::Activated,
            1,
            None,
            Valid,
            1,
            0,
        ),
    ];
    let recharge = |at, amount, channel, from, to| Recharge {
        at,
        count: 1,
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
    let entry = |at, end| GraceEntry { at, end, count: 1 };
    let entries = [
        entry(jan(4), GraceEnd::WonBack),
        entry(jan(9), GraceEnd::Locked),
        entry(jan(10), GraceEnd::Open),
        entry(feb(9), GraceEnd::Locked),
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
    let midnight = |d: NaiveDate| local(&rules, d, 0, 0);
    let jan = day(2025, 1, 1);
    // a: activated 2025-01-10, recharged 3000, VALID through 2025-02-15, GRACE from
    // 2025-02-16, LOCKED from 2025-05-17. b: activated 2025-01-31, recharged 1000 twice, once
    // by an unlock (LOCKED → VALID on 2025-02-02 12:00).
    let activations = [(day(2025, 1, 10), 1), (day(2025, 1, 31), 1)];
    let value = |total, recharges| CohortValue {
        month: jan,
        total,
        generations: 1,
        recharges,
    };
    let values = [value(3000, 1), value(2000, 2)];
    let locks = [
        LockHistory {
            activated_on: day(2025, 1, 10),
            rows: vec![(midnight(day(2025, 5, 17)), Locked)],
        },
        LockHistory {
            activated_on: day(2025, 1, 31),
            rows: vec![(local(&rules, day(2025, 2, 2), 12, 0), Valid)],
        },
    ];
    // Now: the end of 2025-03-02, so a (day 30 = 2025-02-09, ended) reached 30 days and b
    // (day 30 = 2025-03-02, ended at 00:00 of 03-03) too; nobody reached 90 days.
    let now = midnight(day(2025, 3, 3));
    let months = [day(2024, 12, 1), jan];
    let figures = cohort_figures(&months, &activations, &values, (&[], &locks), now, &rules);
    assert_eq!(figures[0].accounts, 0);
    let jan_figures = &figures[1];
    assert_eq!(jan_figures.accounts, 2);
    let r = &jan_figures.retention;
    assert_eq!((r[0].reached, r[0].active), (2, 2));
    assert_eq!((r[1].reached, r[1].share()), (0, 0.0));
    assert_eq!(
        (jan_figures.recharge_total, jan_figures.recharge_count),
        (5000, 3)
    );
    assert_eq!(jan_figures.arpu(), 2500.0);
    assert_eq!(jan_figures.recharges_per_account(), 1.5);
    // LTVs 2000 and 3000: the median is 2000, p90 and p99 3000.
    assert_eq!(
        (
            jan_figures.ltv_p50,
            jan_figures.ltv_p90,
            jan_figures.ltv_p99
        ),
        (2000, 3000, 3000)
    );

    // At 90 days both are active: a (2025-04-10) in GRACE, b (2025-05-01) VALID.
    let later = cohort_figures(
        &months[1..],
        &activations,
        &values,
        (&[], &locks),
        midnight(day(2026, 2, 1)),
        &rules,
    );
    let r = &later[0].retention;
    assert_eq!((r[1].reached, r[1].active), (2, 2));
    // Day 180 of a is 2025-07-09: LOCKED, not active; b left LOCKED before, still VALID.
    assert_eq!((r[2].reached, r[2].active), (2, 1));
    assert_eq!((r[3].reached, r[3].active, r[3].share()), (2, 1, 0.5));

    // a was never unlocked: counted per activation day instead (LOCKED at the end of its days
    // 180 and 365, not of 30 and 90), the same figures.
    let counted = [(day(2025, 1, 10), [0, 0, 1, 1])];
    let by_counts = cohort_figures(
        &months[1..],
        &activations,
        &values,
        (&counted, &locks[1..]),
        midnight(day(2026, 2, 1)),
        &rules,
    );
    assert_eq!(by_counts, later);
}

/// One history row for the value tests: `kind` with `amount` on `msisdn`'s generation 1.
fn value_row(
    msisdn: &str,
    generation: u32,
    kind: HistoryKind,
    amount: i64,
    at: DateTime<Utc>,
) -> crate::lifecycle::HistoryRecord {
    crate::lifecycle::HistoryRecord {
        id: 0,
        msisdn: Msisdn::parse(msisdn).unwrap(),
        account_id: format!("id-{msisdn}"),
        generation,
        at,
        kind,
        from_state: None,
        to_state: None,
        amount,
        actor: "test".into(),
        request_id: None,
        channel: None,
    }
}

#[test]
fn value_deltas_add_activations_and_recharges_per_generation() {
    let at = |d: u32| Utc.with_ymd_and_hms(2030, 1, d, 4, 0, 0).unwrap();
    let (a, b) = ("8613800000001", "8613800000002");
    let mut first = ValueDeltas::default();
    first.add(&[
        value_row(a, 1, HistoryKind::Activated, 0, at(10)),
        value_row(a, 1, HistoryKind::Recharge, 1000, at(12)),
        // A charge and an unlock without a recharge add nothing; an unlock with one does.
        value_row(a, 1, HistoryKind::Charge, 300, at(13)),
        value_row(b, 1, HistoryKind::Unlock, 0, at(13)),
        value_row(b, 1, HistoryKind::Unlock, 3000, at(14)),
    ]);
    // Added after: as a commit group adds each mutation's rows in turn.
    first.add(&[
        value_row(a, 1, HistoryKind::Recharge, 500, at(11)),
        value_row(a, 2, HistoryKind::Activated, 0, at(20)),
    ]);
    let rows: Vec<_> = first
        .iter()
        .map(|(m, g, d)| (m.to_owned(), g, *d))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                a.to_owned(),
                1,
                ValueDelta {
                    activated_at: Some(at(10)),
                    recharge_total: 1500,
                    recharge_count: 2,
                    last_recharge_at: Some(at(12)),
                    ..ValueDelta::default()
                }
            ),
            (
                a.to_owned(),
                2,
                ValueDelta {
                    activated_at: Some(at(20)),
                    ..ValueDelta::default()
                }
            ),
            (
                b.to_owned(),
                1,
                ValueDelta {
                    recharge_total: 3000,
                    recharge_count: 1,
                    last_recharge_at: Some(at(14)),
                    ..ValueDelta::default()
                }
            ),
        ]
    );
    let mut nothing = ValueDeltas::default();
    nothing.add(&[value_row(b, 1, HistoryKind::Charge, 100, at(15))]);
    assert!(nothing.is_empty());
}

/// A row of `kind` from `from` to `to` on `msisdn`'s generation 1.
fn moving_row(
    msisdn: &str,
    kind: HistoryKind,
    (from, to): (AccountState, AccountState),
    amount: i64,
    at: DateTime<Utc>,
) -> crate::lifecycle::HistoryRecord {
    crate::lifecycle::HistoryRecord {
        from_state: Some(from),
        to_state: Some(to),
        channel: (kind == HistoryKind::Recharge).then_some(RechargeChannel::Online),
        ..value_row(msisdn, 1, kind, amount, at)
    }
}

#[test]
fn value_deltas_total_moves_and_recharges_per_quarter_hour() {
    let at = |h: u32, m: u32, s: u32| Utc.with_ymd_and_hms(2030, 1, 10, h, m, s).unwrap();
    let a = "8613800000001";
    let mut deltas = ValueDeltas::default();
    deltas.add(&[
        moving_row(
            a,
            HistoryKind::Activated,
            (Unactivated, Valid),
            0,
            at(4, 0, 0),
        ),
        moving_row(
            a,
            HistoryKind::Recharge,
            (Valid, Valid),
            1000,
            at(4, 14, 59),
        ),
        moving_row(a, HistoryKind::Recharge, (Valid, Valid), 500, at(4, 15, 0)),
        // A charge neither moves the MSISDN nor recharges it.
        moving_row(a, HistoryKind::Charge, (Valid, Valid), 300, at(4, 15, 0)),
    ]);
    let slot = |h: u32, m: u32| at(h, m, 0).timestamp();
    // ONLINE is channel 4: 4·100000 + RECHARGE 4·10000 + priced 100 + VALID 2 to VALID 2.
    assert_eq!(
        deltas.totals().collect::<Vec<_>>(),
        vec![
            (slot(4, 0), 30_012, 1, 0),
            (slot(4, 0), 440_122, 1, 1000),
            (slot(4, 15), 440_122, 1, 500),
        ]
    );
    assert!(starts_slot(at(4, 15, 0)) && !starts_slot(at(4, 15, 1)));
}

#[test]
fn value_deltas_end_stays_in_grace_where_they_began() {
    let jan = |d: u32| Utc.with_ymd_and_hms(2030, 1, d, 16, 0, 0).unwrap();
    let (a, b, c, d) = (
        "8613800000001",
        "8613800000002",
        "8613800000003",
        "8613800000004",
    );
    let entry = |m: &str, at| moving_row(m, HistoryKind::StateChanged, (Valid, Grace), 0, at);
    let won = |m: &str, at| moving_row(m, HistoryKind::Recharge, (Grace, Valid), 1000, at);
    let locked = |m: &str, at| moving_row(m, HistoryKind::StateChanged, (Grace, Locked), 0, at);
    let mut first = ValueDeltas::default();
    first.add(&[
        // a: enters and is won back within the rows; then enters again (still open).
        entry(a, jan(1)),
        won(a, jan(2)),
        entry(a, jan(3)),
        // b and c leave a GRACE entered before these rows: the stored marks decide.
        locked(b, jan(4)),
        won(c, jan(4)),
        // d enters; the next rows (added below) win it back.
        entry(d, jan(5)),
    ]);
    // Added after: as a commit group adds each mutation's rows in turn.
    first.add(&[won(d, jan(6)), locked(a, jan(7))]);
    assert_eq!(
        first.stays_to_resolve().collect::<Vec<_>>(),
        vec![(b, 1), (c, 1)]
    );
    // b's stay began on Dec 20; c has no open stay (it came to GRACE by an unlock).
    let dec20 = Utc.with_ymd_and_hms(2029, 12, 20, 16, 0, 0).unwrap();
    first.resolve_stays(&[(b.to_owned(), 1, Some(dec20)), (c.to_owned(), 1, None)]);
    let (won_back, went_on) = (
        grace_end_code(GraceEnd::WonBack),
        grace_end_code(GraceEnd::Locked),
    );
    assert_eq!(
        first.grace_ends().collect::<Vec<_>>(),
        vec![
            (total_slot(dec20), went_on, 1),
            (total_slot(jan(1)), won_back, 1),
            (total_slot(jan(3)), went_on, 1),
            (total_slot(jan(5)), won_back, 1),
        ]
    );
    // Every stay touched is closed now.
    assert_eq!(
        first.grace_marks().collect::<Vec<_>>(),
        vec![(a, 1, None), (b, 1, None), (c, 1, None), (d, 1, None)]
    );
    assert_eq!(first.stays_to_resolve().count(), 0);
    let mut open = ValueDeltas::default();
    open.add(&[entry(a, jan(8))]);
    assert_eq!(
        open.grace_marks().collect::<Vec<_>>(),
        vec![(a, 1, Some(jan(8)))]
    );
}
