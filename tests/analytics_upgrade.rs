//! The analytics' migrations on a database that already holds history (the upgrade of a
//! running installation), on SQLite and PostgreSQL: what 0008, 0009 and 0010 fill in from the
//! rows written before them, checked against figures worked out by hand.

// This suite opens stores, not servers: `both_backends!` is not used.
#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::{Backend, TestDb};
use ocs_lifecycle::lifecycle::Rules;

both_databases! {
    upgrade_sqlite, upgrade_postgres: migrations_0008_to_0010_fill_in_a_database_with_data,
}

const A: &str = "8613800000001";
const B: &str = "8613800000002";

/// Migrations 0008, 0009 and 0010 on a database with history: every RECHARGE row takes its
/// request's channel (none without a key), every activated or recharged generation its
/// `generation_values` row, every row that moves an MSISDN or recharges it its quarter hour's
/// `history_totals` row, every generation its first lock and unlock marks; the dashboard's
/// recharge count reads the totals afterwards.
async fn migrations_0008_to_0010_fill_in_a_database_with_data(db: Arc<TestDb>) {
    let postgres = db.backend == Backend::Postgres;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(if postgres {
        "migrations/postgres"
    } else {
        "migrations/sqlite"
    });
    let mut migrator = sqlx::migrate::Migrator::new(dir).await.expect("migrations");
    migrator.migrations.to_mut().retain(|m| m.version < 8);
    if postgres {
        let pool = sqlx::PgPool::connect(&db.url).await.expect("pg");
        migrator.run(&pool).await.expect("0001-0007");
        pool.close().await;
    } else {
        let options = db
            .url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .expect("url")
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("sqlite");
        migrator.run(&pool).await.expect("0001-0007");
        pool.close().await;
    }
    let raw = db.open_for_writing().await;
    let row = |msisdn: &str, at: &str, kind: i32, from: &str, to: i32, amount: i64, id: &str| {
        format!(
            "INSERT INTO account_history (msisdn, account_id, generation, at, kind, from_state, \
             to_state, amount, actor, request_id) VALUES ('{msisdn}', 'id-{msisdn}', 1, \
             '{at}T04:00:00+00:00', {kind}, {from}, {to}, {amount}, 'test', {id})"
        )
    };
    for sql in [
        row(A, "2030-01-05", 1, "NULL", 1, 0, "'p1'"),
        row(A, "2030-01-10", 3, "1", 2, 0, "'a1'"),
        row(A, "2030-01-20", 4, "2", 2, 1000, "'r1'"),
        row(A, "2030-02-01", 4, "2", 2, 2000, "'r2'"),
        row(A, "2030-02-02", 5, "2", 2, 300, "'c1'"),
        row(A, "2030-03-01", 7, "2", 3, 0, "NULL"),
        row(A, "2030-03-02", 4, "3", 2, 500, "'r3'"),
        row(A, "2030-06-01", 6, "4", 2, 3000, "'u1'"),
        row(B, "2030-01-05", 1, "NULL", 1, 0, "'p2'"),
        row(B, "2030-01-06", 4, "1", 1, 700, "'r4'"),
    ] {
        raw.execute(&sql).await;
    }
    // r3 has no idempotency key (its channel is not known).
    for (id, fingerprint) in [
        ("r1", format!("Recharge|{A}|1000|4|30")),
        ("r2", format!("Recharge|{A}|2000|2|30")),
        ("u1", format!("Unlock|{A}|op1|hall-1|3000")),
        ("r4", format!("Recharge|{B}|700|1|0")),
    ] {
        raw.execute(&format!(
            "INSERT INTO idempotency_keys (request_id, fingerprint, response, created_at) \
             VALUES ('{id}', '{fingerprint}', {}, '2030-01-01T00:00:00+00:00')",
            if postgres { "'\\x00'" } else { "X'00'" }
        ))
        .await;
    }
    let rules = Arc::new(Rules::default());
    let store = ocs_lifecycle::store::connect(&db.url, 2, std::time::Duration::from_secs(5), rules)
        .await
        .expect("store");
    store.migrate().await.expect("0008 on a database with data");
    let channel = |id: &str| {
        format!(
            "SELECT CAST(COALESCE(channel, 0) AS BIGINT) FROM account_history \
             WHERE request_id = '{id}'"
        )
    };
    assert_eq!(raw.scalar(&channel("r1")).await, 4);
    assert_eq!(raw.scalar(&channel("r2")).await, 2);
    assert_eq!(raw.scalar(&channel("r3")).await, 0);
    assert_eq!(raw.scalar(&channel("r4")).await, 1);
    assert_eq!(
        raw.scalar("SELECT COUNT(*) FROM account_history WHERE channel IS NOT NULL")
            .await,
        3
    );
    let value = |msisdn: &str| {
        format!(
            "SELECT recharge_total * 1000 + recharge_count FROM generation_values \
             WHERE msisdn = '{msisdn}' AND generation = 1"
        )
    };
    // A: 1000 + 2000 + 500 + the unlock's 3000; the charge is no recharge. B: 700.
    assert_eq!(raw.scalar(&value(A)).await, 6_500_004);
    assert_eq!(raw.scalar(&value(B)).await, 700_001);
    assert_eq!(
        raw.scalar(&format!(
            "SELECT COUNT(*) FROM generation_values WHERE msisdn = '{A}' \
             AND activated_at = '2030-01-10T04:00:00+00:00' \
             AND last_recharge_at = '2030-06-01T04:00:00+00:00'"
        ))
        .await,
        1
    );

    let instant = |s: &str| s.parse::<DateTime<Utc>>().expect("instant");
    // 0009: A's and B's provisionings share 2030-01-05 04:00Z (code 10001: PROVISIONED from
    // none to UNACTIVATED); the charge counts nowhere; eight slot-and-code rows for nine rows.
    let total = |day: &str, code: i64| {
        let slot = instant(&format!("{day}T04:00:00Z")).timestamp();
        format!(
            "SELECT row_count * 1000000 + amount_total FROM history_totals \
             WHERE slot = {slot} AND code = {code}"
        )
    };
    assert_eq!(raw.scalar(&total("2030-01-05", 10_001)).await, 2_000_000);
    // r1: channel 4, RECHARGE, priced, VALID to VALID; r3 without a channel; the unlock's 3000.
    assert_eq!(raw.scalar(&total("2030-01-20", 440_122)).await, 1_001_000);
    assert_eq!(raw.scalar(&total("2030-03-02", 40_132)).await, 1_000_500);
    assert_eq!(raw.scalar(&total("2030-06-01", 60_142)).await, 1_003_000);
    assert_eq!(raw.count("history_totals").await, 8);
    assert_eq!(
        raw.scalar("SELECT CAST(SUM(row_count) AS BIGINT) FROM history_totals")
            .await,
        9
    );
    // A's stay in GRACE from 2030-03-01 ended with r3, a RECHARGE: won back (1); none open.
    let march = instant("2030-03-01T04:00:00Z").timestamp();
    assert_eq!(
        raw.scalar(&format!(
            "SELECT CAST(SUM(stays) AS BIGINT) FROM grace_ends WHERE slot = {march} AND ended = 1"
        ))
        .await,
        1
    );
    // 0010: A's unlock (u1, LOCKED to VALID) marks it; no row locked or recycled either.
    let marks = |msisdn: &str| {
        format!(
            "SELECT CAST(unlocked * 10 + CASE WHEN first_out_at IS NULL THEN 0 ELSE 1 END \
             AS BIGINT) FROM generation_values WHERE msisdn = '{msisdn}' AND generation = 1"
        )
    };
    assert_eq!(raw.scalar(&marks(A)).await, 10);
    assert_eq!(raw.scalar(&marks(B)).await, 0);
    raw.assert_totals_match_history("0009 and 0010 on rows written before them")
        .await;
    // January 2030 in whole days (the totals), and from one second past midnight (the rows).
    for (from, until) in [
        ("2030-01-01T00:00:00Z", "2030-02-01T00:00:00Z"),
        ("2030-01-01T00:00:01Z", "2030-02-01T00:00:01Z"),
    ] {
        let january = store
            .recharge_totals(instant(from), instant(until))
            .await
            .expect("recharge totals");
        assert_eq!((january.count, january.amount), (2, 1700), "{from}");
    }
}
