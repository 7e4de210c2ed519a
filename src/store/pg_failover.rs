//! Following a PostgreSQL primary across a failover: libpq's multi-host URLs
//! (`postgres://user@host1:5432,host2:5432/db?target_session_attrs=read-write`), which sqlx
//! does not parse (its issue 2290).
//!
//! [`PgTargets`] parses the URL: the hosts in order and what the service needs of the one it
//! writes to. [`FollowedPrimary`] owns the one connection pool of the store and points it at
//! the host that accepts writes: it asks each host in turn (`SHOW transaction_read_only`, or
//! `pg_is_in_recovery()` for `primary`), keeps a connection of its own to the one it found and
//! checks it every [`CHECK_INTERVAL`] — at once when a request failed in a way that says the
//! primary may be gone (connection lost, SQLSTATE class 08, 25006 read-only transaction,
//! 57P01–57P03 shutdown). When the check fails it searches again, with a backoff bounded by
//! [`MAX_SEARCH_DELAY`], then points the pool at the new primary: connections opened before the
//! switch are never handed out again, and a new connection to a host that is read-only or in
//! recovery is refused by the pool's `after_connect`, so nothing is written to a standby.
//!
//! While it searches the store answers at once: writes with `StoreError::Failover` (UNAVAILABLE
//! `STORAGE_FAILOVER`), reads through a closed stand-in pool, and [`PrimaryWatch`] tells gRPC
//! health and `/readyz` (NOT_SERVING, 503) until a primary is found.
//!
//! Why one pool pointed elsewhere (`Pool::set_connect_options`) rather than a new pool per
//! primary: the shared SQL borrows the pool (`&PgPool`) from the store for each statement, so
//! the pool must live as long as the store; the stand-in is closed once and kept for the same
//! reason. A read already waiting for a connection when the primary dies is not cut short: it
//! waits up to `db_acquire_timeout_ms` (writes and sweep batches are, see
//! [`FollowedPrimary::begin`]).
//!
//! This module owns the choice of host (`targets.rs`: the URL form); the SQL stays in `sql/`.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Notify, watch};

use super::StoreError;

mod targets;

pub use targets::{PgHost, PgTargets, TargetSessionAttrs};

/// How often the connection to the primary is checked when nothing went wrong.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long one host may take to accept a connection and answer the check.
const HOST_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause between two searches of every host, doubled up to [`MAX_SEARCH_DELAY`].
const MIN_SEARCH_DELAY: Duration = Duration::from_millis(50);
/// The longest pause between two searches.
pub const MAX_SEARCH_DELAY: Duration = Duration::from_millis(500);

/// Where the service writes: the host it found, or none while it searches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryStatus {
    /// `host:port` of the primary; `None` while the service searches for one.
    pub primary: Option<String>,
    /// Primaries lost since the start.
    pub failovers: u64,
}

/// Follows [`PrimaryStatus`] (gRPC health, `/readyz`, the metrics).
pub type PrimaryWatch = watch::Receiver<PrimaryStatus>;

/// One host as the search sees it.
struct Candidate {
    label: String,
    options: PgConnectOptions,
}

/// The store's pool, pointed at the primary of a multi-host URL (see the module docs).
pub struct FollowedPrimary {
    pool: PgPool,
    /// Closed: every acquire fails at once with `PoolClosed`, read as "searching".
    searching: PgPool,
    candidates: Vec<Candidate>,
    hosts: String,
    target: TargetSessionAttrs,
    status: watch::Sender<PrimaryStatus>,
    /// When the pool was last pointed at a host: older connections are not handed out.
    switched_at: Arc<Mutex<Instant>>,
    /// A request saw an error that may mean the primary is gone: check now.
    suspect: Notify,
}

impl FollowedPrimary {
    /// Finds the primary (each host once, in order) and opens the pool on it; fails when no
    /// host qualifies. `pool` carries the store's pool settings.
    pub async fn connect(
        targets: &PgTargets,
        pool: PgPoolOptions,
        configure: impl Fn(PgConnectOptions) -> PgConnectOptions,
    ) -> Result<Arc<FollowedPrimary>, StoreError> {
        let candidates: Vec<Candidate> = targets
            .hosts
            .iter()
            .zip(targets.host_urls())
            .map(|(host, url)| {
                let options = url
                    .parse::<PgConnectOptions>()
                    .map_err(|e| StoreError::Internal(format!("database_url: {e}")))?;
                Ok(Candidate {
                    label: host.to_string(),
                    options: configure(options),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let target = targets.target();
        let hosts = targets.host_list();
        let (index, monitor) = find_primary(&candidates, target).await.map_err(|report| {
            StoreError::Unavailable(format!(
                "no host of database_url accepts writes ({}): {report}",
                target.as_str()
            ))
        })?;
        tracing::info!(primary = %candidates[index].label, hosts = %hosts, target_session_attrs = target.as_str(), "database primary found");
        let switched_at = Arc::new(Mutex::new(Instant::now()));
        let since_switch = switched_at.clone();
        let pool = pool
            // Never a connection to a host that cannot take writes: a standby, or the old
            // primary that came back in recovery.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if accepts_writes(conn, target).await? {
                        Ok(())
                    } else {
                        Err(sqlx::Error::Protocol(format!(
                            "the host is not {}: not the primary",
                            target.as_str()
                        )))
                    }
                })
            })
            // A connection opened before the last switch belongs to the old primary.
            .before_acquire(move |_, meta| {
                let switched = *since_switch.lock().unwrap_or_else(|e| e.into_inner());
                Box::pin(async move { Ok(meta.age <= switched.elapsed()) })
            })
            .connect_with(candidates[index].options.clone())
            .await?;
        let searching = PgPoolOptions::new().connect_lazy_with(candidates[index].options.clone());
        drop(searching.close());
        let (status, _) = watch::channel(PrimaryStatus {
            primary: Some(candidates[index].label.clone()),
            failovers: 0,
        });
        let followed = Arc::new(FollowedPrimary {
            pool,
            searching,
            candidates,
            hosts,
            target,
            status,
            switched_at,
            suspect: Notify::new(),
        });
        tokio::spawn(follow(Arc::downgrade(&followed), index, monitor));
        Ok(followed)
    }

    /// The pool to use now: the primary's, or a closed one that fails at once while the
    /// service searches for the primary.
    pub fn pool(&self) -> &PgPool {
        if self.status.borrow().primary.is_some() {
            &self.pool
        } else {
            &self.searching
        }
    }

    pub fn watch(&self) -> PrimaryWatch {
        self.status.subscribe()
    }

    /// A write transaction on the primary. While the service searches for it this fails at
    /// once with `PoolClosed` (read as "searching", see `store::classify`), also when a search
    /// starts while it waits for a connection, rather than after the whole acquire timeout
    /// spent on a dead host.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut status = self.status.subscribe();
        if status.borrow_and_update().primary.is_none() {
            return Err(sqlx::Error::PoolClosed);
        }
        tokio::select! {
            tx = self.pool.begin() => tx,
            _ = status.wait_for(|s| s.primary.is_none()) => Err(sqlx::Error::PoolClosed),
        }
    }

    /// What a write reports for `err` when it says the primary may be gone: a retriable
    /// `StoreError::Failover`, and the primary is checked now. `None`: any other error.
    pub fn failover_error(&self, err: &sqlx::Error) -> Option<StoreError> {
        if !signals_failover(err) {
            return None;
        }
        self.suspect.notify_one();
        Some(StoreError::Failover(format!(
            "the database primary may be gone ({err}); nothing was written; checking it, and \
             searching for the writable host among {} if it is lost",
            self.hosts
        )))
    }
}

/// Errors after which the primary may have moved: the connection was lost or refused (class
/// 08, I/O), the server is read-only (25006: a standby, or a demoted primary), or it is
/// shutting down (57P01 admin, 57P02 crash, 57P03 cannot connect now).
pub fn signals_failover(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            code.starts_with("08") || matches!(code.as_ref(), "25006" | "57P01" | "57P02" | "57P03")
        }
        // Not `PoolTimedOut`: all connections busy is overload (STORAGE_UNAVAILABLE); a host
        // that stopped answering is caught by the check of the primary, which times out.
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Whether the connected host is what `target` asks for.
async fn accepts_writes(
    conn: &mut PgConnection,
    target: TargetSessionAttrs,
) -> Result<bool, sqlx::Error> {
    match target {
        TargetSessionAttrs::ReadWrite => {
            let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
                .fetch_one(conn)
                .await?;
            Ok(read_only == "off")
        }
        TargetSessionAttrs::Primary => {
            let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(conn)
                .await?;
            Ok(!in_recovery)
        }
        TargetSessionAttrs::Any => {
            sqlx::query("SELECT 1").execute(conn).await?;
            Ok(true)
        }
    }
}

/// The first host, in order, that accepts a connection and is what `target` asks for, with
/// that connection; else what each host said.
async fn find_primary(
    candidates: &[Candidate],
    target: TargetSessionAttrs,
) -> Result<(usize, PgConnection), String> {
    let mut report = Vec::new();
    for (index, candidate) in candidates.iter().enumerate() {
        let attempt = async {
            let mut conn = candidate.options.connect().await?;
            let ok = accepts_writes(&mut conn, target).await?;
            Ok::<_, sqlx::Error>((conn, ok))
        };
        match tokio::time::timeout(HOST_TIMEOUT, attempt).await {
            Ok(Ok((conn, true))) => return Ok((index, conn)),
            Ok(Ok((conn, false))) => {
                let _ = conn.close().await;
                report.push(format!("{}: not {}", candidate.label, target.as_str()));
            }
            Ok(Err(e)) => report.push(format!("{}: {e}", candidate.label)),
            Err(_) => report.push(format!(
                "{}: no answer within {} s",
                candidate.label,
                HOST_TIMEOUT.as_secs()
            )),
        }
    }
    Err(report.join("; "))
}

/// The task that checks the primary and searches for a new one when it is lost. It ends
/// when the store is dropped.
async fn follow(followed: Weak<FollowedPrimary>, mut index: usize, mut monitor: PgConnection) {
    loop {
        // Watch the primary until a check fails.
        let lost = loop {
            let Some(this) = followed.upgrade() else {
                return;
            };
            let check = async {
                tokio::select! {
                    _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                    _ = this.suspect.notified() => {}
                }
                tokio::time::timeout(HOST_TIMEOUT, accepts_writes(&mut monitor, this.target)).await
            };
            match check.await {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => break format!("it is no longer {}", this.target.as_str()),
                Ok(Err(e)) => break e.to_string(),
                Err(_) => {
                    break format!(
                        "the check got no answer within {} s",
                        HOST_TIMEOUT.as_secs()
                    );
                }
            }
        };
        let Some(this) = followed.upgrade() else {
            return;
        };
        let lost_at = Instant::now();
        let old = this.candidates[index].label.clone();
        this.status.send_modify(|s| {
            s.primary = None;
            s.failovers += 1;
        });
        tracing::warn!(primary = %old, reason = %lost, hosts = %this.hosts, "database primary lost: requests answer UNAVAILABLE (STORAGE_FAILOVER) while searching for the writable host");
        drop(this);

        // Search until a host qualifies, pausing longer each round up to the bound.
        let mut delay = MIN_SEARCH_DELAY;
        let mut rounds = 0u32;
        let (found, conn) = loop {
            let Some(this) = followed.upgrade() else {
                return;
            };
            rounds += 1;
            match find_primary(&this.candidates, this.target).await {
                Ok(found) => break found,
                Err(report) => {
                    // The first round and every tenth: enough to follow, not a flood.
                    if rounds == 1 || rounds.is_multiple_of(10) {
                        tracing::warn!(rounds, %report, retry_in_ms = delay.as_millis() as u64, "searching for the database primary: no host accepts writes yet");
                    }
                }
            }
            drop(this);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_SEARCH_DELAY);
        };
        let Some(this) = followed.upgrade() else {
            return;
        };
        index = found;
        monitor = conn;
        let label = this.candidates[index].label.clone();
        this.pool
            .set_connect_options(this.candidates[index].options.clone());
        *this.switched_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        this.status.send_modify(|s| s.primary = Some(label.clone()));
        tracing::info!(primary = %label, previous = %old, rounds, searched_ms = lost_at.elapsed().as_millis() as u64, "database primary found: serving again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_read_only_servers_and_shutdowns_signal_a_failover() {
        assert!(signals_failover(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!signals_failover(&sqlx::Error::RowNotFound));
        assert!(!signals_failover(&sqlx::Error::PoolClosed));
        assert!(!signals_failover(&sqlx::Error::PoolTimedOut));
    }
}
