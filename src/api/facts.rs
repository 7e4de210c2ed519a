//! The account facts `Authorize` reads, cached in memory and kept coherent by the commits.
//!
//! Authorize is a pure function of an account's stored facts and the instant (spec section 5,
//! `lifecycle::authorize`), so caching the *facts* — never a decision — keeps every boundary
//! exact: an account read at 23:59:59 is evaluated again at 00:00:00 and turns GRACE on the
//! second. The sweep only materialises what the facts already imply, so it invalidates nothing.
//!
//! What can make an entry stale is a mutation (recharge, charge, unlock, …):
//! - through this process: the handler takes a [`WriteTicket`] before the store runs the
//!   mutation and hands the committed account to [`FactCache::committed`] after it, which
//!   stores it (or evicts the MSISDN when the mutation was refused, replayed or failed, or when
//!   anything else touched the MSISDN meanwhile); a read that raced with a mutation does not
//!   fill the cache. A single server answers exactly as if there were no cache.
//! - through another server on the same PostgreSQL database: that server sends a NOTIFY right
//!   after the COMMIT (`store::pg_changes`), and this server's listener evicts the MSISDN
//!   ([`FactCache::evict`], `crate::server`); while the listener is disconnected nothing is
//!   cached ([`FactCache::suspend`]), and it starts empty again once it listens
//!   ([`FactCache::resume`]), since notifications may have been missed in between. A server
//!   that starts listening tells every server to empty its cache ([`FactCache::clear`]).
//! - anything else (SQL typed by hand, a restored backup, a server of an older version that
//!   sends no NOTIFY during a rolling upgrade, a server killed between a COMMIT and its NOTIFY
//!   that does not come back, several servers on one SQLite file): seen within `ttl`
//!   (`authorize_cache_ms`), the bound every entry keeps. `0` turns the cache off.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::lifecycle::{Account, Msisdn};
use crate::store::{AccountChange, AccountStore, StoreError};

/// Shards (independent locks), so concurrent Authorize calls rarely wait for each other.
const SHARDS: usize = 16;
/// Entries per shard at most; a full shard is emptied (a cheap bound on memory).
const SHARD_CAPACITY: usize = 16_384;
/// Change counters, one per stripe of MSISDNs (a multiple of `SHARDS`, so a stripe lies in one
/// shard): the finer they are, the fewer commits are kept out of the cache by an unrelated
/// write of the same stripe.
const STRIPES: usize = 1024;

struct Entry {
    account: Option<Account>,
    loaded_at: Instant,
}

pub struct FactCache {
    ttl: Duration,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    /// Per stripe: bumped, under the shard's lock, whenever an MSISDN of the stripe is written
    /// (a commit, an eviction). What was read, or decided, before a bump may be older than the
    /// database and is not stored.
    changes: Vec<AtomicU64>,
    /// Bumped by [`Self::clear`]: what was read before it is not stored either.
    epoch: AtomicU64,
    /// False while the changes of other servers cannot be followed: nothing is served from the
    /// cache or stored in it.
    following: AtomicBool,
}

/// Where the cache stood for an MSISDN when a read or a mutation of it began.
#[derive(Clone, Copy, Debug)]
pub struct WriteTicket {
    stripe: usize,
    change: u64,
    epoch: u64,
}

impl FactCache {
    /// A cache whose entries live at most `ttl`; `Duration::ZERO` caches nothing.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            changes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            following: AtomicBool::new(true),
        }
    }

    /// Whether answers come from the cache now: a window is set and the changes of other
    /// servers are followed (`ocs_authorize_cache_enabled`).
    pub fn enabled(&self) -> bool {
        self.caching()
    }

    fn caching(&self) -> bool {
        !self.ttl.is_zero() && self.following.load(Ordering::Acquire)
    }

    fn stripe(msisdn: &str) -> usize {
        // FNV-1a over the digits: cheap and spreads consecutive numbers.
        let hash = msisdn.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % STRIPES as u64) as usize
    }

    fn shard(&self, stripe: usize) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.shards[stripe % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn ticket(&self, msisdn: &str) -> WriteTicket {
        let stripe = Self::stripe(msisdn);
        // The epoch first: a clear between the two loads then shows as a changed epoch.
        let epoch = self.epoch.load(Ordering::Acquire);
        WriteTicket {
            stripe,
            change: self.changes[stripe].load(Ordering::Acquire),
            epoch,
        }
    }

    /// Nothing touched the ticket's stripe and nothing was cleared since it was taken, and the
    /// cache is on. Called under the stripe's shard lock, which every bump also holds.
    fn still_current(&self, ticket: WriteTicket) -> bool {
        self.caching()
            && self.epoch.load(Ordering::Acquire) == ticket.epoch
            && self.changes[ticket.stripe].load(Ordering::Acquire) == ticket.change
    }

    fn insert(shard: &mut HashMap<String, Entry>, key: &str, entry: Entry) {
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(key) {
            shard.clear();
        }
        shard.insert(key.to_owned(), entry);
    }

    /// The account's facts: from the cache when fresh, else from `store` (and cached unless the
    /// MSISDN was written meanwhile).
    pub async fn get(
        &self,
        store: &dyn AccountStore,
        msisdn: &Msisdn,
    ) -> Result<Option<Account>, StoreError> {
        self.get_or_load(msisdn, Instant::now(), || store.get(msisdn))
            .await
    }

    /// [`Self::get`] at `now` with the database read given as `load`.
    async fn get_or_load<F>(
        &self,
        msisdn: &Msisdn,
        now: Instant,
        load: impl FnOnce() -> F,
    ) -> Result<Option<Account>, StoreError>
    where
        F: Future<Output = Result<Option<Account>, StoreError>>,
    {
        if !self.caching() {
            return load().await;
        }
        let key = msisdn.as_str();
        let ticket = self.ticket(key);
        {
            let shard = self.shard(ticket.stripe);
            if let Some(entry) = shard.get(key)
                && now.saturating_duration_since(entry.loaded_at) < self.ttl
            {
                return Ok(entry.account.clone());
            }
        }
        let account = load().await?;
        let mut shard = self.shard(ticket.stripe);
        if self.still_current(ticket) {
            let entry = Entry {
                account: account.clone(),
                loaded_at: now,
            };
            Self::insert(&mut shard, key, entry);
        }
        Ok(account)
    }

    /// Taken before a mutation of `msisdn` runs; handed back to [`Self::committed`].
    pub fn write_ticket(&self, msisdn: &Msisdn) -> WriteTicket {
        self.ticket(msisdn.as_str())
    }

    /// After a mutation of `msisdn` finished: `account` is what it committed (`None` when it
    /// was refused, replayed or failed, or its outcome is unknown). The committed facts are
    /// cached when nothing else wrote the MSISDN's stripe since `ticket` was taken (another
    /// mutation may have committed after this one); otherwise the MSISDN is evicted.
    pub fn committed(&self, ticket: WriteTicket, msisdn: &Msisdn, account: Option<Account>) {
        self.committed_at(ticket, msisdn, account, Instant::now());
    }

    fn committed_at(
        &self,
        ticket: WriteTicket,
        msisdn: &Msisdn,
        account: Option<Account>,
        now: Instant,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let key = msisdn.as_str();
        let mut shard = self.shard(ticket.stripe);
        let current = self.still_current(ticket);
        self.changes[ticket.stripe].fetch_add(1, Ordering::AcqRel);
        match account {
            Some(account) if current => {
                let entry = Entry {
                    account: Some(account),
                    loaded_at: now,
                };
                Self::insert(&mut shard, key, entry);
            }
            _ => {
                shard.remove(key);
            }
        }
    }

    /// Forgets `msisdn` (its facts changed elsewhere); a read of it in flight is not stored.
    pub fn evict(&self, msisdn: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let stripe = Self::stripe(msisdn);
        let mut shard = self.shard(stripe);
        self.changes[stripe].fetch_add(1, Ordering::AcqRel);
        shard.remove(msisdn);
    }

    /// Forgets everything; reads and mutations in flight store nothing.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// The changes of other servers can no longer be followed: forget everything and cache
    /// nothing until [`Self::resume`].
    pub fn suspend(&self) {
        self.following.store(false, Ordering::Release);
        self.clear();
    }

    /// The changes of other servers are followed again from now on: start empty (what changed
    /// meanwhile was not heard) and cache again.
    pub fn resume(&self) {
        self.clear();
        self.following.store(true, Ordering::Release);
    }

    /// What the feed of other servers' commits says (`store::AccountStore::follow_changes`).
    pub fn hear(&self, change: AccountChange) {
        match change {
            AccountChange::Changed(msisdn) => self.evict(&msisdn),
            AccountChange::Everything => self.clear(),
            AccountChange::Listening => self.resume(),
            AccountChange::Lost => self.suspend(),
        }
    }

    /// Accounts held (fresh or not).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::lifecycle::AccountState;

    const TTL: Duration = Duration::from_secs(60);

    fn account(msisdn: &str, balance: i64) -> Account {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap();
        Account {
            msisdn: Msisdn::parse(msisdn).unwrap(),
            account_id: format!("id-{msisdn}"),
            generation: 1,
            state: AccountState::Valid,
            balance,
            preset_balance: 0,
            sold: true,
            initial_validity_days: 30,
            provisioned_at: at,
            activated_at: Some(at),
            valid_until: at.date_naive().checked_add_days(chrono::Days::new(30)),
            grace_until: None,
            lock_until: None,
            card_expiry: None,
            recycled_at: None,
            updated_at: at,
            expiring_notified_for: None,
        }
    }

    fn msisdn(raw: &str) -> Msisdn {
        Msisdn::parse(raw).unwrap()
    }

    /// A stand-in for the database: one account whose balance the test sets, and how often it
    /// was read.
    struct Db {
        balance: std::sync::atomic::AtomicI64,
        reads: AtomicUsize,
    }

    impl Db {
        fn new(balance: i64) -> Self {
            Self {
                balance: balance.into(),
                reads: AtomicUsize::new(0),
            }
        }

        async fn get(&self, cache: &FactCache, m: &Msisdn, now: Instant) -> i64 {
            let loaded = cache
                .get_or_load(m, now, || async {
                    self.reads.fetch_add(1, Ordering::SeqCst);
                    Ok(Some(account(
                        m.as_str(),
                        self.balance.load(Ordering::SeqCst),
                    )))
                })
                .await
                .unwrap();
            loaded.unwrap().balance
        }

        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    const M: &str = "8613800000001";

    #[tokio::test]
    async fn a_fresh_entry_is_served_and_an_expired_one_read_again() {
        let (cache, db, m, t0) = (FactCache::new(TTL), Db::new(100), msisdn(M), Instant::now());
        assert_eq!(db.get(&cache, &m, t0).await, 100);
        db.balance.store(50, Ordering::SeqCst);
        assert_eq!(db.get(&cache, &m, t0 + TTL / 2).await, 100, "within ttl");
        assert_eq!(db.reads(), 1);
        assert_eq!(db.get(&cache, &m, t0 + TTL).await, 50, "expired at ttl");
        assert_eq!(db.reads(), 2);
    }

    #[tokio::test]
    async fn a_missing_account_is_cached_too() {
        let (cache, m, t0) = (FactCache::new(TTL), msisdn(M), Instant::now());
        let reads = AtomicUsize::new(0);
        for _ in 0..3 {
            let found = cache
                .get_or_load(&m, t0, || async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    Ok(None)
                })
                .await
                .unwrap();
            assert_eq!(found, None);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_zero_ttl_caches_nothing() {
        let (cache, db, m, t0) = (
            FactCache::new(Duration::ZERO),
            Db::new(100),
            msisdn(M),
            Instant::now(),
        );
        db.get(&cache, &m, t0).await;
        cache.committed(cache.write_ticket(&m), &m, Some(account(M, 7)));
        db.get(&cache, &m, t0).await;
        assert_eq!(db.reads(), 2);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_commit_puts_its_facts_and_they_are_served_without_a_read() {
        let (cache, db, m, t0) = (FactCache::new(TTL), Db::new(100), msisdn(M), Instant::now());
        assert_eq!(db.get(&cache, &m, t0).await, 100);
        let ticket = cache.write_ticket(&m);
        db.balance.store(300, Ordering::SeqCst);
        cache.committed_at(ticket, &m, Some(account(M, 300)), t0);
        assert_eq!(db.get(&cache, &m, t0 + TTL / 2).await, 300);
        assert_eq!(db.reads(), 1, "the commit's facts, not a read");
    }

    #[tokio::test]
    async fn a_refused_or_failed_mutation_evicts() {
        let (cache, db, m, t0) = (FactCache::new(TTL), Db::new(100), msisdn(M), Instant::now());
        db.get(&cache, &m, t0).await;
        cache.committed(cache.write_ticket(&m), &m, None);
        assert!(cache.is_empty());
        db.get(&cache, &m, t0).await;
        assert_eq!(db.reads(), 2);
    }

    #[tokio::test]
    async fn of_two_overlapping_commits_neither_is_kept() {
        // Both mutations were under way at once: which of them committed last is not known
        // here, so the one finishing second evicts whatever the first put.
        let (cache, db, m, t0) = (FactCache::new(TTL), Db::new(100), msisdn(M), Instant::now());
        let first = cache.write_ticket(&m);
        let second = cache.write_ticket(&m);
        cache.committed_at(second, &m, Some(account(M, 200)), t0);
        cache.committed_at(first, &m, Some(account(M, 150)), t0);
        assert!(cache.is_empty());
        db.balance.store(200, Ordering::SeqCst);
        assert_eq!(db.get(&cache, &m, t0).await, 200);
    }

    #[tokio::test]
    async fn an_eviction_during_a_mutation_keeps_its_facts_out() {
        let (cache, m, t0) = (FactCache::new(TTL), msisdn(M), Instant::now());
        let ticket = cache.write_ticket(&m);
        cache.evict(M); // another server committed meanwhile
        cache.committed_at(ticket, &m, Some(account(M, 200)), t0);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_read_that_raced_with_a_write_is_not_stored() {
        let (cache, m, t0) = (FactCache::new(TTL), msisdn(M), Instant::now());
        let read = cache
            .get_or_load(&m, t0, || async {
                // The read saw the old facts; the eviction of a commit lands before it returns.
                cache.evict(M);
                Ok(Some(account(M, 100)))
            })
            .await
            .unwrap();
        assert_eq!(
            read.map(|a| a.balance),
            Some(100),
            "answered with what it read"
        );
        assert!(cache.is_empty(), "but not kept");
    }

    #[tokio::test]
    async fn eviction_forgets_one_msisdn_only() {
        let (cache, db, t0) = (FactCache::new(TTL), Db::new(100), Instant::now());
        let (a, b) = (msisdn(M), msisdn("8613800000002"));
        db.get(&cache, &a, t0).await;
        db.get(&cache, &b, t0).await;
        cache.evict(a.as_str());
        assert_eq!(cache.len(), 1);
        db.get(&cache, &b, t0).await;
        assert_eq!(db.reads(), 2, "b still cached");
        db.get(&cache, &a, t0).await;
        assert_eq!(db.reads(), 3, "a read again");
    }

    #[tokio::test]
    async fn while_suspended_nothing_is_served_or_kept_and_resuming_starts_empty() {
        let (cache, db, m, t0) = (FactCache::new(TTL), Db::new(100), msisdn(M), Instant::now());
        db.get(&cache, &m, t0).await;
        let ticket = cache.write_ticket(&m);
        cache.suspend();
        assert!(cache.is_empty());
        db.balance.store(40, Ordering::SeqCst);
        assert_eq!(db.get(&cache, &m, t0).await, 40);
        assert_eq!(db.get(&cache, &m, t0).await, 40);
        assert_eq!(db.reads(), 3);
        cache.resume();
        // A mutation that began before the resume stores nothing.
        cache.committed_at(ticket, &m, Some(account(M, 40)), t0);
        assert!(cache.is_empty());
        db.get(&cache, &m, t0).await;
        db.get(&cache, &m, t0).await;
        assert_eq!(db.reads(), 4, "cached again after resume");
    }

    #[tokio::test]
    async fn clearing_forgets_everything_and_keeps_reads_in_flight_out() {
        let (cache, db, t0) = (FactCache::new(TTL), Db::new(100), Instant::now());
        for i in 0..10 {
            db.get(&cache, &msisdn(&format!("86138000000{i:02}")), t0)
                .await;
        }
        assert_eq!(cache.len(), 10);
        let other = "8613900000001";
        cache
            .get_or_load(&msisdn(other), t0, || async {
                cache.clear();
                Ok(Some(account(other, 1)))
            })
            .await
            .unwrap();
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_full_shard_is_emptied_rather_than_grown() {
        let (cache, db, t0) = (FactCache::new(TTL), Db::new(100), Instant::now());
        for i in 0..(SHARDS * SHARD_CAPACITY + 1000) {
            db.get(&cache, &msisdn(&format!("861{i:010}")), t0).await;
        }
        assert!(cache.len() <= SHARDS * SHARD_CAPACITY);
    }
}
