//! The storage conformance suite: every operation of `AccountStore` (with its sweep and webhook
//! operations) checked at the trait level, one test body run on SQLite and on PostgreSQL
//! (`both_databases!`), beside the gRPC suites that reach the same store through the API. A new
//! backend passes this file first (quickwit's metastore suite does the same for its backends).
//!
//! It also proves the two places where SQL restates a rule of the core for speed — the
//! effective state (`list` by state) and the recycle day (`recycles_by_day`) — equal to
//! `Account::state_on`, for random accounts and days (proptest).

// This suite opens stores, not servers: `both_backends!` is not used.
#[allow(unused_macros)]
#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, NaiveDate, Utc};
use common::store_fixtures::*;
use common::{Db, TestDb, rid};
use ocs_lifecycle::lifecycle::{
    Account, AccountState, Amount, Command, DomainError, Effects, ErrorReason, HistoryKind, Msisdn,
    Origin, RechargeChannel, Rules, TransitionReason,
};
use ocs_lifecycle::store::{
    self, AccountStore, AttemptOutcome, Committed, Decide, DueCursor, EventType, HistoryRecord,
    Mutation, OutboxEvent, RequestKey, RunCounts, RunEnd, StoreError, SweepRunStatus, SweptBatch,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

both_databases! { sqlite, postgres:
    a_mutation_writes_account_history_events_and_response_together,
    a_retry_replays_the_stored_response_without_deciding_again,
    a_request_id_reused_for_another_request_is_refused,
    a_refused_decision_writes_nothing_not_even_the_request_id,
    a_panicking_decision_writes_nothing_and_the_store_goes_on,
    a_decision_sees_the_current_account_and_archives_the_previous_generation,
    list_filters_by_effective_state_and_pages_by_msisdn,
    history_pages_by_id_across_generations,
    events_after_pages_in_sequence_order,
    a_sweep_batch_claims_the_earliest_deadlines_and_commits_what_it_writes,
    a_sweep_batch_dropped_without_commit_writes_nothing,
    a_sweep_and_a_recharge_of_one_account_serialise_in_either_order,
    due_accounts_page_through_the_due_accounts_and_write_nothing,
    sweep_runs_are_recorded_from_start_to_end,
    recycles_by_day_counts_live_accounts_by_the_day_they_are_recycled,
    recharge_totals_count_the_recharge_rows_of_a_period,
    dead_letters_are_counted_and_listed_latest_first,
    accounts_by_state_counts_the_stored_states,
    the_effective_state_and_the_recycle_day_in_sql_agree_with_the_core,
}

// --- Helpers: tests/common/store_fixtures.rs -------------------------------------------

// --- Mutations -----------------------------------------------------------------------------

async fn a_mutation_writes_account_history_events_and_response_together(db: Arc<TestDb>) {
    let store = open(&db).await;
    let account = active(1, day("2030-08-28"));
    let recharge = history(&account, HistoryKind::Recharge, t0(), 500);
    let changed = event(&account, t0());
    let mutation = Mutation {
        history: vec![recharge.clone()],
        events: vec![changed.clone()],
        response: b"r1".to_vec(),
        ..only(account.clone())
    };
    let committed = store
        .mutate(&account.msisdn, key("req-1", "f"), writes(mutation))
        .await;
    assert_eq!(
        committed.expect("mutate"),
        Committed::Applied(b"r1".to_vec())
    );

    assert_eq!(
        store.get(&account.msisdn).await.expect("get"),
        Some(account.clone())
    );
    let rows = store
        .history(&account.msisdn, 0, 10)
        .await
        .expect("history");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].id > 0, "the store numbers history rows");
    assert_eq!(unnumbered(rows[0].clone()), recharge);
    let events = store.events_after(0, 10).await.expect("events");
    assert_eq!(events.len(), 1);
    assert!(events[0].sequence > 0, "the store numbers events");
    assert_eq!(
        OutboxEvent {
            sequence: 0,
            ..events[0].clone()
        },
        changed
    );
    assert_eq!(
        store.last_outbox_sequence().await.expect("last"),
        events[0].sequence
    );
    assert_eq!(store.get(&msisdn(2)).await.expect("get"), None);
}

async fn a_retry_replays_the_stored_response_without_deciding_again(db: Arc<TestDb>) {
    let store = open(&db).await;
    let account = active(1, day("2030-08-28"));
    let decided = Arc::new(AtomicUsize::new(0));
    let decide: Decide = {
        let (decided, account) = (decided.clone(), account.clone());
        Arc::new(move |_| {
            decided.fetch_add(1, Ordering::SeqCst);
            Ok(Mutation {
                response: b"first".to_vec(),
                ..only(account.clone())
            })
        })
    };
    let first = store.mutate(&account.msisdn, key("req-1", "f"), decide.clone());
    assert_eq!(
        first.await.expect("first"),
        Committed::Applied(b"first".to_vec())
    );
    let again = store.mutate(&account.msisdn, key("req-1", "f"), decide);
    assert_eq!(
        again.await.expect("retry"),
        Committed::Replayed(b"first".to_vec())
    );
    assert_eq!(
        decided.load(Ordering::SeqCst),
        1,
        "a replay does not decide again"
    );
}

async fn a_request_id_reused_for_another_request_is_refused(db: Arc<TestDb>) {
    let store = open(&db).await;
    let account = active(1, day("2030-08-28"));
    let first = store.mutate(
        &account.msisdn,
        key("req-1", "f"),
        writes(only(account.clone())),
    );
    first.await.expect("first");
    let other = store.mutate(
        &account.msisdn,
        key("req-1", "g"),
        writes(only(account.clone())),
    );
    match other.await {
        Err(StoreError::Domain(DomainError::AlreadyExists { reason, .. })) => {
            assert_eq!(reason, ErrorReason::RequestIdReused);
        }
        other => panic!("expected ALREADY_EXISTS, got {other:?}"),
    }
}

async fn a_refused_decision_writes_nothing_not_even_the_request_id(db: Arc<TestDb>) {
    let store = open(&db).await;
    let account = active(1, day("2030-08-28"));
    let refuse: Decide = Arc::new(|_| Err(DomainError::not_found("8613800000001")));
    let refused = store
        .mutate(&account.msisdn, key("req-1", "f"), refuse)
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Domain(DomainError::NotFound { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(store.get(&account.msisdn).await.expect("get"), None);
    assert_eq!(store.last_outbox_sequence().await.expect("last"), 0);
    // The request_id was not kept: the same request may apply later.
    let applied = store.mutate(
        &account.msisdn,
        key("req-1", "f"),
        writes(only(account.clone())),
    );
    assert_eq!(
        applied.await.expect("apply"),
        Committed::Applied(b"ok".to_vec())
    );
}

async fn a_panicking_decision_writes_nothing_and_the_store_goes_on(db: Arc<TestDb>) {
    let store = open(&db).await;
    let account = active(1, day("2030-08-28"));
    let panics: Decide = Arc::new(|_| panic!("a bug in the core"));
    let failed = store
        .mutate(&account.msisdn, key("req-1", "f"), panics)
        .await;
    assert!(matches!(failed, Err(StoreError::Internal(_))), "{failed:?}");
    assert_eq!(store.get(&account.msisdn).await.expect("get"), None);
    assert_eq!(
        put(&*store, only(account)).await,
        Committed::Applied(b"ok".to_vec())
    );
}

async fn a_decision_sees_the_current_account_and_archives_the_previous_generation(db: Arc<TestDb>) {
    let store = open(&db).await;
    let first = recycled(1);
    put(&*store, only(first.clone())).await;
    let second = Account {
        generation: 2,
        account_id: "acc-1-2".into(),
        ..active(1, day("2030-08-28"))
    };
    let seen = Arc::new(std::sync::Mutex::new(None));
    let decide: Decide = {
        let (seen, first, second) = (seen.clone(), first.clone(), second.clone());
        Arc::new(move |current: Option<&Account>| {
            *seen.lock().expect("lock") = current.cloned();
            Ok(Mutation {
                archive: Some(first.clone()),
                ..only(second.clone())
            })
        })
    };
    store
        .mutate(&first.msisdn, key("req-2", "f"), decide)
        .await
        .expect("mutate");
    assert_eq!(seen.lock().expect("lock").clone(), Some(first));
    assert_eq!(store.get(&second.msisdn).await.expect("get"), Some(second));
    assert_eq!(db.open().await.count("account_archive").await, 1);
}

// --- Reads ---------------------------------------------------------------------------------

async fn list_filters_by_effective_state_and_pages_by_msisdn(db: Arc<TestDb>) {
    let store = open(&db).await;
    let today = day("2030-09-01");
    let accounts = [
        active(4, day("2030-09-10")),      // VALID
        active(1, day("2030-08-31")),      // GRACE today, stored VALID
        unactivated(3, day("2030-09-05")), // UNACTIVATED
        recycled(2),                       // RECYCLED
        active(5, day("2030-05-20")),      // LOCKED today
    ];
    put_all(&*store, accounts.clone()).await;
    let all = store.list(None, today, None, 10).await.expect("list");
    assert_eq!(
        msisdns(&all),
        (1..=5).map(|n| msisdn(n).to_string()).collect::<Vec<_>>()
    );
    for (state, expected) in [
        (AccountState::Valid, 4),
        (AccountState::Grace, 1),
        (AccountState::Unactivated, 3),
        (AccountState::Recycled, 2),
        (AccountState::Locked, 5),
    ] {
        let listed = store
            .list(Some(state), today, None, 10)
            .await
            .expect("list");
        assert_eq!(
            msisdns(&listed),
            [msisdn(expected).to_string()],
            "{state:?}"
        );
    }
    let page = store
        .list(None, today, Some(msisdn(2).as_str()), 2)
        .await
        .expect("page");
    assert_eq!(
        msisdns(&page),
        [msisdn(3).to_string(), msisdn(4).to_string()]
    );
}

async fn history_pages_by_id_across_generations(db: Arc<TestDb>) {
    let store = open(&db).await;
    let first = recycled(1);
    let second = Account {
        generation: 2,
        ..active(1, day("2030-08-28"))
    };
    let rows = |account: &Account, amounts: &[i64]| -> Vec<HistoryRecord> {
        amounts
            .iter()
            .map(|&amount| history(account, HistoryKind::Recharge, t0(), amount))
            .collect()
    };
    let mut expected = rows(&first, &[1, 2, 3]);
    put(
        &*store,
        Mutation {
            history: expected.clone(),
            ..only(first.clone())
        },
    )
    .await;
    let later = rows(&second, &[4, 5]);
    put(
        &*store,
        Mutation {
            history: later.clone(),
            ..only(second)
        },
    )
    .await;
    expected.extend(later);

    let all = store.history(&first.msisdn, 0, 10).await.expect("history");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "in id order");
    let all: Vec<_> = all.into_iter().map(unnumbered).collect();
    assert_eq!(all, expected);
    let numbered = store.history(&first.msisdn, 0, 10).await.expect("history");
    let page = store
        .history(&first.msisdn, numbered[1].id, 2)
        .await
        .expect("page");
    assert_eq!(page, numbered[2..4]);
    let other = store.history(&msisdn(2), 0, 10).await.expect("history");
    assert!(other.is_empty());
}

async fn events_after_pages_in_sequence_order(db: Arc<TestDb>) {
    let store = open(&db).await;
    let (a, b) = (active(1, day("2030-08-28")), active(2, day("2030-08-28")));
    let first = vec![event(&a, t0()), event(&a, t0())];
    put(
        &*store,
        Mutation {
            events: first.clone(),
            ..only(a)
        },
    )
    .await;
    let second = event(&b, t0());
    put(
        &*store,
        Mutation {
            events: vec![second.clone()],
            ..only(b)
        },
    )
    .await;
    let all = store.events_after(0, 10).await.expect("events");
    assert!(all.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let ids: Vec<_> = all.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(
        ids,
        [&first[0], &first[1], &second].map(|e| e.event_id.clone())
    );
    let page = store.events_after(0, 2).await.expect("page");
    assert_eq!(page, all[..2]);
    let rest = store.events_after(all[1].sequence, 10).await.expect("rest");
    assert_eq!(rest, all[2..]);
}

// --- The sweep's operations ----------------------------------------------------------------

async fn a_sweep_batch_claims_the_earliest_deadlines_and_commits_what_it_writes(db: Arc<TestDb>) {
    let store = open(&db).await;
    let rules = Rules::default();
    let as_of = at("2030-03-10T02:00:00Z");
    let (second_due, first_due, not_due) = (
        active(1, day("2030-03-05")),
        active(2, day("2030-03-03")),
        active(3, day("2030-12-31")),
    );
    put_all(&*store, [second_due.clone(), first_due.clone(), not_due]).await;

    let mut batch = store.begin_sweep_batch().await.expect("begin");
    let claimed = batch.claim_due(as_of, 1).await.expect("claim");
    assert_eq!(
        msisdns(&claimed),
        [first_due.msisdn.to_string()],
        "the earliest deadline first"
    );
    // Undone now, so its row lock does not make the next claim skip the row.
    batch.rollback().await.expect("rollback");

    let mut batch = store.begin_sweep_batch().await.expect("begin");
    let claimed = batch.claim_due(as_of, 10).await.expect("claim");
    assert_eq!(claimed, [first_due.clone(), second_due.clone()]);
    let mut swept = SweptBatch::default();
    for mut account in claimed {
        let crossed = account.sweep(as_of, &rules);
        assert_eq!(crossed.transitions.len(), 1, "VALID → GRACE");
        swept
            .history
            .push(history(&account, HistoryKind::StateChanged, as_of, 0));
        swept.events.push(event(&account, as_of));
        swept.accounts.push(account);
    }
    batch.write_batch(&swept).await.expect("write");
    batch.commit().await.expect("commit");

    for account in [&first_due, &second_due] {
        let stored = store
            .get(&account.msisdn)
            .await
            .expect("get")
            .expect("account");
        assert_eq!(stored.state, AccountState::Grace);
        let rows = store
            .history(&account.msisdn, 0, 10)
            .await
            .expect("history");
        assert_eq!(rows.len(), 1);
    }
    assert_eq!(store.events_after(0, 10).await.expect("events").len(), 2);
    let mut batch = store.begin_sweep_batch().await.expect("begin");
    let again = batch.claim_due(as_of, 10).await.expect("claim");
    assert!(
        again.is_empty(),
        "a swept account is not due again: {again:?}"
    );
    batch.commit().await.expect("commit");
}

/// A recharge of `account` as the API decides it (the lifecycle's own rules and effects),
/// at `now`; `hold`: the decision first says it runs (the row is locked then) and waits to be
/// let go.
fn recharge_decision(now: DateTime<Utc>, hold: Option<Hold>) -> Decide {
    let hold = hold.map(std::sync::Mutex::new);
    Arc::new(move |current: Option<&Account>| {
        if let Some(hold) = &hold {
            let hold = hold.lock().expect("hold");
            hold.entered.send(()).expect("the test waits");
            hold.go.recv().expect("the test lets go");
        }
        let command = Command::Recharge {
            amount: Amount::parse("amount", 1000).expect("amount"),
            channel: RechargeChannel::Bank,
            validity_days: 0,
        };
        let applied = ocs_lifecycle::lifecycle::apply(
            current.expect("the account"),
            &command,
            now,
            &Rules::default(),
        )?;
        let (actor, request_id) = ("billing", None);
        let origin = Origin {
            actor,
            request_id,
            now,
        };
        let effects = Effects::of_command(&applied, origin, &mut rid);
        Ok(Mutation {
            archive: None,
            account: applied.account,
            history: effects.history,
            events: effects.events,
            response: b"recharged".to_vec(),
        })
    })
}

/// `decide` for `msisdn` through `store`, on a task of its own.
fn spawn_recharge(
    store: &Arc<dyn AccountStore>,
    msisdn: &Msisdn,
    decide: Decide,
) -> tokio::task::JoinHandle<Result<Committed, StoreError>> {
    let (store, msisdn) = (store.clone(), msisdn.clone());
    let now = at("2030-03-10T02:00:00Z");
    tokio::spawn(async move {
        let request_id = rid();
        let key = RequestKey {
            request_id: &request_id,
            fingerprint: "recharge",
            now,
        };
        store.mutate(&msisdn, key, decide).await
    })
}

/// How a test holds a decision half-way (see [`recharge_decision`]).
struct Hold {
    entered: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
}

/// The sweep's batch over what `claim_due` returned, written and committed.
async fn sweep_claimed(mut batch: Box<dyn store::SweepBatch>, claimed: Vec<Account>) {
    let as_of = at("2030-03-10T02:00:00Z");
    let mut swept = SweptBatch::default();
    for mut account in claimed {
        let crossed = account.sweep(as_of, &Rules::default());
        let effects = Effects::of_sweep(&account, &crossed, as_of, &mut rid);
        swept.history.extend(effects.history);
        swept.events.extend(effects.events);
        swept.accounts.push(account);
    }
    batch.write_batch(&swept).await.expect("write");
    batch.commit().await.expect("commit");
}

/// The (from, to) states of `account`'s history rows, in order.
async fn moves(
    store: &dyn AccountStore,
    account: &Msisdn,
) -> Vec<(HistoryKind, Option<AccountState>, Option<AccountState>)> {
    let rows = store.history(account, 0, 100).await.expect("history");
    rows.into_iter()
        .map(|h| (h.kind, h.from_state, h.to_state))
        .collect()
}

/// A sweep batch and a recharge race for one due account (VALID through 2030-03-05, swept on
/// 03-10), each order many times. Sweep first: the batch claims the account, the recharge
/// waits for the batch's COMMIT (PostgreSQL: the row lock, seen waiting in `pg_stat_activity`;
/// SQLite: the write lock) and decides on the swept account, a win-back from GRACE. Recharge
/// first: the recharge holds the account mid-decision; the batch skips it (PostgreSQL: `SKIP
/// LOCKED`) or starts after it (SQLite) and finds it no longer due. Either way the boundary is
/// written once and the recharge once.
async fn a_sweep_and_a_recharge_of_one_account_serialise_in_either_order(db: Arc<TestDb>) {
    use AccountState::{Grace, Valid};
    use HistoryKind::{Recharge, StateChanged};
    let store = open(&db).await;
    let raw = db.open().await;
    let postgres = matches!(raw, Db::Postgres(_));
    let as_of = at("2030-03-10T02:00:00Z");
    let boundary_then_win_back = vec![
        (StateChanged, Some(Valid), Some(Grace)),
        (Recharge, Some(Grace), Some(Valid)),
    ];
    for round in 0..8 {
        // Sweep first.
        let account = active(5000 + 2 * round, day("2030-03-05"));
        put(&*store, only(account.clone())).await;
        let mut batch = store.begin_sweep_batch().await.expect("begin");
        let claimed = batch.claim_due(as_of, 10).await.expect("claim");
        assert_eq!(msisdns(&claimed), [account.msisdn.to_string()]);
        let recharge = spawn_recharge(&store, &account.msisdn, recharge_decision(as_of, None));
        if postgres {
            // Certain: the recharge waits for the claimed row before the batch commits.
            let waiting = "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'";
            while raw.scalar(waiting).await == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        } else {
            tokio::task::yield_now().await;
        }
        sweep_claimed(batch, claimed).await;
        recharge
            .await
            .expect("task")
            .expect("the recharge after the sweep");
        assert_eq!(
            moves(&*store, &account.msisdn).await,
            boundary_then_win_back,
            "sweep first"
        );

        // Recharge first.
        let account = active(5001 + 2 * round, day("2030-03-05"));
        put(&*store, only(account.clone())).await;
        let (entered, entered_here) = std::sync::mpsc::channel();
        let (go_there, go) = std::sync::mpsc::channel();
        let held = recharge_decision(as_of, Some(Hold { entered, go }));
        let recharge = spawn_recharge(&store, &account.msisdn, held);
        tokio::task::spawn_blocking(move || entered_here.recv())
            .await
            .expect("task")
            .expect("the recharge decides");
        let sweep = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut batch = store.begin_sweep_batch().await.expect("begin");
                let claimed = batch.claim_due(as_of, 10).await.expect("claim");
                let names = msisdns(&claimed);
                sweep_claimed(batch, claimed).await;
                names
            })
        };
        if postgres {
            // Certain: the claim has passed over the locked row before the recharge goes on (a
            // claim that waited for it would never end: bounded, to fail loudly).
            let bound = std::time::Duration::from_secs(60);
            let claimed = tokio::time::timeout(bound, sweep)
                .await
                .expect("the claim waited for the locked row")
                .expect("sweep");
            assert!(
                claimed.is_empty(),
                "the locked account is skipped: {claimed:?}"
            );
            go_there.send(()).expect("let go");
        } else {
            go_there.send(()).expect("let go");
            let claimed = sweep.await.expect("sweep");
            assert!(
                claimed.is_empty(),
                "the recharged account is not due: {claimed:?}"
            );
        }
        recharge
            .await
            .expect("task")
            .expect("the recharge before the sweep");
        // The recharge crossed the boundary itself (the same rows as the sweep would write).
        assert_eq!(
            moves(&*store, &account.msisdn).await,
            boundary_then_win_back,
            "recharge first"
        );
        let mut batch = store.begin_sweep_batch().await.expect("begin");
        assert!(
            batch.claim_due(as_of, 10).await.expect("claim").is_empty(),
            "nothing left due"
        );
        batch.commit().await.expect("commit");
    }
}

async fn a_sweep_batch_dropped_without_commit_writes_nothing(db: Arc<TestDb>) {
    let store = open(&db).await;
    let as_of = at("2030-03-10T02:00:00Z");
    let account = active(1, day("2030-03-05"));
    put(&*store, only(account.clone())).await;
    let mut batch = store.begin_sweep_batch().await.expect("begin");
    let mut claimed = batch.claim_due(as_of, 10).await.expect("claim");
    claimed[0].sweep(as_of, &Rules::default());
    let swept = SweptBatch {
        events: vec![event(&claimed[0], as_of)],
        accounts: claimed,
        history: Vec::new(),
    };
    batch.write_batch(&swept).await.expect("write");
    drop(batch);

    assert_eq!(
        store.get(&account.msisdn).await.expect("get"),
        Some(account.clone())
    );
    assert_eq!(store.last_outbox_sequence().await.expect("last"), 0);
    // The write path is free again: requests and the next batch go on.
    put(&*store, only(active(2, day("2030-12-31")))).await;
    let mut batch = store.begin_sweep_batch().await.expect("begin");
    let claimed = batch.claim_due(as_of, 10).await.expect("claim");
    assert_eq!(claimed, [account]);
}

async fn due_accounts_page_through_the_due_accounts_and_write_nothing(db: Arc<TestDb>) {
    let store = open(&db).await;
    let as_of = at("2030-03-10T02:00:00Z");
    let due = [
        active(3, day("2030-03-02")),
        active(1, day("2030-03-04")),
        active(2, day("2030-03-04")),
    ];
    put_all(
        &*store,
        due.iter().cloned().chain([active(4, day("2030-12-31"))]),
    )
    .await;
    let first = store
        .due_accounts(as_of, &DueCursor::default(), 2)
        .await
        .expect("page");
    assert_eq!(first.accounts, due[..2], "by deadline, then MSISDN");
    let second = store
        .due_accounts(as_of, &first.next, 2)
        .await
        .expect("page");
    assert_eq!(second.accounts, due[2..]);
    let last = store
        .due_accounts(as_of, &second.next, 2)
        .await
        .expect("page");
    assert!(last.accounts.is_empty());
    // The sweep's order: the due MSISDNs sorted, then claimed among those still due.
    let listed = store.due_msisdns(as_of, "", 10).await.expect("due");
    let sorted = msisdns(&[1, 2, 0].map(|i| due[i].clone()));
    assert_eq!(listed.slice(0..listed.len()), sorted);
    assert_eq!(listed.last(), Some(sorted[2].as_str()));
    let after = store.due_msisdns(as_of, &sorted[0], 1).await.expect("due");
    assert_eq!(after.slice(0..after.len()), sorted[1..2]);
    let mut batch = store.begin_sweep_batch().await.expect("begin");
    let asked = msisdns(&[due[0].clone(), active(4, day("2030-12-31"))]);
    let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
    let claimed = batch.claim_listed(as_of, &asked).await.expect("claim");
    assert_eq!(claimed, due[..1], "the due one only");
    batch.rollback().await.expect("rollback");
    for account in &due {
        assert_eq!(
            store.get(&account.msisdn).await.expect("get").as_ref(),
            Some(account)
        );
    }
}

async fn sweep_runs_are_recorded_from_start_to_end(db: Arc<TestDb>) {
    let store = open(&db).await;
    assert!(store.recent_sweep_runs(10).await.expect("runs").is_empty());
    assert_eq!(store.last_sweep_as_of().await.expect("last"), None);
    let (as_of, started) = (at("2030-03-10T16:05:00Z"), at("2030-03-10T16:05:01Z"));
    let id = store.start_sweep_run(as_of, started).await.expect("start");
    let running = store.recent_sweep_runs(10).await.expect("runs");
    assert_eq!(running.len(), 1);
    assert_eq!(
        (running[0].id, running[0].status),
        (id, SweepRunStatus::Running)
    );
    assert_eq!((running[0].as_of, running[0].started_at), (as_of, started));
    assert_eq!(running[0].finished_at, None);
    assert_eq!(running[0].counts.examined, 0);

    let counts = RunCounts {
        examined: 7,
        transitions: vec![
            (TransitionReason::ValidityExpired, 3),
            (TransitionReason::GraceExpired, 2),
            (TransitionReason::LockExpired, 1),
            (TransitionReason::UnactivatedExpired, 4),
        ],
        expiring_notified: 5,
    };
    let finished_at = at("2030-03-10T16:06:00Z");
    let end = RunEnd {
        status: SweepRunStatus::Succeeded,
        finished_at,
        counts: counts.clone(),
        error: None,
    };
    store.finish_sweep_run(id, &end).await.expect("finish");
    let done = &store.recent_sweep_runs(10).await.expect("runs")[0];
    assert_eq!(done.status, SweepRunStatus::Succeeded);
    assert_eq!(done.finished_at, Some(finished_at));
    assert_eq!(done.counts, counts);
    assert_eq!(store.last_sweep_as_of().await.expect("last"), Some(as_of));

    let later = at("2030-03-11T16:05:00Z");
    let failed_id = store.start_sweep_run(later, later).await.expect("start");
    let failed = RunEnd {
        status: SweepRunStatus::Failed,
        error: Some("the database is busy".into()),
        ..end
    };
    store
        .finish_sweep_run(failed_id, &failed)
        .await
        .expect("finish");
    let runs = store.recent_sweep_runs(1).await.expect("runs");
    assert_eq!(runs.len(), 1, "limited");
    assert_eq!(
        (runs[0].id, runs[0].status),
        (failed_id, SweepRunStatus::Failed)
    );
    assert_eq!(runs[0].error.as_deref(), Some("the database is busy"));
    assert_eq!(
        store.last_sweep_as_of().await.expect("last"),
        Some(as_of),
        "only a succeeded run counts"
    );
}

// --- Operations views ----------------------------------------------------------------------

async fn recycles_by_day_counts_live_accounts_by_the_day_they_are_recycled(db: Arc<TestDb>) {
    let store = open(&db).await;
    // Default rules: LOCKED ends 120 days after the validity.
    let a = active(1, day("2030-02-10")); // lock_until 2030-06-10
    let b = active(2, day("2030-02-10"));
    let c = unactivated(3, day("2030-06-12"));
    let d = active(4, day("2030-03-03")); // lock_until 2030-07-01
    put_all(&*store, [a.clone(), b, c, d, recycled(5)]).await;
    assert_eq!(a.lock_until, Some(day("2030-06-10")));
    let by_day = store
        .recycles_by_day(day("2030-06-30"))
        .await
        .expect("by day");
    assert_eq!(by_day, [(day("2030-06-11"), 2), (day("2030-06-13"), 1)]);
    let up_to = store
        .recycles_by_day(day("2030-06-11"))
        .await
        .expect("by day");
    assert_eq!(up_to, [(day("2030-06-11"), 2)], "through is inclusive");
    let none = store
        .recycles_by_day(day("2030-06-10"))
        .await
        .expect("by day");
    assert!(none.is_empty());
}

async fn recharge_totals_count_the_recharge_rows_of_a_period(db: Arc<TestDb>) {
    let store = open(&db).await;
    let account = active(1, day("2030-08-28"));
    let (from, until) = (at("2030-03-01T00:00:00Z"), at("2030-03-02T00:00:00Z"));
    let rows = vec![
        history(&account, HistoryKind::Recharge, from, 500),
        history(
            &account,
            HistoryKind::Recharge,
            at("2030-03-01T12:00:00Z"),
            700,
        ),
        history(
            &account,
            HistoryKind::Unlock,
            at("2030-03-01T12:00:00Z"),
            300,
        ),
        history(&account, HistoryKind::Recharge, until, 100),
    ];
    put(
        &*store,
        Mutation {
            history: rows,
            ..only(account)
        },
    )
    .await;
    let totals = store.recharge_totals(from, until).await.expect("totals");
    assert_eq!((totals.count, totals.amount), (2, 1200));
    // Not quarter hours: the rows themselves are counted (the 12:00 recharge alone).
    let (from, until) = (at("2030-03-01T00:00:01Z"), at("2030-03-01T12:00:01Z"));
    let inner = store.recharge_totals(from, until).await.expect("totals");
    assert_eq!((inner.count, inner.amount), (1, 700));
    let empty = store.recharge_totals(until, until).await.expect("totals");
    assert_eq!((empty.count, empty.amount), (0, 0));
}

async fn dead_letters_are_counted_and_listed_latest_first(db: Arc<TestDb>) {
    let store = open(&db).await;
    let account = active(1, day("2030-08-28"));
    let events = vec![
        event(&account, t0()),
        event(&account, t0()),
        event(&account, t0()),
    ];
    put(
        &*store,
        Mutation {
            events,
            ..only(account)
        },
    )
    .await;
    let types = [EventType::StateChanged];
    assert_eq!(
        store
            .oldest_undelivered_event(&types)
            .await
            .expect("oldest"),
        Some(t0())
    );
    let registered = store
        .register_webhook_events(&types, 0, 0, 100)
        .await
        .expect("register");
    assert_eq!(registered.added, 3);
    let sequences: Vec<i64> = store
        .events_after(0, 10)
        .await
        .expect("events")
        .iter()
        .map(|e| e.sequence)
        .collect();
    let claimed = store
        .settle_webhook_deliveries(&[], t0(), &sequences, 0, 60_000)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let dead = |error: &str| AttemptOutcome::Dead {
        error: error.into(),
    };
    let outcomes = [
        (sequences[0], dead("HTTP 500")),
        (sequences[2], AttemptOutcome::Delivered),
    ];
    store
        .settle_webhook_deliveries(&outcomes, at("2030-03-01T03:00:00Z"), &[], 0, 0)
        .await
        .expect("settle");
    let outcomes = [(sequences[1], dead("timed out"))];
    store
        .settle_webhook_deliveries(&outcomes, at("2030-03-01T04:00:00Z"), &[], 0, 0)
        .await
        .expect("settle");

    let overview = store.dead_letter_overview(1).await.expect("overview");
    assert_eq!(overview.count, 2);
    assert_eq!(overview.latest.len(), 1);
    assert_eq!(overview.latest[0].event.sequence, sequences[1]);
    assert_eq!(overview.latest[0].last_error, "timed out");
    let all = store.dead_letter_overview(10).await.expect("overview");
    let latest: Vec<_> = all.latest.iter().map(|d| d.event.sequence).collect();
    assert_eq!(latest, [sequences[1], sequences[0]], "the latest first");
    let listed = store.dead_webhook_deliveries(0, 10).await.expect("dead");
    let listed: Vec<_> = listed.iter().map(|d| d.event.sequence).collect();
    assert_eq!(listed, [sequences[0], sequences[1]], "in sequence order");
    assert_eq!(
        store
            .oldest_undelivered_event(&types)
            .await
            .expect("oldest"),
        None
    );
}

async fn accounts_by_state_counts_the_stored_states(db: Arc<TestDb>) {
    let store = open(&db).await;
    store.ping().await.expect("ping");
    store.probe_write(t0()).await.expect("probe write");
    put_all(
        &*store,
        [
            active(1, day("2030-08-28")),
            active(2, day("2029-01-01")), // stored VALID, whatever the effective state
            unactivated(3, day("2031-01-01")),
            recycled(4),
        ],
    )
    .await;
    let counts = store.accounts_by_state().await.expect("by state");
    assert_eq!(
        counts,
        [
            (AccountState::Unactivated, 1),
            (AccountState::Valid, 2),
            (AccountState::Recycled, 1)
        ]
    );
}

// --- The SQL copies of the state rule --------------------------------------------------------

/// 2030-01-01; every date of a generated account is within 1,000 days of it.
fn base() -> NaiveDate {
    day("2030-01-01")
}

/// A random account as the core leaves it: ordered periods (VALID, GRACE, LOCKED of any
/// length) or an unactivated card, its stored state the state of some day (materialised
/// then, maybe long ago).
fn an_account(n: u32) -> impl Strategy<Value = Account> {
    (any::<bool>(), 0..400u64, 0..120u64, 0..60u64, 0..800u64).prop_map(
        move |(activated, valid, grace, lock, materialised)| {
            let mut account = if activated {
                let valid_until = plus(base(), valid);
                let grace_until = plus(valid_until, grace);
                Account {
                    grace_until: Some(grace_until),
                    lock_until: Some(plus(grace_until, lock)),
                    expiring_notified_for: None,
                    ..active(n, valid_until)
                }
            } else {
                unactivated(n, plus(base(), valid + grace + lock))
            };
            account.state = account.state_on(plus(base(), materialised));
            if account.state == AccountState::Recycled {
                account.recycled_at = Some(t0());
            }
            account
        },
    )
}

/// The first day the core says the account is RECYCLED.
fn core_recycle_day(account: &Account) -> Option<NaiveDate> {
    (0..1000)
        .map(|d| plus(base(), d))
        .find(|d| account.state_on(*d) == AccountState::Recycled)
}

/// Days to look at: around the boundaries of the accounts (a picked account's date − 1, the
/// date, + 1), where a copy of the rule that is off by one shows, and any other day.
fn days_to_check(
    accounts: &[Account],
    picks: &[(usize, usize, u64)],
    any_day: u64,
) -> Vec<NaiveDate> {
    let mut days = vec![plus(base(), any_day)];
    for &(account, date, offset) in picks {
        let a = &accounts[account % accounts.len()];
        let dates = [a.valid_until, a.grace_until, a.lock_until, a.card_expiry];
        if let Some(date) = dates.into_iter().flatten().nth(date % 4) {
            days.push(plus(date, offset).pred_opt().expect("date"));
        }
    }
    days
}

async fn sql_agrees_with_the_core(
    store: &dyn AccountStore,
    writer: &Db,
    accounts: Vec<Account>,
    days: Vec<NaiveDate>,
) -> Result<(), TestCaseError> {
    writer.execute("DELETE FROM accounts").await;
    put_all(store, accounts.clone()).await;
    for today in days {
        for state in AccountState::ALL {
            let listed = store
                .list(Some(state), today, None, 1000)
                .await
                .expect("list");
            let listed: BTreeSet<String> = msisdns(&listed).into_iter().collect();
            let expected: BTreeSet<String> = accounts
                .iter()
                .filter(|a| a.state_on(today) == state)
                .map(|a| a.msisdn.to_string())
                .collect();
            prop_assert_eq!(listed, expected, "{:?} on {}", state, today);
        }
        let by_day = store.recycles_by_day(today).await.expect("by day");
        let mut expected = BTreeMap::new();
        let live = accounts
            .iter()
            .filter(|a| a.state != AccountState::Recycled);
        for recycled_on in live.filter_map(core_recycle_day).filter(|d| *d <= today) {
            *expected.entry(recycled_on).or_insert(0) += 1;
        }
        prop_assert_eq!(
            by_day,
            expected.into_iter().collect::<Vec<_>>(),
            "through {}",
            today
        );
    }
    Ok(())
}

async fn the_effective_state_and_the_recycle_day_in_sql_agree_with_the_core(db: Arc<TestDb>) {
    let store = open(&db).await;
    let writer = db.open_for_writing().await;
    let accounts =
        (1..12usize).prop_flat_map(|n| (0..n as u32).map(an_account).collect::<Vec<_>>());
    let picks = proptest::collection::vec((0..12usize, 0..4usize, 0..3u64), 1..6);
    let any_day = 0..900u64;
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&(accounts, picks, any_day), |(accounts, picks, any_day)| {
            let days = days_to_check(&accounts, &picks, any_day);
            handle.block_on(sql_agrees_with_the_core(&*store, &writer, accounts, days))
        })
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
