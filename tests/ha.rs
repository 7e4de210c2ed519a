//! High availability on PostgreSQL (issue 14): a real primary and a streaming standby, built by
//! the test from Debian's binaries (`common::pg_cluster`: initdb, `pg_basebackup -R`, pg_ctl,
//! run as the `postgres` user when the test is root) on free ports in temporary directories.
//!
//! One real `ocs-lifecycle serve` process is started once with the multi-host URL
//! `postgres://…@127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write`. Under
//! recharge load from 8 clients that retry each recharge with its request_id until it is
//! answered, with a sweep and the webhook worker running, the primary is killed (SIGKILL to the
//! postmaster and all its processes), then the standby is promoted (`pg_ctl promote`).
//!
//! Skipped visibly (`SKIPPED` on stderr) without the PostgreSQL binaries, unless `CI=true`,
//! where it fails. The figures it prints (unavailability window, throughput with and without a
//! synchronous standby) are reported in BENCHMARKS.md, never asserted: every wait has a
//! generous safety bound only.

#[allow(unused_macros)]
#[macro_use]
mod common;
#[allow(dead_code)]
#[path = "webhook/hook.rs"]
mod hook;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Db;
use common::faults::{
    Load, SAFETY, assert_only_acknowledged_recharges, provision_cards, readyz, recharge, serve,
    set_time, valid_accounts, webhook_env,
};
use common::pg_auto_failover::PgAutoFailover;
use common::pg_cluster::PgCluster;
use common::process::{Log, ServeCommand, Served, health_status, strip_ansi};
use common::reason;
use hook::Hook;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{AdvanceStatesRequest, GetAccountRequest};
use sqlx::Connection;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Clients recharging, one account each.
const CLIENTS: usize = 8;
/// Unactivated cards the sweep recycles across the failover (two webhook events each).
const CARDS: usize = 400;
/// Provisioned at `CARD_T0`, unactivated cards die after 540 days: recycled at `CARD_T1`.
const CARD_T0: &str = "2030-03-01T02:00:00Z";
const CARD_T1: &str = "2031-09-01T02:00:00Z";
/// In the URL, to check that no log line shows it (trust authentication ignores it).
const PASSWORD: &str = "ha-secret-do-not-log";

const HISTORY_STATE_CHANGED: i32 = ocs_lifecycle::proto::HistoryKind::StateChanged as i32;
const STATE_RECYCLED: i32 = ocs_lifecycle::proto::AccountState::Recycled as i32;

/// How long each of the four throughput phases (asynchronous, synchronous standby, twice)
/// runs; longer with `OCS_HA_THROUGHPUT_SECS` for the figure in BENCHMARKS.md.
fn throughput_window() -> Duration {
    let secs = std::env::var("OCS_HA_THROUGHPUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

// ---------------------------------------------------------------------------------------------
// The service: one real `serve` process.

/// One `serve` process of a test, how it is reached, and the pid it started with.
struct Instance {
    served: Served,
    channel: Channel,
    http_addr: SocketAddr,
    pid: u32,
}

impl Instance {
    /// `serve` on `database_url` with the manual clock, the operations endpoint on an ephemeral
    /// port, and `env` (every other `OCS_*` variable of the test is removed), once SERVING; its
    /// log is collected.
    async fn start(dir: &Path, database_url: &str, env: &[(&str, String)]) -> Instance {
        let command = ServeCommand {
            clock: "manual",
            http_addr: "127.0.0.1:0",
            ..serve(dir, database_url)
        }
        .with_env(env.iter().cloned());
        let mut served = Served::spawn(&command, Log::Collected);
        let channel = served.serving(SAFETY).await;
        let http_addr = served.http_addr();
        let pid = served.pid();
        Instance {
            served,
            channel,
            http_addr,
            pid,
        }
    }

    /// Polls gRPC health until it reports `want`; the moment it did.
    async fn wait_health(&self, want: ServingStatus, what: &str) -> Instant {
        let deadline = tokio::time::Instant::now() + SAFETY;
        loop {
            if health_status(&self.channel).await == Some(want as i32) {
                return Instant::now();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "health never became {want:?}: {what}\n{}",
                self.served.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `GET /readyz`: (status code, body).
    async fn readyz(&self) -> (u16, String) {
        readyz(self.http_addr).await
    }

    /// The process that started is still running (`what` names it).
    fn assert_survived(&mut self, what: &str) {
        assert!(self.served.running(), "{what} must survive the failover");
        assert_eq!(
            self.served.pid(),
            self.pid,
            "{what}: the same process, never restarted"
        );
    }

    /// The failover as the log and `/metrics` show it; never the password.
    async fn assert_operator_sees_the_failover(&self) {
        let metrics = reqwest::get(format!("http://{}/metrics", self.http_addr))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        for line in [
            "ocs_storage_primary_found 1",
            "ocs_storage_primary_lost_total 1",
        ] {
            assert!(
                metrics.contains(line),
                "no {line:?} in /metrics:\n{metrics}"
            );
        }
        let log = strip_ansi(&self.served.log());
        for line in ["database primary lost", "database primary found"] {
            assert!(log.contains(line), "no {line:?} in the log:\n{log}");
        }
        assert!(
            !log.contains(PASSWORD),
            "the password is in the log:\n{log}"
        );
        let failover: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("pg_failover:") || l.contains("health follows"))
            .collect();
        eprintln!(
            "the failover in the log of {}:\n{}",
            self.served.addr,
            failover.join("\n")
        );
    }
}

/// Waits until both instances report `want` (`what`: after what); the moment the first did.
async fn wait_both(instances: [&Instance; 2], want: ServingStatus, what: &str) -> Instant {
    let at = instances[0].wait_health(want, what).await;
    let second = format!("the second instance, {what}");
    instances[1].wait_health(want, &second).await;
    at
}

/// Once the load has resumed (40 more recharges acknowledged): the first acknowledged recharge
/// that was sent after `killed_at`.
async fn first_commit_after(load: &Load, killed_at: Instant) -> Instant {
    load.wait_for_acks(
        load.acked_count() + 40,
        "the load did not resume on the new primary",
    )
    .await;
    load.first_ack_sent_after(killed_at)
        .expect("a recharge acknowledged after the kill")
}

/// Every card has `per_card` rows in `counts` ((msisdn, count) of `what`).
#[track_caller]
fn assert_per_card(counts: &[(String, i64)], per_card: i64, what: &str) {
    assert_eq!(counts.len(), CARDS, "{what} of every card");
    let other: Vec<_> = counts.iter().filter(|(_, n)| *n != per_card).collect();
    assert!(other.is_empty(), "{per_card} {what} per card: {other:?}");
}

// ---------------------------------------------------------------------------------------------
// The load.

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_killed_and_standby_promoted_under_load_loses_and_doubles_nothing() {
    let Some(primary) = PgCluster::start() else {
        return;
    };
    let Some(standby) = primary.start_standby() else {
        return;
    };
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}/postgres?\
         target_session_attrs=read-write&application_name=ocs-ha-test",
        primary.port, standby.port
    );
    // Answers take a moment, so deliveries are in flight when the primary dies.
    let hook = Hook::start(Box::new(|_| (200, Duration::from_millis(20)))).await;
    let mut env = vec![
        ("OCS_DB_ACQUIRE_TIMEOUT_MS", "2000".to_owned()),
        ("OCS_DB_POOL_SIZE", "16".to_owned()),
    ];
    env.extend(webhook_env(hook.url()));
    // Many small batches, so the sweep is still running when the primary dies.
    env.push(("OCS_SWEEP__BATCH_SIZE", "10".to_owned()));
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut served = Instance::start(dir.path(), &url, &env).await;
    let channel = served.channel.clone();
    let mut client = AccountLifecycleClient::new(channel.clone());
    // A second instance on the same URL (as behind a load balancer), without the webhook; half
    // of the clients use it.
    let second_env = [
        env[0].clone(),
        env[1].clone(),
        ("OCS_SWEEP__SCHEDULER", "false".to_owned()),
    ];
    let mut second = Instance::start(dir.path(), &url, &second_env).await;
    let second_channel = second.channel.clone();

    // Cards for the sweep, provisioned at T0 and recycled at T1; then the recharged accounts,
    // fresh at T1.
    set_time(&channel, CARD_T0).await;
    provision_cards(&channel, CARDS).await;
    // Both instances' manual clocks show the same instant.
    set_time(&channel, CARD_T1).await;
    set_time(&second_channel, CARD_T1).await;
    let accounts = valid_accounts(&mut client, "861360000", CLIENTS).await;
    let channels = [channel.clone(), second_channel.clone()];
    let load = Load::start(&channels, &accounts, 100, Duration::from_millis(20));
    load.wait_for_acks(20, "the load did not start").await;

    // Throughput with an asynchronous standby and with a synchronous one, alternated twice
    // (the same load, the same service process; only the primary's setting changes).
    let window = throughput_window();
    let measure = || async {
        let (before, start) = (load.acked_count(), Instant::now());
        tokio::time::sleep(window).await;
        (
            (load.acked_count() - before) as f64,
            start.elapsed().as_secs_f64(),
        )
    };
    let (mut asynchronous, mut synchronous) = ((0.0, 0.0), (0.0, 0.0));
    for _ in 0..2 {
        let (acks, secs) = measure().await;
        asynchronous = (asynchronous.0 + acks, asynchronous.1 + secs);
        primary.make_standbys_synchronous();
        let (acks, secs) = measure().await;
        synchronous = (synchronous.0 + acks, synchronous.1 + secs);
        primary.make_standbys_asynchronous();
    }
    let (asynchronous, synchronous) = (
        asynchronous.0 / asynchronous.1,
        synchronous.0 / synchronous.1,
    );
    // From here on an acknowledged recharge is on the standby too.
    primary.make_standbys_synchronous();

    // The sweep and the webhook run while the primary dies: it is killed once the webhook
    // has delivered some of the sweep's events (the outbox is read on the standby: hot standby
    // answers reads).
    let mut standby_reader = sqlx::PgConnection::connect(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        standby.port
    ))
    .await
    .expect("connect to the standby");
    let activation_events = hook.answered().len();
    let sweep_started = Instant::now();
    let sweep = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .advance_states(AdvanceStatesRequest {
                    as_of: None,
                    dry_run: false,
                })
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + SAFETY;
    while hook.answered().len() < activation_events + 10 && !sweep.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook never delivered the sweep's events"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let outbox_at_kill: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE msisdn LIKE '861350%'")
            .fetch_one(&mut standby_reader)
            .await
            .expect("count the standby's outbox");
    drop(standby_reader);
    let sweep_done_before_kill = sweep.is_finished();
    let sweep_ran_for = sweep_started.elapsed();
    let acked_before_kill = load.acked_count();

    primary.kill9();
    let killed_at = Instant::now();
    let answered_at_kill: BTreeSet<String> = hook.answered().into_iter().collect();
    let posted_at_kill = hook.seen().len();
    assert!(
        !sweep_done_before_kill,
        "the sweep finished before the kill ({sweep_ran_for:?}): it did not run across the \
         failover"
    );

    // No primary: NOT_SERVING, /readyz 503, requests UNAVAILABLE STORAGE_FAILOVER at once.
    let not_serving_at = wait_both(
        [&served, &second],
        ServingStatus::NotServing,
        "after the primary was killed",
    )
    .await;
    for instance in [&served, &second] {
        let (ready, body) = instance.readyz().await;
        assert_eq!(ready, 503, "/readyz while no primary: {body}");
        assert!(body.contains("primary"), "{body}");
    }
    let probe = recharge(&accounts[0], 4321, "during-the-failover");
    let asked = Instant::now();
    let status = client
        .recharge(probe.clone())
        .await
        .expect_err("no recharge can be applied without a primary");
    let answered_in = asked.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "STORAGE_FAILOVER", "{status:?}");
    let status = client
        .get_account(GetAccountRequest {
            msisdn: accounts[1].clone(),
        })
        .await
        .expect_err("no read without a primary");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "STORAGE_FAILOVER", "{status:?}");
    // A failover manager takes a moment to decide; the service keeps searching meanwhile.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        load.first_ack_sent_after(killed_at),
        None,
        "nothing can be acknowledged without a primary"
    );

    let promoting = Instant::now();
    let standby = Arc::new(standby);
    let promoted = standby.clone();
    tokio::task::spawn_blocking(move || promoted.promote())
        .await
        .expect("pg_ctl promote");
    let promoted_at = Instant::now();
    let serving_at = wait_both(
        [&served, &second],
        ServingStatus::Serving,
        "after the promotion",
    )
    .await;
    let first_commit = first_commit_after(&load, killed_at).await;
    let (ready, body) = served.readyz().await;
    assert_eq!(ready, 200, "/readyz after the failover: {body}");
    // The recharge refused during the switch applies once now, then replays.
    let applied = client
        .recharge(probe.clone())
        .await
        .expect("the refused recharge applies after the failover");
    let replayed = client.recharge(probe.clone()).await.expect("and replays");
    let (applied, replayed) = (applied.into_inner(), replayed.into_inner());
    assert!(
        !applied.replayed && replayed.replayed,
        "{applied:?} {replayed:?}"
    );
    assert_eq!(applied.balance_after, replayed.balance_after);
    load.stop().await;
    served.assert_survived("serve");
    second.assert_survived("the second instance");

    // The sweep: answered UNAVAILABLE when the primary died under it (or done before); run
    // again it finishes the work.
    let first_sweep = tokio::time::timeout(SAFETY, sweep)
        .await
        .expect("the sweep was never answered")
        .expect("sweep task");
    let first_sweep = match first_sweep {
        Ok(report) => format!("finished before the kill ({:?})", report.into_inner()),
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            format!("answered {} {:?}", reason(&status), status.message())
        }
    };
    let again = client
        .advance_states(AdvanceStatesRequest {
            as_of: None,
            dry_run: false,
        })
        .await
        .expect("the sweep after the failover")
        .into_inner();

    // Check on the new primary directly.
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            standby.port
        ))
        .await
        .expect("connect to the new primary");
    let mut acked = load.acked();
    acked.insert(probe.request_id.clone(), (accounts[0].clone(), 4321));
    assert_only_acknowledged_recharges(&Db::Postgres(db.clone()), &acked, &accounts).await;

    let sweep_runs: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM sweep_runs GROUP BY status ORDER BY status")
            .fetch_all(&db)
            .await
            .expect("read sweep_runs");

    // Every card recycled by exactly one transition, announced by exactly two events.
    let transitions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT msisdn, COUNT(*) FROM account_history WHERE kind = $1 AND to_state = $2 \
         GROUP BY msisdn",
    )
    .bind(HISTORY_STATE_CHANGED)
    .bind(STATE_RECYCLED)
    .fetch_all(&db)
    .await
    .expect("read the transitions");
    assert_per_card(&transitions, 1, "recycling transitions");
    let events: Vec<(String, i64)> = sqlx::query_as(
        "SELECT msisdn, COUNT(*) FROM outbox WHERE msisdn LIKE '861350%' GROUP BY msisdn",
    )
    .fetch_all(&db)
    .await
    .expect("read the outbox");
    assert_per_card(&events, 2, "events");
    let event_ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_all(&db)
        .await
        .expect("event ids");
    let event_ids: BTreeSet<String> = event_ids.into_iter().collect();

    // The webhook worker resumes: every event answered, every delivery recorded.
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let received: BTreeSet<String> = hook.answered().into_iter().collect();
        let undelivered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NULL",
        )
        .fetch_one(&db)
        .await
        .expect("deliveries");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
            .fetch_one(&db)
            .await
            .expect("deliveries");
        if received.is_superset(&event_ids) && undelivered == 0 && rows == event_ids.len() as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook did not deliver everything: {} of {} answered, {undelivered} of {rows} \
             rows undelivered\n{}",
            received.intersection(&event_ids).count(),
            event_ids.len(),
            served.served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for id in hook.answered() {
        *sent.entry(id).or_insert(0) += 1;
    }
    assert!(
        sent.keys().all(|id| event_ids.contains(id)),
        "only emitted events are sent"
    );
    // Outcomes the worker could not record while the primary was gone are recorded on the
    // new one: nothing the BSS confirmed is sent again.
    let twice: Vec<(&String, &usize)> = sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events sent more than once: {twice:?}");

    served.assert_operator_sees_the_failover().await;
    second.assert_operator_sees_the_failover().await;

    let reasons = load.reasons();
    eprintln!(
        "HA figures (primary + streaming standby on one 2-core machine, {CLIENTS} clients on \
         two instances):\n  \
         recharge throughput: asynchronous standby {asynchronous:.0}/s, synchronous standby \
         {synchronous:.0}/s, ratio sync/async {:.2}\n  \
         primary killed -> health NOT_SERVING: {} ms\n  \
         primary killed -> a recharge refused STORAGE_FAILOVER in {} ms\n  \
         pg_ctl promote took {} ms\n  \
         promotion done -> health SERVING: {} ms\n  \
         promotion started -> first recharge committed on the new primary: {} ms\n  \
         primary killed -> first recharge committed on the new primary: {} ms (incl. a \
         deliberate {} ms before promoting)\n  \
         acknowledged recharges: {} ({} before the kill); UNAVAILABLE answers to the load: {} \
         {reasons:?}\n  \
         sweep across the kill: killed {} ms after it started, {} of {} card events on the \
         standby then; first run \
         {first_sweep}; run after: {again:?}; sweep_runs on the new primary: {sweep_runs:?}\n  \
         webhook: {} events answered before the kill ({} posted), none sent twice",
        synchronous / asynchronous,
        millis(not_serving_at - killed_at),
        millis(answered_in),
        millis(promoted_at - promoting),
        millis(serving_at.saturating_duration_since(promoted_at)),
        millis(first_commit - promoting),
        millis(first_commit - killed_at),
        millis(promoting - killed_at),
        acked.len(),
        acked_before_kill,
        load.unavailable(),
        millis(sweep_ran_for),
        outbox_at_kill,
        2 * CARDS,
        answered_at_kill.len(),
        posted_at_kill,
    );
    db.close().await;
}

/// The same service against pg_auto_failover: a monitor and two nodes, the monitor fails over
/// by itself when the primary node (its `pg_autoctl` and PostgreSQL) is killed. The URL is the
/// one `pg_autoctl show uri` gives applications, with a user and password added.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_auto_failover_promotes_by_itself_and_the_service_follows_without_losing_a_recharge() {
    let formation = tokio::task::spawn_blocking(PgAutoFailover::start)
        .await
        .expect("start pg_auto_failover");
    let Some(mut formation) = formation else {
        return;
    };
    let uri = formation.formation_uri();
    assert!(
        uri.contains("target_session_attrs=read-write"),
        "pg_autoctl show uri: {uri}"
    );
    let url = uri.replacen(
        "postgres://",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let env = [("OCS_DB_ACQUIRE_TIMEOUT_MS", "2000".to_owned())];
    let mut served = Instance::start(dir.path(), &url, &env).await;
    let channel = served.channel.clone();
    let mut client = AccountLifecycleClient::new(channel.clone());
    let accounts = valid_accounts(&mut client, "861370000", CLIENTS).await;
    let load = Load::start(
        std::slice::from_ref(&channel),
        &accounts,
        100,
        Duration::from_millis(20),
    );
    load.wait_for_acks(50, "the load did not start").await;

    let acked_before_kill = load.acked_count();
    formation.kill9_node(0);
    let killed_at = Instant::now();
    let not_serving_at = served
        .wait_health(
            ServingStatus::NotServing,
            "after the primary node was killed",
        )
        .await;
    let (ready, body) = served.readyz().await;
    assert_eq!(ready, 503, "/readyz while no primary: {body}");
    let serving_at = served
        .wait_health(
            ServingStatus::Serving,
            "after pg_auto_failover promoted the secondary",
        )
        .await;
    let first_commit = first_commit_after(&load, killed_at).await;
    load.stop().await;
    served.assert_survived("serve");

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            formation.nodes[1].port
        ))
        .await
        .expect("connect to the new primary");
    let acked = load.acked();
    assert_only_acknowledged_recharges(&Db::Postgres(db.clone()), &acked, &accounts).await;
    served.assert_operator_sees_the_failover().await;
    let reasons = load.reasons();
    eprintln!(
        "HA figures with pg_auto_failover (monitor settings {:?}):\n  \
         primary node killed -> health NOT_SERVING: {} ms\n  \
         primary node killed -> health SERVING (secondary promoted by the monitor): {} ms\n  \
         primary node killed -> first recharge committed on the new primary: {} ms\n  \
         acknowledged recharges: {} ({acked_before_kill} before the kill); UNAVAILABLE answers \
         to the load: {} {reasons:?}",
        common::pg_auto_failover::MONITOR_SETTINGS,
        millis(not_serving_at - killed_at),
        millis(serving_at - killed_at),
        millis(first_commit - killed_at),
        acked.len(),
        load.unavailable(),
    );
    db.close().await;
    drop(served);
    tokio::task::spawn_blocking(move || drop(formation))
        .await
        .expect("stop pg_auto_failover");
}
