//! The Authorize facts cache expires (`authorize_cache_ms`), on SQLite and PostgreSQL: a write
//! no server announces (SQL by hand: tests/authorize_cache.rs covers the writes servers announce)
//! is not seen while this server's entry is fresh, and is seen once it has expired — never
//! before the entry's time to live has passed.
//! (tests/api.rs covers the cache with a 10-minute window: exact boundaries on a warm entry, and
//! eviction by a mutation through the same server.)
//!
//! The cache runs on real time, so the test measures instead of assuming: every instant here
//! is taken in this process, on the monotonic clock the cache also reads. The entry is loaded
//! by a commit through this server (a mutation puts its committed facts in the cache) or by the
//! warming call, so between the start of the account's first mutation and the end of the
//! warming call: it is certainly fresh for an answer that returned less than the time to live
//! after that start (such an answer must be the stale one), and it may expire once the time to
//! live has passed since that start. A stale read that came back later than that proves
//! nothing; the round is reported and made again with another account (three rounds at most).

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use common::TestServer;
use common::api::{Api, T0};
use ocs_lifecycle::config::{ClockMode, Config};
use ocs_lifecycle::proto::ServiceType::VoiceOut;

both_databases! {
    sqlite, postgres:
    another_servers_write_is_seen_once_the_cached_facts_expire_never_before,
}

/// The cached server's time to live.
const TTL: Duration = Duration::from_secs(3);
/// Safety bound for the expiry to be seen; tests never assert on elapsed time beyond the TTL.
const WAIT: Duration = Duration::from_secs(30);
const OTHER: &str = "13900000000";

async fn server_with_cache(db: &Arc<TestDb>, cache: Duration) -> TestServer {
    let config = Config {
        authorize_cache_ms: u64::try_from(cache.as_millis()).expect("milliseconds"),
        ..common::test_config(ClockMode::Manual)
    };
    TestServer::start_with(db.clone(), config).await
}

/// Whether the round checked the stale answer (it was certainly inside the TTL).
enum Round {
    Checked,
    TooSlow(Duration),
}

async fn another_servers_write_is_seen_once_the_cached_facts_expire_never_before(db: Arc<TestDb>) {
    let cached = server_with_cache(&db, TTL).await;
    let uncached = server_with_cache(&db, Duration::ZERO).await;
    cached.set_time(T0).await;
    uncached.set_time(T0).await;
    for (attempt, msisdn) in ["8613800000701", "8613800000702", "8613800000703"]
        .into_iter()
        .enumerate()
    {
        match round(&cached, &uncached, msisdn).await {
            Round::Checked => return,
            Round::TooSlow(after) => println!(
                "round {}: the stale read came back {after:?} after the account's first mutation \
                 began, not less than the TTL {TTL:?}: once more",
                attempt + 1
            ),
        }
    }
    panic!("three rounds were slower than the cache's TTL {TTL:?}");
}

async fn round(cached: &TestServer, uncached: &TestServer, msisdn: &str) -> Round {
    let mut here = Api::of(cached);
    let mut elsewhere = Api::of(uncached);
    // From here on this server may load the account's entry: each commit through it puts the
    // committed facts in its cache.
    let loading = Instant::now();
    here.active(msisdn).await;
    here.recharge(msisdn, 1_000).await;

    // Warm this server's entry (if the commits have not).
    assert!(here.authorize(msisdn, VoiceOut, OTHER).await.allowed);
    let warmed = Instant::now();

    // The whole balance goes by a write no server announces; a server without a cache sees it
    // at once.
    let writer = cached.db.open_for_writing().await;
    writer
        .execute(&format!(
            "UPDATE accounts SET balance = 0 WHERE msisdn = '{msisdn}'"
        ))
        .await;
    writer.close().await;
    assert_eq!(
        elsewhere.authorize(msisdn, VoiceOut, OTHER).await.reason,
        "INSUFFICIENT_BALANCE"
    );

    // This server answers from its entry while it is fresh.
    let stale = here.authorize(msisdn, VoiceOut, OTHER).await;
    let stale_after = loading.elapsed();
    if stale_after >= TTL {
        return Round::TooSlow(stale_after);
    }
    assert!(
        stale.allowed,
        "an entry {stale_after:?} old, under the TTL {TTL:?}, is served: {stale:?}"
    );

    // Then it expires: the write is seen, and not before the TTL has passed.
    let deadline = warmed + WAIT;
    loop {
        let decision = here.authorize(msisdn, VoiceOut, OTHER).await;
        let answered = Instant::now();
        if !decision.allowed {
            assert_eq!(decision.reason, "INSUFFICIENT_BALANCE");
            let seen_after = answered.duration_since(loading);
            println!(
                "the hand-made write was seen {seen_after:?} after the account's first mutation \
                 began (TTL {TTL:?})"
            );
            assert!(
                seen_after >= TTL,
                "the entry expired before its TTL: {seen_after:?}"
            );
            return Round::Checked;
        }
        assert!(answered < deadline, "the cached entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
