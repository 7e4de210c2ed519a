//! The `serve`, `migrate` and `sweep` processes at the edges of their storage and of their
//! life, run as an operator runs them (issue 15 items 8 and 9, issue 16 item 5):
//!
//! - one process per SQLite file: a second `serve` on a served file exits non-zero naming the
//!   file and the process holding it, and so do `migrate` and `sweep`; once the first stops,
//!   the file is free again;
//! - a database the server cannot write (an immutable file, a directory it cannot create files
//!   in) and a missing directory fail the start with a line naming the path and what to do;
//! - PostgreSQL that refuses the connection, an unknown host, an unknown user and a missing
//!   database each fail `migrate` with one line naming host:port and the cause, never the
//!   password;
//! - SIGTERM with `drain_secs`: `/readyz` answers 503 and health NOT_SERVING while the process
//!   still serves gRPC, then it exits 0.
//!
//! Read-only files: the tests run as root in CI, and root writes through a mode of 0444, so a
//! file is made read-only with the immutable attribute (`chattr +i`, which binds root too);
//! as another user, with the mode.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use common::binary::{self, BIN, SAFETY, ocs, run};
use common::process::{Log, ServeCommand, Served, free_port, health_status};
use common::{Backend, TestDb};
use ocs_lifecycle::proto::GetAccountRequest;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use tonic_health::pb::health_check_response::ServingStatus;

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// `ocs-lifecycle ARGS` in `dir` with `OCS_DATABASE_URL=url`, run to its end: its exit code
/// and its stderr.
fn run_with_database(dir: &Path, url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut command = ocs(dir);
    command.env("OCS_DATABASE_URL", url).args(args);
    let output = run(command);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A second `serve` on a free port with the operations endpoint off, run to its end.
fn second_serve(dir: &Path, url: &str) -> (Option<i32>, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    run_with_database(
        dir,
        url,
        &["serve", "--listen", &listen, "--http-addr", "off"],
    )
}

#[track_caller]
fn assert_refused(outcome: &(Option<i32>, String), what: &str, expected: &[&str]) {
    let (code, stderr) = outcome;
    assert!(
        code.is_some_and(|c| c != 0),
        "{what}: exit code {code:?}\n{stderr}"
    );
    for text in expected {
        assert!(stderr.contains(text), "{what}: no {text:?} in\n{stderr}");
    }
    assert!(
        !stderr.contains("hunter2"),
        "{what}: the password\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_served_sqlite_file_refuses_to_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("one.db");
    let url = sqlite_url(&db);
    let (first, _channel) = binary::serve(dir.path(), &[("OCS_DATABASE_URL", &url)]).await;
    let holder = format!("(pid {})", first.pid());
    let in_use = format!(
        "{} is in use by another ocs-lifecycle process",
        db.display()
    );
    for (what, args) in [
        ("a second serve", None),
        ("migrate", Some(&["migrate"][..])),
        ("sweep", Some(&["sweep", "--dry-run"][..])),
    ] {
        let outcome = match args {
            None => second_serve(dir.path(), &url),
            Some(args) => run_with_database(dir.path(), &url, args),
        };
        assert_refused(&outcome, what, &[&in_use, &holder, "one.db.lock"]);
    }
    // The first is untouched, and once it has stopped the file is free.
    binary::stop_cleanly(first, dir.path()).await;
    let migrated = run_with_database(dir.path(), &url, &["migrate"]);
    assert_eq!(migrated.0, Some(0), "{}", migrated.1);
}

/// Makes `path` read-only for this process until dropped: immutable as root, mode 0444/0555
/// otherwise.
struct ReadOnly(PathBuf);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl ReadOnly {
    fn make(path: &Path) -> ReadOnly {
        let status = if is_root() {
            Command::new("chattr").arg("+i").arg(path).status()
        } else {
            let mode = if path.is_dir() { "0555" } else { "0444" };
            Command::new("chmod").arg(mode).arg(path).status()
        };
        assert!(
            status.is_ok_and(|s| s.success()),
            "cannot make {} read-only",
            path.display()
        );
        ReadOnly(path.to_owned())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if is_root() {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        } else {
            let mode = if self.0.is_dir() { "0755" } else { "0644" };
            let _ = Command::new("chmod").arg(mode).arg(&self.0).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sqlite_file_fails_the_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("ro.db");
    let url = sqlite_url(&db);
    let migrated = run_with_database(dir.path(), &url, &["migrate"]);
    assert_eq!(migrated.0, Some(0), "{}", migrated.1);
    let _read_only = ReadOnly::make(&db);
    let outcome = second_serve(dir.path(), &url);
    assert_refused(
        &outcome,
        "serve on a read-only file",
        &[&db.display().to_string(), "writable"],
    );
    assert!(
        !outcome.1.contains("migrations done, serving"),
        "it never served:\n{}",
        outcome.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unwritable_sqlite_directory_fails_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no").join("such");
    let outcome = second_serve(dir.path(), &sqlite_url(&missing.join("x.db")));
    assert_refused(
        &outcome,
        "serve in a missing directory",
        &[
            &format!("the directory {} of the SQLite database", missing.display()),
            "does not exist",
            "mkdir -p",
        ],
    );
    assert!(!missing.exists(), "nothing was created");

    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    let _read_only = ReadOnly::make(&locked);
    let outcome = second_serve(dir.path(), &sqlite_url(&locked.join("x.db")));
    assert_refused(
        &outcome,
        "serve in a directory it cannot write",
        &[
            &format!(
                "cannot create the lock file {}",
                locked.join("x.db.lock").display()
            ),
            &format!("the directory {} must be writable", locked.display()),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_connection_failures_name_the_server_and_the_cause_without_the_password() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let closed = free_port();
    let outcome = run_with_database(
        dir.path(),
        &format!("postgres://postgres:hunter2@127.0.0.1:{closed}/ocs"),
        &["migrate"],
    );
    assert_refused(
        &outcome,
        "a closed port",
        &[&format!(
            "PostgreSQL at 127.0.0.1:{closed}: connection refused"
        )],
    );
    let outcome = run_with_database(
        dir.path(),
        "postgres://postgres:hunter2@no-such-host.invalid:5432/ocs",
        &["migrate"],
    );
    assert_refused(
        &outcome,
        "an unknown host",
        &["PostgreSQL at no-such-host.invalid:5432", "unknown host"],
    );

    // A real server: an unknown user and a missing database.
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let options = sqlx::postgres::PgConnectOptions::from_str(&db.url).expect("test URL");
    let at = format!("{}:{}", options.get_host(), options.get_port());
    let outcome = run_with_database(
        dir.path(),
        &format!("postgres://no_such_role:hunter2@{at}/postgres"),
        &["migrate"],
    );
    assert_refused(
        &outcome,
        "an unknown user",
        &[
            &format!("PostgreSQL at {at} refused user \"no_such_role\""),
            "no_such_role",
        ],
    );
    let missing = format!("ocs_missing_{}", uuid::Uuid::new_v4().simple());
    let outcome = run_with_database(
        dir.path(),
        &format!("postgres://postgres:hunter2@{at}/{missing}"),
        &["migrate"],
    );
    assert_refused(
        &outcome,
        "a missing database",
        &[
            &format!("PostgreSQL at {at} has no database \"{missing}\""),
            "createdb",
        ],
    );
}

async fn readyz(http: std::net::SocketAddr) -> Option<u16> {
    let response = reqwest::get(format!("http://{http}/readyz")).await.ok()?;
    Some(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_readyz_503_and_health_not_serving_before_a_clean_exit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut serve = ServeCommand::new(BIN, dir.path(), sqlite_url(&dir.path().join("d.db")))
        // Long enough to be seen on a loaded machine; the test waits for conditions only.
        .with_env([("OCS_DRAIN_SECS", "8")]);
    serve.http_addr = "127.0.0.1:0";
    let mut served = Served::spawn(&serve, Log::File(dir.path().join("server.log")));
    let channel = served.serving(SAFETY).await;
    let http = served.http_addr();
    assert_eq!(readyz(http).await, Some(200), "{}", served.log());

    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(served.pid().to_string())
        .status()
        .expect("kill");
    assert!(sent.success());
    let drained = tokio::time::timeout(SAFETY, async {
        while readyz(http).await != Some(503) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(drained.is_ok(), "/readyz never said 503:\n{}", served.log());
    assert_eq!(
        health_status(&channel).await,
        Some(ServingStatus::NotServing as i32)
    );
    assert!(
        served.running(),
        "still up while draining:\n{}",
        served.log()
    );
    // Calls are still answered during the drain (here: NOT_FOUND, not UNAVAILABLE).
    let answered = AccountLifecycleClient::new(channel.clone())
        .get_account(GetAccountRequest {
            msisdn: "8613800000001".into(),
        })
        .await
        .expect_err("no such account");
    assert_eq!(answered.code(), tonic::Code::NotFound, "{answered:?}");
    let log = binary::stop_cleanly(served, dir.path()).await;
    assert!(log.contains("health NOT_SERVING and /readyz 503"), "{log}");
}
