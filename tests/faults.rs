//! Faults with real processes and real databases (issue 7):
//!
//! - PostgreSQL unreachable during recharge load: the service reaches PostgreSQL through a TCP
//!   proxy in the test, which is cut (every connection dropped, new ones refused) and restored;
//!   the shared PostgreSQL server itself is never stopped.
//! - SQLite: `ocs-lifecycle serve` killed with SIGKILL during concurrent recharges.
//! - Storage not writable: the file-size limit of a running `serve` (`RLIMIT_FSIZE`, set with
//!   `prlimit`) is put to 0, so every `write(2)` to its database files fails with EFBIG as on
//!   a full disk — a mechanism that also stops root (the tests may run as root, where a
//!   read-only file mode does not), then lifted again; gRPC health and `/readyz` follow.
//! - PostgreSQL stopped for real (`pg_ctl stop -m fast`, then `-m immediate`) and started again
//!   under a real `serve` and recharge load: a private cluster of the test
//!   (`common::pg_cluster`), never the shared server.
//! - `serve` killed with SIGKILL while webhook deliveries are in flight, then restarted on the
//!   same database (SQLite and the shared PostgreSQL).
//!
//! No test asserts on elapsed time; every wait has a generous safety bound.

#[allow(unused_macros)]
#[macro_use]
mod common;
#[allow(dead_code)]
#[path = "webhook/hook.rs"]
mod hook;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg_cluster::PgCluster;
use common::{Backend, TestDb, reason, test_config};
use hook::Hook;
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::test_clock_client::TestClockClient;
use ocs_lifecycle::proto::{
    ActivateRequest, AdvanceStatesRequest, GetAccountRequest, ProvisionAccountRequest,
    RechargeChannel, RechargeRequest, SetTimeRequest,
};
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_ocs-lifecycle");

/// Safety bound of every wait (a loaded 2-core machine); never an assertion on speed.
const SAFETY: Duration = Duration::from_secs(120);

const HISTORY_RECHARGE: i32 = ocs_lifecycle::proto::HistoryKind::Recharge as i32;

// ---------------------------------------------------------------------------------------------
// Helpers shared by the tests.

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

fn recharge(msisdn: &str, amount: i64, request_id: &str) -> RechargeRequest {
    RechargeRequest {
        msisdn: msisdn.into(),
        amount,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: request_id.into(),
    }
}

async fn balance(client: &mut AccountLifecycleClient<Channel>, msisdn: &str) -> i64 {
    client
        .get_account(GetAccountRequest {
            msisdn: msisdn.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("get {msisdn}: {e:?}"))
        .into_inner()
        .balance
}

async fn health_status(channel: &Channel) -> Option<i32> {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

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

/// Per (msisdn, request_id): the RECHARGE history rows and their amounts, read directly.
async fn recharge_rows(db: &common::Db) -> BTreeMap<String, (String, i64, i64)> {
    let sql = "SELECT request_id, msisdn, COUNT(*), CAST(SUM(amount) AS BIGINT) FROM account_history \
               WHERE kind = $1 GROUP BY request_id, msisdn";
    let rows: Vec<(String, String, i64, i64)> = match db {
        common::Db::Sqlite(pool) => sqlx::query_as(sql)
            .bind(HISTORY_RECHARGE)
            .fetch_all(pool)
            .await
            .expect("read history"),
        common::Db::Postgres(pool) => sqlx::query_as(sql)
            .bind(HISTORY_RECHARGE)
            .fetch_all(pool)
            .await
            .expect("read history"),
    };
    rows.into_iter()
        .map(|(id, msisdn, count, sum)| (id, (msisdn, count, sum)))
        .collect()
}

/// Every acknowledged recharge has exactly one history row with its amount, there is no row
/// of a recharge nobody asked for, and each balance is the sum of its account's recharges.
async fn assert_recharges_applied_once(
    db: &common::Db,
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

// ---------------------------------------------------------------------------------------------
// PostgreSQL unreachable: a cuttable TCP proxy.

/// A TCP proxy to PostgreSQL that can be cut (every open connection dropped, new ones closed
/// at once) and restored.
struct CutProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Cancelled to drop every connection of the current "up" period.
    connections: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn start(upstream: String) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(CancellationToken::new()));
        let (accept_up, accept_connections) = (up.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !accept_up.load(Ordering::Acquire) {
                    drop(client); // refused: closed at once
                    continue;
                }
                let cut = accept_connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {}
                    }
                    // Both sockets are dropped here: the connection is gone for both sides.
                });
            }
        });
        CutProxy {
            addr,
            up,
            connections,
            task,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::Release);
        let mut token = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        token.cancel();
        *token = CancellationToken::new();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::Release);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
    }
}

/// `host:port` of a PostgreSQL URL, and the URL with them replaced by `proxy`.
fn through_proxy(url: &str, proxy: SocketAddr) -> (String, String) {
    let start = url.find("://").expect("URL scheme") + 3;
    let rest = &url[start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (credentials, host_port) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let upstream = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    let proxied = format!(
        "{}{credentials}{proxy}{}",
        &url[..start],
        &rest[authority_end..]
    );
    (upstream, proxied)
}

/// What the recharge load saw.
#[derive(Default)]
struct Load {
    /// request_id → (msisdn, amount) of every recharge answered OK.
    acked: Mutex<BTreeMap<String, (String, i64)>>,
    acked_count: AtomicUsize,
    unavailable: AtomicUsize,
    /// The distinct messages of the UNAVAILABLE answers (what the outage looked like).
    unavailable_messages: Mutex<BTreeSet<String>>,
}

/// Recharges `msisdn` until `stop`, each request retried with the same request_id until it
/// is answered OK; UNAVAILABLE is the only error accepted.
/// One [`recharge_until_stopped`] task per account, on `channel`.
fn spawn_recharge_workers(
    channel: &Channel,
    accounts: &[String],
    load: &Arc<Load>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    accounts
        .iter()
        .enumerate()
        .map(|(worker, msisdn)| {
            tokio::spawn(recharge_until_stopped(
                AccountLifecycleClient::new(channel.clone()),
                msisdn.clone(),
                worker,
                load.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

async fn recharge_until_stopped(
    mut client: AccountLifecycleClient<Channel>,
    msisdn: String,
    worker: usize,
    load: Arc<Load>,
    stop: CancellationToken,
) {
    let mut i = 0;
    while !stop.is_cancelled() {
        i += 1;
        let request_id = format!("w{worker}-{i}");
        let amount = 1000 + (worker as i64 * 37 + i * 11) % 1000;
        let deadline = tokio::time::Instant::now() + SAFETY;
        loop {
            match client
                .recharge(recharge(&msisdn, amount, &request_id))
                .await
            {
                Ok(_) => break,
                Err(status) if status.code() == Code::Unavailable => {
                    load.unavailable.fetch_add(1, Ordering::Relaxed);
                    load.unavailable_messages
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(status.message().to_owned());
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{request_id} never applied after the database came back: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("{request_id}: only UNAVAILABLE is expected: {status:?}"),
            }
        }
        load.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request_id, (msisdn.clone(), amount));
        load.acked_count.fetch_add(1, Ordering::Relaxed);
    }
}

async fn wait_for_acks(load: &Load, at_least: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + SAFETY;
    while load.acked_count.load(Ordering::Relaxed) < at_least {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_during_recharges_answers_unavailable_and_retries_apply_once() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let (upstream, proxied_url) = through_proxy(&db.url, SocketAddr::from(([127, 0, 0, 1], 0)));
    let proxy = CutProxy::start(upstream).await;
    let (_, proxied_url) = through_proxy(&proxied_url, proxy.addr);

    let mut config = test_config(ClockMode::Manual);
    config.http_addr = None;
    config.db_acquire_timeout_ms = 1000;
    config.database_url = proxied_url;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(ocs_lifecycle::server::serve_with_listeners(
        config,
        listener,
        None,
        shutdown.clone(),
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    wait_health(&channel, ServingStatus::Serving, "start-up").await;
    let mut client = AccountLifecycleClient::new(channel.clone());

    let accounts: Vec<String> = (0..4).map(|i| format!("861390000{i:04}")).collect();
    for msisdn in &accounts {
        valid_account(&mut client, msisdn).await;
    }
    let load = Arc::new(Load::default());
    let stop = CancellationToken::new();
    let workers = spawn_recharge_workers(&channel, &accounts, &load, &stop);

    wait_for_acks(&load, 20, "no recharge was applied before the cut").await;
    proxy.cut();
    // While the database is unreachable: UNAVAILABLE (never INTERNAL), for reads and writes.
    let while_down = recharge(&accounts[0], 4321, "while-down");
    let status = client
        .recharge(while_down.clone())
        .await
        .expect_err("a recharge cannot be applied while PostgreSQL is unreachable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "STORAGE_UNAVAILABLE", "{status:?}");
    let status = client
        .get_account(GetAccountRequest {
            msisdn: accounts[1].clone(),
        })
        .await
        .expect_err("a read cannot be answered while PostgreSQL is unreachable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let acked_while_down = load.acked_count.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();

    // Recovered without a restart: the retried request applies once, the load goes on.
    let deadline = tokio::time::Instant::now() + SAFETY;
    let replayed = loop {
        match client.recharge(while_down.clone()).await {
            Ok(result) => break result.into_inner().replayed,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(tokio::time::Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("after the restore: {status:?}"),
        }
    };
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
    wait_for_acks(&load, acked_while_down + 20, "the load did not resume").await;
    stop.cancel();
    for worker in workers {
        tokio::time::timeout(SAFETY, worker)
            .await
            .expect("a worker did not finish")
            .expect("worker");
    }
    assert!(
        load.unavailable.load(Ordering::Relaxed) > 0,
        "the load saw the outage"
    );

    let mut acked = load.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    acked.insert("while-down".into(), (accounts[0].clone(), 4321));
    let direct = db.open().await;
    assert_recharges_applied_once(&direct, &acked, &accounts).await;
    let rows = recharge_rows(&direct).await;
    assert_eq!(
        rows.len(),
        acked.len(),
        "a history row for every acknowledged recharge and no other"
    );
    for msisdn in &accounts {
        let expected: i64 = acked
            .values()
            .filter(|(m, _)| m == msisdn)
            .map(|(_, amount)| amount)
            .sum();
        assert_eq!(balance(&mut client, msisdn).await, expected, "{msisdn}");
    }
    direct.close().await;
    shutdown.cancel();
    tokio::time::timeout(SAFETY, server)
        .await
        .expect("the server did not stop")
        .expect("server task")
        .expect("server result");
}

// ---------------------------------------------------------------------------------------------
// Real `serve` processes on SQLite.

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A running `ocs-lifecycle serve` whose stderr is collected (a pipe drained by a thread: a
/// pipe, unlike a file, is not subject to the file-size limit of the disk-full test).
struct Served {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

/// How [`Served::spawn`] runs `serve`.
struct ServeOptions {
    /// Run through `sh` with SIGXFSZ ignored, so a write past the file-size limit fails with
    /// EFBIG instead of killing the process (an ignored signal stays ignored across `exec`).
    ignore_sigxfsz: bool,
    /// The operations endpoint on `127.0.0.1:0` (its port is read from the log), or off.
    http: bool,
    /// `system` or `manual`.
    clock: &'static str,
    /// `OCS_*` configuration; every other `OCS_*` variable of the test is removed.
    env: Vec<(String, String)>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            ignore_sigxfsz: false,
            http: false,
            clock: "system",
            env: Vec::new(),
        }
    }
}

impl Served {
    /// `serve` on the SQLite file `db` with the system clock, no operations endpoint.
    fn start(dir: &Path, db: &Path, ignore_sigxfsz: bool) -> Served {
        let url = format!("sqlite://{}", db.display());
        Self::spawn(
            dir,
            &url,
            ServeOptions {
                ignore_sigxfsz,
                ..ServeOptions::default()
            },
        )
    }

    /// `serve` on `database_url`, run in `dir`.
    fn spawn(dir: &Path, database_url: &str, options: ServeOptions) -> Served {
        let addr = format!("127.0.0.1:{}", free_port());
        let http_addr = if options.http { "127.0.0.1:0" } else { "off" };
        let args = [
            "serve",
            "--listen",
            &addr,
            "--http-addr",
            http_addr,
            "--clock",
            options.clock,
            "--database-url",
            database_url,
        ];
        let mut command = if options.ignore_sigxfsz {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
                .arg(BIN)
                .args(args);
            sh
        } else {
            let mut bin = Command::new(BIN);
            bin.args(args);
            bin
        };
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OCS_") {
                command.env_remove(name);
            }
        }
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .current_dir(dir)
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

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The address of the operations endpoint, from the start-up log line
    /// (`operations endpoint listening … http_addr=…`); `serve` prints it before it serves.
    fn http_addr(&self) -> SocketAddr {
        let log = strip_ansi(&self.log());
        log.lines()
            .filter(|line| line.contains("operations endpoint listening"))
            .find_map(|line| {
                let value = line.split("http_addr=").nth(1)?;
                value.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no operations endpoint address in the log:\n{log}"))
    }

    /// Still the same running process (not exited).
    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_lazy()
    }

    async fn wait_serving(&mut self) -> Channel {
        let channel = self.channel();
        let deadline = tokio::time::Instant::now() + SAFETY;
        while health_status(&channel).await != Some(ServingStatus::Serving as i32) {
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

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` without the terminal colour sequences (`ESC [ … m`) of the text log format.
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

/// `GET /readyz` of the operations endpoint: (status code, body).
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

/// `PRAGMA integrity_check` of the SQLite file, through a connection of its own.
async fn integrity_check(db: &Path) -> String {
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

async fn open_sqlite(db: &Path) -> common::Db {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(10));
    common::Db::Sqlite(
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("open the SQLite file"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serve_killed_during_recharges_loses_no_acknowledged_recharge() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = dir.path().join("ocs.db");
    let mut served = Served::start(dir.path(), &db_path, false);
    let channel = served.wait_serving().await;
    let mut client = AccountLifecycleClient::new(channel.clone());
    let accounts: Vec<String> = (0..6).map(|i| format!("861380000{i:04}")).collect();
    for msisdn in &accounts {
        valid_account(&mut client, msisdn).await;
    }

    // Concurrent recharges; each worker stops at its first error (the kill).
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = accounts
        .iter()
        .enumerate()
        .map(|(worker, msisdn)| {
            let mut client = AccountLifecycleClient::new(channel.clone());
            let (msisdn, acked, acked_count) = (msisdn.clone(), acked.clone(), acked_count.clone());
            tokio::spawn(async move {
                for i in 1.. {
                    let request_id = format!("k{worker}-{i}");
                    let amount = 1000 + i64::from(i % 500);
                    match client
                        .recharge(recharge(&msisdn, amount, &request_id))
                        .await
                    {
                        Ok(_) => {
                            acked
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(request_id, (msisdn.clone(), amount));
                            acked_count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + SAFETY;
    while acked_count.load(Ordering::Relaxed) < 60 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recharges did not progress\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    served.kill();
    for worker in workers {
        tokio::time::timeout(SAFETY, worker)
            .await
            .expect("a worker did not stop after the kill")
            .expect("worker");
    }
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // The file opens cleanly, before any recovery by the service.
    assert_eq!(integrity_check(&db_path).await, "ok");
    let direct = open_sqlite(&db_path).await;
    assert_recharges_applied_once(&direct, &acked, &accounts).await;
    direct.close().await;

    // The restarted service serves the same data: an acknowledged recharge is a replay.
    let mut served = Served::start(dir.path(), &db_path, false);
    let channel = served.wait_serving().await;
    let mut client = AccountLifecycleClient::new(channel);
    let (request_id, (msisdn, amount)) = acked.iter().next().expect("a recharge was acked");
    let replay = client
        .recharge(recharge(msisdn, *amount, request_id))
        .await
        .expect("replay after the restart")
        .into_inner();
    assert!(
        replay.replayed,
        "{request_id} was committed before the kill"
    );
    let direct = open_sqlite(&db_path).await;
    assert_recharges_applied_once(&direct, &acked, &accounts).await;
    direct.close().await;
    served.kill();
    assert_eq!(integrity_check(&db_path).await, "ok");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_storage_not_writable_answers_unavailable_and_health_recovers_after_a_probe() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = dir.path().join("ocs.db");
    let url = format!("sqlite://{}", db_path.display());
    let options = ServeOptions {
        ignore_sigxfsz: true,
        http: true,
        ..ServeOptions::default()
    };
    let mut served = Served::spawn(dir.path(), &url, options);
    let channel = served.wait_serving().await;
    let http_addr = served.http_addr();
    assert_eq!(readyz(http_addr).await.0, 200, "ready before the fault");
    let mut client = AccountLifecycleClient::new(channel.clone());
    let msisdn = "8613700000001";
    valid_account(&mut client, msisdn).await;
    client
        .recharge(recharge(msisdn, 5000, "before"))
        .await
        .expect("a recharge while the storage is writable");
    let pid = served.child.id();

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
    // The probe keeps failing while the limit holds: still NOT_SERVING a few probes later.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        health_status(&channel).await,
        Some(ServingStatus::NotServing as i32)
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
    let options = ServeOptions {
        http: true,
        env: vec![("OCS_DB_ACQUIRE_TIMEOUT_MS".into(), "1000".into())],
        ..ServeOptions::default()
    };
    let mut served = Served::spawn(dir.path(), &cluster.url(), options);
    let channel = served.wait_serving().await;
    let http_addr = served.http_addr();
    let pid = served.child.id();
    let mut client = AccountLifecycleClient::new(channel.clone());
    let accounts: Vec<String> = (0..4).map(|i| format!("861360000{i:04}")).collect();
    for msisdn in &accounts {
        valid_account(&mut client, msisdn).await;
    }

    let load = Arc::new(Load::default());
    let stop = CancellationToken::new();
    let workers = spawn_recharge_workers(&channel, &accounts, &load, &stop);

    // Recharged only by a request held in flight across each stop.
    let held = "8613600009999".to_owned();
    valid_account(&mut client, &held).await;
    let mut acked = BTreeMap::new();
    // `fast`: sessions are ended with 57P01 (admin shutdown), then the server is gone;
    // `immediate`: the postmaster kills its backends without a checkpoint, like a crash, and
    // the restart replays the WAL.
    for mode in ["fast", "immediate"] {
        let before = load.acked_count.load(Ordering::Relaxed);
        wait_for_acks(&load, before + 20, "the load did not progress").await;

        // A recharge whose transaction is inside PostgreSQL when it stops: it waits for the
        // lock of its account row, which the test holds.
        let mut locker = sqlx::PgConnection::connect(&cluster.url())
            .await
            .expect("connect to the private cluster");
        sqlx::query("BEGIN")
            .execute(&mut locker)
            .await
            .expect("BEGIN");
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
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
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
        let status = tokio::time::timeout(SAFETY, in_flight)
            .await
            .expect("the held recharge was never answered")
            .expect("held recharge task")
            .expect_err("the held recharge cannot commit: PostgreSQL stopped under it");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "{mode}: {status:?}\n{}",
            served.log()
        );
        if mode == "fast" {
            // The backend's FATAL 57P01 reached the service as such.
            assert!(
                status.message().contains("administrator command"),
                "{mode}: the 57P01 admin-shutdown error: {status:?}"
            );
        }
        eprintln!("{mode}: the recharge in flight was answered {status:?}");

        // Down: UNAVAILABLE for writes and reads, never INTERNAL; /readyz 503.
        let while_down = recharge(&accounts[0], 4321, &format!("while-down-{mode}"));
        let status = client
            .recharge(while_down.clone())
            .await
            .expect_err("no recharge can be applied while PostgreSQL is stopped");
        assert_eq!(status.code(), Code::Unavailable, "{mode}: {status:?}");
        assert_eq!(reason(&status), "STORAGE_UNAVAILABLE", "{status:?}");
        let status = client
            .get_account(GetAccountRequest {
                msisdn: accounts[1].clone(),
            })
            .await
            .expect_err("no read can be answered while PostgreSQL is stopped");
        assert_eq!(status.code(), Code::Unavailable, "{mode}: {status:?}");
        let (ready, body) = readyz(http_addr).await;
        assert_eq!(ready, 503, "{mode}: /readyz while stopped: {body}");
        let acked_while_down = load.acked_count.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;

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
        assert!(!replayed, "{mode}: the held recharge was rolled back");
        acked.insert(held_request.request_id.clone(), (held.clone(), 777));
        wait_for_acks(&load, acked_while_down + 20, "the load did not resume").await;
        wait_readyz(http_addr, 200, "after the restart").await;
        assert!(served.running(), "{mode}: serve must survive the outage");
        assert_eq!(served.child.id(), pid);
    }
    stop.cancel();
    for worker in workers {
        tokio::time::timeout(SAFETY, worker)
            .await
            .expect("a worker did not finish")
            .expect("a worker saw an error other than UNAVAILABLE");
    }
    assert!(
        load.unavailable.load(Ordering::Relaxed) > 0,
        "the load saw the outages"
    );
    let messages = load
        .unavailable_messages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    eprintln!(
        "{} UNAVAILABLE answers to the load; messages: {messages:#?}",
        load.unavailable.load(Ordering::Relaxed)
    );

    acked.extend(load.acked.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let mut accounts = accounts;
    accounts.push(held);
    let direct = common::Db::Postgres(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&cluster.url())
            .await
            .expect("connect to the private cluster"),
    );
    assert_recharges_applied_once(&direct, &acked, &accounts).await;
    assert_eq!(
        recharge_rows(&direct).await.len(),
        acked.len(),
        "a history row for every acknowledged recharge and no other"
    );
    for msisdn in &accounts {
        let expected: i64 = acked
            .values()
            .filter(|(m, _)| m == msisdn)
            .map(|(_, amount)| amount)
            .sum();
        assert_eq!(balance(&mut client, msisdn).await, expected, "{msisdn}");
    }
    direct.close().await;
    served.kill();
}

// ---------------------------------------------------------------------------------------------
// SIGKILL during webhook delivery.

/// Unactivated cards provisioned at `CARD_T0` die after 540 days; the sweep at `CARD_T1`
/// recycles them: one STATE_CHANGED and one NUMBER_RECYCLED event each.
const CARD_T0: &str = "2030-03-01T02:00:00Z";
const CARD_T1: &str = "2031-09-01T02:00:00Z";
/// Cards recycled: twice as many events.
const WEBHOOK_CARDS: usize = 200;
/// The hook answers each POST after this delay, so deliveries are in flight at the kill.
const HOOK_DELAY: Duration = Duration::from_millis(80);

/// (sequence, event_id, msisdn) of the outbox events the webhook sends.
async fn webhook_events(db: &common::Db) -> Vec<(i64, String, String)> {
    let sql = "SELECT sequence, event_id, msisdn FROM outbox WHERE event_type IN ($1, $2) \
               ORDER BY sequence";
    let (recycled, changed) = (
        ocs_lifecycle::proto::EventType::NumberRecycled as i32,
        ocs_lifecycle::proto::EventType::StateChanged as i32,
    );
    let rows: Result<Vec<(i64, String, String)>, sqlx::Error> = match db {
        common::Db::Sqlite(pool) => {
            sqlx::query_as(sql)
                .bind(recycled)
                .bind(changed)
                .fetch_all(pool)
                .await
        }
        common::Db::Postgres(pool) => {
            sqlx::query_as(sql)
                .bind(recycled)
                .bind(changed)
                .fetch_all(pool)
                .await
        }
    };
    rows.expect("read the outbox")
}

/// event_id → delivered, of every `webhook_deliveries` row.
async fn delivery_rows(db: &common::Db) -> BTreeMap<String, bool> {
    let sql = "SELECT event_id, delivered_at IS NOT NULL FROM webhook_deliveries";
    let rows: Result<Vec<(String, bool)>, sqlx::Error> = match db {
        common::Db::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        common::Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
    };
    rows.expect("read webhook_deliveries").into_iter().collect()
}

/// Event ids the hook answered 2xx, in the order of the answers.
fn answered(hook: &Hook) -> Vec<String> {
    hook.received()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.header("x-ocs-event-id").unwrap_or_default().to_owned())
        .collect()
}

fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts
}

fn webhook_serve_options(hook: &Hook) -> ServeOptions {
    let env = [
        ("OCS_BSS__WEBHOOK_URL", hook.url()),
        ("OCS_BSS__WEBHOOK_SECRET", "fault-test-secret".to_owned()),
        (
            "OCS_BSS__WEBHOOK_EVENTS",
            r#"["NUMBER_RECYCLED", "STATE_CHANGED"]"#.to_owned(),
        ),
        // The lease of an attempt a crash abandoned is timeout + 2 s.
        ("OCS_BSS__TIMEOUT_MS", "1000".to_owned()),
        ("OCS_BSS__INITIAL_BACKOFF_MS", "50".to_owned()),
        ("OCS_BSS__MAX_BACKOFF_MS", "200".to_owned()),
        // Events come only from the sweep the test asks for.
        ("OCS_SWEEP__SCHEDULER", "false".to_owned()),
    ];
    ServeOptions {
        clock: "manual",
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..ServeOptions::default()
    }
}

async fn serve_killed_during_webhook_delivery_loses_no_event(db: Arc<TestDb>) {
    let hook = Hook::start(Box::new(|_| (200, HOOK_DELAY))).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut served = Served::spawn(dir.path(), &db.url, webhook_serve_options(&hook));
    let channel = served.wait_serving().await;
    let clock = TestClockClient::new(channel.clone());
    let set_time = |rfc3339: &'static str| {
        let mut clock = clock.clone();
        async move {
            clock
                .set_time(SetTimeRequest {
                    time: Some(common::ts(rfc3339)),
                })
                .await
                .unwrap_or_else(|e| panic!("SetTime {rfc3339}: {e:?}"));
        }
    };
    set_time(CARD_T0).await;
    let provisioners: Vec<_> = (0..4)
        .map(|worker| {
            let mut client = AccountLifecycleClient::new(channel.clone());
            tokio::spawn(async move {
                for i in (worker..WEBHOOK_CARDS).step_by(4) {
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
    set_time(CARD_T1).await;
    let swept = AccountLifecycleClient::new(channel.clone())
        .advance_states(AdvanceStatesRequest {
            as_of: None,
            dry_run: false,
        })
        .await
        .expect("AdvanceStates")
        .into_inner();
    assert_eq!(swept.to_recycled_unactivated, WEBHOOK_CARDS as u64);
    let check = db.open().await;
    let events = webhook_events(&check).await;
    assert_eq!(events.len(), 2 * WEBHOOK_CARDS, "two events per card");
    let all: BTreeSet<String> = events.iter().map(|e| e.1.clone()).collect();

    // Kill once a quarter has been answered: dozens of POSTs are in flight then.
    let deadline = tokio::time::Instant::now() + SAFETY;
    while answered(&hook).len() < all.len() / 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook did not deliver\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    served.kill();
    // Let the hook finish what it was answering (a dead client's request is not answered).
    tokio::time::sleep(HOOK_DELAY * 3).await;
    let answered_at_kill = counts(&answered(&hook));
    let seen_at_kill: BTreeSet<String> = hook
        .seen()
        .iter()
        .map(|r| r.header("x-ocs-event-id").unwrap_or_default().to_owned())
        .collect();
    let delivered_at_kill: BTreeSet<String> = delivery_rows(&check)
        .await
        .into_iter()
        .filter_map(|(id, delivered)| delivered.then_some(id))
        .collect();
    assert!(
        delivered_at_kill.len() < all.len(),
        "the kill came after every delivery"
    );
    for id in &delivered_at_kill {
        assert!(
            answered_at_kill.contains_key(id),
            "{id} recorded as delivered but never answered by the BSS"
        );
    }
    // Confirmed by the BSS, not yet recorded: the only events that may arrive twice.
    let unrecorded: BTreeSet<String> = answered_at_kill
        .keys()
        .filter(|id| !delivered_at_kill.contains(*id))
        .cloned()
        .collect();
    // Posted but not answered before the kill.
    let unanswered = seen_at_kill
        .iter()
        .filter(|id| !answered_at_kill.contains_key(*id))
        .count();

    // A new process on the same database delivers the rest.
    let mut served = Served::spawn(dir.path(), &db.url, webhook_serve_options(&hook));
    served.wait_serving().await;
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let received: BTreeSet<String> = answered(&hook).into_iter().collect();
        let rows = delivery_rows(&check).await;
        let done = received.is_superset(&all)
            && rows.len() == all.len()
            && rows.values().all(|delivered| *delivered);
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every event was delivered after the restart: {} of {} answered, {} of {} rows \
             delivered\n{}",
            received.intersection(&all).count(),
            all.len(),
            rows.values().filter(|d| **d).count(),
            rows.len(),
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more is sent (a few poll intervals).
    let settled = hook.seen().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        hook.seen().len(),
        settled,
        "nothing is sent after all is delivered"
    );

    let order = answered(&hook);
    let final_counts = counts(&order);
    let unknown: Vec<_> = final_counts
        .keys()
        .filter(|id| !all.contains(*id))
        .collect();
    assert!(unknown.is_empty(), "events nobody emitted: {unknown:?}");
    let duplicates: BTreeSet<String> = final_counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    for id in &duplicates {
        assert!(
            unrecorded.contains(id),
            "{id} was sent again although its delivery was recorded before the kill"
        );
        assert_eq!(
            final_counts[id], 2,
            "{id}: once before the kill, once after"
        );
    }
    // Per MSISDN, the first answers come in sequence order.
    let first_answer: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .rev()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut last_of_msisdn: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
    for (sequence, id, msisdn) in &events {
        let at = first_answer[id.as_str()];
        if let Some((previous, previous_at)) = last_of_msisdn.get(msisdn.as_str()) {
            assert!(
                *previous_at < at,
                "{msisdn}: event {sequence} was answered before event {previous}"
            );
        }
        last_of_msisdn.insert(msisdn, (*sequence, at));
    }
    eprintln!(
        "webhook kill ({:?}): {} events; at the kill {} answered and recorded, {} answered but \
         not recorded, {} posted and unanswered; duplicates after the restart: {}",
        db.backend,
        all.len(),
        delivered_at_kill.len(),
        unrecorded.len(),
        unanswered,
        duplicates.len()
    );
    check.close().await;
    served.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serve_killed_during_webhook_delivery_loses_no_event() {
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    serve_killed_during_webhook_delivery_loses_no_event(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serve_killed_during_webhook_delivery_loses_no_event() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    serve_killed_during_webhook_delivery_loses_no_event(db).await;
}
