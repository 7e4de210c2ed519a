//! The account facts `Authorize` reads, cached in memory for a short time.
//!
//! Authorize is a pure function of an account's stored facts and the instant (spec section 5,
//! `lifecycle::authorize`), so caching the *facts* — never a decision — keeps every boundary
//! exact: an account read at 23:59:59 is evaluated again at 00:00:00 and turns GRACE on the
//! second. The sweep only materialises what the facts already imply, so it invalidates nothing.
//!
//! What can make an entry stale is a mutation (recharge, charge, unlock, …):
//! - through this process: every mutation evicts its MSISDN after it commits, and a read that
//!   raced with a mutation does not fill the cache (see [`FactCache::get`]), so a single server
//!   answers exactly as if there were no cache;
//! - through another server on the same database: the entry lives at most `ttl`
//!   (`authorize_cache_ms`), after which it is read again. `0` turns the cache off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::lifecycle::{Account, Msisdn};
use crate::store::{AccountStore, StoreError};

/// Shards (independent locks), so concurrent Authorize calls rarely wait for each other.
const SHARDS: usize = 16;
/// Entries per shard at most; a full shard is emptied (a cheap bound on memory).
const SHARD_CAPACITY: usize = 16_384;

struct Entry {
    account: Option<Account>,
    loaded_at: Instant,
}

pub struct FactCache {
    ttl: Duration,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    /// Bumped after every mutation commits: a read that started before a bump may have read
    /// the old facts and must not store them.
    writes: AtomicU64,
}

impl FactCache {
    /// A cache whose entries live `ttl`; `Duration::ZERO` caches nothing.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            writes: AtomicU64::new(0),
        }
    }

    fn shard(&self, msisdn: &str) -> &Mutex<HashMap<String, Entry>> {
        // FNV-1a over the digits: cheap and spreads consecutive numbers.
        let hash = msisdn.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// The account's facts: from the cache when fresh, else from `store` (and cached unless a
    /// mutation committed meanwhile).
    pub async fn get(
        &self,
        store: &dyn AccountStore,
        msisdn: &Msisdn,
    ) -> Result<Option<Account>, StoreError> {
        if self.ttl.is_zero() {
            return store.get(msisdn).await;
        }
        let key = msisdn.as_str();
        {
            let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = shard.get(key)
                && entry.loaded_at.elapsed() < self.ttl
            {
                return Ok(entry.account.clone());
            }
        }
        let before = self.writes.load(Ordering::Acquire);
        let loaded_at = Instant::now();
        let account = store.get(msisdn).await?;
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that `invalidate` takes after bumping: either this sees the
        // bump, or the eviction comes after this insert.
        if self.writes.load(Ordering::Acquire) == before {
            if shard.len() >= SHARD_CAPACITY {
                shard.clear();
            }
            shard.insert(
                key.to_owned(),
                Entry {
                    account: account.clone(),
                    loaded_at,
                },
            );
        }
        Ok(account)
    }

    /// Called after a mutation of `msisdn` finished (committed or not).
    pub fn invalidate(&self, msisdn: &Msisdn) {
        if self.ttl.is_zero() {
            return;
        }
        self.writes.fetch_add(1, Ordering::AcqRel);
        let key = msisdn.as_str();
        self.shard(key)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}
