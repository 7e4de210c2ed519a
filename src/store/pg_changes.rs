//! The change feed between servers on one PostgreSQL database. After each mutation's COMMIT
//! its MSISDN is queued to the store's [`Announcer`], one task that announces what is queued on
//! [`CHANNEL`] (`pg_notify`, the payload `<instance> <MSISDN>`), every MSISDN queued meanwhile
//! in the same statement; each server listens on a connection of its own
//! ([`Instance::follow`]) and reports what the *other* instances announce, so a cache of
//! account facts (`crate::api::facts`) forgets what another server changed. Its own
//! announcements are ignored: its commits reach its cache directly.
//!
//! Why after the COMMIT and not inside the transaction (where PostgreSQL would deliver it at
//! the COMMIT, atomically): PostgreSQL serialises the commits of all transactions that sent a
//! NOTIFY with one lock held through their WAL flush, so concurrent mutations no longer share
//! flushes. Measured here with pgbench (32 clients, one UPDATE a transaction): 8 000/s plain,
//! 3 400–3 750/s with the NOTIFY inside, 6 400–6 550/s with it sent right after the COMMIT
//! (BENCHMARKS.md). Why one task and not each mutation's own NOTIFY after its COMMIT: each
//! NOTIFY is itself such a transaction, so one per mutation put a second, serialised flush
//! and a round trip in every mutation's answer; one statement per round of the announcer
//! takes them off the mutations' path (BENCHMARKS.md, "Announcements off the commit path").
//!
//! The price: a server killed between a COMMIT and its announcement leaves that MSISDN's facts
//! stale in the other servers until their entry expires — unless it restarts, since a listener
//! that starts listening announces [`EVERYTHING`], which empties every server's cache. A server
//! that stops gracefully announces what is queued first ([`Announcer::flushed`]). An
//! announcement that fails, or an MSISDN the full queue cannot take, makes the next
//! announcement [`EVERYTHING`]. An announcement of a change that did not happen costs only a
//! read.
//!
//! Notifications sent while a listener is disconnected are lost for it, so the feed says when
//! it is lost and when it listens again ([`AccountChange`]); whoever caches must treat the gap
//! as "anything may have changed". A connection that goes quiet is checked with a query now and
//! then, so a half-open one (a host gone without closing its sockets) counts as lost too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};
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

/// MSISDNs waiting for the announcer, at most; past it the next announcement is [`EVERYTHING`].
const ANNOUNCE_QUEUE: usize = 65_536;
/// MSISDNs in one announcement (one `pg_notify` statement) at most.
const ANNOUNCE_BATCH: usize = 1_024;

/// One store on the feed: a random name, unique per process start and per store.
pub(crate) struct Instance(Arc<str>);

impl Instance {
    pub(crate) fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string().into())
    }

    /// Starts the task that announces what the store's commits change, on the pool
    /// `current_pool` gives at each announcement (with a multi-host URL: the primary's). It
    /// ends once the [`Announcer`] is dropped and what was queued is announced.
    pub(crate) fn announcer(
        &self,
        current_pool: impl Fn() -> PgPool + Send + 'static,
    ) -> Announcer {
        let (queue, queued) = mpsc::channel(ANNOUNCE_QUEUE);
        let everything = Arc::new(AtomicBool::new(false));
        tokio::spawn(announce_loop(
            self.0.clone(),
            current_pool,
            queued,
            everything.clone(),
        ));
        Announcer { queue, everything }
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

/// What the store's commits changed, queued for one task to announce to the other servers
/// ([`Instance::announcer`]).
pub(crate) struct Announcer {
    queue: mpsc::Sender<Queued>,
    /// Set when an MSISDN could not be queued or an announcement failed: the next announcement
    /// says [`EVERYTHING`].
    everything: Arc<AtomicBool>,
}

enum Queued {
    Changed(Box<str>),
    /// Answered once everything queued before it is announced.
    Flush(oneshot::Sender<()>),
}

impl Announcer {
    /// Queues committed changes for announcement; never waits.
    pub(crate) fn changed<'a>(&self, msisdns: impl IntoIterator<Item = &'a str>) {
        for msisdn in msisdns {
            if self.queue.try_send(Queued::Changed(msisdn.into())).is_err() {
                self.everything.store(true, Ordering::Release);
            }
        }
    }

    /// Waits until what was queued before the call is announced (or its announcement failed).
    pub(crate) async fn flushed(&self) {
        let (done, flushed) = oneshot::channel();
        if self.queue.send(Queued::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }
}

/// The announcer's task: takes what is queued, announces it in one statement (an MSISDN once
/// however often it changed), answers the flushes among it; until the queue closes.
async fn announce_loop(
    instance: Arc<str>,
    current_pool: impl Fn() -> PgPool,
    mut queue: mpsc::Receiver<Queued>,
    everything: Arc<AtomicBool>,
) {
    let mut queued = Vec::with_capacity(ANNOUNCE_BATCH);
    while queue.recv_many(&mut queued, ANNOUNCE_BATCH).await > 0 {
        let mut msisdns: Vec<&str> = if everything.swap(false, Ordering::AcqRel) {
            vec![EVERYTHING]
        } else {
            queued
                .iter()
                .filter_map(|q| match q {
                    Queued::Changed(msisdn) => Some(&**msisdn),
                    Queued::Flush(_) => None,
                })
                .collect()
        };
        msisdns.sort_unstable();
        msisdns.dedup();
        if !msisdns.is_empty() {
            let announced =
                sqlx::query("SELECT pg_notify($1, $2 || ' ' || m) FROM unnest($3::text[]) AS m")
                    .bind(CHANNEL)
                    .bind(&*instance)
                    .bind(msisdns.as_slice())
                    .execute(&current_pool())
                    .await;
            if let Err(e) = announced {
                everything.store(true, Ordering::Release);
                tracing::warn!(error = %e, msisdns = msisdns.len(), "could not announce committed changes to the other servers; the next announcement tells them to forget everything");
            }
        }
        for q in queued.drain(..) {
            if let Queued::Flush(done) = q {
                let _ = done.send(());
            }
        }
    }
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
