//! Bad input (issue 7), with proptest so it runs in `cargo test`:
//!
//! - raw protobuf bytes (random, and mutations of valid encodings) as the body of every
//!   `AccountLifecycle` unary method, through a real server: it answers, never INTERNAL or
//!   UNKNOWN (a handler panic), a body that is not a message of the method's request type is
//!   INVALID_ARGUMENT (MALFORMED_REQUEST), it keeps serving, and a rejected request writes
//!   nothing;
//! - hostile request fields (unicode, huge and malformed MSISDNs, i64 extremes, negative and
//!   huge days, unknown enum numbers, request_id edge cases, messages over the 4 MB limit);
//! - the lifecycle core on hostile dates: year boundaries, the end of the calendar
//!   (9999-12-31), America/New_York on DST days — boundaries at local midnight, exact day counts.
//!
//! Case counts are modest (the suite runs on a loaded 2-core machine), the seed is fixed under
//! `CI=true` and printed (`common::budget`; `OCS_FUZZ_CASES` for a longer run); proptest prints
//! the minimal failing input of a failure. The server tests run on SQLite and on PostgreSQL.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, BufMut};
use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use common::faults::valid_account;
use common::process::health_status;
use common::{ACCOUNT_LIFECYCLE_METHODS as METHODS, Backend, TestServer};
use http::uri::PathAndQuery;
use ocs_lifecycle::api::codec::MALFORMED_REQUEST;
use ocs_lifecycle::lifecycle::{
    self, AccountState, Amount, Command, Msisdn, ProvisionParams, RechargeChannel, Rules,
};
use ocs_lifecycle::proto::{
    ActivateRequest, AdvanceStatesRequest, AuthorizeRequest, ChargeRequest,
    GetAccountHistoryRequest, GetAccountRequest, ListAccountsRequest, MarkSoldRequest,
    ProvisionAccountRequest, RechargeRequest, UnlockRequest,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

// ---------------------------------------------------------------------------------------------
// A codec that sends and receives raw bytes: the request body is whatever the test built.

#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Whether `body` decodes as the request message of `method` (what the server's codec does
/// before any handler runs).
fn decodes_as_request_of(method: &str, body: &[u8]) -> bool {
    match method {
        "ProvisionAccount" => ProvisionAccountRequest::decode(body).is_ok(),
        "MarkSold" => MarkSoldRequest::decode(body).is_ok(),
        "Activate" => ActivateRequest::decode(body).is_ok(),
        "Recharge" => RechargeRequest::decode(body).is_ok(),
        "Charge" => ChargeRequest::decode(body).is_ok(),
        "Unlock" => UnlockRequest::decode(body).is_ok(),
        "GetAccount" => GetAccountRequest::decode(body).is_ok(),
        "ListAccounts" => ListAccountsRequest::decode(body).is_ok(),
        "GetAccountHistory" => GetAccountHistoryRequest::decode(body).is_ok(),
        "Authorize" => AuthorizeRequest::decode(body).is_ok(),
        "AdvanceStates" => AdvanceStatesRequest::decode(body).is_ok(),
        other => panic!("no request type known for {other}"),
    }
}

async fn call_raw(channel: &Channel, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(format!("/ocs.lifecycle.v1.AccountLifecycle/{method}"))
        .expect("path");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The fixture: one server, one VALID account, a runtime the proptest cases block on.

const MSISDN: &str = "8613900000001";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: TestServer,
}

impl Fixture {
    fn start(backend: Backend) -> Option<Fixture> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime.block_on(async {
            let server = TestServer::start(backend).await?;
            let mut client = server.accounts();
            valid_account(&mut client, MSISDN).await;
            client.recharge(valid_recharge()).await.expect("recharge");
            Some(server)
        })?;
        Some(Fixture { runtime, server })
    }

    /// Runs one request; checks the answer's code, that a rejection wrote nothing, and that
    /// the server still serves.
    fn check<T: std::fmt::Debug>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = Result<T, Status>>,
        allowed: &[Code],
    ) -> Result<(), TestCaseError> {
        self.runtime.block_on(async {
            let db = self.server.db().await;
            let before = db.snapshot(MSISDN).await;
            let answer = request.await;
            if let Err(status) = &answer {
                prop_assert!(
                    allowed.contains(&status.code()),
                    "{what}: unexpected {status:?}"
                );
                prop_assert_eq!(
                    &db.snapshot(MSISDN).await,
                    &before,
                    "{}: a rejection wrote",
                    what
                );
            }
            let health = health_status(&self.server.channel()).await;
            prop_assert_eq!(health, Some(ServingStatus::Serving as i32));
            db.close().await;
            Ok(())
        })
    }

    /// Runs `test` with a fresh fixture on `n` cases of `strategy`; a failure panics with
    /// proptest's minimal case.
    fn run<S: Strategy>(
        backend: Backend,
        n: u32,
        strategy: &S,
        test: impl Fn(&Fixture, S::Value) -> Result<(), TestCaseError>,
    ) {
        let Some(fixture) = Fixture::start(backend) else {
            return;
        };
        TestRunner::new(cases(n))
            .run(strategy, |value| test(&fixture, value))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// What a bad request may be answered with: never INTERNAL (also not for a body that is not a
/// protobuf message: that is the caller's bad input), UNKNOWN (a handler panic) or UNAVAILABLE
/// (a dropped connection).
const REJECTIONS: [Code; 6] = [
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::AlreadyExists,
    Code::OutOfRange,
    Code::ResourceExhausted,
];

fn valid_recharge() -> RechargeRequest {
    RechargeRequest {
        msisdn: MSISDN.into(),
        amount: 5000,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: "r-1".into(),
    }
}

/// `n` cases under CI (`common::budget`: `OCS_FUZZ_CASES`, the seed).
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        // A failure is reported after at most this much shrinking (each step is a real call
        // to the server): unbounded shrinking of a rare failure ran for minutes in CI.
        max_shrink_time: 20_000,
        ..common::budget::config(n)
    }
}

/// Each server test (`fn name(backend: Backend)`) as `sqlite::name` and `postgres::name`:
/// plain `#[test]`s, the fixture owns its runtime.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(super::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::Backend::Postgres) } )*
        }
    };
}

on_both_backends! {
    random_and_mutated_protobuf_bytes_are_answered_without_a_write_on_rejection,
    an_undecodable_body_is_invalid_argument_malformed_request_on_every_method,
    hostile_recharge_fields_are_refused_without_a_write_or_applied_within_the_rules,
    hostile_provisioning_fields_are_refused_without_a_write,
    ten_megabyte_fields_are_refused_and_write_nothing,
}

// ---------------------------------------------------------------------------------------------
// (a) Raw protobuf bytes.

/// A valid encoding with bytes flipped, cut or inserted.
fn mutated_encoding() -> impl Strategy<Value = Vec<u8>> {
    let valid = valid_recharge().encode_to_vec();
    let len = valid.len();
    (
        prop::collection::vec((0..len, any::<u8>()), 1..4),
        0..=len,
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(flips, cut, insert)| {
            let mut bytes = valid.clone();
            for (at, value) in flips {
                bytes[at] = value;
            }
            bytes.truncate(cut);
            bytes.extend(insert);
            bytes
        })
}

/// A valid `RechargeRequest` encoding with any field values: it decodes as the request of
/// Recharge and of several other methods (whose fields have the same numbers and wire types).
fn any_recharge_encoding() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<String>(),
        any::<i64>(),
        any::<i32>(),
        any::<u32>(),
        any::<String>(),
    )
        .prop_map(|(msisdn, amount, channel, validity_days, request_id)| {
            RechargeRequest {
                msisdn,
                amount,
                channel,
                validity_days,
                request_id,
            }
            .encode_to_vec()
        })
}

fn random_and_mutated_protobuf_bytes_are_answered_without_a_write_on_rejection(backend: Backend) {
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        mutated_encoding(),
        any_recharge_encoding(),
    ];
    let undecodable_bodies = AtomicUsize::new(0);
    let decodable_bodies = AtomicUsize::new(0);
    Fixture::run(
        backend,
        160,
        &(0..METHODS.len(), bodies),
        |fixture, (method, body)| {
            let channel = fixture.server.channel();
            let name = METHODS[method];
            let what = format!("{name} {body:02x?}");
            if decodes_as_request_of(name, &body) {
                decodable_bodies.fetch_add(1, Ordering::Relaxed);
                return fixture.check(&what, call_raw(&channel, name, body.clone()), &REJECTIONS);
            }
            // Not a message of the request type: INVALID_ARGUMENT MALFORMED_REQUEST, from the
            // server's codec before any handler runs.
            undecodable_bodies.fetch_add(1, Ordering::Relaxed);
            fixture.check(
                &what,
                async {
                    let status = call_raw(&channel, name, body.clone())
                        .await
                        .expect_err("an undecodable body is refused");
                    assert_eq!(
                        (status.code(), common::reason(&status)),
                        (Code::InvalidArgument, MALFORMED_REQUEST.to_owned()),
                        "{what}: {status:?}"
                    );
                    Err::<(), _>(status)
                },
                &[Code::InvalidArgument],
            )
        },
    );
    // Both kinds were sent (a mutated encoding often still decodes).
    let (undecodable, decodable) = (
        undecodable_bodies.into_inner(),
        decodable_bodies.into_inner(),
    );
    assert!(
        undecodable >= 5 && decodable >= 5,
        "undecodable {undecodable}, decodable {decodable}"
    );
}

fn an_undecodable_body_is_invalid_argument_malformed_request_on_every_method(backend: Backend) {
    let Some(fixture) = Fixture::start(backend) else {
        return;
    };
    // Field 1 (a string in every request) 5 bytes long with 1 present; and a string field
    // that is not UTF-8.
    for body in [vec![0x0a, 0x05, b'8'], vec![0x0a, 0x02, 0xff, 0xfe]] {
        for name in METHODS {
            assert!(!decodes_as_request_of(name, &body), "{name} {body:02x?}");
            let channel = fixture.server.channel();
            let status = fixture
                .runtime
                .block_on(call_raw(&channel, name, body.clone()))
                .expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
            assert_eq!(common::reason(&status), MALFORMED_REQUEST, "{name}");
            assert!(
                status.message().contains("not a valid protobuf message"),
                "{name}: {status:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Hostile request fields.

fn hostile_msisdn() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(MSISDN.to_owned()),
        Just(format!("+{MSISDN}")),
        Just(format!(" {MSISDN} ")),
        Just(format!("{MSISDN}\0")),
        Just("+".to_owned()),
        Just(String::new()),
        Just("٨٦١٣٩٠٠٠٠٠٠٠١".to_owned()), // Arabic-Indic digits
        Just("８６１３９００００００００１".to_owned()), // full-width digits
        "[0-9+ ]{0,20}",
        any::<String>(),
        "[0-9]{16,4000}",
    ]
}

fn hostile_amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(-1i64),
        Just(0i64),
        Just(i64::MAX - 4999),
        any::<i64>(),
        1i64..100_000,
    ]
}

fn hostile_request_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("r-1".to_owned()), // the fixture's own recharge: a replay or ALREADY_EXISTS
        Just("x".repeat(128)),
        Just("x".repeat(129)),
        Just("a\nb".to_owned()),
        Just("\u{202e}rtl".to_owned()),
        "\\PC{1,40}",
        any::<String>(),
    ]
}

fn hostile_recharge_fields_are_refused_without_a_write_or_applied_within_the_rules(
    backend: Backend,
) {
    let requests = (
        hostile_msisdn(),
        hostile_amount(),
        any::<i32>(),
        prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>(), 1u32..600],
        hostile_request_id(),
    );
    Fixture::run(
        backend,
        128,
        &requests,
        |fixture, (msisdn, amount, channel, validity_days, request_id)| {
            let request = RechargeRequest {
                msisdn,
                amount,
                channel,
                validity_days,
                request_id,
            };
            let mut client = fixture.server.accounts();
            let described = format!("{request:?}");
            let before = fixture
                .runtime
                .block_on(async { fixture.server.db().await.account(MSISDN).await });
            fixture.check(
                &described,
                async {
                    let answer = client.recharge(request.clone()).await?.into_inner();
                    // Accepted: a well-formed recharge of the one account, balance exact.
                    let before = before.expect("the account").balance;
                    if answer.replayed {
                        assert_eq!(request.request_id, "r-1", "{described}");
                    } else {
                        assert!(request.amount > 0, "{described}");
                        assert_eq!(answer.balance_after, before + request.amount, "{described}");
                    }
                    Ok(answer)
                },
                &REJECTIONS,
            )
        },
    );
}

fn hostile_provisioning_fields_are_refused_without_a_write(backend: Backend) {
    let requests = (
        hostile_msisdn(),
        hostile_amount(),
        prop_oneof![Just(u32::MAX), Just(541u32), any::<u32>(), 0u32..600],
        hostile_request_id(),
    );
    Fixture::run(
        backend,
        96,
        &requests,
        |fixture, (msisdn, preset_balance, initial_validity_days, request_id)| {
            let request = ProvisionAccountRequest {
                msisdn,
                preset_balance,
                sold: true,
                initial_validity_days,
                request_id,
            };
            let mut client = fixture.server.accounts();
            fixture.check(
                &format!("{request:?}"),
                client.provision_account(request.clone()),
                &REJECTIONS,
            )
        },
    );
}

fn ten_megabyte_fields_are_refused_and_write_nothing(backend: Backend) {
    let Some(fixture) = Fixture::start(backend) else {
        return;
    };
    let huge = "8".repeat(10 * 1024 * 1024);
    let mut client = fixture.server.accounts();
    // Over the server's 4 MB message limit: refused before any handler runs.
    let over_limit = RechargeRequest {
        msisdn: huge.clone(),
        ..valid_recharge()
    };
    let status = fixture.runtime.block_on(async {
        let db = fixture.server.db().await;
        let before = db.snapshot(MSISDN).await;
        let status = client
            .recharge(over_limit)
            .await
            .expect_err("a 10 MB message");
        assert_eq!(db.snapshot(MSISDN).await, before, "nothing written");
        status
    });
    // Tonic's size limit, before any decoder: not the codec's MALFORMED_REQUEST.
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    assert_ne!(common::reason(&status), MALFORMED_REQUEST, "{status:?}");
    // Under the limit (3 MB) but not an MSISDN / not a request_id: INVALID_ARGUMENT.
    let three_mb = "8".repeat(3 * 1024 * 1024);
    for request in [
        RechargeRequest {
            msisdn: three_mb.clone(),
            ..valid_recharge()
        },
        RechargeRequest {
            request_id: three_mb.clone(),
            ..valid_recharge()
        },
    ] {
        fixture
            .check(
                "3 MB field",
                client.recharge(request),
                &[Code::InvalidArgument],
            )
            .unwrap_or_else(|e| panic!("{e}"));
    }
    fixture
        .check(
            "3 MB GetAccount",
            client.get_account(GetAccountRequest { msisdn: three_mb }),
            &[Code::InvalidArgument],
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// (c) The lifecycle core on hostile dates.

fn new_york() -> Rules {
    Rules {
        timezone: chrono_tz::America::New_York,
        ..Rules::default()
    }
}

/// 00:00 local of `date` as an instant (New York's DST changes happen at 02:00, so midnight
/// always exists once).
fn local_midnight(rules: &Rules, date: NaiveDate) -> DateTime<Utc> {
    rules
        .timezone
        .from_local_datetime(&date.and_time(NaiveTime::MIN))
        .single()
        .expect("local midnight exists once in New York")
        .with_timezone(&Utc)
}

/// Local `date` at `seconds` after midnight (the earlier instant of an ambiguous fall-back
/// hour; a spring-forward gap moves on to the next existing second).
fn local_instant(rules: &Rules, date: NaiveDate, seconds: u32) -> DateTime<Utc> {
    let midnight = local_midnight(rules, date);
    let mut local = date.and_time(NaiveTime::MIN) + chrono::Duration::seconds(i64::from(seconds));
    loop {
        if let Some(at) = rules.timezone.from_local_datetime(&local).earliest() {
            let at = at.with_timezone(&Utc);
            return at.max(midnight);
        }
        local += chrono::Duration::minutes(1);
    }
}

/// Days around year ends and New York's DST changes, and any day of the calendar.
fn hostile_date() -> impl Strategy<Value = NaiveDate> {
    let special: Vec<NaiveDate> = [
        "2026-03-08",
        "2026-03-07",
        "2026-03-09",
        "2026-11-01",
        "2026-10-31",
        "2026-11-02",
        "2027-03-14",
        "2027-11-07",
        "2026-12-31",
        "2027-01-01",
        "2028-02-29",
        "2099-12-31",
        "1970-01-01",
        "9998-06-01",
        "9999-12-30",
        "9999-12-31",
    ]
    .iter()
    .map(|d| d.parse().expect("date"))
    .collect();
    prop_oneof![
        prop::sample::select(special),
        (1971i32..9999, 1u32..=366)
            .prop_filter_map("a real day", |(y, ord)| { NaiveDate::from_yo_opt(y, ord) }),
    ]
}

fn activated_on(rules: &Rules, day: NaiveDate, seconds: u32) -> lifecycle::Account {
    let msisdn = Msisdn::parse(MSISDN).expect("msisdn");
    let now = local_instant(rules, day, seconds);
    let card = lifecycle::provision(
        msisdn,
        "acc-1".into(),
        None,
        &ProvisionParams {
            preset_balance: 0,
            sold: true,
            initial_validity_days: 0,
        },
        now,
        rules,
    )
    .expect("provision");
    lifecycle::apply(&card, &Command::Activate, now, rules)
        .expect("activate")
        .account
}

#[test]
fn new_york_dates_stay_exact_on_dst_days_year_ends_and_the_end_of_the_calendar() {
    let rules = new_york();
    let far = NaiveDate::from_ymd_opt(9998, 1, 1).expect("date");
    let mut runner = TestRunner::new(cases(256));
    runner
        .run(
            &(hostile_date(), 0u32..86_400, 1i64..40_000, 0u64..700),
            |(day, seconds, amount, later)| {
                let activated = activated_on(&rules, day, seconds);
                let now = local_instant(&rules, day, seconds);
                prop_assert_eq!(rules.local_date(now), day);
                prop_assert_eq!(activated.state, AccountState::Valid);
                let valid_until = activated.valid_until.expect("valid_until");
                if day >= far {
                    // Near the end of the calendar: no panic; the date is the day + 180, or
                    // the last date there is.
                    let saturated = day
                        .checked_add_days(Days::new(180))
                        .unwrap_or(NaiveDate::MAX);
                    prop_assert_eq!(valid_until, saturated);
                    return Ok(());
                }
                // Activation: the activation's local date + 180, through local midnight.
                prop_assert_eq!(valid_until, day + Days::new(180));
                let end = activated.state_ends_at(&rules).expect("an end");
                prop_assert_eq!(end, local_midnight(&rules, valid_until + Days::new(1)));
                prop_assert_eq!(
                    activated.effective_state(end - chrono::Duration::seconds(1), &rules),
                    AccountState::Valid
                );
                prop_assert_eq!(activated.effective_state(end, &rules), AccountState::Grace);

                // A recharge `later` days on (while VALID with a balance): the tariff's days
                // added to valid_until, capped at today + 540; dates exact on any day.
                let mut funded = activated.clone();
                funded.balance = 100;
                let recharge_day = day + Days::new(later.min(179));
                let at = local_instant(&rules, recharge_day, seconds);
                let applied = lifecycle::apply(
                    &funded,
                    &Command::Recharge {
                        amount: fen(amount),
                        channel: RechargeChannel::Online,
                        validity_days: 0,
                    },
                    at,
                    &rules,
                )
                .expect("recharge");
                let days = u64::from(rules.tariff.days_for(amount));
                let expected = (valid_until + Days::new(days)).min(recharge_day + Days::new(540));
                prop_assert_eq!(applied.account.valid_until, Some(expected));
                prop_assert_eq!(applied.account.balance, 100 + amount);
                prop_assert_eq!(
                    applied.account.state_ends_at(&rules),
                    Some(local_midnight(&rules, expected + Days::new(1)))
                );
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A command's amount: `fen` is positive in every use here.
fn fen(fen: i64) -> Amount {
    Amount::parse("amount", fen).expect("a positive amount")
}

#[test]
fn end_of_calendar_commands_refuse_or_saturate_without_panicking() {
    let rules = Arc::new(new_york());
    let last = NaiveDate::MAX;
    for day in [
        NaiveDate::from_ymd_opt(9999, 12, 31).expect("date"),
        last - Days::new(2),
    ] {
        let now = local_instant(&rules, day, 43_200);
        let account = activated_on(&rules, day, 43_200);
        // Each command is refused or applied as the rules say; an applied one never moves
        // dates backwards.
        let expected = [
            (
                Command::Recharge {
                    amount: fen(i64::MAX),
                    channel: RechargeChannel::Bank,
                    validity_days: u32::MAX,
                },
                false,
            ),
            (
                Command::Recharge {
                    amount: fen(30_000),
                    channel: RechargeChannel::Bank,
                    validity_days: 0,
                },
                true,
            ),
            (
                Command::Charge {
                    amount: fen(i64::MAX),
                },
                false,
            ),
            (Command::Activate, true),
        ];
        for (command, applies) in expected {
            match lifecycle::apply(&account, &command, now, &rules) {
                Ok(applied) => {
                    assert!(applies, "{command:?} on {day} was applied");
                    assert!(
                        applied.account.valid_until >= account.valid_until,
                        "{command:?} on {day}"
                    );
                }
                Err(e) => assert!(!applies, "{command:?} on {day} was refused: {e}"),
            }
        }
        // Far in the future (or at the last instant there is) the account has moved on, and
        // a sweep can say so without panicking.
        let far = now
            .checked_add_signed(chrono::Duration::days(1000))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let mut later = account.clone();
        later.sweep(far, &rules);
        assert_ne!(later.state, AccountState::Unactivated, "on {day}");
    }
}
