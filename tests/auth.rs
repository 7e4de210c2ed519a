//! Authentication, roles and TLS of the gRPC server, against the real server: bearer tokens
//! (UNAUTHENTICATED without a valid one), each role's grants over every method
//! (PERMISSION_DENIED outside them, before the handler: nothing changes), the token's name as
//! the actor in history, TLS with a CA-verified client, mTLS, and the loopback-only rule
//! without tokens.
//!
//! The certificates come from `scripts/make-test-certs.sh` (openssl) in a temporary directory
//! (`pki/mod.rs`).

#[macro_use]
#[allow(unused_macros)]
mod common;
mod pki;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::api::Api;
use common::binary::{assert_no_database, ocs, serve, stop_cleanly};
use common::{
    ACCOUNT_LIFECYCLE_METHODS, Backend, TestDb, TestServer, assert_rejected, test_config,
    with_tokens,
};
use ocs_lifecycle::auth::{Role, token_sha256};
use ocs_lifecycle::config::{ClockMode, Config};
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::bss_events_client::BssEventsClient;
use ocs_lifecycle::proto::lifecycle_analytics_client::LifecycleAnalyticsClient;
use ocs_lifecycle::proto::test_clock_client::TestClockClient;
use ocs_lifecycle::proto::{self, AccountState, HistoryKind, RechargeChannel};
use pki::Pki;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Safety bound only: no test asserts on elapsed time.
const SAFETY: Duration = Duration::from_secs(30);

const BILLING: &str = "ocs_test-billing-token";
const HALL: &str = "ocs_test-business-hall-token";
const BSS: &str = "ocs_test-bss-token";
const ADMIN: &str = "ocs_test-admin-token";
const ANALYST: &str = "ocs_test-analyst-token";
const UNKNOWN: &str = "ocs_test-unknown-token";

/// (token, configured name, role)
const TOKENS: [(&str, &str, Role); 5] = [
    (BILLING, "billing-gw", Role::Billing),
    (HALL, "hall-7", Role::BusinessHall),
    (BSS, "bss-1", Role::Bss),
    (ADMIN, "ops", Role::Admin),
    (ANALYST, "marketing", Role::Analyst),
];

fn auth_config(clock: ClockMode) -> Config {
    with_tokens(test_config(clock), &TOKENS)
}

/// Runs `body` with a manual-clock server that has the tokens, on a fresh database of
/// `backend`; skipped when PostgreSQL is unreachable.
async fn on_server_with_tokens<F: Future<Output = ()>>(
    backend: Backend,
    body: impl FnOnce(TestServer) -> F,
) {
    if let Some(db) = TestDb::create(backend).await {
        body(TestServer::start_with(db, auth_config(ClockMode::Manual)).await).await;
    }
}

/// Runs each body on SQLite and PostgreSQL with a server that has the tokens.
macro_rules! with_tokens_on_both_backends {
    ($($name:ident),* $(,)?) => {
        tests_on_backend!(sqlite_with_tokens, Sqlite, super::on_server_with_tokens: $($name),*);
        tests_on_backend!(postgres_with_tokens, Postgres, super::on_server_with_tokens: $($name),*);
    };
}

with_tokens_on_both_backends! {
    every_method_is_refused_without_a_valid_token,
    each_role_reaches_exactly_its_methods,
    a_refused_mutation_changes_nothing,
    history_records_the_token_name_and_unlock_keeps_the_operator,
}

/// `message` with `authorization: Bearer <token>` when a token is given.
fn authorized<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Every gRPC method of the services (the manual clock registers TestClock).
fn methods() -> impl Iterator<Item = &'static str> {
    ACCOUNT_LIFECYCLE_METHODS.into_iter().chain([
        "Subscribe",
        "ListDeadLetters",
        "Redeliver",
        "GetTime",
        "SetTime",
        "AdvanceTime",
        "StageComposition",
        "Flows",
        "ChurnWarnings",
        "Cohorts",
    ])
}

/// Calls `method` once with `token`, with a request the handler can answer without changing
/// anything that matters to the other calls (`n` makes MSISDNs and request ids unique).
async fn call(
    channel: &Channel,
    method: &str,
    token: Option<&str>,
    n: usize,
) -> Result<(), Status> {
    let mut accounts = AccountLifecycleClient::new(channel.clone());
    let mut events = BssEventsClient::new(channel.clone());
    let mut clock = TestClockClient::new(channel.clone());
    let mut analytics = LifecycleAnalyticsClient::new(channel.clone());
    let msisdn = format!("86139{n:08}");
    let request_id = format!("req-{n}");
    macro_rules! send {
        ($client:ident . $rpc:ident ( $message:expr )) => {
            $client.$rpc(authorized($message, token)).await.map(|_| ())
        };
    }
    match method {
        "ProvisionAccount" => send!(accounts.provision_account(proto::ProvisionAccountRequest {
            msisdn,
            sold: true,
            request_id,
            ..Default::default()
        })),
        "MarkSold" => send!(accounts.mark_sold(proto::MarkSoldRequest { msisdn, request_id })),
        "Activate" => send!(accounts.activate(proto::ActivateRequest { msisdn, request_id })),
        "Recharge" => send!(accounts.recharge(proto::RechargeRequest {
            msisdn,
            amount: 5000,
            channel: RechargeChannel::Online as i32,
            validity_days: 0,
            request_id,
        })),
        "Charge" => send!(accounts.charge(proto::ChargeRequest {
            msisdn,
            amount: 100,
            request_id,
        })),
        "Unlock" => send!(accounts.unlock(unlock(&msisdn, "op1@b1", &request_id))),
        "GetAccount" => send!(accounts.get_account(proto::GetAccountRequest { msisdn })),
        "ListAccounts" => send!(accounts.list_accounts(proto::ListAccountsRequest::default())),
        "GetAccountHistory" => send!(accounts.get_account_history(
            proto::GetAccountHistoryRequest {
                msisdn,
                ..Default::default()
            }
        )),
        "Authorize" => send!(accounts.authorize(proto::AuthorizeRequest {
            msisdn,
            service: proto::ServiceType::VoiceOut as i32,
            destination: "8613900000000".into(),
        })),
        "AdvanceStates" => send!(accounts.advance_states(proto::AdvanceStatesRequest {
            as_of: None,
            dry_run: true,
        })),
        "Subscribe" => send!(events.subscribe(proto::SubscribeRequest::default())),
        "ListDeadLetters" => {
            send!(events.list_dead_letters(proto::ListDeadLettersRequest::default()))
        }
        "Redeliver" => send!(events.redeliver(proto::RedeliverRequest {
            event_ids: vec!["00000000-0000-0000-0000-000000000000".into()],
        })),
        "GetTime" => send!(clock.get_time(proto::GetTimeRequest {})),
        // No time: INVALID_ARGUMENT from the handler, the clock stays.
        "SetTime" => send!(clock.set_time(proto::SetTimeRequest { time: None })),
        "AdvanceTime" => send!(clock.advance_time(proto::AdvanceTimeRequest { seconds: 0 })),
        "StageComposition" => {
            send!(analytics.stage_composition(proto::StageCompositionRequest::default()))
        }
        "Flows" => send!(analytics.flows(proto::FlowsRequest {
            granularity: proto::Granularity::Month as i32,
            from_date: "2025-01-01".into(),
            to_date: "2025-01-31".into(),
        })),
        "ChurnWarnings" => send!(analytics.churn_warnings(proto::ChurnWarningsRequest {
            stage: AccountState::Valid as i32,
            within_days: 7,
            ..Default::default()
        })),
        "Cohorts" => send!(analytics.cohorts(proto::CohortsRequest {
            from_month: "2025-01".into(),
            to_month: "2025-01".into(),
        })),
        other => panic!("no call for {other}"),
    }
}

/// What a role may call (the brief's table); admin may call everything.
fn granted(role: Role, method: &str) -> bool {
    let methods: &[&str] = match role {
        Role::Admin => return true,
        Role::Billing => &[
            "ProvisionAccount",
            "MarkSold",
            "Activate",
            "Recharge",
            "Charge",
            "Authorize",
            "GetAccount",
            "ListAccounts",
            "GetAccountHistory",
        ],
        Role::BusinessHall => &["Unlock", "Recharge", "GetAccount", "GetAccountHistory"],
        Role::Bss => &["Subscribe", "ListDeadLetters", "Redeliver", "GetAccount"],
        // Read-only: the reports and nothing that changes an account.
        Role::Analyst => &["StageComposition", "Flows", "ChurnWarnings", "Cohorts"],
    };
    methods.contains(&method)
}

async fn every_method_is_refused_without_a_valid_token(server: TestServer) {
    let channel = server.channel();
    let before = server.db().await.counts().await;
    for (n, method) in methods().enumerate() {
        let missing = call(&channel, method, None, n).await;
        let status = assert_rejected(missing, Code::Unauthenticated, "TOKEN_MISSING");
        assert!(status.message().contains("Bearer"), "{method}: {status:?}");
        let unknown = call(&channel, method, Some(UNKNOWN), n).await;
        assert_rejected(unknown, Code::Unauthenticated, "TOKEN_INVALID");
        // A configured token's hash is not a token.
        let hash = token_sha256(ADMIN);
        let hashed = call(&channel, method, Some(&hash), n).await;
        assert_rejected(hashed, Code::Unauthenticated, "TOKEN_INVALID");
    }
    assert_eq!(server.db().await.counts().await, before);
    // Probes and discovery stay open.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "ocs.lifecycle.v1.AccountLifecycle".into(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(health.into_inner().status, ServingStatus::Serving as i32);
    let outbound = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(outbound)
        .await
        .expect("reflection needs no token")
        .into_inner();
    let answer = answers.next().await.expect("one answer").expect("answer");
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::ListServicesResponse(_))
        ),
        "{answer:?}"
    );
    server.stop().await;
}

async fn each_role_reaches_exactly_its_methods(server: TestServer) {
    let channel = server.channel();
    let mut n = 0;
    for (token, name, role) in TOKENS {
        for method in methods() {
            n += 1;
            let result = call(&channel, method, Some(token), n).await;
            if granted(role, method) {
                // The handler answered (OK, NOT_FOUND, INVALID_ARGUMENT …): not the gate.
                if let Err(status) = &result {
                    assert!(
                        !matches!(
                            status.code(),
                            Code::Unauthenticated | Code::PermissionDenied
                        ),
                        "{role} {method} should pass the gate: {status:?}"
                    );
                }
            } else {
                let status = assert_rejected(result, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
                assert!(
                    status.message().contains(name) && status.message().contains(method),
                    "{role} {method}: {status:?}"
                );
            }
        }
    }
    server.stop().await;
}

async fn provision_active(channel: &Channel, msisdn: &str, token: &str) -> proto::Account {
    let mut accounts = AccountLifecycleClient::new(channel.clone());
    accounts
        .provision_account(authorized(
            proto::ProvisionAccountRequest {
                msisdn: msisdn.into(),
                sold: true,
                request_id: format!("p-{msisdn}"),
                ..Default::default()
            },
            Some(token),
        ))
        .await
        .expect("provision");
    accounts
        .activate(authorized(
            proto::ActivateRequest {
                msisdn: msisdn.into(),
                request_id: format!("a-{msisdn}"),
            },
            Some(token),
        ))
        .await
        .expect("activate")
        .into_inner()
}

/// An unlock without a recharge by `operator@branch`.
fn unlock(msisdn: &str, operator_at_branch: &str, request_id: &str) -> proto::UnlockRequest {
    let (operator, branch) = operator_at_branch.split_once('@').expect("operator@branch");
    proto::UnlockRequest {
        msisdn: msisdn.into(),
        operator_id: operator.into(),
        branch_id: branch.into(),
        recharge_amount: 0,
        request_id: request_id.into(),
    }
}

fn recharge(msisdn: &str, amount: i64, request_id: &str) -> proto::RechargeRequest {
    proto::RechargeRequest {
        msisdn: msisdn.into(),
        amount,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: request_id.into(),
    }
}

/// An account provisioned and activated by billing, then recharged with `amount` (request id
/// `request_id`) by the holder of `token`; a client of the accounts service.
async fn recharged_account(
    server: &TestServer,
    msisdn: &str,
    amount: i64,
    request_id: &str,
    token: &str,
) -> AccountLifecycleClient<Channel> {
    provision_active(&server.channel(), msisdn, BILLING).await;
    let mut accounts = server.accounts();
    accounts
        .recharge(authorized(
            recharge(msisdn, amount, request_id),
            Some(token),
        ))
        .await
        .expect("the first recharge");
    accounts
}

async fn a_refused_mutation_changes_nothing(server: TestServer) {
    let msisdn = "8613800138000";
    let mut accounts = recharged_account(&server, msisdn, 5000, "r-1", BILLING).await;
    let db = server.db().await;
    let before = db.snapshot(msisdn).await;

    let charge = proto::ChargeRequest {
        msisdn: msisdn.into(),
        amount: 100,
        request_id: "c-1".into(),
    };
    let provision = proto::ProvisionAccountRequest {
        msisdn: "8613800138999".into(),
        sold: true,
        request_id: "p-new".into(),
        ..Default::default()
    };
    let advance = proto::AdvanceStatesRequest {
        as_of: None,
        dry_run: false,
    };
    macro_rules! sent {
        ($rpc:ident($message:expr, $token:expr)) => {
            accounts
                .$rpc(authorized($message, $token))
                .await
                .map(|_| ())
        };
    }
    let refused = [
        (
            sent!(recharge(recharge(msisdn, 5000, "r-2"), Some(BSS))),
            Code::PermissionDenied,
        ),
        (
            sent!(recharge(recharge(msisdn, 5000, "r-2"), None)),
            Code::Unauthenticated,
        ),
        (sent!(charge(charge, Some(HALL))), Code::PermissionDenied),
        (
            sent!(provision_account(provision, Some(UNKNOWN))),
            Code::Unauthenticated,
        ),
        (
            sent!(advance_states(advance, Some(BILLING))),
            Code::PermissionDenied,
        ),
    ];
    for (result, code) in refused {
        assert_rejected(result, code, "");
    }
    assert_eq!(db.snapshot(msisdn).await, before);
    assert_eq!(db.raw_account("8613800138999").await, None);

    // The refused "r-2" left no idempotency key: the same id from billing is applied, not replayed.
    let applied = accounts
        .recharge(authorized(recharge(msisdn, 5000, "r-2"), Some(BILLING)))
        .await
        .expect("recharge")
        .into_inner();
    assert!(!applied.replayed);
    assert_eq!(applied.balance_after, 10_000);
    db.close().await;
    server.stop().await;
}

async fn history_actors(channel: &Channel, msisdn: &str) -> Vec<(i32, String)> {
    AccountLifecycleClient::new(channel.clone())
        .get_account_history(authorized(
            proto::GetAccountHistoryRequest {
                msisdn: msisdn.into(),
                ..Default::default()
            },
            Some(HALL),
        ))
        .await
        .expect("history")
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.kind, e.actor))
        .collect()
}

async fn history_records_the_token_name_and_unlock_keeps_the_operator(server: TestServer) {
    let msisdn = "8613800138001";
    // A business hall recharges.
    let mut accounts = recharged_account(&server, msisdn, 1000, "r-hall", HALL).await;
    let channel = server.channel();
    assert_eq!(
        history_actors(&channel, msisdn).await,
        vec![
            (HistoryKind::Provisioned as i32, "billing-gw".to_owned()),
            (HistoryKind::Activated as i32, "billing-gw".to_owned()),
            (HistoryKind::Recharge as i32, "hall-7".to_owned()),
        ]
    );

    // Past valid_until + 90 days of GRACE the account is LOCKED (the clock is admin-only).
    let mut clock = TestClockClient::new(channel.clone());
    let now = clock
        .get_time(authorized(proto::GetTimeRequest {}, Some(ADMIN)))
        .await
        .expect("time")
        .into_inner()
        .now
        .expect("now");
    let later = prost_types::Timestamp {
        seconds: now.seconds + 300 * 86_400,
        nanos: 0,
    };
    clock
        .set_time(authorized(
            proto::SetTimeRequest { time: Some(later) },
            Some(ADMIN),
        ))
        .await
        .expect("set time");
    let unlocked = accounts
        .unlock(authorized(
            unlock(msisdn, "op42@branch-3", "u-1"),
            Some(HALL),
        ))
        .await
        .expect("unlock")
        .into_inner();
    assert_eq!(unlocked.state, AccountState::Grace as i32);
    let actors = history_actors(&channel, msisdn).await;
    let (kind, actor) = actors.last().expect("the unlock").clone();
    assert_eq!(kind, HistoryKind::Unlock as i32);
    assert_eq!(actor, "op42@branch-3");
    server.stop().await;
}

both_backends! {
    without_tokens_the_actor_is_anonymous,
}

async fn without_tokens_the_actor_is_anonymous(server: TestServer) {
    let mut api = Api::of(&server);
    let msisdn = "8613800138002";
    // No token needed with authentication off.
    api.provision(msisdn).await;
    let history = api.history(msisdn).await;
    let actors: Vec<&str> = history.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, ["anonymous"]);
    server.stop().await;
}

// ---- TLS -----------------------------------------------------------------------------------

/// A configuration serving TLS with the test PKI's server certificate (and mTLS with its CA).
fn tls_config(pki: &Pki, mtls: bool) -> Config {
    let mut config = auth_config(ClockMode::System);
    config.tls.cert = Some(pki.path("server.pem"));
    config.tls.key = Some(pki.path("server.key"));
    if mtls {
        config.tls.client_ca = Some(pki.path("ca.pem"));
    }
    config
}

fn plaintext_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy()
}

/// One health check over `channel`, bounded by the safety timeout.
async fn health_check(channel: Channel) -> Result<i32, Status> {
    let mut health = HealthClient::new(channel);
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    tokio::time::timeout(SAFETY, check)
        .await
        .expect("the health check neither answered nor failed")
        .map(|r| r.into_inner().status)
}

/// A server with TLS (with `mtls`, also client certificates from the client CA), and its PKI;
/// start-up already waits for SERVING over a channel that trusts the CA (and presents a client
/// certificate with `mtls`).
async fn start_tls(mtls: bool) -> (Arc<Pki>, TestServer) {
    let pki = Arc::new(Pki::make());
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    let client_pki = pki.clone();
    let server = TestServer::start_with_channel(db, tls_config(&pki, mtls), move |addr| {
        client_pki.channel(addr, mtls)
    })
    .await;
    (pki, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_a_ca_verified_client_and_refuses_plaintext() {
    let (_pki, server) = start_tls(false).await;
    let mut accounts = server.accounts();
    let missing = accounts
        .get_account(authorized(
            proto::GetAccountRequest {
                msisdn: "8613800138000".into(),
            },
            Some(BSS),
        ))
        .await;
    assert_rejected(missing, Code::NotFound, "");
    let refused = accounts
        .get_account(authorized(
            proto::GetAccountRequest {
                msisdn: "8613800138000".into(),
            },
            None,
        ))
        .await;
    assert_rejected(refused, Code::Unauthenticated, "TOKEN_MISSING");

    let plaintext = health_check(plaintext_channel(server.addr)).await;
    assert!(plaintext.is_err(), "a plaintext client got {plaintext:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let (pki, server) = start_tls(true).await;
    assert_eq!(
        health_check(server.channel()).await.ok(),
        Some(ServingStatus::Serving as i32)
    );
    let without_cert = health_check(pki.channel(server.addr, false)).await;
    assert!(
        without_cert.is_err(),
        "a client without a certificate got {without_cert:?}"
    );
    let plaintext = health_check(plaintext_channel(server.addr)).await;
    assert!(plaintext.is_err(), "a plaintext client got {plaintext:?}");
    server.stop().await;
}

/// Runs `serve_on` with `config` on 127.0.0.1:0 and expects it to refuse to start.
async fn refused_start(config: Config) -> String {
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    let mut config = config;
    config.database_url = db.url.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let served = tokio::time::timeout(
        SAFETY,
        ocs_lifecycle::server::serve_on(config, listener, CancellationToken::new()),
    )
    .await
    .expect("a bad configuration is refused at once");
    served
        .expect_err("the server must refuse to start")
        .to_string()
}

#[tokio::test]
async fn bad_tls_files_stop_the_start_with_an_error_naming_the_key() {
    let pki = Pki::make();
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("write");

    let missing = pki.path("no-such.pem");
    // (client certificates on, the file set, to this file, what the error names)
    let cases: [(bool, &str, PathBuf, &[&str]); 4] = [
        (false, "cert", missing, &["tls.cert", "no-such.pem"]),
        (true, "client_ca", garbage, &["tls.client_ca"]),
        (false, "key", pki.path("server.pem"), &["tls.key"]),
        (false, "key", pki.path("client.key"), &["tls.key"]),
    ];
    for (mtls, key, file, named) in cases {
        let mut config = tls_config(&pki, mtls);
        let set = match key {
            "cert" => &mut config.tls.cert,
            "key" => &mut config.tls.key,
            _ => &mut config.tls.client_ca,
        };
        *set = Some(file);
        let err = refused_start(config).await;
        assert!(named.iter().all(|n| err.contains(n)), "{err}");
    }
}

// ---- loopback only without tokens ----------------------------------------------------------

/// The listener a test puts on 0.0.0.0 (the other stays on loopback).
#[derive(Clone, Copy, Debug)]
enum OnAllInterfaces {
    Grpc,
    Operations,
}

/// Starts a server without tokens or `--insecure` and with `open` on 0.0.0.0: it must refuse
/// before touching its database, with a message that names each of `named`.
async fn assert_refused_without_insecure(open: OnAllInterfaces, named: &[&str]) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let database = dir.path().join("never.db");
    let mut config = test_config(ClockMode::System);
    config.database_url = format!("sqlite://{}", database.display());
    let everywhere = "0.0.0.0:0".parse().expect("address");
    match open {
        OnAllInterfaces::Grpc => config.listen = everywhere,
        OnAllInterfaces::Operations => config.http_addr = Some(everywhere),
    }
    let refused = tokio::time::timeout(
        SAFETY,
        ocs_lifecycle::server::serve(config, CancellationToken::new()),
    )
    .await
    .expect("refused at once")
    .expect_err("no tokens, no --insecure, 0.0.0.0");
    let message = refused.to_string();
    assert!(named.iter().all(|n| message.contains(n)), "{message}");
    assert!(!database.exists(), "a refused start touched the database");
}

#[tokio::test]
async fn without_tokens_a_non_loopback_address_needs_insecure() {
    assert_refused_without_insecure(OnAllInterfaces::Grpc, &["--insecure", "0.0.0.0"]).await;
}

#[tokio::test]
async fn without_tokens_a_non_loopback_http_addr_needs_insecure() {
    let named = ["http_addr", "--insecure"];
    assert_refused_without_insecure(OnAllInterfaces::Operations, &named).await;
}

/// Whether the listener `open` answers on loopback port `port`: gRPC health SERVING, or
/// `/healthz` a success.
async fn answers(open: OnAllInterfaces, port: u16) -> bool {
    match open {
        OnAllInterfaces::Grpc => {
            let channel = plaintext_channel(SocketAddr::from(([127, 0, 0, 1], port)));
            health_check(channel).await.ok() == Some(ServingStatus::Serving as i32)
        }
        OnAllInterfaces::Operations => reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success()),
    }
}

/// Serves `config` with `open` on 0.0.0.0:<ephemeral> and the other listener on loopback; when
/// it starts, checks `open` over loopback ([`answers`]).
async fn serve_on_all_interfaces(config: Config, open: OnAllInterfaces) -> Result<(), String> {
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    let mut config = config;
    config.database_url = db.url.clone();
    let bind = |address: &'static str| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .unwrap_or_else(|e| panic!("bind {address}: {e}"))
    };
    let (grpc, http) = match open {
        OnAllInterfaces::Grpc => (bind("0.0.0.0:0").await, bind("127.0.0.1:0").await),
        OnAllInterfaces::Operations => (bind("127.0.0.1:0").await, bind("0.0.0.0:0").await),
    };
    let port = match open {
        OnAllInterfaces::Grpc => &grpc,
        OnAllInterfaces::Operations => &http,
    }
    .local_addr()
    .expect("address")
    .port();
    let shutdown = CancellationToken::new();
    let mut handle = tokio::spawn(ocs_lifecycle::server::serve_with_listeners(
        config,
        grpc,
        Some(http),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        tokio::select! {
            finished = &mut handle => {
                return Err(finished.expect("server task").expect_err("stopped").to_string());
            }
            answered = answers(open, port) => {
                if answered {
                    break;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open:?} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(SAFETY, handle)
        .await
        .expect("stopped in time")
        .expect("server task")
        .map_err(|e| e.to_string())
}

/// With `open` on 0.0.0.0: no tokens is refused with a message that names each of `named`;
/// tokens, or no tokens and `--insecure`, are served.
async fn assert_served_with_tokens_or_insecure(open: OnAllInterfaces, named: &[&str]) {
    let refused = serve_on_all_interfaces(test_config(ClockMode::System), open).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| named.iter().all(|n| e.contains(n))),
        "{refused:?}"
    );
    let with_tokens = serve_on_all_interfaces(auth_config(ClockMode::System), open).await;
    assert_eq!(with_tokens, Ok(()));
    let mut insecure = test_config(ClockMode::System);
    insecure.insecure = true;
    assert_eq!(serve_on_all_interfaces(insecure, open).await, Ok(()));
}

#[tokio::test]
async fn with_tokens_or_insecure_any_address_is_served() {
    assert_served_with_tokens_or_insecure(OnAllInterfaces::Grpc, &["--insecure"]).await;
}

#[tokio::test]
async fn with_tokens_or_insecure_the_operations_endpoint_may_listen_on_any_address() {
    let named = ["http_addr", "--insecure"];
    assert_served_with_tokens_or_insecure(OnAllInterfaces::Operations, &named).await;
}

// ---- the real binary -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_token_configured_as_printed_authenticates_its_holder() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = ocs(dir.path())
        .args("token generate --name billing-gw --role billing".split(' '))
        .output()
        .expect("run token generate");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = stdout
        .lines()
        .find(|l| l.starts_with("ocs_"))
        .expect("the token line")
        .to_owned();
    let entry = &stdout[stdout.find("[[auth.tokens]]").expect("the entry")..];
    assert!(
        !entry.contains(&token),
        "only the hash goes into the configuration"
    );
    std::fs::write(dir.path().join("ocs-lifecycle.toml"), entry).expect("write config");

    let (served, channel) = serve(dir.path(), &[]).await;
    let mut accounts = AccountLifecycleClient::new(channel);
    let msisdn = "8613800138000";
    let provision = || proto::ProvisionAccountRequest {
        msisdn: msisdn.into(),
        sold: true,
        request_id: "p-1".into(),
        ..Default::default()
    };
    let refused = accounts
        .provision_account(authorized(provision(), None))
        .await;
    assert_rejected(refused, Code::Unauthenticated, "TOKEN_MISSING");
    accounts
        .provision_account(authorized(provision(), Some(&token)))
        .await
        .expect("the generated token provisions");
    let history = accounts
        .get_account_history(authorized(
            proto::GetAccountHistoryRequest {
                msisdn: msisdn.into(),
                ..Default::default()
            },
            Some(&token),
        ))
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.entries.len(), 1);
    assert_eq!(history.entries[0].actor, "billing-gw");
    let unlock = accounts
        .unlock(authorized(unlock(msisdn, "op@b", "u-1"), Some(&token)))
        .await;
    assert_rejected(unlock, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    stop_cleanly(served, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_without_tokens_warns_and_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = ocs(dir.path())
        .args([
            "serve",
            "--listen",
            &format!("0.0.0.0:{}", common::free_port()),
            "--http-addr",
            "off",
        ])
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "served 0.0.0.0 without tokens");
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert_no_database(dir.path(), "a refused start created the database");

    let (served, _) = serve(dir.path(), &[]).await;
    let log = stop_cleanly(served, dir.path()).await;
    assert!(log.contains("authentication is off"), "{log}");

    let output = ocs(dir.path())
        .args(["token", "generate", "--name", "x", "--role", "root"])
        .output()
        .expect("run token generate");
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown role is a usage error"
    );
    assert!(output.stdout.is_empty(), "no token printed");
}
