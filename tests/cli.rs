//! The real binary: `serve` with no configuration (and its operations endpoint), a graceful
//! SIGTERM, `--http-addr off`, `migrate`, and a configuration error that names its key. Each
//! run gets a temporary working directory and an environment without `OCS_*` variables, so
//! only what the test passes configures it.

#[allow(dead_code)]
#[path = "common/process.rs"]
mod process;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use process::free_port;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_ocs-lifecycle");

/// Safety bound only: no test asserts on elapsed time.
const SAFETY: Duration = Duration::from_secs(60);

/// The binary, run in `dir`, with the `OCS_*` variables of the test environment removed.
fn ocs(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).env_remove("RUST_LOG");
    for (name, _) in std::env::vars() {
        if name.starts_with("OCS_") {
            command.env_remove(name);
        }
    }
    command
}

/// Waits for `child` to exit; kills it and panics when it outlives the safety bound.
fn wait_bounded(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + SAFETY;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary to completion (bounded) and collects its output.
fn run(mut command: Command, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocs-lifecycle");
    wait_bounded(&mut child, what);
    child.wait_with_output().expect("output")
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
    let status = tokio::task::block_in_place(|| wait_bounded(&mut child, "serve after SIGTERM"));
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
    assert!(
        !dir.path().join("ocs-lifecycle.db").exists(),
        "nothing was created"
    );
}

#[test]
fn sweep_prints_its_counts_and_refuses_the_future_unless_dry() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut command = ocs(dir.path());
    command.args(["sweep", "--database-url", &url]);
    let output = run(command, "sweep");
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

    let mut command = ocs(dir.path());
    command.args([
        "sweep",
        "--database-url",
        &url,
        "--dry-run",
        "--as-of",
        "2040-01-01T00:05:00+08:00",
    ]);
    let output = run(command, "sweep --dry-run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("as_of: 2039-12-31T16:05:00+00:00"),
        "{stdout}"
    );
    assert!(stdout.contains("recycled_msisdns: 0"), "{stdout}");

    let mut command = ocs(dir.path());
    command.args([
        "sweep",
        "--database-url",
        &url,
        "--as-of",
        "2999-01-01T00:00:00Z",
    ]);
    let output = run(command, "sweep in the future");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dry run"), "{stderr}");
}
