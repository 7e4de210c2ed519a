//! Running the real client binary in the `cli_client*` suites: [`ocs_at`] runs
//! `CARGO_BIN_EXE_ocs-lifecycle` with arguments against a server and returns what it printed
//! and its exit code ([`Run`]).
//!
//! Every run happens in a temporary directory holding a broken `ocs-lifecycle.toml` and with
//! an invalid `OCS_LIFECYCLE__GRACE_DAYS` in the environment: a client command that loaded
//! the server configuration would fail, so these suites also show it does not.
//!
//! Timeline: cards are provisioned at [`T0`] (2030-03-01, 10:00 Asia/Shanghai); an activated
//! card is valid through 2030-08-28; an unactivated one dies after 2031-08-23 and is recycled
//! from 2031-08-24 00:00 local; [`T1`] (2031-09-01) is after that.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocs_lifecycle::proto::bss_events_client::BssEventsClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::common::TestServer;

pub const BIN: &str = env!("CARGO_BIN_EXE_ocs-lifecycle");
pub const T0: &str = "2030-03-01T02:00:00Z";
pub const T1: &str = "2031-09-01T02:00:00Z";
/// Safety bound only: no test asserts on elapsed time.
pub const SAFETY: Duration = Duration::from_secs(60);

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "the command failed: {self:#?}");
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }

    /// stdout as one JSON object per line (`events tail --output json`).
    #[track_caller]
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    /// The one line on stderr of a failed run.
    #[track_caller]
    pub fn error_line(&self) -> &str {
        assert_ne!(self.code, 0, "expected a failure: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "an error is one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        lines[0]
    }
}

/// Runs the binary with `args` against `server` (bounded; killed past the safety bound).
pub async fn ocs_at(server: &str, args: &[&str]) -> Run {
    ocs_env(server, &[], args).await
}

/// [`ocs_at`] with more environment variables.
pub async fn ocs_env(server: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    let server = server.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(
            dir.path().join("ocs-lifecycle.toml"),
            "this is = not [toml\n",
        )
        .expect("write the broken configuration");
        let mut command = Command::new(BIN);
        command.current_dir(dir.path()).env_remove("RUST_LOG");
        for (name, _) in std::env::vars() {
            if name.starts_with("OCS_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .env("OCS_LIFECYCLE__GRACE_DAYS", "0")
            .env("OCS_SERVER", &server)
            .envs(env)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ocs-lifecycle");
        let deadline = Instant::now() + SAFETY;
        // The output is small; reading it after exit cannot block the child.
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ocs-lifecycle {args:?} did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("output");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .expect("the run's thread")
}

pub async fn ocs(server: &TestServer, args: &[&str]) -> Run {
    ocs_at(&format!("http://{}", server.addr), args).await
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the file");
    path.display().to_string()
}

pub fn events_client(server: &TestServer) -> BssEventsClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect_lazy();
    BssEventsClient::new(channel)
}

/// A card provisioned at T0 and again at T1: STATE_CHANGED to RECYCLED and NUMBER_RECYCLED.
pub async fn recycle_one(server: &TestServer, msisdn: &str) {
    server.set_time(T0).await;
    ocs(server, &["account", "provision", msisdn]).await.ok();
    server.set_time(T1).await;
    let again = ocs(
        server,
        &["account", "provision", msisdn, "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(again["account"]["generation"], 2);
}

/// Provisions `msisdn` as a sold card and activates it (VALID from the server's time).
pub async fn provision_sold_and_activate(server: &TestServer, msisdn: &str) {
    ocs(server, &["account", "provision", msisdn, "--sold"])
        .await
        .ok();
    ocs(server, &["account", "activate", msisdn]).await.ok();
}
