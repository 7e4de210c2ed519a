//! Idempotency keys through the real gRPC API on both backends: a retry is recognised from the
//! validated request, so the same MSISDN written with or without its leading '+' is the same
//! request (a replay, applied once), while other parameters are still REQUEST_ID_REUSED.

#[macro_use]
mod common;

use common::{TestServer, assert_rejected};
use ocs_lifecycle::proto::{self, HistoryKind, RechargeChannel};
use tonic::Code;

const T0: &str = "2030-03-01T02:00:00Z";

both_backends! {
    a_retry_with_or_without_the_plus_is_a_replay,
}

async fn a_retry_with_or_without_the_plus_is_a_replay(server: TestServer) {
    server.set_time(T0).await;
    let mut api = server.accounts();
    let db = server.db().await;

    // ProvisionAccount: first with '+', the retry without.
    let provision = |msisdn: &str| proto::ProvisionAccountRequest {
        msisdn: msisdn.into(),
        preset_balance: 500,
        sold: true,
        request_id: "plus-p-1".into(),
        ..Default::default()
    };
    let first = api.provision_account(provision("+8613800000101")).await;
    assert!(first.is_ok(), "{first:?}");
    let retry = api
        .provision_account(provision("8613800000101"))
        .await
        .expect("a replay, not REQUEST_ID_REUSED");
    assert_eq!(
        retry
            .metadata()
            .get("ocs-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(retry.get_ref(), first.unwrap().get_ref());
    assert_eq!(
        db.history_count("8613800000101", HistoryKind::Provisioned as i32)
            .await,
        1
    );
    api.activate(proto::ActivateRequest {
        msisdn: "8613800000101".into(),
        request_id: "plus-a-1".into(),
    })
    .await
    .expect("activate");

    // Recharge: first without '+', the retry with.
    let recharge = |msisdn: &str, amount: i64| proto::RechargeRequest {
        msisdn: msisdn.into(),
        amount,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: "plus-r-1".into(),
    };
    let applied = api
        .recharge(recharge("8613800000101", 1000))
        .await
        .expect("recharge")
        .into_inner();
    assert!(!applied.replayed);
    let replayed = api
        .recharge(recharge("+8613800000101", 1000))
        .await
        .expect("a replay, not REQUEST_ID_REUSED")
        .into_inner();
    assert!(replayed.replayed);
    assert_eq!(replayed.balance_after, applied.balance_after);
    // Other parameters with the same key are still refused, whatever the MSISDN's form.
    assert_rejected(
        api.recharge(recharge("+8613800000101", 2000)).await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );

    // Charge: both ways round.
    let charge = |msisdn: &str| proto::ChargeRequest {
        msisdn: msisdn.into(),
        amount: 300,
        request_id: "plus-c-1".into(),
    };
    let charged = api
        .charge(charge("+8613800000101"))
        .await
        .expect("charge")
        .into_inner();
    assert!(!charged.replayed);
    let again = api
        .charge(charge("8613800000101"))
        .await
        .expect("a replay, not REQUEST_ID_REUSED")
        .into_inner();
    assert!(again.replayed);

    // Applied once each: 500 preset + 1000 recharged − 300 charged from the preset.
    let account = db.account("8613800000101").await.expect("stored");
    assert_eq!(account.balance, 1000);
    assert_eq!(
        db.history_count("8613800000101", HistoryKind::Recharge as i32)
            .await,
        1
    );
    assert_eq!(
        db.history_count("8613800000101", HistoryKind::Charge as i32)
            .await,
        1
    );
}
