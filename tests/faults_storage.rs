//! Storage faults with real processes and real databases (issue 7):
//!
//! - PostgreSQL unreachable during recharge load: the service reaches PostgreSQL through a TCP
//!   proxy in the test (`common::process::DbProxy`), which is cut (every connection dropped, new
//!   ones refused) and restored; the shared PostgreSQL server itself is never stopped.
//! - Storage not writable: the file-size limit of a running `serve` (`RLIMIT_FSIZE`, set with
//!   `prlimit`) is put to 0, so every `write(2)` to its database files fails with EFBIG as on
//!   a full disk — a mechanism that also stops root (the tests may run as root, where a
//!   read-only file mode does not), then lifted again; gRPC health and `/readyz` follow.
//! - PostgreSQL stopped for real (`pg_ctl stop -m fast`, then `-m immediate`) and started again
//!   under a real `serve` and recharge load: a private cluster of the test
//!   (`common::pg_cluster`), never the shared server.
//!
//! Crashes (SIGKILL of `serve`) are in tests/faults_crash.rs. No test asserts on elapsed time;
//! every wait has a generous safety bound.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::faults::{
    Load, SAFETY, assert_balances_acknowledged, assert_only_acknowledged_recharges,
    assert_recharges_applied_once, balance, integrity_check, open_sqlite, readyz, recharge,
    recharge_rows, serve, serve_sqlite, valid_account, valid_accounts, wait_until,
};
use common::pg_cluster::PgCluster;
use common::process::{DbProxy, Log, ServeCommand, Served, health_status};
use common::{Backend, TestDb, TestServer, reason, test_config};
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{GetAccountRequest, RechargeRequest};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Polls gRPC health until it reports `want` (bounded by [`SAFETY`]).
async fn wait_health(channel: &Channel, want: ServingStatus, what: &str) {
    let deadline = tokio::time::Instant::now() + SAFETY;
    while health_status(channel).await != Some(want as i32) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {want:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL unreachable: a cuttable TCP proxy.

/// The recharge load of these tests: a client per account on `channel`, retrying every 100 ms.
fn recharge_load(channel: &Channel, accounts: &[String]) -> Arc<Load> {
    Load::start(
        std::slice::from_ref(channel),
        accounts,
        1000,
        Duration::from_millis(100),
    )
}

/// While the database is down (`down` says how): `recharge` answers UNAVAILABLE
/// `STORAGE_UNAVAILABLE` and a read of `msisdn` UNAVAILABLE, never INTERNAL.
async fn assert_unavailable(
    client: &mut AccountLifecycleClient<Channel>,
    recharge: &RechargeRequest,
    msisdn: &str,
    down: &str,
) {
    let status = client
        .recharge(recharge.clone())
        .await
        .expect_err(&format!("no recharge can be applied while {down}"));
    assert_eq!(status.code(), Code::Unavailable, "{down}: {status:?}");
    assert_eq!(reason(&status), "STORAGE_UNAVAILABLE", "{status:?}");
    let status = client
        .get_account(GetAccountRequest {
            msisdn: msisdn.into(),
        })
        .await
        .expect_err(&format!("no read can be answered while {down}"));
    assert_eq!(status.code(), Code::Unavailable, "{down}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_during_recharges_answers_unavailable_and_retries_apply_once() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let proxy = DbProxy::start(&db.url).await;

    let mut config = test_config(ClockMode::Manual);
    config.http_addr = None;
    config.db_acquire_timeout_ms = 1000;
    config.database_url = proxy.url.clone();
    let server = TestServer::start_through(db.clone(), config).await;
    let channel = server.channel();
    let mut client = AccountLifecycleClient::new(channel.clone());

    let accounts = valid_accounts(&mut client, "861390000", 4).await;
    let load = recharge_load(&channel, &accounts);

    load.wait_for_acks(20, "no recharge was applied before the cut")
        .await;
    let unavailable_before = load.unavailable();
    proxy.cut();
    // While the database is unreachable: UNAVAILABLE (never INTERNAL), for reads and writes.
    let while_down = recharge(&accounts[0], 4321, "while-down");
    let unreachable = "PostgreSQL is unreachable";
    assert_unavailable(&mut client, &while_down, &accounts[1], unreachable).await;
    let acked_while_down = load.acked_count();
    // The outage lasts until the load's own clients have been refused too: they retry through
    // it (checked below with what was applied).
    load.wait_for_unavailable(unavailable_before + 1, "the load never saw the outage")
        .await;
    proxy.restore();

    // Recovered without a restart: the retried request applies once, the load goes on.
    let replayed = recharge_until_applied(&mut client, &while_down, String::new).await;
    assert!(
        !replayed,
        "the recharge refused while down was not applied then"
    );
    let replay = client
        .recharge(while_down.clone())
        .await
        .expect("replay")
        .into_inner();
    assert!(replay.replayed, "the same request_id again is a replay");
    load.wait_for_acks(acked_while_down + 20, "the load did not resume")
        .await;
    load.stop().await;
    eprintln!(
        "{} UNAVAILABLE answers to the load ({unavailable_before} before the cut); reasons: {:?}",
        load.unavailable(),
        load.reasons()
    );

    let mut acked = load.acked();
    acked.insert("while-down".into(), (accounts[0].clone(), 4321));
    let direct = db.open().await;
    assert_only_acknowledged_recharges(&direct, &acked, &accounts).await;
    assert_balances_acknowledged(&mut client, &acked, &accounts).await;
    direct.close().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Storage not writable: a file-size limit of 0 on a real `serve` process on SQLite.

/// Polls `/readyz` until it answers `want` (bounded by [`SAFETY`]).
async fn wait_readyz(http_addr: SocketAddr, want: u16, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let (status, body) = readyz(http_addr).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {want} ({what}); last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sets the file-size limit (soft:hard, `prlimit` syntax) of a running process.
fn set_file_size_limit(pid: u32, limit: &str) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--fsize={limit}"))
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --fsize={limit} failed: {status}");
}

/// Failed probe writes the test waits for while the storage stays not writable.
const PROBES_WHILE_FULL: usize = 3;

/// The failed probe writes in the server's log (`storage probe write failed`, one line each).
fn probe_failures(log: &str) -> usize {
    log.matches("storage probe write failed").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_storage_not_writable_answers_unavailable_and_health_recovers_after_a_probe() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = dir.path().join("ocs.db");
    let serve = ServeCommand {
        ignore_sigxfsz: true,
        http_addr: "127.0.0.1:0",
        ..serve_sqlite(dir.path(), &db_path)
    };
    let mut served = Served::spawn(&serve, Log::Collected);
    let channel = served.serving(SAFETY).await;
    let http_addr = served.http_addr();
    assert_eq!(readyz(http_addr).await.0, 200, "ready before the fault");
    let mut client = AccountLifecycleClient::new(channel.clone());
    let msisdn = "8613700000001";
    valid_account(&mut client, msisdn).await;
    client
        .recharge(recharge(msisdn, 5000, "before"))
        .await
        .expect("a recharge while the storage is writable");
    let pid = served.pid();

    // The disk is "full": no write of the process to a regular file succeeds.
    set_file_size_limit(pid, "0:unlimited");
    let full = recharge(msisdn, 3000, "while-full");
    let status = client
        .recharge(full.clone())
        .await
        .expect_err("a write cannot succeed while the storage is not writable");
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "{status:?}\n{}",
        served.log()
    );
    assert_eq!(reason(&status), "STORAGE_NOT_WRITABLE", "{status:?}");
    assert!(
        status.message().contains("cannot be written"),
        "a clear message: {status:?}"
    );
    wait_health(
        &channel,
        ServingStatus::NotServing,
        "after the failed write",
    )
    .await;
    // /readyz says so too, with the reason.
    let body = wait_readyz(http_addr, 503, "after the failed write").await;
    assert!(body.contains("cannot be written"), "{body}");
    // Reads still work and show nothing of the refused recharge.
    assert_eq!(balance(&mut client, msisdn).await, 5000);
    // The probe keeps failing while the limit holds: still NOT_SERVING after it has failed
    // PROBES_WHILE_FULL more times (each failure is a log line of the server).
    let failed_before = probe_failures(&served.log());
    wait_until(
        "the storage probe did not run again",
        Duration::from_millis(50),
        || served.log(),
        || probe_failures(&served.log()) >= failed_before + PROBES_WHILE_FULL,
    )
    .await;
    assert_eq!(
        health_status(&channel).await,
        Some(ServingStatus::NotServing as i32),
        "NOT_SERVING after {PROBES_WHILE_FULL} more failed probes"
    );
    assert_eq!(readyz(http_addr).await.0, 503, "still not writable");

    // Space again: the probe succeeds, health is SERVING, the retry applies once.
    set_file_size_limit(pid, "unlimited:unlimited");
    wait_health(
        &channel,
        ServingStatus::Serving,
        "after the limit was lifted",
    )
    .await;
    wait_readyz(http_addr, 200, "after the limit was lifted").await;
    let applied = client
        .recharge(full.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the retry after the storage came back: {e:?}\n{}",
                served.log()
            )
        })
        .into_inner();
    assert!(
        !applied.replayed,
        "the refused recharge had not been applied"
    );
    assert_eq!(balance(&mut client, msisdn).await, 8000);
    served.kill();

    assert_eq!(integrity_check(&db_path).await, "ok");
    let direct = open_sqlite(&db_path).await;
    let acked: BTreeMap<_, _> = [
        ("before".to_owned(), (msisdn.to_owned(), 5000)),
        ("while-full".to_owned(), (msisdn.to_owned(), 3000)),
    ]
    .into_iter()
    .collect();
    assert_recharges_applied_once(&direct, &acked, &[msisdn.to_owned()]).await;
    let ids: BTreeSet<String> = recharge_rows(&direct).await.into_keys().collect();
    assert_eq!(ids, acked.keys().cloned().collect());
    direct.close().await;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL stopped for real: a private cluster (`tests/common/pg_cluster.rs`).

/// Retries `request` (same request_id) until it is answered; UNAVAILABLE is the only error
/// accepted meanwhile. Returns whether the answer was a replay.
async fn recharge_until_applied(
    client: &mut AccountLifecycleClient<Channel>,
    request: &RechargeRequest,
    log: impl Fn() -> String,
) -> bool {
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        match client.recharge(request.clone()).await {
            Ok(result) => return result.into_inner().replayed,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} never applied: {status:?}\n{}",
                    request.request_id,
                    log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{}: {status:?}\n{}", request.request_id, log()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_stopped_and_restarted_during_recharges_answers_unavailable_and_recovers() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let cluster = Arc::new(cluster);
    let dir = tempfile::tempdir().expect("temporary directory");
    let serve = ServeCommand {
        http_addr: "127.0.0.1:0",
        ..serve(dir.path(), &cluster.url())
    }
    .with_env([("OCS_DB_ACQUIRE_TIMEOUT_MS", "1000")]);
    let mut served = Served::spawn(&serve, Log::Collected);
    let channel = served.serving(SAFETY).await;
    let http_addr = served.http_addr();
    let pid = served.pid();
    let mut client = AccountLifecycleClient::new(channel.clone());
    let accounts = valid_accounts(&mut client, "861360000", 4).await;
    let load = recharge_load(&channel, &accounts);

    // Recharged only by a request held in flight across each stop.
    let held = "8613600009999".to_owned();
    valid_account(&mut client, &held).await;
    let mut acked = BTreeMap::new();
    // `fast`: sessions are ended with 57P01 (admin shutdown), then the server is gone;
    // `immediate`: the postmaster kills its backends without a checkpoint, like a crash, and
    // the restart replays the WAL.
    for mode in ["fast", "immediate"] {
        let before = load.acked_count();
        load.wait_for_acks(before + 20, "the load did not progress")
            .await;
        let unavailable_before = load.unavailable();

        // A recharge whose transaction is inside PostgreSQL when it stops: it waits for the
        // lock of its account row, which the test holds.
        let mut locker = common::pg_transaction(&cluster.url()).await;
        sqlx::query("SELECT balance FROM accounts WHERE msisdn = $1 FOR UPDATE")
            .bind(&held)
            .fetch_one(&mut locker)
            .await
            .expect("lock the account row");
        let held_request = recharge(&held, 777, &format!("held-{mode}"));
        let in_flight = {
            let mut client = client.clone();
            let request = held_request.clone();
            tokio::spawn(async move { client.recharge(request).await })
        };
        let deadline = tokio::time::Instant::now() + SAFETY;
        loop {
            // pg_locks is read live (pg_stat_activity would be a snapshot frozen for the
            // transaction), and only a session blocked by this one counts: the load's own
            // recharges may wait for each other's rows.
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_locks WHERE NOT granted \
                 AND pg_backend_pid() = ANY(pg_blocking_pids(pid))",
            )
            .fetch_one(&mut locker)
            .await
            .expect("pg_stat_activity");
            if waiting > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the held recharge never reached PostgreSQL\n{}",
                served.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let stopping = cluster.clone();
        tokio::task::spawn_blocking(move || stopping.stop(mode))
            .await
            .expect("pg_ctl stop");
        drop(locker);
        let answer = tokio::time::timeout(SAFETY, in_flight)
            .await
            .expect("the held recharge was never answered")
            .expect("held recharge task");
        // Usually refused: its session was ended under it. It may also be answered OK: the
        // service retries a failed attempt, and the lock holder's session can end (releasing
        // the row) before the recharge's own session has acted on the shutdown signal, or the
        // retry can reach the restarted server. Either answer is right if it is the truth:
        // checked below by replaying the same request_id.
        let held_applied = match &answer {
            Ok(_) => true,
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::Unavailable,
                    "{mode}: {status:?}\n{}",
                    served.log()
                );
                false
            }
        };
        eprintln!("{mode}: the recharge in flight was answered {answer:?}");

        // Down: UNAVAILABLE for writes and reads, never INTERNAL; /readyz 503.
        let while_down = recharge(&accounts[0], 4321, &format!("while-down-{mode}"));
        let stopped = format!("PostgreSQL is stopped ({mode})");
        assert_unavailable(&mut client, &while_down, &accounts[1], &stopped).await;
        let (ready, body) = readyz(http_addr).await;
        assert_eq!(ready, 503, "{mode}: /readyz while stopped: {body}");
        let acked_while_down = load.acked_count();
        // Stopped until the load's own clients have been refused too.
        load.wait_for_unavailable(unavailable_before + 1, "the load never saw the outage")
            .await;

        let starting = cluster.clone();
        tokio::task::spawn_blocking(move || starting.restart())
            .await
            .expect("pg_ctl start");

        // The same process recovers: the refused recharge applies once, then is a replay.
        let replayed = recharge_until_applied(&mut client, &while_down, || served.log()).await;
        assert!(
            !replayed,
            "{mode}: the refused recharge was not applied then"
        );
        let replayed = recharge_until_applied(&mut client, &while_down, || served.log()).await;
        assert!(replayed, "{mode}: the same request_id again is a replay");
        acked.insert(while_down.request_id.clone(), (accounts[0].clone(), 4321));
        let replayed = recharge_until_applied(&mut client, &held_request, || served.log()).await;
        assert_eq!(
            replayed, held_applied,
            "{mode}: the held recharge is a replay exactly when it was acknowledged"
        );
        acked.insert(held_request.request_id.clone(), (held.clone(), 777));
        load.wait_for_acks(acked_while_down + 20, "the load did not resume")
            .await;
        wait_readyz(http_addr, 200, "after the restart").await;
        assert!(served.running(), "{mode}: serve must survive the outage");
        assert_eq!(served.pid(), pid);
    }
    load.stop().await;
    eprintln!(
        "{} UNAVAILABLE answers to the load; messages: {:#?}",
        load.unavailable(),
        load.unavailable_messages()
    );

    acked.extend(load.acked());
    let mut accounts = accounts;
    accounts.push(held);
    let direct = common::Db::Postgres(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&cluster.url())
            .await
            .expect("connect to the private cluster"),
    );
    assert_only_acknowledged_recharges(&direct, &acked, &accounts).await;
    assert_balances_acknowledged(&mut client, &acked, &accounts).await;
    direct.close().await;
    served.kill();
}
