//! The soak (issue 7, "Load"): a real `ocs-lifecycle serve` process under steady mixed traffic
//! with faults injected, then a consistency check read directly from its database.
//!
//! Shared by `ocs-bench soak` (minutes) and `tests/soak.rs` (seconds); each uses part of it.
//!
//! - The server is a child process (`serve --clock manual --http-addr off`) on a fresh
//!   database, with its BSS webhook pointing at a listener in this process that records every
//!   `X-Ocs-Event-Id` it receives (and checks the signature).
//! - Traffic is open-loop: one operation every `1 / rate` s whatever the answers (Recharge,
//!   Charge, Authorize, GetAccount in equal parts). Every write has its own `request_id` and is
//!   retried with the same `request_id` until it is answered; each acknowledged write is
//!   remembered with its amount.
//! - Time: the manual clock is moved forward 215 days in steps over the run, so a cohort of
//!   accounts activated with 1–90 days of validity expires, goes to GRACE, LOCKED and RECYCLED
//!   (some accounts every day): real sweeps (the scheduler's catch-up on each move) and real
//!   webhook events throughout the run.
//! - Faults: SIGKILL + restart of the server on the same database (all in the first 40 % of the
//!   run, so the memory of the last 60 % is one process); the webhook listener answering 500
//!   for a while; on PostgreSQL, the server's database connections cut through a TCP proxy;
//!   bad inputs that must be refused.
//!
//! The manual clock of a restarted server starts again at the real time, which is behind the
//! dates already written. So a restart closes a gate: no new request is sent until the clock
//! has been set back to where it was (a real deployment uses the system clock and needs no
//! gate). Requests in flight at the SIGKILL are cut as in a real crash.
//!
//! The `serve` process and the PostgreSQL proxy come from the process harness
//! (`tests/common/process.rs`), shared with the fault suites.
#![allow(dead_code)] // The bench and the test each use part of this module.

#[path = "../tests/common/process.rs"]
mod process;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use ocs_lifecycle::proto;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::test_clock_client::TestClockClient;
use process::{DbProxy, Log, NotServing, ServeCommand, Served};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub const WEBHOOK_SECRET: &str = "soak-webhook-secret";
/// Days the manual clock moves over the run: the longest-lived expiring account (90 days of
/// validity) is recycled after 90 + 90 + 30 days and one more midnight. The traffic accounts
/// stay VALID: activation gives 180 days, the setup recharge 365 more (capped at 540).
const TOTAL_DAYS: i64 = 215;
/// Validity of the expiring cohort: 1..=MAX_EXPIRING_DAYS days, so that from the second day
/// to the 211th some accounts cross a boundary every day: every fault meets sweeps and events.
const MAX_EXPIRING_DAYS: u32 = 90;
/// Bound on any one wait (start-up, an operation retried until answered, the drain); never an
/// assertion on speed.
const SAFETY: Duration = Duration::from_secs(180);
/// One attempt of one request; past it the request is retried with the same request_id.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Balance every traffic account gets at setup, so charges rarely find it short.
const SETUP_RECHARGE: i64 = 20_000;

const HISTORY_RECHARGE: i32 = proto::HistoryKind::Recharge as i32;
const HISTORY_CHARGE: i32 = proto::HistoryKind::Charge as i32;
const HISTORY_STATE_CHANGED: i32 = proto::HistoryKind::StateChanged as i32;
const RECYCLED: i32 = proto::AccountState::Recycled as i32;

pub struct SoakOptions {
    /// A fresh, empty database (SQLite file URL or PostgreSQL database) the caller owns.
    pub database_url: String,
    /// The `ocs-lifecycle` binary.
    pub server_bin: PathBuf,
    /// Server logs go here.
    pub work_dir: PathBuf,
    /// Traffic time (setup and the final drain come on top).
    pub duration: Duration,
    /// Operations per second, open loop.
    pub rate: u32,
    /// Accounts under traffic; a fifth as many (at least 10) make the expiring cohort.
    pub accounts: u32,
    /// SIGKILL + restart count.
    pub kills: u32,
    /// RSS sampling interval.
    pub rss_every: Duration,
    /// Judge the memory verdict (a pass/fail check); off for short runs.
    pub judge_memory: bool,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl SoakOptions {
    fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres")
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Default)]
pub struct OpSummary {
    pub name: &'static str,
    pub sent: u64,
    pub ok: u64,
    /// Answered with a business refusal (a charge larger than the balance).
    pub refused: u64,
    /// Attempts that got no answer (UNAVAILABLE, transport error, timeout) and were retried.
    pub retried_attempts: u64,
    /// Reads answered UNAVAILABLE or cut (not retried).
    pub unavailable: u64,
    pub unexpected: u64,
    pub p50_ms: u32,
    pub p99_ms: u32,
    pub max_ms: u32,
}

#[derive(Default)]
pub struct SoakReport {
    pub backend: &'static str,
    pub traffic_s: f64,
    pub rate_target: u32,
    pub accounts: u32,
    pub expiring_accounts: u32,
    pub ops: Vec<OpSummary>,
    pub ops_scheduled: u64,
    pub ops_done: u64,
    /// Not sent because too many were in flight (the open loop could not keep up).
    pub ops_shed: u64,
    pub kills: u32,
    pub webhook_outage_s: f64,
    pub webhook_refused_posts: u64,
    pub db_cuts: u32,
    pub bad_inputs_tried: u64,
    pub bad_inputs_refused: u64,
    pub clock_days: i64,
    pub acknowledged_writes: u64,
    pub unanswered_writes: u64,
    pub outbox_events: u64,
    pub events_received: u64,
    pub webhook_duplicates: u64,
    pub drain_s: f64,
    pub rss_start_mib: f64,
    pub rss_max_mib: f64,
    pub rss_end_mib: f64,
    pub rss_samples: usize,
    pub memory: String,
    pub checks: Vec<Check>,
    pub fault_log: Vec<String>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }

    fn check(&mut self, name: &str, ok: bool, detail: String) {
        self.checks.push(Check {
            name: name.to_owned(),
            ok,
            detail,
        });
    }

    /// Markdown tables for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "soak, backend {}: {:.0} s of traffic at {} ops/s target, {} accounts + {} expiring",
            self.backend, self.traffic_s, self.rate_target, self.accounts, self.expiring_accounts
        ));
        line(String::new());
        line("| operation | sent | ok | refused | retried attempts | unavailable (reads) | unexpected | p50 / p99 / max ms |".into());
        line("|---|---:|---:|---:|---:|---:|---:|---:|".into());
        for op in &self.ops {
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
                op.name,
                op.sent,
                op.ok,
                op.refused,
                op.retried_attempts,
                op.unavailable,
                op.unexpected,
                op.p50_ms,
                op.p99_ms,
                op.max_ms
            ));
        }
        line(String::new());
        line("| figure | value |".into());
        line("|---|---:|".into());
        let rate = self.ops_done as f64 / self.traffic_s.max(1e-9);
        let figures: Vec<(&str, String)> = vec![
            (
                "operations done / scheduled / shed",
                format!(
                    "{} / {} / {}",
                    self.ops_done, self.ops_scheduled, self.ops_shed
                ),
            ),
            (
                "rate held",
                format!("{rate:.1} ops/s (target {})", self.rate_target),
            ),
            ("SIGKILL + restart of serve", format!("{}", self.kills)),
            (
                "webhook answering 500",
                format!(
                    "{:.0} s, {} POSTs refused",
                    self.webhook_outage_s, self.webhook_refused_posts
                ),
            ),
            ("database connections cut", format!("{}", self.db_cuts)),
            (
                "bad inputs refused / tried",
                format!("{} / {}", self.bad_inputs_refused, self.bad_inputs_tried),
            ),
            ("manual clock moved", format!("{} days", self.clock_days)),
            (
                "acknowledged writes (incl. setup)",
                format!("{}", self.acknowledged_writes),
            ),
            (
                "writes never answered",
                format!("{}", self.unanswered_writes),
            ),
            (
                "outbox events / received by the webhook (duplicates)",
                format!(
                    "{} / {} ({})",
                    self.outbox_events, self.events_received, self.webhook_duplicates
                ),
            ),
            ("drain after the traffic", format!("{:.1} s", self.drain_s)),
            (
                "server RSS first / max / last sample",
                format!(
                    "{:.1} / {:.1} / {:.1} MiB ({} samples)",
                    self.rss_start_mib, self.rss_max_mib, self.rss_end_mib, self.rss_samples
                ),
            ),
            ("memory", self.memory.clone()),
        ];
        for (name, value) in figures {
            line(format!("| {name} | {value} |"));
        }
        line(String::new());
        line("| check | result | detail |".into());
        line("|---|---|---|".into());
        for c in &self.checks {
            line(format!(
                "| {} | {} | {} |",
                c.name,
                if c.ok { "ok" } else { "FAILED" },
                c.detail
            ));
        }
        line(String::new());
        line("faults, in order (seconds since the traffic started):".into());
        for f in &self.fault_log {
            line(format!("  {f}"));
        }
        out
    }

    /// One JSON object.
    pub fn json(&self, machine: &str) -> String {
        let ops: Vec<serde_json::Value> = self
            .ops
            .iter()
            .map(|o| {
                serde_json::json!({
                    "name": o.name, "sent": o.sent, "ok": o.ok, "refused": o.refused,
                    "retried_attempts": o.retried_attempts, "unavailable": o.unavailable,
                    "unexpected": o.unexpected, "p50_ms": o.p50_ms, "p99_ms": o.p99_ms,
                    "max_ms": o.max_ms,
                })
            })
            .collect();
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "detail": c.detail}))
            .collect();
        serde_json::json!({
            "backend": self.backend,
            "soak": {
                "traffic_s": self.traffic_s, "rate_target": self.rate_target,
                "rate_held": self.ops_done as f64 / self.traffic_s.max(1e-9),
                "accounts": self.accounts, "expiring_accounts": self.expiring_accounts,
                "ops_scheduled": self.ops_scheduled, "ops_done": self.ops_done,
                "ops_shed": self.ops_shed, "ops": ops, "kills": self.kills,
                "webhook_outage_s": self.webhook_outage_s,
                "webhook_refused_posts": self.webhook_refused_posts, "db_cuts": self.db_cuts,
                "bad_inputs_tried": self.bad_inputs_tried,
                "bad_inputs_refused": self.bad_inputs_refused, "clock_days": self.clock_days,
                "acknowledged_writes": self.acknowledged_writes,
                "unanswered_writes": self.unanswered_writes,
                "outbox_events": self.outbox_events, "events_received": self.events_received,
                "webhook_duplicates": self.webhook_duplicates, "drain_s": self.drain_s,
                "rss_start_mib": self.rss_start_mib, "rss_max_mib": self.rss_max_mib,
                "rss_end_mib": self.rss_end_mib, "memory": self.memory,
                "passed": self.passed(), "checks": checks, "faults": self.fault_log,
            },
            "machine": machine,
        })
        .to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook listener.

#[derive(Default)]
struct Bss {
    /// Answer 500 to everything while set.
    failing: AtomicBool,
    /// event_id → deliveries answered 200.
    received: Mutex<HashMap<String, u32>>,
    refused: AtomicU64,
    bad_signature: AtomicU64,
}

async fn receive(State(bss): State<Arc<Bss>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if bss.failing.load(Ordering::Acquire) {
        bss.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let expected = ocs_lifecycle::notify::payload::signature(WEBHOOK_SECRET.as_bytes(), &body);
    if header("x-ocs-signature") != expected {
        bss.bad_signature.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    *lock(&bss.received)
        .entry(header("x-ocs-event-id"))
        .or_insert(0) += 1;
    StatusCode::OK
}

async fn start_bss(bss: Arc<Bss>) -> SocketAddr {
    let app = axum::Router::new()
        .route("/bss/events", axum::routing::post(receive))
        .with_state(bss);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the webhook listener");
    let addr = listener.local_addr().expect("listener address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// The soak's server: a `serve` process (`process::Served`) restarted on the same address and
/// database after each SIGKILL, behind a gate that holds requests back until its clock is back.
struct Server {
    command: ServeCommand,
    process: Mutex<Option<Served>>,
    pid: AtomicU32,
    /// Starts so far (1 = the first process).
    starts: AtomicU32,
    channel: Channel,
    /// Open while requests may be sent (closed during a restart until the clock is back).
    gate: watch::Sender<bool>,
    /// Where the manual clock is (the last instant it was told), to restore after a restart.
    clock_at: Mutex<Option<DateTime<Utc>>>,
}

impl Server {
    /// `serve --clock manual --http-addr off` on `database_url`, its webhook at `webhook_url`.
    fn command(opts: &SoakOptions, database_url: String, webhook_url: String) -> ServeCommand {
        ServeCommand {
            clock: "manual",
            rust_log: "warn",
            ..ServeCommand::new(&opts.server_bin, &opts.work_dir, database_url)
        }
        .with_env([
            ("OCS_BSS__WEBHOOK_URL", webhook_url.as_str()),
            ("OCS_BSS__WEBHOOK_SECRET", WEBHOOK_SECRET),
            (
                "OCS_BSS__WEBHOOK_EVENTS",
                r#"["NUMBER_RECYCLED", "STATE_CHANGED", "VALIDITY_EXPIRING"]"#,
            ),
            // Retries every 2 s at most, so the drain after the 500s is short; the outage stays
            // well inside the 30 attempts before a dead letter.
            ("OCS_BSS__INITIAL_BACKOFF_MS", "200"),
            ("OCS_BSS__MAX_BACKOFF_MS", "2000"),
            // A request waits at most 2 s for a PostgreSQL connection while the path is cut.
            ("OCS_DB_ACQUIRE_TIMEOUT_MS", "2000"),
        ])
    }

    /// Starts a process and waits until it reports SERVING (retrying a start that exits, e.g.
    /// while the port is still held by the killed process).
    async fn start(&self) {
        let deadline = tokio::time::Instant::now() + SAFETY;
        loop {
            let n = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
            let log = self.command.dir.join(format!("serve-{n}.log"));
            let mut served = Served::spawn(&self.command, Log::File(log));
            self.pid.store(served.pid(), Ordering::Relaxed);
            match served.wait_serving(deadline).await {
                Ok(_) => {
                    *lock(&self.process) = Some(served);
                    return;
                }
                Err(NotServing::Exited(status)) if tokio::time::Instant::now() < deadline => {
                    eprintln!("soak: serve exited at start ({status}); starting it again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(_) => panic!(
                    "serve did not become SERVING (logs in {})",
                    self.command.dir.display()
                ),
            }
        }
    }

    fn kill(&self) {
        let served = lock(&self.process).take();
        if let Some(served) = served {
            served.kill();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 30 s.
    async fn stop(&self) {
        let served = lock(&self.process).take();
        if let Some(served) = served {
            served.terminate(Duration::from_secs(30)).await;
        }
    }

    async fn wait_gate(&self) {
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
    }

    fn clock(&self) -> TestClockClient<Channel> {
        TestClockClient::new(self.channel.clone())
    }

    fn api(&self) -> AccountLifecycleClient<Channel> {
        AccountLifecycleClient::new(self.channel.clone())
    }

    /// Moves the manual clock to `to` (retried until answered). A clock already later (a
    /// restarted server's clock starts at the real time) is left where it is.
    async fn set_clock(&self, to: DateTime<Utc>) {
        let deadline = Instant::now() + SAFETY;
        loop {
            let request = proto::SetTimeRequest {
                time: Some(prost_types::Timestamp {
                    seconds: to.timestamp(),
                    nanos: 0,
                }),
            };
            match tokio::time::timeout(SAFETY, self.clock().set_time(request)).await {
                Ok(Ok(_)) => return,
                Ok(Err(s)) if s.code() == Code::FailedPrecondition => return,
                Ok(Err(s)) if Instant::now() < deadline && retryable(&s) => {}
                Ok(Err(s)) => panic!("SetTime {to}: {s:?}"),
                Err(_) => panic!("SetTime {to} did not return"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL, start again on the same database, restore the clock, reopen the gate.
    async fn restart(&self) {
        self.gate.send_replace(false);
        self.kill();
        self.start().await;
        let at = *lock(&self.clock_at);
        if let Some(at) = at {
            self.set_clock(at).await;
        }
        self.gate.send_replace(true);
    }
}

/// An attempt that got no answer from the service: the request may or may not have been
/// applied, and is sent again with the same request_id.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        // A connection torn down mid-request (the SIGKILL) surfaces as an h2 error.
        Code::Internal => {
            let m = status.message();
            m.contains("h2") || m.contains("transport") || m.contains("connection")
        }
        _ => false,
    }
}

fn reason(status: &Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Traffic and the ledger of what was acknowledged.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    Provision,
    Activate,
    Recharge,
    Charge,
}

#[derive(Clone, Debug)]
struct Write {
    msisdn: String,
    kind: WriteKind,
    amount: i64,
}

impl Write {
    fn balance_effect(&self) -> i64 {
        match self.kind {
            WriteKind::Recharge => self.amount,
            WriteKind::Charge => -self.amount,
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Ledger {
    acked: HashMap<String, Write>,
    /// Sent and not answered yet; what is left at the end was never answered.
    pending: HashMap<String, Write>,
    /// Answered with a refusal: must have written nothing.
    refused: HashSet<String>,
}

#[derive(Default)]
struct OpStats {
    sent: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    unavailable: AtomicU64,
    unexpected: AtomicU64,
    latencies_ms: Mutex<Vec<u32>>,
}

impl OpStats {
    fn summary(&self, name: &'static str) -> OpSummary {
        let mut l = lock(&self.latencies_ms).clone();
        l.sort_unstable();
        let at = |p: f64| {
            if l.is_empty() {
                0
            } else {
                l[((l.len() as f64 * p) as usize).min(l.len() - 1)]
            }
        };
        OpSummary {
            name,
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            retried_attempts: self.retried.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            unexpected: self.unexpected.load(Ordering::Relaxed),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: l.last().copied().unwrap_or(0),
        }
    }
}

const OP_NAMES: [&str; 4] = ["Recharge", "Charge", "Authorize", "GetAccount"];

struct Soak {
    server: Server,
    ledger: Mutex<Ledger>,
    ops: [OpStats; 4],
    setup: OpStats,
    traffic: Vec<String>,
    expiring: Vec<String>,
    unexpected: Mutex<Vec<String>>,
    bad_tried: AtomicU64,
    bad_refused: AtomicU64,
    in_flight: AtomicUsize,
    fault_log: Mutex<Vec<String>>,
    /// The start of the traffic (the fault log counts from it).
    started: Mutex<Instant>,
}

/// A small deterministic mixer, so runs pick the same sequence of accounts and amounts.
fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ (x >> 29)
}

impl Soak {
    fn log_fault(&self, what: String) {
        let line = format!(
            "{:>6.1} s  {what}",
            lock(&self.started).elapsed().as_secs_f64()
        );
        lock(&self.fault_log).push(line);
    }

    fn unexpected(&self, what: String) {
        let mut list = lock(&self.unexpected);
        if list.len() < 50 {
            list.push(what);
        }
    }

    /// Sends one write until it is answered (retrying with the same request_id); records the
    /// answer in the ledger. Returns the final status (Ok = acknowledged).
    async fn write(
        &self,
        stats: &OpStats,
        request_id: String,
        write: Write,
        extra: u32,
    ) -> Result<(), Status> {
        stats.sent.fetch_add(1, Ordering::Relaxed);
        lock(&self.ledger)
            .pending
            .insert(request_id.clone(), write.clone());
        let started = Instant::now();
        let mut api = self.server.api();
        loop {
            self.server.wait_gate().await;
            let call = async {
                match write.kind {
                    WriteKind::Provision => api
                        .provision_account(proto::ProvisionAccountRequest {
                            msisdn: write.msisdn.clone(),
                            sold: true,
                            initial_validity_days: extra,
                            request_id: request_id.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    WriteKind::Activate => api
                        .activate(proto::ActivateRequest {
                            msisdn: write.msisdn.clone(),
                            request_id: request_id.clone(),
                        })
                        .await
                        .map(|_| ()),
                    WriteKind::Recharge => api
                        .recharge(proto::RechargeRequest {
                            msisdn: write.msisdn.clone(),
                            amount: write.amount,
                            channel: proto::RechargeChannel::Online as i32,
                            validity_days: 0,
                            request_id: request_id.clone(),
                        })
                        .await
                        .map(|_| ()),
                    WriteKind::Charge => api
                        .charge(proto::ChargeRequest {
                            msisdn: write.msisdn.clone(),
                            amount: write.amount,
                            request_id: request_id.clone(),
                        })
                        .await
                        .map(|_| ()),
                }
            };
            let answer = match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
                Ok(answer) => answer,
                Err(_) => Err(Status::deadline_exceeded(
                    "no answer within the attempt timeout",
                )),
            };
            match answer {
                Err(s) if retryable(&s) && started.elapsed() < SAFETY => {
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                    let pause = 50 + mix(started.elapsed().as_nanos() as u64) % 200;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(s) if retryable(&s) => {
                    // Never answered: stays pending (applied at most once, checked at the end).
                    self.unexpected(format!("{request_id}: no answer after {SAFETY:?}: {s:?}"));
                    stats.unexpected.fetch_add(1, Ordering::Relaxed);
                    return Err(s);
                }
                answer => {
                    stats
                        .latencies_ms
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(started.elapsed().as_millis() as u32);
                    let mut ledger = lock(&self.ledger);
                    let write = ledger.pending.remove(&request_id).unwrap_or(write);
                    match &answer {
                        Ok(()) => {
                            stats.ok.fetch_add(1, Ordering::Relaxed);
                            ledger.acked.insert(request_id, write);
                        }
                        Err(_) => {
                            ledger.refused.insert(request_id);
                        }
                    }
                    return answer;
                }
            }
        }
    }

    /// One traffic operation, number `n`.
    async fn operation(&self, n: u64) {
        let kind = (n % 4) as usize;
        let stats = &self.ops[kind];
        let r = mix(n);
        let account = &self.traffic[(r % self.traffic.len() as u64) as usize];
        match kind {
            0 | 1 => {
                let (write_kind, amount, prefix) = if kind == 0 {
                    (WriteKind::Recharge, 1000 + (r >> 20) as i64 % 5000, "r")
                } else {
                    (WriteKind::Charge, 1 + (r >> 20) as i64 % 2000, "c")
                };
                let write = Write {
                    msisdn: account.clone(),
                    kind: write_kind,
                    amount,
                };
                match self
                    .write(stats, format!("soak-{prefix}-{n}"), write, 0)
                    .await
                {
                    Ok(()) => {}
                    Err(s)
                        if kind == 1
                            && s.code() == Code::FailedPrecondition
                            && reason(&s) == "INSUFFICIENT_BALANCE" =>
                    {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) if retryable(&s) => {}
                    Err(s) => {
                        stats.unexpected.fetch_add(1, Ordering::Relaxed);
                        self.unexpected(format!("{} {n}: {s:?}", OP_NAMES[kind]));
                    }
                }
            }
            _ => {
                // Reads: traffic accounts mostly, an expiring one (any state) every eighth.
                let msisdn = if n % 8 >= 6 {
                    self.expiring[((r >> 8) % self.expiring.len() as u64) as usize].clone()
                } else {
                    account.clone()
                };
                stats.sent.fetch_add(1, Ordering::Relaxed);
                self.server.wait_gate().await;
                let started = Instant::now();
                let mut api = self.server.api();
                let call = async {
                    if kind == 2 {
                        api.authorize(proto::AuthorizeRequest {
                            msisdn,
                            service: proto::ServiceType::VoiceOut as i32,
                            destination: "8613800000000".into(),
                        })
                        .await
                        .map(|_| ())
                    } else {
                        api.get_account(proto::GetAccountRequest { msisdn })
                            .await
                            .map(|_| ())
                    }
                };
                let answer = match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
                    Ok(answer) => answer,
                    Err(_) => Err(Status::deadline_exceeded("no answer")),
                };
                match answer {
                    Ok(()) => {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                        lock(&stats.latencies_ms).push(started.elapsed().as_millis() as u32);
                    }
                    Err(s) if retryable(&s) => {
                        stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => {
                        stats.unexpected.fetch_add(1, Ordering::Relaxed);
                        self.unexpected(format!("{} {n}: {s:?}", OP_NAMES[kind]));
                    }
                }
            }
        }
    }

    /// Provisions and activates every account (traffic accounts also get a first recharge).
    async fn set_up(self: &Arc<Self>) {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (soak, next) = (self.clone(), next.clone());
            tasks.spawn(async move {
                let total = soak.traffic.len() + soak.expiring.len();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let (msisdn, days) = if i < soak.traffic.len() {
                        (soak.traffic[i].clone(), 0)
                    } else {
                        let j = i - soak.traffic.len();
                        (soak.expiring[j].clone(), 1 + j as u32 % MAX_EXPIRING_DAYS)
                    };
                    let write = |kind, amount| Write {
                        msisdn: msisdn.clone(),
                        kind,
                        amount,
                    };
                    let steps = [
                        (format!("setup-p-{i}"), write(WriteKind::Provision, 0)),
                        (format!("setup-a-{i}"), write(WriteKind::Activate, 0)),
                        (
                            format!("setup-r-{i}"),
                            write(WriteKind::Recharge, SETUP_RECHARGE),
                        ),
                    ];
                    let count = if days == 0 { 3 } else { 2 };
                    for (request_id, w) in steps.into_iter().take(count) {
                        if let Err(s) = soak.write(&soak.setup, request_id.clone(), w, days).await {
                            panic!("setup {request_id} of {msisdn}: {s:?}");
                        }
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("setup task");
        }
    }

    /// One round of bad inputs; each must be refused with its code and write nothing.
    async fn bad_inputs(&self, round: u32) {
        let mut api = self.server.api();
        let traffic = &self.traffic[round as usize % self.traffic.len()];
        let recharge = |msisdn: &str, amount: i64, request_id: String| proto::RechargeRequest {
            msisdn: msisdn.to_owned(),
            amount,
            channel: proto::RechargeChannel::Online as i32,
            validity_days: 0,
            request_id,
        };
        let replay = lock(&self.ledger)
            .acked
            .iter()
            .find(|(_, w)| w.kind == WriteKind::Recharge)
            .map(|(id, w)| (id.clone(), w.clone()));
        // An expiring account that is LOCKED or RECYCLED by now refuses a recharge.
        let expiring = &self.expiring[round as usize % self.expiring.len()];
        let state = api
            .get_account(proto::GetAccountRequest {
                msisdn: expiring.clone(),
            })
            .await
            .map(|a| a.into_inner().state)
            .unwrap_or(0);
        let barred = state == proto::AccountState::Locked as i32 || state == RECYCLED;

        let mut tries: Vec<(String, Code)> = Vec::new();
        let id = |what: &str| format!("bad-{round}-{what}");
        macro_rules! attempt {
            ($name:expr, $code:expr, $request_id:expr, $call:expr) => {{
                self.bad_tried.fetch_add(1, Ordering::Relaxed);
                let deadline = Instant::now() + SAFETY;
                let answer = loop {
                    self.server.wait_gate().await;
                    match tokio::time::timeout(ATTEMPT_TIMEOUT, $call).await {
                        Ok(Err(s)) if retryable(&s) && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Ok(answer) => break answer.map(|_| ()),
                        Err(_) => break Err(Status::deadline_exceeded("no answer")),
                    }
                };
                match answer {
                    Err(s) if s.code() == $code => {
                        self.bad_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => self.unexpected(format!(
                        "bad input {} ({}): expected {:?}, got {:?}",
                        $name, $request_id, $code, other
                    )),
                }
                if !$request_id.is_empty() {
                    lock(&self.ledger).refused.insert($request_id.to_owned());
                }
                tries.push(($name.to_owned(), $code));
            }};
        }
        let rid = id("msisdn");
        attempt!(
            "invalid MSISDN",
            Code::InvalidArgument,
            rid,
            api.recharge(recharge("86-138-x", 1000, rid.clone()))
        );
        let rid = id("negative");
        attempt!(
            "negative amount",
            Code::InvalidArgument,
            rid,
            api.recharge(recharge(traffic, -500, rid.clone()))
        );
        let rid = id("zero");
        attempt!(
            "zero charge",
            Code::InvalidArgument,
            rid,
            api.charge(proto::ChargeRequest {
                msisdn: traffic.clone(),
                amount: 0,
                request_id: rid.clone(),
            })
        );
        let rid = id("huge");
        attempt!(
            "charge beyond the balance",
            Code::FailedPrecondition,
            rid,
            api.charge(proto::ChargeRequest {
                msisdn: traffic.clone(),
                amount: 1_000_000_000_000_000,
                request_id: rid.clone(),
            })
        );
        let none = String::new();
        attempt!(
            "unknown MSISDN",
            Code::NotFound,
            none,
            api.get_account(proto::GetAccountRequest {
                msisdn: "8613600000000".into(),
            })
        );
        if let Some((replayed_id, w)) = replay {
            // The request_id of an acknowledged recharge with another amount: refused, and
            // the first recharge keeps its one history row and its amount.
            attempt!(
                "replayed request_id, other amount",
                Code::AlreadyExists,
                none,
                api.recharge(recharge(&w.msisdn, w.amount + 1, replayed_id.clone()))
            );
        }
        if barred {
            let rid = id("locked");
            attempt!(
                "recharge of a LOCKED/RECYCLED account",
                Code::FailedPrecondition,
                rid,
                api.recharge(recharge(expiring, 5000, rid.clone()))
            );
        }
        self.log_fault(format!("bad inputs round {round}: {} tried", tries.len()));
    }
}

// ---------------------------------------------------------------------------------------------
// Memory.

struct RssSample {
    at_s: f64,
    start: u32,
    kib: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The flat-memory verdict over the last process's samples (the kills are all early; see the
/// module doc). The first fifth of that stretch is warm-up (caches filling, the allocator's
/// arenas growing to the working set); the mean of its second fifth is compared with the mean
/// of its last fifth. Flat: growth ≤ max(10 % of the early mean, 8 MiB). The floor is for the
/// SQLite page caches of a database that grows over the run (2 MiB per connection at most) and
/// allocator noise on a small process; a leak of even 100 bytes per operation over 6 minutes at
/// 200 ops/s (7 MiB) plus the rest of the run's growth shows as a steady slope, reported too.
fn memory_verdict(samples: &[RssSample]) -> (String, bool) {
    let Some(last) = samples.last() else {
        return ("no samples".into(), false);
    };
    let stretch: Vec<&RssSample> = samples.iter().filter(|s| s.start == last.start).collect();
    let n = stretch.len();
    if n < 10 {
        return (
            format!("{n} samples of the last process: too few to judge"),
            false,
        );
    }
    let mean = |part: &[&RssSample]| {
        part.iter().map(|s| s.kib as f64).sum::<f64>() / part.len() as f64 / 1024.0
    };
    let fifth = n / 5;
    let early = mean(&stretch[fifth..2 * fifth]);
    let late = mean(&stretch[n - fifth..]);
    let growth = late - early;
    let tolerance = (early * 0.10).max(8.0);
    // Least-squares slope over the stretch after warm-up, MiB per minute.
    let tail = &stretch[fifth..];
    let (mx, my) = (
        tail.iter().map(|s| s.at_s).sum::<f64>() / tail.len() as f64,
        mean(tail),
    );
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for s in tail {
        sxy += (s.at_s - mx) * (s.kib as f64 / 1024.0 - my);
        sxx += (s.at_s - mx) * (s.at_s - mx);
    }
    let slope = if sxx > 0.0 { sxy / sxx * 60.0 } else { 0.0 };
    let span = stretch[n - 1].at_s - stretch[0].at_s;
    let flat = growth <= tolerance;
    (
        format!(
            "{}: last {:.0} s un-restarted, 2nd fifth {:.1} MiB → last fifth {:.1} MiB ({:+.1} MiB, tolerance {:.1}); slope {:+.2} MiB/min",
            if flat { "flat" } else { "GROWING" },
            span,
            early,
            late,
            growth,
            tolerance,
            slope
        ),
        flat,
    )
}

// ---------------------------------------------------------------------------------------------
// Direct access to the database for the checks.

/// (msisdn, balance, preset_balance, state, Σ recharges − Σ charges of its history).
type BalanceRow = (String, i64, i64, i32, i64);

enum Direct {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

macro_rules! direct {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Direct::Sqlite($pool) => $body,
            Direct::Postgres($pool) => $body,
        }
    };
}

impl Direct {
    async fn open(url: &str) -> Direct {
        if url.starts_with("postgres") {
            Direct::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await
                    .expect("open PostgreSQL for the checks"),
            )
        } else {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .expect("SQLite URL")
                .busy_timeout(Duration::from_secs(10))
                .read_only(true);
            Direct::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await
                    .expect("open SQLite for the checks"),
            )
        }
    }

    async fn scalar(&self, sql: &str) -> i64 {
        let v: Result<i64, sqlx::Error> =
            direct!(self, |p| sqlx::query_scalar(sql).fetch_one(p).await);
        v.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn event_ids(&self) -> Vec<String> {
        let sql = "SELECT event_id FROM outbox ORDER BY sequence";
        let v: Result<Vec<String>, sqlx::Error> =
            direct!(self, |p| sqlx::query_scalar(sql).fetch_all(p).await);
        v.expect("read the outbox")
    }

    /// (request_id, msisdn, kind, amount) of every history row written by a request.
    async fn request_rows(&self) -> Vec<(String, String, i32, i64)> {
        // A request's own row; the boundary transitions a request materialises first have
        // rows of their own (STATE_CHANGED), which none of this run's requests cross.
        let sql = format!(
            "SELECT request_id, msisdn, kind, amount FROM account_history \
             WHERE request_id IS NOT NULL AND kind <> {HISTORY_STATE_CHANGED}"
        );
        let v: Result<Vec<_>, sqlx::Error> =
            direct!(self, |p| sqlx::query_as(&sql).fetch_all(p).await);
        v.expect("read the history")
    }

    /// msisdn → (balance, preset_balance, state, Σ recharges − Σ charges of its history).
    async fn balances(&self) -> BTreeMap<String, (i64, i64, i32, i64)> {
        let sql = format!(
            "SELECT a.msisdn, a.balance, a.preset_balance, a.state, \
               CAST(COALESCE((SELECT SUM(CASE WHEN h.kind = {HISTORY_RECHARGE} THEN h.amount \
                 WHEN h.kind = {HISTORY_CHARGE} THEN -h.amount ELSE 0 END) \
                 FROM account_history h WHERE h.msisdn = a.msisdn), 0) AS BIGINT) \
             FROM accounts a"
        );
        let v: Result<Vec<BalanceRow>, sqlx::Error> =
            direct!(self, |p| sqlx::query_as(&sql).fetch_all(p).await);
        v.expect("read the balances")
            .into_iter()
            .map(|(m, b, p, s, h)| (m, (b, p, s, h)))
            .collect()
    }

    async fn integrity_check(&self) -> Option<String> {
        match self {
            Direct::Sqlite(p) => Some(
                sqlx::query_scalar("PRAGMA integrity_check")
                    .fetch_one(p)
                    .await
                    .unwrap_or_else(|e| format!("integrity_check failed: {e}")),
            ),
            Direct::Postgres(_) => None,
        }
    }

    async fn close(self) {
        direct!(self, |p| p.close().await)
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    WebhookDown,
    WebhookUp,
    CutDb(Duration),
    BadInputs(u32),
}

/// The schedule, as (fraction of the run, fault).
fn schedule(opts: &SoakOptions) -> Vec<(f64, Fault)> {
    let secs = opts.duration.as_secs_f64();
    let mut plan = Vec::new();
    // Kills in the first 40 %, so the rest of the run is one process (the memory verdict).
    for i in 0..opts.kills {
        let at = if opts.kills == 1 {
            0.2
        } else {
            0.1 + 0.3 * f64::from(i) / f64::from(opts.kills - 1)
        };
        plan.push((at, Fault::Kill));
    }
    let outage = (secs * 0.1).min(30.0);
    plan.push((0.45, Fault::WebhookDown));
    plan.push((0.45 + outage / secs, Fault::WebhookUp));
    if opts.is_postgres() {
        let cut = Duration::from_secs_f64((secs * 0.01).clamp(1.0, 5.0));
        plan.push((0.62, Fault::CutDb(cut)));
        plan.push((0.8, Fault::CutDb(cut)));
    }
    let rounds = ((secs / 60.0).round() as u32).clamp(2, 10);
    for round in 0..rounds {
        plan.push((
            0.05 + 0.9 * f64::from(round) / f64::from(rounds),
            Fault::BadInputs(round),
        ));
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

pub async fn run(opts: SoakOptions) -> SoakReport {
    let bss = Arc::new(Bss::default());
    let bss_addr = start_bss(bss.clone()).await;
    let proxy = if opts.is_postgres() {
        Some(Arc::new(DbProxy::start(&opts.database_url).await))
    } else {
        None
    };
    let server_db_url = match &proxy {
        Some(p) => p.url.clone(),
        None => opts.database_url.clone(),
    };
    let command = Server::command(
        &opts,
        server_db_url,
        format!("http://{bss_addr}/bss/events"),
    );
    let channel = command.channel();
    let expiring_n = (opts.accounts / 5).max(10);
    let soak = Arc::new(Soak {
        server: Server {
            command,
            process: Mutex::new(None),
            pid: AtomicU32::new(0),
            starts: AtomicU32::new(0),
            channel,
            gate: watch::Sender::new(true),
            clock_at: Mutex::new(None),
        },
        ledger: Mutex::new(Ledger::default()),
        ops: Default::default(),
        setup: OpStats::default(),
        traffic: (0..opts.accounts).map(|i| format!("86139{i:08}")).collect(),
        expiring: (0..expiring_n).map(|i| format!("86137{i:08}")).collect(),
        unexpected: Mutex::new(Vec::new()),
        bad_tried: AtomicU64::new(0),
        bad_refused: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        fault_log: Mutex::new(Vec::new()),
        started: Mutex::new(Instant::now()),
    });
    let server = &soak.server;
    server.start().await;
    let t0 = server
        .clock()
        .get_time(proto::GetTimeRequest {})
        .await
        .expect("GetTime")
        .into_inner()
        .now
        .map(|t| DateTime::from_timestamp(t.seconds, 0).expect("instant"))
        .expect("now");
    *lock(&server.clock_at) = Some(t0);
    if opts.progress {
        eprintln!(
            "soak: setting up {} + {} accounts …",
            opts.accounts, expiring_n
        );
    }
    soak.set_up().await;

    // RSS sampler.
    let stop_sampling = CancellationToken::new();
    let samples = Arc::new(Mutex::new(Vec::<RssSample>::new()));
    let sampler = {
        let (soak, stop, samples, every) = (
            soak.clone(),
            stop_sampling.clone(),
            samples.clone(),
            opts.rss_every,
        );
        tokio::spawn(async move {
            let started = Instant::now();
            while !stop.is_cancelled() {
                if *soak.server.gate.borrow() {
                    let start = soak.server.starts.load(Ordering::Relaxed);
                    if let Some(kib) = rss_kib(soak.server.pid.load(Ordering::Relaxed)) {
                        lock(&samples).push(RssSample {
                            at_s: started.elapsed().as_secs_f64(),
                            start,
                            kib,
                        });
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    };

    // The manual clock: TOTAL_DAYS in steps over the first 90 % of the run.
    let traffic_start = Instant::now();
    *lock(&soak.started) = traffic_start;
    let deadline = traffic_start + opts.duration;
    let steps = ((opts.duration.as_secs_f64() / 4.0) as i64).clamp(10, TOTAL_DAYS);
    let clock_task = {
        let (soak, span) = (soak.clone(), opts.duration.mul_f64(0.9));
        tokio::spawn(async move {
            for k in 1..=steps {
                tokio::time::sleep_until(
                    (traffic_start + span.mul_f64(k as f64 / steps as f64)).into(),
                )
                .await;
                let days = k * TOTAL_DAYS / steps;
                let to = t0 + chrono::Duration::days(days);
                *lock(&soak.server.clock_at) = Some(to);
                soak.server.wait_gate().await;
                soak.server.set_clock(to).await;
            }
        })
    };

    // Faults.
    let plan = schedule(&opts);
    let fault_task = {
        let (soak, bss) = (soak.clone(), bss.clone());
        let proxy = proxy.clone();
        let duration = opts.duration;
        tokio::spawn(async move {
            let (mut kills, mut cuts, mut outage_started, mut outage_s) = (0u32, 0u32, None, 0.0);
            for (at, fault) in plan {
                tokio::time::sleep_until((traffic_start + duration.mul_f64(at)).into()).await;
                match fault {
                    Fault::Kill => {
                        // A crash with a write on the wire: wait (briefly) for one in flight.
                        let until = Instant::now() + Duration::from_secs(2);
                        while Instant::now() < until
                            && !lock(&soak.ledger)
                                .pending
                                .keys()
                                .any(|k| k.starts_with("soak-"))
                        {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        let t = Instant::now();
                        soak.server.restart().await;
                        kills += 1;
                        soak.log_fault(format!(
                            "SIGKILL serve, restarted on the same database, serving again after {:.1} s",
                            t.elapsed().as_secs_f64()
                        ));
                    }
                    Fault::WebhookDown => {
                        bss.failing.store(true, Ordering::Release);
                        outage_started = Some(Instant::now());
                        soak.log_fault("webhook listener answers 500".into());
                    }
                    Fault::WebhookUp => {
                        bss.failing.store(false, Ordering::Release);
                        if let Some(s) = outage_started.take() {
                            outage_s += s.elapsed().as_secs_f64();
                        }
                        soak.log_fault("webhook listener answers 200 again".into());
                    }
                    Fault::CutDb(length) => {
                        if let Some(proxy) = &proxy {
                            proxy.cut();
                            tokio::time::sleep(length).await;
                            proxy.restore();
                            cuts += 1;
                            soak.log_fault(format!(
                                "PostgreSQL connections cut for {:.1} s (every open one dropped, new ones closed)",
                                length.as_secs_f64()
                            ));
                        }
                    }
                    Fault::BadInputs(round) => soak.bad_inputs(round).await,
                }
            }
            if let Some(s) = outage_started.take() {
                bss.failing.store(false, Ordering::Release);
                outage_s += s.elapsed().as_secs_f64();
            }
            (kills, cuts, outage_s)
        })
    };

    // Open-loop traffic.
    let interval = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let max_in_flight = (opts.rate as usize * 60).max(100);
    let (mut scheduled, mut shed) = (0u64, 0u64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_progress = traffic_start + Duration::from_secs(30);
    while Instant::now() < deadline {
        ticker.tick().await;
        let n = scheduled;
        scheduled += 1;
        if soak.in_flight.load(Ordering::Relaxed) >= max_in_flight {
            shed += 1;
            continue;
        }
        soak.in_flight.fetch_add(1, Ordering::Relaxed);
        let soak2 = soak.clone();
        tasks.spawn(async move {
            soak2.operation(n).await;
            soak2.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        while tasks.try_join_next().is_some() {}
        if opts.progress && Instant::now() >= next_progress {
            next_progress += Duration::from_secs(30);
            let done: u64 = soak.ops.iter().map(|o| o.ok.load(Ordering::Relaxed)).sum();
            let rss = rss_kib(soak.server.pid.load(Ordering::Relaxed)).unwrap_or(0);
            eprintln!(
                "soak: {:>4.0} s  {} ops ok  {:.0} ops/s  in flight {}  serve RSS {:.1} MiB",
                traffic_start.elapsed().as_secs_f64(),
                done,
                done as f64 / traffic_start.elapsed().as_secs_f64(),
                soak.in_flight.load(Ordering::Relaxed),
                rss as f64 / 1024.0
            );
        }
    }
    let traffic_s = traffic_start.elapsed().as_secs_f64();
    if opts.progress {
        eprintln!("soak: traffic stopped; waiting for the requests in flight …");
    }
    let wait_all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SAFETY, wait_all).await.is_err() {
        tasks.abort_all();
    }
    let (kills, cuts, outage_s) = fault_task.await.expect("fault task");
    clock_task.await.expect("clock task");
    stop_sampling.cancel();
    let _ = sampler.await;

    // Everything due is swept (the last clock move's sweep ran; this makes sure).
    let final_time = t0 + chrono::Duration::days(TOTAL_DAYS);
    *lock(&server.clock_at) = Some(final_time);
    server.set_clock(final_time).await;
    let sweep_deadline = Instant::now() + SAFETY;
    loop {
        match server
            .api()
            .advance_states(proto::AdvanceStatesRequest {
                as_of: None,
                dry_run: false,
            })
            .await
        {
            Ok(_) => break,
            Err(s) if retryable(&s) && Instant::now() < sweep_deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("final AdvanceStates: {s:?}"),
        }
    }

    // Drain: every outbox event reaches the listener.
    let drain_start = Instant::now();
    let direct = Direct::open(&opts.database_url).await;
    let mut outbox_ids;
    loop {
        outbox_ids = direct.event_ids().await;
        let missing = {
            let received = lock(&bss.received);
            outbox_ids
                .iter()
                .filter(|id| !received.contains_key(*id))
                .count()
        };
        if missing == 0 || drain_start.elapsed() > SAFETY {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    server.stop().await;

    // ------------------------------------------------------------------ the checks
    let mut report = SoakReport {
        backend: if opts.is_postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        traffic_s,
        rate_target: opts.rate,
        accounts: opts.accounts,
        expiring_accounts: expiring_n,
        ops: OP_NAMES
            .iter()
            .zip(soak.ops.iter())
            .map(|(name, s)| s.summary(name))
            .collect(),
        ops_scheduled: scheduled,
        ops_shed: shed,
        kills,
        webhook_outage_s: outage_s,
        webhook_refused_posts: bss.refused.load(Ordering::Relaxed),
        db_cuts: cuts,
        bad_inputs_tried: soak.bad_tried.load(Ordering::Relaxed),
        bad_inputs_refused: soak.bad_refused.load(Ordering::Relaxed),
        clock_days: TOTAL_DAYS,
        drain_s,
        fault_log: lock(&soak.fault_log).clone(),
        ..SoakReport::default()
    };
    report.ops_done = report.ops.iter().map(|o| o.ok + o.refused).sum();
    let ledger = std::mem::take(&mut *lock(&soak.ledger));
    report.acknowledged_writes = ledger.acked.len() as u64;
    report.unanswered_writes = ledger.pending.len() as u64;

    let unexpected = lock(&soak.unexpected).clone();
    report.check(
        "every answer expected",
        unexpected.is_empty(),
        if unexpected.is_empty() {
            "no INTERNAL or other unexpected status; every bad input refused with its code".into()
        } else {
            unexpected.join("; ")
        },
    );
    report.check(
        "faults injected",
        kills == opts.kills && (!opts.is_postgres() || cuts == 2) && report.bad_inputs_tried > 0,
        format!(
            "{kills} kills, {cuts} database cuts, {:.0} s of webhook 500s, {} bad inputs",
            outage_s, report.bad_inputs_tried
        ),
    );

    // One history row per acknowledged request, none for a refused one.
    let rows = direct.request_rows().await;
    let mut by_id: HashMap<&str, Vec<(&str, i32, i64)>> = HashMap::new();
    for (id, msisdn, kind, amount) in &rows {
        by_id
            .entry(id.as_str())
            .or_default()
            .push((msisdn.as_str(), *kind, *amount));
    }
    let mut problems = Vec::new();
    for (id, w) in &ledger.acked {
        match by_id.get(id.as_str()).map(Vec::as_slice) {
            Some([(m, _, amount)]) => {
                let amount_ok = match w.kind {
                    WriteKind::Recharge | WriteKind::Charge => *amount == w.amount,
                    _ => true,
                };
                if *m != w.msisdn || !amount_ok {
                    problems.push(format!("{id}: row {m} {amount}, acknowledged {w:?}"));
                }
            }
            Some(found) => problems.push(format!("{id}: {} history rows", found.len())),
            None => problems.push(format!("{id}: acknowledged, no history row")),
        }
    }
    let mut unanswered_applied = 0;
    for (id, found) in &by_id {
        if ledger.acked.contains_key(*id) {
            continue;
        }
        if ledger.pending.contains_key(*id) {
            if found.len() > 1 {
                problems.push(format!("{id}: unanswered, {} history rows", found.len()));
            }
            unanswered_applied += 1;
        } else if ledger.refused.contains(*id) {
            problems.push(format!("{id}: refused, yet {} history rows", found.len()));
        } else {
            problems.push(format!(
                "{id}: a history row no request of the soak explains"
            ));
        }
    }
    problems.truncate(20);
    report.check(
        "one history row per acknowledged request",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "{} acknowledged, each exactly once with its amount; {} refused with none; {} never answered ({} applied once)",
                ledger.acked.len(),
                ledger.refused.len(),
                ledger.pending.len(),
                unanswered_applied
            )
        } else {
            problems.join("; ")
        },
    );

    // Balances.
    let mut expected: HashMap<&str, i64> = HashMap::new();
    for w in ledger.acked.values() {
        *expected.entry(w.msisdn.as_str()).or_default() += w.balance_effect();
    }
    for (id, w) in &ledger.pending {
        if let Some([(_, _, amount)]) = by_id.get(id.as_str()).map(Vec::as_slice) {
            let signed = if w.kind == WriteKind::Charge {
                -amount
            } else {
                *amount
            };
            *expected.entry(w.msisdn.as_str()).or_default() += signed;
        }
    }
    let balances = direct.balances().await;
    let mut problems = Vec::new();
    let mut total = 0i64;
    for msisdn in soak.traffic.iter().chain(soak.expiring.iter()) {
        let want = expected.get(msisdn.as_str()).copied().unwrap_or(0);
        match balances.get(msisdn) {
            Some((balance, preset, _, history)) => {
                total += balance;
                if *balance != want || *preset != 0 || *history != want {
                    problems.push(format!(
                        "{msisdn}: balance {balance}, history {history}, acknowledged {want}"
                    ));
                }
            }
            None => problems.push(format!("{msisdn}: no account row")),
        }
    }
    problems.truncate(20);
    report.check(
        "balance = recharges − charges",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "{} accounts: each balance = Σ acknowledged recharges − Σ acknowledged charges = Σ of its history (total {total} fen)",
                soak.traffic.len() + soak.expiring.len()
            )
        } else {
            problems.join("; ")
        },
    );

    // The sweep ran through the faults: the expiring cohort is recycled.
    let recycled = soak
        .expiring
        .iter()
        .filter(|m| balances.get(*m).is_some_and(|(_, _, s, _)| *s == RECYCLED))
        .count();
    report.check(
        "expiring accounts recycled by the sweeps",
        recycled == soak.expiring.len(),
        format!("{recycled} of {}", soak.expiring.len()),
    );

    // The outbox.
    let orphans = direct
        .scalar(
            "SELECT COUNT(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM accounts a \
               WHERE a.msisdn = o.msisdn AND a.account_id = o.account_id) \
             AND NOT EXISTS (SELECT 1 FROM account_archive r \
               WHERE r.msisdn = o.msisdn AND r.account_id = o.account_id)",
        )
        .await;
    let orphan_deliveries = direct
        .scalar(
            "SELECT COUNT(*) FROM webhook_deliveries d WHERE NOT EXISTS \
             (SELECT 1 FROM outbox o WHERE o.sequence = d.sequence AND o.event_id = d.event_id)",
        )
        .await;
    report.check(
        "no orphan outbox rows",
        orphans == 0 && orphan_deliveries == 0,
        format!(
            "{orphans} outbox rows without their account, {orphan_deliveries} webhook_deliveries rows without their outbox row"
        ),
    );
    // In this run every transition happens once per account (the traffic accounts stay VALID,
    // the expiring ones are never written to): a repeated one would be a double transition.
    let duplicates = direct
        .scalar(
            "SELECT COUNT(*) FROM (SELECT msisdn FROM outbox \
             GROUP BY msisdn, generation, event_type, from_state, to_state \
             HAVING COUNT(*) > 1) AS d",
        )
        .await;
    report.check(
        "no duplicate event",
        duplicates == 0,
        format!("{duplicates} (msisdn, type, from, to) with more than one outbox row"),
    );
    let dead = direct
        .scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE dead_at IS NOT NULL")
        .await;
    let received = lock(&bss.received).clone();
    let missing: Vec<&String> = outbox_ids
        .iter()
        .filter(|id| !received.contains_key(*id))
        .collect();
    let outbox_set: HashSet<&String> = outbox_ids.iter().collect();
    let strangers = received
        .keys()
        .filter(|id| !outbox_set.contains(id))
        .count();
    report.outbox_events = outbox_ids.len() as u64;
    report.events_received = received.len() as u64;
    report.webhook_duplicates = received.values().map(|n| u64::from(n - 1)).sum();
    let bad_signature = bss.bad_signature.load(Ordering::Relaxed);
    report.check(
        "every event delivered to the webhook",
        missing.is_empty() && strangers == 0 && dead == 0 && bad_signature == 0,
        format!(
            "{} of {} outbox events received ({} duplicate deliveries, at-least-once); {} missing; {strangers} unknown ids; {dead} dead letters; {bad_signature} bad signatures",
            outbox_ids.len() - missing.len(),
            outbox_ids.len(),
            report.webhook_duplicates,
            missing.len()
        ),
    );
    if let Some(integrity) = direct.integrity_check().await {
        report.check(
            "PRAGMA integrity_check",
            integrity == "ok",
            integrity.clone(),
        );
    }
    direct.close().await;

    // Memory.
    let samples = std::mem::take(&mut *lock(&samples));
    let mib = |kib: u64| kib as f64 / 1024.0;
    report.rss_samples = samples.len();
    report.rss_start_mib = samples.first().map_or(0.0, |s| mib(s.kib));
    report.rss_end_mib = samples.last().map_or(0.0, |s| mib(s.kib));
    report.rss_max_mib = samples.iter().map(|s| mib(s.kib)).fold(0.0, f64::max);
    let (verdict, flat) = memory_verdict(&samples);
    report.memory = verdict.clone();
    if opts.judge_memory {
        report.check("memory flat", flat, verdict);
    }
    drop(proxy);
    report
}
