//! Helpers of the fault and high-availability suites (tests/faults_storage.rs,
//! tests/faults_crash.rs, tests/ha.rs): accounts to recharge, a recharge load that retries
//! through an outage, and the checks read directly from the database that no acknowledged
//! recharge was lost or applied twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::test_clock_client::TestClockClient;
use ocs_lifecycle::proto::{
    ActivateRequest, GetAccountRequest, ProvisionAccountRequest, RechargeChannel, RechargeRequest,
    SetTimeRequest,
};
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use super::process::ServeCommand;
use super::{Db, reason, ts};

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

/// `n` VALID accounts `<prefix><i:04>`, ready to be recharged.
pub async fn valid_accounts(
    client: &mut AccountLifecycleClient<Channel>,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let accounts: Vec<String> = (0..n).map(|i| format!("{prefix}{i:04}")).collect();
    for msisdn in &accounts {
        valid_account(client, msisdn).await;
    }
    accounts
}

/// Provisions `n` sold cards `861350<i:05>` (unactivated: recycled 540 days later), from four
/// clients at once.
pub async fn provision_cards(channel: &Channel, n: usize) {
    let provisioners: Vec<_> = (0..4)
        .map(|worker| {
            let mut client = AccountLifecycleClient::new(channel.clone());
            tokio::spawn(async move {
                for i in (worker..n).step_by(4) {
                    provision_card(&mut client, &format!("861350{i:05}")).await;
                }
            })
        })
        .collect();
    for provisioner in provisioners {
        provisioner.await.expect("provisioning");
    }
}

/// Sets the manual clock of the server behind `channel`.
pub async fn set_time(channel: &Channel, rfc3339: &str) {
    TestClockClient::new(channel.clone())
        .set_time(SetTimeRequest {
            time: Some(ts(rfc3339)),
        })
        .await
        .unwrap_or_else(|e| panic!("SetTime {rfc3339}: {e:?}"));
}

/// The `OCS_*` settings of a webhook to `url` that delivers the sweep's events quickly and
/// retries fast; events come only from the sweeps the test asks for (no scheduler).
pub fn webhook_env(url: String) -> Vec<(&'static str, String)> {
    vec![
        ("OCS_BSS__WEBHOOK_URL", url),
        ("OCS_BSS__WEBHOOK_SECRET", "fault-test-secret".to_owned()),
        (
            "OCS_BSS__WEBHOOK_EVENTS",
            r#"["NUMBER_RECYCLED", "STATE_CHANGED"]"#.to_owned(),
        ),
        // The lease of an attempt a crash abandoned is timeout + 2 s.
        ("OCS_BSS__TIMEOUT_MS", "1000".to_owned()),
        ("OCS_BSS__INITIAL_BACKOFF_MS", "50".to_owned()),
        ("OCS_BSS__MAX_BACKOFF_MS", "200".to_owned()),
        ("OCS_SWEEP__SCHEDULER", "false".to_owned()),
    ]
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

/// [`assert_recharges_applied_once`], and no history row of a recharge that was not
/// acknowledged: for a load whose clients retry every recharge until it is answered.
pub async fn assert_only_acknowledged_recharges(
    db: &Db,
    acked: &BTreeMap<String, (String, i64)>,
    accounts: &[String],
) {
    assert_recharges_applied_once(db, acked, accounts).await;
    assert_eq!(
        recharge_rows(db).await.len(),
        acked.len(),
        "a history row for every acknowledged recharge and no other"
    );
}

/// The balance GetAccount answers for each of `accounts` is the sum of its acknowledged
/// recharges.
pub async fn assert_balances_acknowledged(
    client: &mut AccountLifecycleClient<Channel>,
    acked: &BTreeMap<String, (String, i64)>,
    accounts: &[String],
) {
    for msisdn in accounts {
        let expected: i64 = acked
            .values()
            .filter(|(m, _)| m == msisdn)
            .map(|(_, amount)| amount)
            .sum();
        assert_eq!(balance(client, msisdn).await, expected, "{msisdn}");
    }
}

/// `GET /readyz` of the operations endpoint: (status code, body).
pub async fn readyz(http_addr: SocketAddr) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{http_addr}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /readyz: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A recharge load through an outage: one client per account, each recharge retried with its
/// request_id until it is answered OK (UNAVAILABLE is the only error accepted meanwhile), until
/// [`Load::stop`]; and what the clients saw.
pub struct Load {
    /// Each recharge is between this and twice this.
    min_amount: i64,
    /// The wait before an UNAVAILABLE recharge is sent again.
    retry_every: Duration,
    stop: CancellationToken,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// request_id → (msisdn, amount) of every recharge answered OK.
    acked: Mutex<BTreeMap<String, (String, i64)>>,
    /// When the attempt that was answered OK was sent, and when it was answered.
    acked_at: Mutex<Vec<(Instant, Instant)>>,
    acked_count: AtomicUsize,
    unavailable: AtomicUsize,
    /// The distinct messages of the UNAVAILABLE answers (what the outage looked like).
    unavailable_messages: Mutex<BTreeSet<String>>,
    /// ErrorInfo reason → how many UNAVAILABLE answers carried it.
    reasons: Mutex<BTreeMap<String, usize>>,
}

impl Load {
    /// Starts a client for each of `accounts`, on `channels` in turn.
    pub fn start(
        channels: &[Channel],
        accounts: &[String],
        min_amount: i64,
        retry_every: Duration,
    ) -> Arc<Load> {
        let load = Arc::new(Load {
            min_amount,
            retry_every,
            stop: CancellationToken::new(),
            workers: Mutex::default(),
            acked: Mutex::default(),
            acked_at: Mutex::default(),
            acked_count: AtomicUsize::new(0),
            unavailable: AtomicUsize::new(0),
            unavailable_messages: Mutex::default(),
            reasons: Mutex::default(),
        });
        *lock(&load.workers) = accounts
            .iter()
            .enumerate()
            .map(|(worker, msisdn)| {
                let client = AccountLifecycleClient::new(channels[worker % channels.len()].clone());
                tokio::spawn(
                    load.clone()
                        .recharge_until_stopped(client, msisdn.clone(), worker),
                )
            })
            .collect();
        load
    }

    async fn recharge_until_stopped(
        self: Arc<Self>,
        mut client: AccountLifecycleClient<Channel>,
        msisdn: String,
        worker: usize,
    ) {
        let mut i: i64 = 0;
        while !self.stop.is_cancelled() {
            i += 1;
            let request_id = format!("w{worker}-{i}");
            let amount = self.min_amount + (worker as i64 * 37 + i * 11) % self.min_amount;
            let deadline = tokio::time::Instant::now() + SAFETY;
            let sent = loop {
                let sent = Instant::now();
                match client
                    .recharge(recharge(&msisdn, amount, &request_id))
                    .await
                {
                    Ok(_) => break sent,
                    Err(status) if status.code() == Code::Unavailable => {
                        self.unavailable.fetch_add(1, Ordering::Relaxed);
                        lock(&self.unavailable_messages).insert(status.message().to_owned());
                        *lock(&self.reasons).entry(reason(&status)).or_insert(0) += 1;
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "{request_id} never applied after the outage: {status:?}"
                        );
                        tokio::time::sleep(self.retry_every).await;
                    }
                    Err(status) => panic!("{request_id}: only UNAVAILABLE is expected: {status:?}"),
                }
            };
            lock(&self.acked_at).push((sent, Instant::now()));
            lock(&self.acked).insert(request_id, (msisdn.clone(), amount));
            self.acked_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops the load; each client finishes the recharge it is retrying.
    pub async fn stop(&self) {
        self.stop.cancel();
        let workers = std::mem::take(&mut *lock(&self.workers));
        let failed = "a client saw an error other than UNAVAILABLE";
        join_workers(workers, "a client did not finish", failed).await;
    }

    pub fn acked_count(&self) -> usize {
        self.acked_count.load(Ordering::Relaxed)
    }

    /// request_id → (msisdn, amount) of every recharge answered OK so far.
    pub fn acked(&self) -> BTreeMap<String, (String, i64)> {
        lock(&self.acked).clone()
    }

    /// The UNAVAILABLE answers so far.
    pub fn unavailable(&self) -> usize {
        self.unavailable.load(Ordering::Relaxed)
    }

    /// The distinct messages of the UNAVAILABLE answers.
    pub fn unavailable_messages(&self) -> BTreeSet<String> {
        lock(&self.unavailable_messages).clone()
    }

    /// ErrorInfo reason → how many UNAVAILABLE answers carried it.
    pub fn reasons(&self) -> BTreeMap<String, usize> {
        lock(&self.reasons).clone()
    }

    /// The first OK answer to an attempt sent after `instant` (after a kill: committed on the
    /// new primary, not answered late by the old one).
    pub fn first_ack_sent_after(&self, instant: Instant) -> Option<Instant> {
        lock(&self.acked_at)
            .iter()
            .filter(|(sent, _)| *sent > instant)
            .map(|(_, answered)| *answered)
            .min()
    }

    /// Waits until the clients have been answered UNAVAILABLE at least `at_least` times in all;
    /// past [`SAFETY`] panics with `what`.
    pub async fn wait_for_unavailable(&self, at_least: usize, what: &str) {
        let enough = || self.unavailable() >= at_least;
        wait_until(what, Duration::from_millis(10), String::new, enough).await;
    }

    /// Waits until `at_least` recharges have been answered OK; past [`SAFETY`] panics with
    /// `what`.
    pub async fn wait_for_acks(&self, at_least: usize, what: &str) {
        let enough = || self.acked_count() >= at_least;
        wait_until(what, Duration::from_millis(10), String::new, enough).await;
    }
}
