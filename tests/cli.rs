//! The real binary: `serve` with no configuration (and its operations endpoint), a graceful
//! SIGTERM, `--http-addr off`, `migrate`, and a configuration error that names its key. Each
//! run gets a temporary working directory and an environment without `OCS_*` variables, so
//! only what the test passes configures it.

#[allow(dead_code)]
#[path = "common/process.rs"]
mod process;

#[allow(dead_code)]
#[path = "common/binary.rs"]
mod binary;

#[path = "common/dead_letters.rs"]
mod dead_letters;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use binary::ocs;
use ocs_lifecycle::proto;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use process::free_port;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Safety bound only: no test asserts on elapsed time.
const SAFETY: Duration = Duration::from_secs(60);

/// Runs the binary to completion (bounded) and collects its output.
fn run(command: Command, what: &str) -> Output {
    process::run_bounded(command, SAFETY, what)
}

/// `ocs-lifecycle sweep --database-url <url> <more…>` in `dir`, run to its end.
fn sweep(dir: &Path, url: &str, more: &[&str]) -> Output {
    let mut command = ocs(dir);
    command.args(["sweep", "--database-url", url]).args(more);
    run(command, &format!("sweep {}", more.join(" ")))
}

/// Polls gRPC health at `addr` until the overall service is SERVING.
async fn wait_serving(addr: &str, child: &mut Child) {
    let deadline = tokio::time::Instant::now() + SAFETY;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the server exited before serving: {status}");
        }
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let status = health.check(request).await.map(|r| r.into_inner().status);
        if status.ok() == Some(ServingStatus::Serving as i32) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_configuration_creates_its_sqlite_file_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let http_addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut child = ocs(dir.path())
        .args(["serve", "--listen", &addr, "--http-addr", &http_addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn ocs-lifecycle serve");

    wait_serving(&addr, &mut child).await;
    assert!(
        dir.path().join("ocs-lifecycle.db").is_file(),
        "serve with no configuration uses ocs-lifecycle.db in the working directory"
    );
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let request = HealthCheckRequest {
        service: "ocs.lifecycle.v1.AccountLifecycle".into(),
    };
    let status = health
        .check(request)
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    for (path, expected) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let (code, body) = http_get(&format!("http://{http_addr}{path}")).await;
        assert_eq!((code, body.as_str()), (200, expected), "{path}");
    }
    let (code, body) = http_get(&format!("http://{http_addr}/metrics")).await;
    assert_eq!(code, 200);
    assert!(
        body.lines().any(|l| l.starts_with("ocs_build_info{")),
        "{body}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -TERM failed");
    let status = tokio::task::block_in_place(|| {
        process::wait_bounded(&mut child, SAFETY, "serve after SIGTERM")
    });
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a clean stop; server log:\n{log}"
    );
}

/// GET `url`: status and body.
async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_addr_off_serves_grpc_without_the_operations_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let http_addr = format!("127.0.0.1:{}", free_port());
    let mut child = ocs(dir.path())
        // The flag wins over the environment.
        .env("OCS_HTTP_ADDR", &http_addr)
        .args(["serve", "--listen", &addr, "--http-addr", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ocs-lifecycle serve");
    wait_serving(&addr, &mut child).await;
    let connected = tokio::net::TcpStream::connect(&http_addr).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        connected.is_err(),
        "nothing listens on {http_addr} with --http-addr off"
    );
}

#[test]
fn migrate_creates_the_database_file_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let mut command = ocs(dir.path());
    command.args([
        "migrate",
        "--database-url",
        &format!("sqlite://{}", db.display()),
    ]);
    let output = run(command, "migrate");
    assert!(
        output.status.success(),
        "migrate failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(db.is_file(), "a missing SQLite file is created");
    // Running the migrations again is a no-op, not an error.
    let mut command = ocs(dir.path());
    command.args([
        "migrate",
        "--database-url",
        &format!("sqlite://{}", db.display()),
    ]);
    assert!(run(command, "second migrate").status.success());
}

#[test]
fn a_bad_timezone_is_refused_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for subcommand in ["serve", "migrate"] {
        let mut command = ocs(dir.path());
        command.args([
            subcommand,
            "--timezone",
            "Mars/Base",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ]);
        let output = run(command, subcommand);
        assert!(
            !output.status.success(),
            "{subcommand} accepted timezone Mars/Base"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one clear line, got:\n{stderr}");
        assert!(
            lines[0].contains("timezone"),
            "the line names the key: {}",
            lines[0]
        );
        assert!(
            lines[0].contains("Mars/Base"),
            "and the value: {}",
            lines[0]
        );
    }
    binary::assert_no_database(dir.path(), "nothing was created");
}

#[test]
fn sweep_prints_its_counts_and_refuses_the_future_unless_dry() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let output = sweep(dir.path(), &url, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sweep failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "dry_run: false",
        "examined: 0",
        "to_grace: 0",
        "expiring_notified: 0",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing in:\n{stdout}"
        );
    }

    let dry_run = ["--dry-run", "--as-of", "2040-01-01T00:05:00+08:00"];
    let output = sweep(dir.path(), &url, &dry_run);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Times as every other command prints them (issue 16.3; was `+00:00`).
    assert!(stdout.contains("as_of: 2039-12-31T16:05:00Z"), "{stdout}");
    assert!(stdout.contains("recycled_msisdns: 0"), "{stdout}");

    let as_json = [&dry_run[..], &["--output", "json"]].concat();
    let output = sweep(dir.path(), &url, &as_json);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(
        report,
        serde_json::json!({
            "as_of": "2039-12-31T16:05:00Z",
            "dry_run": true,
            "examined": 0,
            "to_grace": 0,
            "to_locked": 0,
            "to_recycled_from_locked": 0,
            "to_recycled_unactivated": 0,
            "expiring_notified": 0,
            "recycled_msisdns": [],
        })
    );

    let output = sweep(dir.path(), &url, &["--as-of", "2999-01-01T00:00:00Z"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dry run"), "{stderr}");
}

#[test]
fn logs_in_a_file_have_no_colour_and_say_the_version_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = ocs(dir.path());
    command.arg("migrate");
    let output = run(command, "migrate");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI escape codes when stderr is not a terminal:\n{stderr}"
    );
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("ocs-lifecycle starting")
            && first.contains(env!("CARGO_PKG_VERSION"))
            && first.contains("migrate"),
        "the first line names the version and the command: {first}"
    );
    assert!(stderr.contains("migrations done"), "{stderr}");
}

#[test]
fn an_invalid_rust_log_is_an_error_not_a_silent_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = ocs(dir.path());
    command.arg("migrate").env("RUST_LOG", "info,[[=");
    let output = run(command, "migrate with a bad RUST_LOG");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("RUST_LOG"), "{}", lines[0]);
    binary::assert_no_database(dir.path(), "nothing was created");
}

#[test]
fn a_failed_command_reports_its_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("once.db").display());
    let output = sweep(dir.path(), &url, &["--as-of", "2999-01-01T00:00:00Z"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("only a dry run").count(),
        1,
        "the error once:\n{stderr}"
    );
}

/// Starts `serve` (JSON logs, `extra` settings as environment) in `dir` with its stderr in
/// `dir/server.log`; calls `calls` against it, stops it with SIGTERM, returns the log's lines.
async fn serve_and_log<F, Fut>(
    dir: &Path,
    extra: &[(&str, &str)],
    calls: F,
) -> Vec<serde_json::Value>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut env = vec![("OCS_LOG_FORMAT", "json")];
    env.extend_from_slice(extra);
    let (served, _channel) = binary::serve(dir, &env).await;
    calls(format!("http://{}", served.addr)).await;
    binary::stop_cleanly(served, dir)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn rpc_lines(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "ocs_lifecycle::rpc")
        .collect()
}

/// Connects to `server` and provisions a sold card `msisdn` (request id `request_id`).
async fn provision_sold(
    server: String,
    msisdn: &str,
    request_id: &str,
) -> AccountLifecycleClient<Channel> {
    let mut api = AccountLifecycleClient::connect(server)
        .await
        .expect("connect");
    api.provision_account(proto::ProvisionAccountRequest {
        msisdn: msisdn.into(),
        sold: true,
        request_id: request_id.into(),
        ..Default::default()
    })
    .await
    .expect("provision");
    api
}

async fn recharge_and_miss(server: String) {
    let mut api = provision_sold(server, "+8613800138000", "log-p-1").await;
    let missing = api
        .get_account(proto::GetAccountRequest {
            msisdn: "8613900139000".into(),
        })
        .await
        .expect_err("not found");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_one_log_line_with_its_outcome_and_a_masked_msisdn() {
    let dir = tempfile::tempdir().unwrap();
    let lines = serve_and_log(dir.path(), &[], recharge_and_miss).await;
    let rpc = rpc_lines(&lines);
    let provision = rpc
        .iter()
        .find(|l| l["fields"]["method"] == "ocs.lifecycle.v1.AccountLifecycle/ProvisionAccount")
        .unwrap_or_else(|| panic!("no line for ProvisionAccount: {rpc:#?}"));
    let fields = &provision["fields"];
    assert_eq!(provision["level"], "INFO");
    assert_eq!(fields["code"], "OK");
    assert_eq!(fields["msisdn"], "+861******8000", "masked: {fields}");
    assert_eq!(fields["request_id"], "log-p-1");
    assert_eq!(fields["caller"], "", "authentication is off");
    assert!(
        fields["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{fields}"
    );
    assert!(fields["latency_ms"].as_f64().is_some(), "{fields}");
    let missing = rpc
        .iter()
        .find(|l| l["fields"]["method"] == "ocs.lifecycle.v1.AccountLifecycle/GetAccount")
        .unwrap_or_else(|| panic!("no line for GetAccount: {rpc:#?}"));
    assert_eq!(
        missing["fields"]["code"], "NotFound",
        "as the metrics label it"
    );
    assert_eq!(missing["fields"]["reason"], "ACCOUNT_NOT_FOUND");
    assert_eq!(missing["fields"]["msisdn"], "861******9000");
    // No line anywhere carries the whole number.
    let whole = lines
        .iter()
        .filter(|l| l.to_string().contains("13800138000"))
        .count();
    assert_eq!(whole, 0, "the whole MSISDN is logged: {lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_full_msisdn_logs_the_whole_number() {
    let dir = tempfile::tempdir().unwrap();
    let lines = serve_and_log(
        dir.path(),
        &[("OCS_LOG_FULL_MSISDN", "true")],
        recharge_and_miss,
    )
    .await;
    let rpc = rpc_lines(&lines);
    assert!(
        rpc.iter()
            .any(|l| l["fields"]["msisdn"] == "+8613800138000"),
        "{rpc:#?}"
    );
}

/// What `serve` says at start and about its first sweep, read from the file a real server
/// wrote: the configuration file it read, no "missed" sweep on a brand-new database, and the
/// sweep's counts as plain fields of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_its_configuration_file_and_its_first_sweep_as_plain_fields() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ocs-lifecycle.toml"),
        "[sweep]\nbatch_size = 500\n",
    )
    .unwrap();
    let lines = serve_and_log(dir.path(), &[], |_| async {}).await;
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").to_owned();
    let start = lines
        .iter()
        .find(|l| message(l) == "ocs-lifecycle starting")
        .unwrap_or_else(|| panic!("no start line: {lines:#?}"));
    assert_eq!(
        start["fields"]["config_file"], "ocs-lifecycle.toml",
        "{start}"
    );
    assert!(
        lines.iter().all(|l| !message(l).contains("missed")),
        "a brand-new database missed no sweep: {lines:#?}"
    );
    let done = lines
        .iter()
        .find(|l| message(l) == "scheduled sweep done")
        .unwrap_or_else(|| panic!("no sweep line: {lines:#?}"));
    let fields = &done["fields"];
    assert_eq!(fields["examined"], 0, "{done}");
    for (name, _) in ocs_lifecycle::sweep::SweepCounts::default().named() {
        assert_eq!(fields[name], 0, "{name} is a field of its own: {done}");
    }
    assert!(fields.get("counts").is_none(), "{done}");

    // Without a file in the working directory: says so.
    let bare = tempfile::tempdir().unwrap();
    let lines = serve_and_log(bare.path(), &[], |_| async {}).await;
    let start = lines
        .iter()
        .find(|l| message(l) == "ocs-lifecycle starting")
        .unwrap_or_else(|| panic!("no start line: {lines:#?}"));
    assert!(
        start["fields"]["config_file"]
            .as_str()
            .is_some_and(|f| f.starts_with("none")),
        "{start}"
    );
}

/// A BSS that refuses every connection: the attempts are summarised (the first failure at once,
/// the rest with their counts), not logged one line each, in what a real server wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_failures_are_summarised_with_counts_not_one_line_per_attempt() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: every attempt fails to connect.
    let bss = format!("http://127.0.0.1:{}/hook", free_port());
    let env = [
        ("OCS_BSS__WEBHOOK_URL", bss.as_str()),
        ("OCS_BSS__WEBHOOK_SECRET", "test-webhook-secret"),
        ("OCS_BSS__WEBHOOK_EVENTS", "STATE_CHANGED"),
        ("OCS_BSS__INITIAL_BACKOFF_MS", "10"),
        ("OCS_BSS__MAX_BACKOFF_MS", "20"),
        ("OCS_BSS__MAX_ATTEMPTS", "12"),
    ];
    let lines = serve_and_log(dir.path(), &env, activate_and_wait_for_the_dead_letter).await;
    let failures: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("webhook: attempts failed"))
        })
        .collect();
    assert!(
        (1..=3).contains(&failures.len()),
        "12 attempts are at most three lines (at once, at the dead letter's interval, at \
         shutdown): {failures:#?}"
    );
    let sum = |field: &str| -> u64 {
        failures
            .iter()
            .map(|l| l["fields"][field].as_u64().expect(field))
            .sum()
    };
    assert_eq!(sum("failed"), 12, "{failures:#?}");
    assert_eq!(sum("will_retry"), 11, "{failures:#?}");
    assert_eq!(sum("dead_lettered"), 1, "{failures:#?}");
    assert_eq!(failures[0]["fields"]["endpoint"], bss.as_str());
    assert!(
        failures.iter().all(|l| l["fields"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())),
        "{failures:#?}"
    );
    let dead = failures
        .iter()
        .find(|l| l["fields"]["dead_lettered"] == 1)
        .expect("the dead letter's line");
    assert_eq!(dead["level"], "ERROR");
    // No other line about a single attempt at info or above.
    let per_attempt = lines
        .iter()
        .filter(|l| l["fields"].get("attempt").is_some())
        .count();
    assert_eq!(per_attempt, 0, "{lines:#?}");
}

async fn activate_and_wait_for_the_dead_letter(server: String) {
    use ocs_lifecycle::proto::bss_events_client::BssEventsClient;
    let mut api = provision_sold(server.clone(), "8613800138000", "hook-p-1").await;
    api.activate(proto::ActivateRequest {
        msisdn: "8613800138000".into(),
        request_id: "hook-a-1".into(),
    })
    .await
    .expect("activate: a STATE_CHANGED event");
    let mut events = BssEventsClient::connect(server).await.expect("connect");
    dead_letters::wait_for_dead_letters(&mut events, SAFETY).await;
}

/// Shell completions and the man page are generated by the binary itself, from the same
/// command definitions, and read no configuration (a broken file beside them is ignored).
#[test]
fn completions_and_the_man_page_come_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ocs-lifecycle.toml"),
        "this is = not [toml\n",
    )
    .unwrap();
    for (shell, marker) in [
        ("bash", "_ocs__lifecycle()"),
        ("zsh", "#compdef ocs-lifecycle"),
        ("fish", "complete -c ocs-lifecycle"),
    ] {
        let mut command = ocs(dir.path());
        command.args(["completions", shell]);
        // Read while it runs: a script is larger than a pipe's buffer.
        let output = command.output().expect("run completions");
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for subcommand in [
            "serve",
            "authorize",
            "health",
            "dead-letters",
            "database-url",
        ] {
            assert!(script.contains(subcommand), "{shell} lacks {subcommand}");
        }
    }
    let mut command = ocs(dir.path());
    command.arg("man");
    let output = command.output().expect("run man");
    assert!(output.status.success(), "{output:?}");
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.contains(".TH ocs-lifecycle 1"), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    assert!(page.contains("ocs\\-lifecycle\\-authorize(1)"), "{page}");

    let pages = dir.path().join("man");
    std::fs::create_dir(&pages).unwrap();
    let mut command = ocs(dir.path());
    command.args(["man", "--dir"]).arg(&pages);
    let output = run(command, "man --dir");
    assert!(output.status.success(), "{output:?}");
    for name in [
        "ocs-lifecycle.1",
        "ocs-lifecycle-serve.1",
        "ocs-lifecycle-clock-advance.1",
    ] {
        let text = std::fs::read_to_string(pages.join(name)).unwrap_or_default();
        assert!(text.starts_with(".ie"), "{name}: {text}");
    }
    let mut command = ocs(dir.path());
    command.args(["completions", "tcsh"]);
    assert_eq!(
        run(command, "tcsh").status.code(),
        Some(2),
        "not a shell clap knows"
    );
}
