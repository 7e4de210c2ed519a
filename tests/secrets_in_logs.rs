//! No secret in any log at any level: the real binary serves with `RUST_LOG=trace` and every
//! secret set — bearer tokens (configured by hash, sent by clients, and a wrong one), the
//! webhook secret, a webhook URL with user information and a key in its query, a PostgreSQL
//! password in the URL's user information and then as `?password=` — while requests, webhook
//! deliveries (a retried one too), the dashboard and a shutdown run; then its whole log is
//! searched for each secret (and the Basic credentials reqwest makes of the URL's user
//! information).
//!
//! The database passwords need PostgreSQL (trust authentication accepts any password); without
//! it the run uses SQLite and says `SKIPPED` for the database part, unless `CI=true`.

#[macro_use]
#[allow(unused_macros)]
mod common;
#[path = "webhook/hook.rs"]
#[allow(dead_code)]
mod hook;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::binary::{SAFETY, ocs, serving, stop_cleanly};
use common::process::Served;
use common::{Backend, TestDb, free_port, ts};
use hook::Hook;
use ocs_lifecycle::auth::token_sha256;
use ocs_lifecycle::proto;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::test_clock_client::TestClockClient;
use tonic::Request;
use tonic::metadata::MetadataValue;

const TOKEN: &str = "ocs_tok3n-Sekr1t-admin";
const WRONG_TOKEN: &str = "ocs_wr0ng-Sekr1t-guess";
const WEBHOOK_SECRET: &str = "whk-Sekr1t-8461";
const HOOK_USER: &str = "bssuser";
const HOOK_PASSWORD: &str = "h00kPw-Sekr1t";
const HOOK_QUERY_KEY: &str = "qk3y-Sekr1t";
const DB_PASSWORD: &str = "dbPw-Sekr1t-userinfo";
const DB_QUERY_PASSWORD: &str = "dbPw-Sekr1t-query";

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("header value");
    request.metadata_mut().insert("authorization", value);
    request
}

/// `ocs-lifecycle serve --clock manual` with `RUST_LOG=trace`, its stderr in `dir/server.log`;
/// returned once health is SERVING.
async fn serve(dir: &Path, database_url: &str, hook: &Hook, grpc: u16, http: u16) -> Served {
    let hook_url = format!(
        "http://{HOOK_USER}:{HOOK_PASSWORD}@{}/bss/events?code={HOOK_QUERY_KEY}",
        hook.addr
    );
    let tokens = format!(
        r#"[{{name = "ops", role = "admin", sha256 = "{}"}}]"#,
        token_sha256(TOKEN)
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], grpc));
    let mut command = ocs(dir);
    command
        .env("RUST_LOG", "trace")
        .env("OCS_DATABASE_URL", database_url)
        .env("OCS_BSS__WEBHOOK_URL", &hook_url)
        .env("OCS_BSS__WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("OCS_BSS__INITIAL_BACKOFF_MS", "50")
        .env("OCS_BSS__MAX_BACKOFF_MS", "100")
        .env("OCS_AUTH__TOKENS", &tokens)
        .args([
            "serve",
            "--clock",
            "manual",
            "--listen",
            &addr.to_string(),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ]);
    serving(command, addr, dir).await.0
}

/// Requests with the token (and a wrong one), a recycled number delivered to the hook after a
/// failed attempt, the dashboard and the metrics, then SIGTERM; the whole log.
async fn exercise(dir: &Path, database_url: &str) -> String {
    let mut answers = vec![503].into_iter();
    let hook = Hook::start(Box::new(move |_| {
        (answers.next().unwrap_or(200), Duration::ZERO)
    }))
    .await;
    let (grpc, http) = (free_port(), free_port());
    let served = serve(dir, database_url, &hook, grpc, http).await;
    let channel = served.channel();
    let mut accounts = AccountLifecycleClient::new(channel.clone());
    let mut clock = TestClockClient::new(channel);
    let msisdn = "8613800138000";
    let provision = |request_id: &str| proto::ProvisionAccountRequest {
        msisdn: msisdn.into(),
        sold: true,
        request_id: request_id.into(),
        ..Default::default()
    };
    let set_time = |at: &str| proto::SetTimeRequest { time: Some(ts(at)) };
    let refused = accounts
        .provision_account(bearer(provision("p-0"), WRONG_TOKEN))
        .await;
    assert_eq!(
        refused.expect_err("wrong token").code(),
        tonic::Code::Unauthenticated
    );
    // The card, then the same number again once the unactivated card has been recycled.
    for (at, request_id) in [
        ("2030-03-01T02:00:00Z", "p-1"),
        ("2031-09-01T02:00:00Z", "p-2"),
    ] {
        clock
            .set_time(bearer(set_time(at), TOKEN))
            .await
            .expect("SetTime");
        accounts
            .provision_account(bearer(provision(request_id), TOKEN))
            .await
            .unwrap_or_else(|e| panic!("ProvisionAccount {request_id}: {e:?}"));
    }
    hook.wait_for(SAFETY, |r| r.iter().any(|r| r.status == 200))
        .await;
    let delivered = hook.received();
    assert_eq!(
        delivered[0].header("authorization"),
        Some(
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{HOOK_USER}:{HOOK_PASSWORD}"))
            )
            .as_str()
        ),
        "the URL's user information is sent as Basic credentials"
    );
    let http_client = reqwest::Client::new();
    for token in [TOKEN, WRONG_TOKEN] {
        let _ = http_client
            .get(format!("http://127.0.0.1:{http}/api/dashboard"))
            .bearer_auth(token)
            .send()
            .await
            .expect("dashboard");
    }
    let _ = http_client
        .get(format!("http://127.0.0.1:{http}/metrics"))
        .send()
        .await
        .expect("metrics");

    stop_cleanly(served, dir).await
}

/// Asserts that `log` holds none of the secrets, and that it is a real trace log.
fn assert_no_secret(log: &str, database_password: Option<&str>) {
    assert!(
        log.contains("TRACE") && log.contains("webhook delivery on") && log.contains("listening"),
        "a trace-level log of the whole run: {}",
        &log[..log.len().min(2000)]
    );
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{HOOK_USER}:{HOOK_PASSWORD}"));
    let mut secrets = vec![
        TOKEN,
        WRONG_TOKEN,
        WEBHOOK_SECRET,
        HOOK_PASSWORD,
        HOOK_QUERY_KEY,
        basic.as_str(),
    ];
    secrets.extend(database_password);
    for secret in secrets {
        if let Some(at) = log.find(secret) {
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!(
                "{secret:?} is in the log ({} bytes): {}",
                log.len(),
                &log[line_start..line_end]
            );
        }
    }
    // What is left of the URLs still tells the operator where things are.
    assert!(
        log.contains(&format!("{HOOK_USER}:***@")),
        "the webhook URL, redacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_log_of_a_whole_run_holds_no_token_secret_or_password() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        println!("SKIPPED (database passwords): no PostgreSQL; the run uses SQLite");
        let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = exercise(dir.path(), &db.url).await;
        assert_no_secret(&log, None);
        return;
    };
    // Trust authentication: the server accepts any password, so the passwords are really
    // used to connect (and would be logged if anything logged them).
    let with_userinfo = db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    assert_ne!(
        with_userinfo, db.url,
        "the test URL names the user postgres"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = exercise(dir.path(), &with_userinfo).await;
    assert_no_secret(&log, Some(DB_PASSWORD));
    assert!(log.contains("postgres:***@"), "the database URL, redacted");

    // A fresh database, the password as a query parameter.
    let db = TestDb::create(Backend::Postgres).await.expect("PostgreSQL");
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let with_query = format!("{}{separator}password={DB_QUERY_PASSWORD}", db.url);
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = exercise(dir.path(), &with_query).await;
    assert_no_secret(&log, Some(DB_QUERY_PASSWORD));
    assert!(log.contains("password=***"), "the database URL, redacted");
}
