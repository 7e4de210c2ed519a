//! `OCS_*` environment values through the real binary: a string setting made of digits is that
//! string (`OCS_LIFECYCLE__RECHARGE_HOTLINE=10086`, a numeric webhook secret), a list of strings
//! may be comma-separated, numbers are parsed, and a value that does not fit its key is refused
//! naming the variable. `serve` then uses the values: a VALID account without credit may call
//! the hotline 10086 and no longer 10011.

#[allow(unused_macros)]
mod common;

use std::path::Path;
use std::process::Output;

use common::api::Api;
use common::binary::{SAFETY, ocs, run, serve};
use ocs_lifecycle::proto::ServiceType::VoiceOut;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;

/// The variables under test.
const ENV: [(&str, &str); 5] = [
    ("OCS_LIFECYCLE__RECHARGE_HOTLINE", "10086"),
    ("OCS_LIFECYCLE__SPECIAL_NUMBERS", "110,112,10010"),
    ("OCS_BSS__WEBHOOK_URL", "http://127.0.0.1:9/bss/events"),
    ("OCS_BSS__WEBHOOK_SECRET", "20251231"),
    ("OCS_LIFECYCLE__GRACE_DAYS", "60"),
];

/// `ocs-lifecycle config check` in `dir` with the `OCS_*` variables `env`.
fn config_check(dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = ocs(dir);
    command.envs(env.iter().copied()).args(["config", "check"]);
    run(command)
}

#[test]
fn config_check_takes_digit_strings_as_strings_and_names_a_variable_that_does_not_fit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = config_check(dir.path(), &ENV);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        !stdout.contains("20251231"),
        "the secret is not printed: {stdout}"
    );

    let output = config_check(dir.path(), &[("OCS_LIFECYCLE__GRACE_DAYS", "ninety")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OCS_LIFECYCLE__GRACE_DAYS (lifecycle.grace_days)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dials_the_hotline_given_as_digits_in_the_environment() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (served, channel) = serve(dir.path(), &ENV).await;
    let mut api = Api(AccountLifecycleClient::new(channel));
    let msisdn = "8613800138000";
    api.active(msisdn).await;
    // VALID without credit: special numbers and the recharge hotline only.
    for (destination, allowed, why) in [
        ("10086", true, "the configured hotline"),
        ("10010", true, "a configured special number"),
        ("10011", false, "the default hotline is no longer one"),
        ("119", false, "not in the configured special numbers"),
    ] {
        let decision = api.authorize(msisdn, VoiceOut, destination).await;
        assert_eq!(decision.allowed, allowed, "{destination}: {why}");
    }

    assert!(
        served.terminate(SAFETY).await.is_some(),
        "serve did not stop"
    );
}
