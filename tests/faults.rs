//! Faults with real processes and real databases (issue 7):
//!
//! - PostgreSQL unreachable during recharge load: the service reaches PostgreSQL through a TCP
//!   proxy in the test, which is cut (every connection dropped, new ones refused) and restored;
//!   the shared PostgreSQL server itself is never stopped.
//! - SQLite: `ocs-lifecycle serve` killed with SIGKILL during concurrent recharges.
//! - Storage not writable: the file-size limit of a running `serve` (`RLIMIT_FSIZE`, set with
//!   `prlimit`) is put to 0, so every `write(2)` to its database files fails with EFBIG as on
//!   a full disk — a mechanism that also stops root (the tests may run as root, where a
//!   read-only file mode does not), then lifted again.
//!
//! No test asserts on elapsed time; every wait has a generous safety bound.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestDb, reason, test_config};
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{
    ActivateRequest, GetAccountRequest, ProvisionAccountRequest, RechargeChannel, RechargeRequest,
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
    let server = tokio::spawn(ocs_lifecycle::api::serve_with_listeners(
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
    let workers: Vec<_> = accounts
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
        .collect();

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

impl Served {
    /// `serve` on the SQLite file `db` with the system clock, no operations endpoint. With
    /// `ignore_sigxfsz`, run through `sh` with SIGXFSZ ignored, so a write past the file-size
    /// limit fails with EFBIG instead of killing the process (an ignored signal stays ignored
    /// across `exec`).
    fn start(dir: &Path, db: &Path, ignore_sigxfsz: bool) -> Served {
        let addr = format!("127.0.0.1:{}", free_port());
        let url = format!("sqlite://{}", db.display());
        let args = [
            "serve",
            "--listen",
            &addr,
            "--http-addr",
            "off",
            "--clock",
            "system",
            "--database-url",
            &url,
        ];
        let mut command = if ignore_sigxfsz {
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
    let mut served = Served::start(dir.path(), &db_path, true);
    let channel = served.wait_serving().await;
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
    // Reads still work and show nothing of the refused recharge.
    assert_eq!(balance(&mut client, msisdn).await, 5000);
    // The probe keeps failing while the limit holds: still NOT_SERVING a few probes later.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        health_status(&channel).await,
        Some(ServingStatus::NotServing as i32)
    );

    // Space again: the probe succeeds, health is SERVING, the retry applies once.
    set_file_size_limit(pid, "unlimited:unlimited");
    wait_health(
        &channel,
        ServingStatus::Serving,
        "after the limit was lifted",
    )
    .await;
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
