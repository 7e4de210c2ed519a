//! Helpers of the fault suites (tests/faults_storage.rs, tests/faults_crash.rs): accounts to
//! recharge, and the checks read directly from the database that no acknowledged recharge was
//! lost or applied twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{
    ActivateRequest, GetAccountRequest, ProvisionAccountRequest, RechargeChannel, RechargeRequest,
};
use sqlx::Connection;
use tonic::transport::Channel;

use super::Db;
use super::process::ServeCommand;

pub use super::binary::BIN;

/// Safety bound of every wait (a loaded 2-core machine); never an assertion on speed.
pub const SAFETY: Duration = Duration::from_secs(120);

pub const HISTORY_RECHARGE: i32 = ocs_lifecycle::proto::HistoryKind::Recharge as i32;

/// Provisions a sold card (request_id `p-<msisdn>`).
pub async fn provision_card(client: &mut AccountLifecycleClient<Channel>, msisdn: &str) {
    client
        .provision_account(ProvisionAccountRequest {
            msisdn: msisdn.into(),
            sold: true,
            request_id: format!("p-{msisdn}"),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("provision {msisdn}: {e:?}"));
}

/// Provisions a sold card and activates it, so it can be recharged.
pub async fn valid_account(client: &mut AccountLifecycleClient<Channel>, msisdn: &str) {
    provision_card(client, msisdn).await;
    client
        .activate(ActivateRequest {
            msisdn: msisdn.into(),
            request_id: format!("a-{msisdn}"),
        })
        .await
        .unwrap_or_else(|e| panic!("activate {msisdn}: {e:?}"));
}

pub fn recharge(msisdn: &str, amount: i64, request_id: &str) -> RechargeRequest {
    RechargeRequest {
        msisdn: msisdn.into(),
        amount,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: request_id.into(),
    }
}

pub async fn balance(client: &mut AccountLifecycleClient<Channel>, msisdn: &str) -> i64 {
    client
        .get_account(GetAccountRequest {
            msisdn: msisdn.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("get {msisdn}: {e:?}"))
        .into_inner()
        .balance
}

/// Per (msisdn, request_id): the RECHARGE history rows and their amounts, read directly.
pub async fn recharge_rows(db: &Db) -> BTreeMap<String, (String, i64, i64)> {
    let sql = format!(
        "SELECT request_id, msisdn, COUNT(*), CAST(SUM(amount) AS BIGINT) FROM account_history \
         WHERE kind = {HISTORY_RECHARGE} GROUP BY request_id, msisdn"
    );
    let rows: Vec<(String, String, i64, i64)> = db.rows(&sql).await;
    rows.into_iter()
        .map(|(id, msisdn, count, sum)| (id, (msisdn, count, sum)))
        .collect()
}

/// Every acknowledged recharge has exactly one history row with its amount, there is no row
/// of a recharge nobody asked for, and each balance is the sum of its account's recharges.
pub async fn assert_recharges_applied_once(
    db: &Db,
    acked: &BTreeMap<String, (String, i64)>,
    accounts: &[String],
) {
    let rows = recharge_rows(db).await;
    for (request_id, (msisdn, amount)) in acked {
        assert_eq!(
            rows.get(request_id),
            Some(&(msisdn.clone(), 1, *amount)),
            "acknowledged recharge {request_id} must have exactly one history row"
        );
    }
    for msisdn in accounts {
        let stored = db.account(msisdn).await.expect("account row");
        let history: i64 = rows
            .values()
            .filter(|(m, _, _)| m == msisdn)
            .map(|(_, _, sum)| sum)
            .sum();
        assert_eq!(
            stored.balance, history,
            "{msisdn}: balance = sum of its recharges"
        );
    }
}

/// `PRAGMA integrity_check` of the SQLite file, through a connection of its own.
pub async fn integrity_check(db: &Path) -> String {
    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open the SQLite file");
    let result: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .expect("integrity_check");
    conn.close().await.expect("close");
    result
}

pub async fn open_sqlite(db: &Path) -> Db {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(10));
    Db::Sqlite(
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("open the SQLite file"),
    )
}

/// `serve` of the tested `ocs-lifecycle` binary on `database_url`, run in `dir` (the defaults of
/// [`ServeCommand::new`]: a free port, the system clock, no operations endpoint).
pub fn serve(dir: &Path, database_url: &str) -> ServeCommand {
    ServeCommand::new(BIN, dir, database_url)
}

/// [`serve`] on the SQLite file `db`.
pub fn serve_sqlite(dir: &Path, db: &Path) -> ServeCommand {
    serve(dir, &format!("sqlite://{}", db.display()))
}

/// Polls `done` every `every` until it holds; past [`SAFETY`] panics with `what` and `log()`
/// (the server's log, say).
pub async fn wait_until(
    what: &str,
    every: Duration,
    log: impl Fn() -> String,
    mut done: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + SAFETY;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}\n{}", log());
        tokio::time::sleep(every).await;
    }
}

/// Waits for every worker, bounded by [`SAFETY`]: panics with `late` when one does not finish
/// and with `failed` when one panicked.
pub async fn join_workers(workers: Vec<tokio::task::JoinHandle<()>>, late: &str, failed: &str) {
    for worker in workers {
        tokio::time::timeout(SAFETY, worker)
            .await
            .expect(late)
            .expect(failed);
    }
}
