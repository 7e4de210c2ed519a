//! The real binary: `ocs-lifecycle config check` on the example file, on one bad key at a time
//! (one line naming the key, exit code 2), on several at once, and `serve`/`migrate`/`sweep`
//! refusing what `config check` refuses. Each run gets a temporary working directory and an
//! environment without `OCS_*` variables.

#[allow(unused_macros)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::binary::{assert_no_database, ocs, run};
use tempfile::TempDir;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ocs-lifecycle.example.toml");

/// A configuration file holding `text` in a temporary working directory of its own.
fn config_file(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), text);
    (dir, path)
}

/// `text` as `c.toml` in `dir`.
fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check(dir: &Path, file: &Path) -> Output {
    let mut command = ocs(dir);
    command.args(["config", "check", "--config"]).arg(file);
    run(command)
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_example_file_is_ok_and_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let output = check(dir.path(), Path::new(EXAMPLE));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("configuration OK\n"), "{stdout}");
    for expected in [
        "database: sqlite ocs-lifecycle.db (pool 16)",
        "listen: 127.0.0.1:50051 (plaintext)",
        "http_addr: 127.0.0.1:9464",
        "timezone: Asia/Shanghai",
        "auth: off",
        "webhook: off",
        "grpc: at most 512 calls at once (more are shed), default deadline 60000 ms, messages \
         up to 4194304 bytes, keepalive every 30 s; drain 0 s at shutdown",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    assert_no_database(dir.path(), "config check creates no database");
}

#[test]
fn overload_limits_and_the_drain_are_checked_together_naming_each_key() {
    let (dir, file) = config_file(
        "drain_secs = 7200\n[grpc]\nmax_concurrent_requests = 0\ndefault_deadline_ms = 0\n\
         max_message_bytes = 10\nkeepalive_timeout_secs = 0\n",
    );
    let output = check(dir.path(), &file);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let problems = lines(&output.stderr);
    for key in [
        "drain_secs must be between 0 and 3600",
        "grpc.max_concurrent_requests must be between 1 and 100000",
        "grpc.default_deadline_ms must be between 1 and 3600000",
        "grpc.max_message_bytes must be between 1024 and 268435456",
        "grpc.keepalive_timeout_secs must be between 1 and 3600",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(key)),
            "{key:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");
}

#[test]
fn the_summary_shows_auth_and_webhook_without_secrets() {
    let hash = "ab".repeat(32);
    let (dir, file) = config_file(&format!(
        "listen = \"0.0.0.0:50051\"\ntimezone = \"America/New_York\"\n\
             [bss]\nwebhook_url = \"https://bss.example:8443/hook\"\nwebhook_secret = \"s3cret\"\n\
         [[auth.tokens]]\nname = \"gw\"\nrole = \"billing\"\nsha256 = \"{hash}\"\n"
    ));
    let output = check(dir.path(), &file);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("timezone: America/New_York"), "{stdout}");
    assert!(stdout.contains("auth: on (1 tokens)"), "{stdout}");
    assert!(
        stdout.contains("webhook: on (https://bss.example:8443; events NUMBER_RECYCLED)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("s3cret") && !stdout.contains(&hash),
        "{stdout}"
    );
}

#[test]
fn each_bad_key_is_one_line_naming_it_and_exit_code_2() {
    let hash = "ab".repeat(32);
    let tokens = format!(
        "[[auth.tokens]]\nname = \"a\"\nrole = \"billing\"\nsha256 = \"{hash}\"\n\
         [[auth.tokens]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
        "cd".repeat(32)
    );
    let cases: Vec<(String, &str)> =
        vec![
        ("[sweep]\ncron = \"every day\"\n".into(), "sweep.cron"),
        ("[sweep]\ncron = \"0 5 0 * *\"\n".into(), "sweep.cron"),
        ("timezone = \"Mars/Base\"\n".into(), "timezone"),
        (
            "[[tariff]]\nmin_amount = 1000\ndays = 90\n[[tariff]]\nmin_amount = 5000\ndays = 30\n"
                .into(),
            "tariff",
        ),
        (
            "[[tariff]]\nmin_amount = 1000\ndays = 30\n[[tariff]]\nmin_amount = 1000\ndays = 90\n"
                .into(),
            "tariff",
        ),
        ("[lifecycle]\ngrace_days = 0\n".into(), "lifecycle.grace_days"),
        ("[lifecycle]\nlock_days = 0\n".into(), "lifecycle.lock_days"),
        (
            "[lifecycle]\nrecharge_hotline = \"\"\n".into(),
            "lifecycle.recharge_hotline",
        ),
        ("[sweep]\nbatch_size = 0\n".into(), "sweep.batch_size"),
        ("[notify]\nexpiring_days = 40000\n".into(), "notify.expiring_days"),
        ("shutdown_timeout_secs = 0\n".into(), "shutdown_timeout_secs"),
        ("db_pool_size = 0\n".into(), "db_pool_size"),
        ("database_url = \"mysql://db/ocs\"\n".into(), "database_url"),
        ("listen = \"0.0.0.0:50051\"\n".into(), "listen"),
        ("http_addr = \"nowhere\"\n".into(), "http_addr"),
        ("http_addr = \"0.0.0.0:9464\"\n".into(), "http_addr"),
        (
            "[bss]\nwebhook_url = \"http://127.0.0.1:9/hook\"\n".into(),
            "bss.webhook_secret",
        ),
        ("[bss]\nmax_attempts = 0\n".into(), "bss.max_attempts"),
        (tokens, "auth.tokens[1].name"),
        ("[tls]\ncert = \"/nonexistent.pem\"\n".into(), "tls.key"),
        ("[lifecycle]\ngrace_dayz = 1\n".into(), "grace_dayz"),
    ];
    for (text, key) in cases {
        let (dir, file) = config_file(&text);
        let output = check(dir.path(), &file);
        assert_eq!(output.status.code(), Some(2), "{key}: {output:?}");
        let stderr = lines(&output.stderr);
        assert_eq!(stderr.len(), 1, "{key}: one line, got {stderr:?}");
        assert!(stderr[0].contains(key), "{key}: {}", stderr[0]);
        assert!(output.stdout.is_empty(), "{key}: no summary");
    }
}

#[test]
fn every_problem_is_listed_at_once() {
    let (dir, file) = config_file(
        "timezone = \"Mars/Base\"\n[lifecycle]\ngrace_days = 0\n[sweep]\ncron = \"nope\"\n",
    );
    let output = check(dir.path(), &file);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = lines(&output.stderr);
    assert_eq!(stderr.len(), 3, "{stderr:?}");
    for key in ["timezone", "lifecycle.grace_days", "sweep.cron"] {
        assert!(stderr.iter().any(|l| l.contains(key)), "{key}: {stderr:?}");
    }
}

#[test]
fn serve_migrate_and_sweep_refuse_what_config_check_refuses() {
    let (dir, file) = config_file(
        "[[tariff]]\nmin_amount = 1000\ndays = 90\n[[tariff]]\nmin_amount = 5000\ndays = 30\n",
    );
    for subcommand in ["serve", "migrate", "sweep"] {
        let mut command = ocs(dir.path());
        command.args([subcommand, "--config"]).arg(&file);
        let output = run(command);
        assert_eq!(output.status.code(), Some(2), "{subcommand}: {output:?}");
        let stderr = lines(&output.stderr);
        assert_eq!(stderr.len(), 1, "{subcommand}: {stderr:?}");
        assert!(stderr[0].contains("tariff"), "{subcommand}: {}", stderr[0]);
    }
    assert_no_database(dir.path(), "nothing was created");
}

#[test]
fn type_errors_name_file_line_column_key_and_value_and_every_problem_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[sweep]\nbatch_size = \"big\"\ncron = \"0 5 25 * * *\"\n\
         [lifecycle]\ngrace_days = \"ninety\"\ngrace_dayz = 1\n",
    );
    let output = check(dir.path(), &file);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = lines(&output.stderr);
    assert_eq!(stderr.len(), 4, "{stderr:?}");
    let path = file.display().to_string();
    for (at, key, value) in [
        (":2:1: ", "sweep.batch_size: ", "\"big\""),
        (":5:1: ", "lifecycle.grace_days: ", "\"ninety\""),
        (":6:1: ", "lifecycle.grace_dayz: ", "unknown field"),
    ] {
        let expected = format!("{path}{at}{key}");
        assert!(
            stderr
                .iter()
                .any(|l| l.contains(&expected) && l.contains(value)),
            "{expected} … {value}: {stderr:?}"
        );
    }
    // Hour 25: the bound said right (the crate's own message says "less than 23").
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("sweep.cron") && l.contains("Hours must be at most 23")),
        "{stderr:?}"
    );
}

#[test]
fn syntax_errors_name_their_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "timezone = \"Asia/Shanghai\"\n[sweep\nbatch_size = 10\n",
    );
    let output = check(dir.path(), &file);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = lines(&output.stderr);
    assert!(!stderr.is_empty(), "{output:?}");
    let expected = format!("{}:2:", file.display());
    assert!(
        stderr
            .iter()
            .all(|l| l.contains(&expected) && l.contains("not TOML")),
        "{stderr:?}"
    );
}

#[test]
fn a_value_from_the_environment_names_its_variable_beside_the_files_problems() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "db_pool_size = \"many\"\n");
    let mut command = ocs(dir.path());
    command
        .env("OCS_SWEEP__BATCH_SIZE", "big")
        .args(["config", "check", "--config"])
        .arg(&file);
    let output = run(command);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = lines(&output.stderr);
    assert_eq!(stderr.len(), 2, "{stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains(&format!("{}:1:1: db_pool_size: ", file.display()))),
        "{stderr:?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("OCS_SWEEP__BATCH_SIZE (sweep.batch_size): ") && l.contains("big")),
        "{stderr:?}"
    );
}
