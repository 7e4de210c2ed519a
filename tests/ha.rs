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
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg_auto_failover::PgAutoFailover;
use common::pg_cluster::PgCluster;
use common::{free_port, reason};
use hook::Hook;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::test_clock_client::TestClockClient;
use ocs_lifecycle::proto::{
    ActivateRequest, AdvanceStatesRequest, GetAccountRequest, ProvisionAccountRequest,
    RechargeChannel, RechargeRequest, SetTimeRequest,
};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_ocs-lifecycle");

/// Safety bound of every wait (a loaded 2-core machine); never an assertion on speed.
const SAFETY: Duration = Duration::from_secs(90);

/// Clients recharging, one account each.
const CLIENTS: usize = 8;
/// Unactivated cards the sweep recycles across the failover (two webhook events each).
const CARDS: usize = 400;
/// Provisioned at `CARD_T0`, unactivated cards die after 540 days: recycled at `CARD_T1`.
const CARD_T0: &str = "2030-03-01T02:00:00Z";
const CARD_T1: &str = "2031-09-01T02:00:00Z";
/// In the URL, to check that no log line shows it (trust authentication ignores it).
const PASSWORD: &str = "ha-secret-do-not-log";

const HISTORY_RECHARGE: i32 = ocs_lifecycle::proto::HistoryKind::Recharge as i32;
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

/// A running `ocs-lifecycle serve` whose stderr is collected.
struct Served {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// `serve` with the manual clock, the operations endpoint on an ephemeral port, and `env`
    /// (every other `OCS_*` variable of the test is removed).
    fn spawn(database_url: &str, env: &[(&str, String)]) -> Served {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(BIN);
        command.args([
            "serve",
            "--listen",
            &addr,
            "--http-addr",
            "127.0.0.1:0",
            "--clock",
            "manual",
            "--database-url",
            database_url,
        ]);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OCS_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ocs-lifecycle serve");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Served { child, addr, log }
    }

    /// The log so far, without terminal colours.
    fn log(&self) -> String {
        strip_ansi(&self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The operations endpoint's address, from its start-up log line.
    fn http_addr(&self) -> SocketAddr {
        let log = self.log();
        log.lines()
            .filter(|line| line.contains("operations endpoint listening"))
            .find_map(|line| {
                let value = line.split("http_addr=").nth(1)?;
                value.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no operations endpoint address in the log:\n{log}"))
    }

    async fn wait_serving(&mut self) -> Channel {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_lazy();
        let deadline = tokio::time::Instant::now() + SAFETY;
        while health(&channel).await != Some(ServingStatus::Serving as i32) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("serve exited before serving: {status}\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "serve never became SERVING\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        channel
    }

    /// Still the same running process (not exited).
    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn health(channel: &Channel) -> Option<i32> {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// Polls gRPC health until it reports `want`; the moment it did.
async fn wait_health(channel: &Channel, want: ServingStatus, what: &str, log: &Served) -> Instant {
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        if health(channel).await == Some(want as i32) {
            return Instant::now();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {want:?}: {what}\n{}",
            log.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET /readyz`: (status code, body).
async fn readyz(http_addr: SocketAddr) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{http_addr}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /readyz: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// The load.

fn recharge(msisdn: &str, amount: i64, request_id: &str) -> RechargeRequest {
    RechargeRequest {
        msisdn: msisdn.into(),
        amount,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: request_id.into(),
    }
}

/// What the recharge load saw.
#[derive(Default)]
struct Load {
    /// request_id → (msisdn, amount) of every recharge answered OK.
    acked: Mutex<BTreeMap<String, (String, i64)>>,
    /// When the attempt that was answered OK was sent, and when it was answered.
    acked_at: Mutex<Vec<(Instant, Instant)>>,
    acked_count: AtomicUsize,
    unavailable: AtomicUsize,
    /// ErrorInfo reason → how many UNAVAILABLE answers carried it.
    reasons: Mutex<BTreeMap<String, usize>>,
}

impl Load {
    fn acked_count(&self) -> usize {
        self.acked_count.load(Ordering::Relaxed)
    }

    /// The first OK answer to an attempt sent after `instant` (after the kill: committed on the
    /// new primary, not answered late by the old one).
    fn first_ack_sent_after(&self, instant: Instant) -> Option<Instant> {
        let acked_at = self.acked_at.lock().unwrap_or_else(|e| e.into_inner());
        acked_at
            .iter()
            .filter(|(sent, _)| *sent > instant)
            .map(|(_, answered)| *answered)
            .min()
    }

    async fn wait_for_acks(&self, at_least: usize, what: &str) {
        let deadline = tokio::time::Instant::now() + SAFETY;
        while self.acked_count() < at_least {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Recharges `msisdn` until `stop`, each request retried with the same request_id until it
/// is answered OK; UNAVAILABLE is the only error accepted.
async fn recharge_until_stopped(
    mut client: AccountLifecycleClient<Channel>,
    msisdn: String,
    worker: usize,
    load: Arc<Load>,
    stop: CancellationToken,
) {
    let mut i: i64 = 0;
    while !stop.is_cancelled() {
        i += 1;
        let request_id = format!("w{worker}-{i}");
        let amount = 100 + (worker as i64 * 37 + i * 11) % 100;
        let deadline = tokio::time::Instant::now() + SAFETY;
        let sent = loop {
            let sent = Instant::now();
            match client
                .recharge(recharge(&msisdn, amount, &request_id))
                .await
            {
                Ok(_) => break sent,
                Err(status) if status.code() == Code::Unavailable => {
                    load.unavailable.fetch_add(1, Ordering::Relaxed);
                    *load
                        .reasons
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(reason(&status))
                        .or_insert(0) += 1;
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{request_id} never applied after the failover: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("{request_id}: only UNAVAILABLE is expected: {status:?}"),
            }
        };
        load.acked_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((sent, Instant::now()));
        load.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request_id, (msisdn.clone(), amount));
        load.acked_count.fetch_add(1, Ordering::Relaxed);
    }
}

/// One [`recharge_until_stopped`] client per account, spread over `channels` (instances).
fn spawn_load(
    channels: &[Channel],
    accounts: &[String],
    load: &Arc<Load>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    accounts
        .iter()
        .enumerate()
        .map(|(worker, msisdn)| {
            tokio::spawn(recharge_until_stopped(
                AccountLifecycleClient::new(channels[worker % channels.len()].clone()),
                msisdn.clone(),
                worker,
                load.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

/// Stops the load; each client finishes the recharge it is retrying.
async fn stop_load(stop: &CancellationToken, workers: Vec<tokio::task::JoinHandle<()>>) {
    stop.cancel();
    for worker in workers {
        tokio::time::timeout(SAFETY, worker)
            .await
            .expect("a client did not finish")
            .expect("a client saw an error other than UNAVAILABLE");
    }
}

/// On `db` (the new primary): every acknowledged recharge has exactly one history row with its
/// amount, there is no row of a recharge nobody was told about, and each balance is the sum
/// of its account's acknowledged recharges.
async fn assert_applied_once(
    db: &sqlx::PgPool,
    acked: &BTreeMap<String, (String, i64)>,
    accounts: &[String],
) {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT request_id, msisdn, COUNT(*), CAST(SUM(amount) AS BIGINT) FROM account_history \
         WHERE kind = $1 GROUP BY request_id, msisdn",
    )
    .bind(HISTORY_RECHARGE)
    .fetch_all(db)
    .await
    .expect("read the recharges");
    let rows: BTreeMap<String, (String, i64, i64)> = rows
        .into_iter()
        .map(|(id, msisdn, count, sum)| (id, (msisdn, count, sum)))
        .collect();
    for (request_id, (msisdn, amount)) in acked {
        assert_eq!(
            rows.get(request_id),
            Some(&(msisdn.clone(), 1, *amount)),
            "acknowledged recharge {request_id} must have exactly one history row"
        );
    }
    assert_eq!(
        rows.len(),
        acked.len(),
        "a history row for every acknowledged recharge and no other"
    );
    for msisdn in accounts {
        let expected: i64 = acked
            .values()
            .filter(|(m, _)| m == msisdn)
            .map(|(_, amount)| amount)
            .sum();
        let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE msisdn = $1")
            .bind(msisdn)
            .fetch_one(db)
            .await
            .expect("balance");
        assert_eq!(
            balance, expected,
            "{msisdn}: balance = its acknowledged recharges"
        );
    }
}

/// The failover as the log and `/metrics` show it; never the password.
async fn assert_operator_sees_the_failover(served: &Served, http_addr: SocketAddr) {
    let metrics = reqwest::get(format!("http://{http_addr}/metrics"))
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
    let log = served.log();
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
        served.addr,
        failover.join("\n")
    );
}

/// Provisions a sold card and activates it, so it can be recharged.
async fn valid_account(client: &mut AccountLifecycleClient<Channel>, msisdn: &str) {
    client
        .provision_account(ProvisionAccountRequest {
            msisdn: msisdn.into(),
            sold: true,
            request_id: format!("p-{msisdn}"),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("provision {msisdn}: {e:?}"));
    client
        .activate(ActivateRequest {
            msisdn: msisdn.into(),
            request_id: format!("a-{msisdn}"),
        })
        .await
        .unwrap_or_else(|e| panic!("activate {msisdn}: {e:?}"));
}

async fn set_time(channel: &Channel, rfc3339: &str) {
    TestClockClient::new(channel.clone())
        .set_time(SetTimeRequest {
            time: Some(common::ts(rfc3339)),
        })
        .await
        .unwrap_or_else(|e| panic!("SetTime {rfc3339}: {e:?}"));
}

/// Event ids the hook answered 2xx, in the order of the answers.
fn answered(hook: &Hook) -> Vec<String> {
    hook.received()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.header("x-ocs-event-id").unwrap_or_default().to_owned())
        .collect()
}

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
    let env = [
        ("OCS_DB_ACQUIRE_TIMEOUT_MS", "2000".to_owned()),
        ("OCS_DB_POOL_SIZE", "16".to_owned()),
        ("OCS_BSS__WEBHOOK_URL", hook.url()),
        ("OCS_BSS__WEBHOOK_SECRET", "ha-test-secret".to_owned()),
        (
            "OCS_BSS__WEBHOOK_EVENTS",
            r#"["NUMBER_RECYCLED", "STATE_CHANGED"]"#.to_owned(),
        ),
        ("OCS_BSS__TIMEOUT_MS", "1000".to_owned()),
        ("OCS_BSS__INITIAL_BACKOFF_MS", "50".to_owned()),
        ("OCS_BSS__MAX_BACKOFF_MS", "200".to_owned()),
        ("OCS_SWEEP__SCHEDULER", "false".to_owned()),
        // Many small batches, so the sweep is still running when the primary dies.
        ("OCS_SWEEP__BATCH_SIZE", "10".to_owned()),
    ];
    let mut served = Served::spawn(&url, &env);
    let channel = served.wait_serving().await;
    let http_addr = served.http_addr();
    let pid = served.child.id();
    let mut client = AccountLifecycleClient::new(channel.clone());
    // A second instance on the same URL (as behind a load balancer), without the webhook; half
    // of the clients use it.
    let second_env = [
        env[0].clone(),
        env[1].clone(),
        ("OCS_SWEEP__SCHEDULER", "false".to_owned()),
    ];
    let mut second = Served::spawn(&url, &second_env);
    let second_channel = second.wait_serving().await;
    let second_http = second.http_addr();
    let second_pid = second.child.id();

    // Cards for the sweep, provisioned at T0 and recycled at T1; then the recharged accounts,
    // fresh at T1.
    set_time(&channel, CARD_T0).await;
    let provisioners: Vec<_> = (0..4)
        .map(|worker| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for i in (worker..CARDS).step_by(4) {
                    let msisdn = format!("861350{i:05}");
                    client
                        .provision_account(ProvisionAccountRequest {
                            msisdn: msisdn.clone(),
                            sold: true,
                            request_id: format!("p-{msisdn}"),
                            ..Default::default()
                        })
                        .await
                        .unwrap_or_else(|e| panic!("provision {msisdn}: {e:?}"));
                }
            })
        })
        .collect();
    for provisioner in provisioners {
        provisioner.await.expect("provisioning");
    }
    // Both instances' manual clocks show the same instant.
    set_time(&channel, CARD_T1).await;
    set_time(&second_channel, CARD_T1).await;
    let accounts: Vec<String> = (0..CLIENTS).map(|i| format!("861360000{i:04}")).collect();
    for msisdn in &accounts {
        valid_account(&mut client, msisdn).await;
    }

    let load = Arc::new(Load::default());
    let stop = CancellationToken::new();
    let workers = spawn_load(
        &[channel.clone(), second_channel.clone()],
        &accounts,
        &load,
        &stop,
    );
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
    let activation_events = answered(&hook).len();
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
    while answered(&hook).len() < activation_events + 10 && !sweep.is_finished() {
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
    let answered_at_kill: BTreeSet<String> = answered(&hook).into_iter().collect();
    let posted_at_kill = hook.seen().len();
    assert!(
        !sweep_done_before_kill,
        "the sweep finished before the kill ({sweep_ran_for:?}): it did not run across the \
         failover"
    );

    // No primary: NOT_SERVING, /readyz 503, requests UNAVAILABLE STORAGE_FAILOVER at once.
    let not_serving_at = wait_health(
        &channel,
        ServingStatus::NotServing,
        "after the primary was killed",
        &served,
    )
    .await;
    wait_health(
        &second_channel,
        ServingStatus::NotServing,
        "the second instance, after the primary was killed",
        &second,
    )
    .await;
    for addr in [http_addr, second_http] {
        let (ready, body) = readyz(addr).await;
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
    let serving_at = wait_health(
        &channel,
        ServingStatus::Serving,
        "after the promotion",
        &served,
    )
    .await;
    wait_health(
        &second_channel,
        ServingStatus::Serving,
        "the second instance, after the promotion",
        &second,
    )
    .await;
    load.wait_for_acks(
        load.acked_count() + 40,
        "the load did not resume on the new primary",
    )
    .await;
    let first_commit = load
        .first_ack_sent_after(killed_at)
        .expect("a recharge acknowledged after the promotion");
    let (ready, body) = readyz(http_addr).await;
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
    stop_load(&stop, workers).await;
    assert!(served.running(), "serve must survive the failover");
    assert_eq!(served.child.id(), pid, "the same process, never restarted");
    assert!(
        second.running(),
        "the second instance must survive the failover"
    );
    assert_eq!(second.child.id(), second_pid);

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
    let mut acked = load.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    acked.insert(probe.request_id.clone(), (accounts[0].clone(), 4321));
    assert_applied_once(&db, &acked, &accounts).await;

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
    assert_eq!(transitions.len(), CARDS, "every card recycled");
    assert!(
        transitions.iter().all(|(_, n)| *n == 1),
        "each card recycled once: {:?}",
        transitions
            .iter()
            .filter(|(_, n)| *n != 1)
            .collect::<Vec<_>>()
    );
    let events: Vec<(String, i64)> = sqlx::query_as(
        "SELECT msisdn, COUNT(*) FROM outbox WHERE msisdn LIKE '861350%' GROUP BY msisdn",
    )
    .fetch_all(&db)
    .await
    .expect("read the outbox");
    assert_eq!(events.len(), CARDS, "events for every card");
    assert!(
        events.iter().all(|(_, n)| *n == 2),
        "two events per card: {:?}",
        events.iter().filter(|(_, n)| *n != 2).collect::<Vec<_>>()
    );
    let event_ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_all(&db)
        .await
        .expect("event ids");
    let event_ids: BTreeSet<String> = event_ids.into_iter().collect();

    // The webhook worker resumes: every event answered, every delivery recorded.
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let received: BTreeSet<String> = answered(&hook).into_iter().collect();
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
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for id in answered(&hook) {
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

    assert_operator_sees_the_failover(&served, http_addr).await;
    assert_operator_sees_the_failover(&second, second_http).await;

    let reasons = load
        .reasons
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
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
        load.unavailable.load(Ordering::Relaxed),
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
    let mut served = Served::spawn(&url, &[("OCS_DB_ACQUIRE_TIMEOUT_MS", "2000".to_owned())]);
    let channel = served.wait_serving().await;
    let http_addr = served.http_addr();
    let pid = served.child.id();
    let mut client = AccountLifecycleClient::new(channel.clone());
    let accounts: Vec<String> = (0..CLIENTS).map(|i| format!("861370000{i:04}")).collect();
    for msisdn in &accounts {
        valid_account(&mut client, msisdn).await;
    }
    let load = Arc::new(Load::default());
    let stop = CancellationToken::new();
    let workers = spawn_load(std::slice::from_ref(&channel), &accounts, &load, &stop);
    load.wait_for_acks(50, "the load did not start").await;

    let acked_before_kill = load.acked_count();
    formation.kill9_node(0);
    let killed_at = Instant::now();
    let not_serving_at = wait_health(
        &channel,
        ServingStatus::NotServing,
        "after the primary node was killed",
        &served,
    )
    .await;
    let (ready, body) = readyz(http_addr).await;
    assert_eq!(ready, 503, "/readyz while no primary: {body}");
    let serving_at = wait_health(
        &channel,
        ServingStatus::Serving,
        "after pg_auto_failover promoted the secondary",
        &served,
    )
    .await;
    load.wait_for_acks(
        load.acked_count() + 40,
        "the load did not resume on the new primary",
    )
    .await;
    let first_commit = load
        .first_ack_sent_after(killed_at)
        .expect("a recharge acknowledged after the kill");
    stop_load(&stop, workers).await;
    assert!(served.running(), "serve must survive the failover");
    assert_eq!(served.child.id(), pid, "the same process, never restarted");

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            formation.nodes[1].port
        ))
        .await
        .expect("connect to the new primary");
    let acked = load.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_applied_once(&db, &acked, &accounts).await;
    assert_operator_sees_the_failover(&served, http_addr).await;
    let reasons = load
        .reasons
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
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
        load.unavailable.load(Ordering::Relaxed),
    );
    db.close().await;
    drop(served);
    tokio::task::spawn_blocking(move || drop(formation))
        .await
        .expect("stop pg_auto_failover");
}
