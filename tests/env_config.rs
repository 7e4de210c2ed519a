//! `OCS_*` environment values through the real binary: a string setting made of digits is that
//! string (`OCS_LIFECYCLE__RECHARGE_HOTLINE=10086`, a numeric webhook secret), a list of strings
//! may be comma-separated, numbers are parsed, and a value that does not fit its key is refused
//! naming the variable. `serve` then uses the values: a VALID account without credit may call
//! the hotline 10086 and no longer 10011.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{self, ServiceType};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_ocs-lifecycle");
/// Safety bound only: no test asserts on elapsed time.
const SAFETY: Duration = Duration::from_secs(60);

/// The variables under test.
const ENV: [(&str, &str); 5] = [
    ("OCS_LIFECYCLE__RECHARGE_HOTLINE", "10086"),
    ("OCS_LIFECYCLE__SPECIAL_NUMBERS", "110,112,10010"),
    ("OCS_BSS__WEBHOOK_URL", "http://127.0.0.1:9/bss/events"),
    ("OCS_BSS__WEBHOOK_SECRET", "20251231"),
    ("OCS_LIFECYCLE__GRACE_DAYS", "60"),
];

fn ocs(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).env_remove("RUST_LOG");
    for (name, _) in std::env::vars() {
        if name.starts_with("OCS_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

fn run(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocs-lifecycle");
    let deadline = Instant::now() + SAFETY;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ocs-lifecycle did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn config_check_takes_digit_strings_as_strings_and_names_a_variable_that_does_not_fit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut command = ocs(dir.path(), &ENV);
    command.args(["config", "check"]);
    let output = run(command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        !stdout.contains("20251231"),
        "the secret is not printed: {stdout}"
    );

    let mut command = ocs(dir.path(), &[("OCS_LIFECYCLE__GRACE_DAYS", "ninety")]);
    command.args(["config", "check"]);
    let output = run(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OCS_LIFECYCLE__GRACE_DAYS (lifecycle.grace_days)"),
        "{stderr}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

async fn serve(dir: &Path, port: u16) -> Child {
    let log = std::fs::File::create(dir.join("server.log")).expect("log file");
    let mut child = ocs(dir, &ENV)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http-addr",
            "off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn serve");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_lazy();
    let deadline = Instant::now() + SAFETY;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("serve exited: {status}\n{log}");
        }
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if health.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
            return child;
        }
        assert!(Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dials_the_hotline_given_as_digits_in_the_environment() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = free_port();
    let mut child = serve(dir.path(), port).await;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_lazy();
    let mut api = AccountLifecycleClient::new(channel);
    let msisdn = "8613800138000";
    api.provision_account(proto::ProvisionAccountRequest {
        msisdn: msisdn.into(),
        sold: true,
        request_id: "p-1".into(),
        ..Default::default()
    })
    .await
    .expect("ProvisionAccount");
    api.activate(proto::ActivateRequest {
        msisdn: msisdn.into(),
        request_id: "a-1".into(),
    })
    .await
    .expect("Activate");
    // VALID without credit: special numbers and the recharge hotline only.
    let allowed = |destination: &'static str| {
        let mut api = api.clone();
        async move {
            api.authorize(proto::AuthorizeRequest {
                msisdn: msisdn.into(),
                service: ServiceType::VoiceOut as i32,
                destination: destination.into(),
            })
            .await
            .expect("Authorize")
            .into_inner()
            .allowed
        }
    };
    assert!(allowed("10086").await, "the configured hotline");
    assert!(allowed("10010").await, "a configured special number");
    assert!(
        !allowed("10011").await,
        "the default hotline is no longer one"
    );
    assert!(
        !allowed("119").await,
        "not in the configured special numbers"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + SAFETY;
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
