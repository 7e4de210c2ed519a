//! The change feed between servers on one PostgreSQL database. After each mutation's COMMIT
//! the server announces its MSISDN on [`CHANNEL`] ([`Instance::announce`]: `pg_notify`, the
//! payload `<instance> <MSISDN>`); each server listens on a connection of its own
//! ([`Instance::follow`]) and reports what the *other* instances announce, so a cache of
//! account facts (`crate::api::facts`) forgets what another server changed. Its own
//! announcements are ignored: its commits reach its cache directly.
//!
//! Why after the COMMIT and not inside the transaction (where PostgreSQL would deliver it at
//! the COMMIT, atomically): PostgreSQL serialises the commits of all transactions that sent a
//! NOTIFY with one lock held through their WAL flush, so concurrent mutations no longer share
//! flushes. Measured here with pgbench (32 clients, one UPDATE a transaction): 8 000/s plain,
//! 3 400–3 750/s with the NOTIFY inside, 6 400–6 550/s with it sent right after the COMMIT
//! (BENCHMARKS.md). The price: a server killed between a COMMIT and its announcement leaves
//! that MSISDN's facts stale in the other servers until their entry expires — unless it
//! restarts, since a listener that starts listening announces [`EVERYTHING`], which empties
//! every server's cache. An announcement of a change that did not happen costs only a read.
//!
//! Notifications sent while a listener is disconnected are lost for it, so the feed says when
//! it is lost and when it listens again ([`AccountChange`]); whoever caches must treat the gap
//! as "anything may have changed". A connection that goes quiet is checked with a query now and
//! then, so a half-open one (a host gone without closing its sockets) counts as lost too.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{AccountChange, OnChange};

/// The channel mutations announce their MSISDN on (the payload).
pub const CHANNEL: &str = "ocs_account_changed";

/// What says "forget everything": announced by each listener once it listens (a server that
/// starts, or reconnects, may have died or been cut off before announcing its last commits).
pub const EVERYTHING: &str = "*";

/// The `application_name` of the listener's connection (`pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "ocs-lifecycle-listener";

/// After this long without a notification the listener checks its connection.
const QUIET_CHECK: Duration = Duration::from_secs(10);
/// How long that check, or opening the listener's connection, may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before connecting again after a loss, doubled on each failed attempt up to
/// `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// One store on the feed: a random name, unique per process start and per store.
pub(crate) struct Instance(Arc<str>);

impl Instance {
    pub(crate) fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string().into())
    }

    /// Tells every other listener that `what` (an MSISDN, or [`EVERYTHING`]) changed.
    pub(crate) async fn announce(&self, pool: &PgPool, what: &str) -> Result<(), sqlx::Error> {
        announce_on(pool, &format!("{} {what}", self.0)).await
    }

    /// [`Instance::announce`] for several MSISDNs in one round trip (a commit group's).
    pub(crate) async fn announce_all(
        &self,
        pool: &PgPool,
        msisdns: &[&str],
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2 || ' ' || m) FROM unnest($3::text[]) AS m")
            .bind(CHANNEL)
            .bind(&*self.0)
            .bind(msisdns)
            .execute(pool)
            .await
            .map(|_| ())
    }

    /// Listens until `shutdown`, on a connection of its own opened with the settings of the
    /// pool `current_pool` gives at each (re)connection (with a multi-host URL: the primary's;
    /// NOTIFY is delivered on the server that committed). Reports [`AccountChange::Lost`] at
    /// once, since nothing is heard yet, then `Listening` once it listens and has heard its own
    /// [`EVERYTHING`] back.
    pub(crate) fn follow(
        &self,
        current_pool: impl Fn() -> PgPool + Send + 'static,
        on: OnChange,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        follow(self.0.clone(), current_pool, on, shutdown)
    }
}

async fn announce_on<'e>(on: impl sqlx::PgExecutor<'e>, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(on)
        .await
        .map(|_| ())
}

fn follow(
    instance: Arc<str>,
    current_pool: impl Fn() -> PgPool + Send + 'static,
    on: OnChange,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    on(AccountChange::Lost);
    tokio::spawn(async move {
        let mut retry = FIRST_RETRY;
        loop {
            let pool = current_pool();
            let (listened, why) = tokio::select! {
                _ = shutdown.cancelled() => return,
                ended = listen(&instance, &pool, &on) => ended,
            };
            on(AccountChange::Lost);
            if listened {
                tracing::warn!(error = %why, channel = CHANNEL, "lost the listener of account changes; reconnecting (the Authorize cache is off until then)");
                retry = FIRST_RETRY;
            } else {
                tracing::debug!(error = %why, retry_ms = retry.as_millis() as u64, "cannot listen for account changes yet");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
            if !listened {
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    })
}

/// Connects, listens and reports until the connection is lost: whether it got as far as
/// listening, and why it ended.
async fn listen(instance: &str, pool: &PgPool, on: &OnChange) -> (bool, String) {
    let mut listener = match connect(instance, pool).await {
        Ok(listener) => listener,
        Err(e) => return (false, e),
    };
    // Listening once this connection's own EVERYTHING came back: the feed is then proven to
    // deliver, and that announcement (which empties every cache) is behind this server, so
    // what it caches from now on stays.
    if let Err(e) = own_announcement(instance, &mut listener).await {
        return (false, e);
    }
    on(AccountChange::Listening);
    tracing::info!(
        channel = CHANNEL,
        "listening for the account changes of other servers: the Authorize cache is on"
    );
    loop {
        // `try_recv` is cancel-safe while its connection is up (sqlx reads whole messages);
        // without eager reconnection it never reconnects by itself.
        match tokio::time::timeout(QUIET_CHECK, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => match heard(instance, notification.payload()) {
                Heard::Own => {}
                Heard::Other(EVERYTHING) => on(AccountChange::Everything),
                Heard::Other(msisdn) => on(AccountChange::Changed(msisdn.to_owned())),
            },
            Ok(Ok(None)) => return (true, "the connection was closed".into()),
            Ok(Err(e)) => return (true, e.to_string()),
            Err(_quiet) => {
                let check = sqlx::query("SELECT 1").execute(&mut listener);
                match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return (true, e.to_string()),
                    Err(_) => return (true, "the connection stopped answering".into()),
                }
            }
        }
    }
}

enum Heard<'a> {
    Own,
    Other(&'a str),
}

/// Whose announcement `payload` is, and what it says.
fn heard<'a>(instance: &str, payload: &'a str) -> Heard<'a> {
    match payload.split_once(' ') {
        Some((from, _)) if from == instance => Heard::Own,
        Some((_, what)) => Heard::Other(what),
        None => Heard::Other(payload),
    }
}

/// Waits (at most [`CHECK_TIMEOUT`]) for the [`EVERYTHING`] this listener announced when it
/// connected; what others announce meanwhile needs no answer, since the cache is off.
async fn own_announcement(instance: &str, listener: &mut PgListener) -> Result<(), String> {
    let own = format!("{instance} {EVERYTHING}");
    let heard = async {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.payload() == own => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => return Err("the connection was closed".to_owned()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(CHECK_TIMEOUT, heard)
        .await
        .map_err(|_| "its own announcement did not come back".to_owned())?
}

async fn connect(instance: &str, pool: &PgPool) -> Result<PgListener, String> {
    if pool.is_closed() {
        return Err("no database primary known yet".into());
    }
    let options = (*pool.connect_options()).clone();
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CHECK_TIMEOUT)
        .connect_with(options.application_name(LISTENER_APPLICATION_NAME))
        .await
        .map_err(|e| e.to_string())?;
    let mut listener = PgListener::connect_with(&own)
        .await
        .map_err(|e| e.to_string())?;
    // A lost connection ends this listener, and `follow` says so before connecting again.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await.map_err(|e| e.to_string())?;
    announce_on(&mut listener, &format!("{instance} {EVERYTHING}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(listener)
}
