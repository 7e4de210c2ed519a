//! SQLite's WAL checkpoints, off the write path.
//!
//! Left to itself, SQLite checkpoints inside the COMMIT that takes the WAL past 1000 pages: the
//! one write connection copies the WAL into the database file and fsyncs it while every
//! mutation and sweep batch waits behind it (about a tenth of the writer's time in a sweep). So
//! a task of its own, on a connection of its own (another thread, so the other core), runs
//! `PASSIVE` checkpoints as the WAL grows: they copy what is committed without taking any lock a
//! writer or a reader waits for.
//!
//! SQLite starts the WAL file over only when a write transaction begins with every page of it
//! copied. A writer that never pauses leaves new pages behind each passive checkpoint, so the
//! write connection keeps a checkpoint threshold of its own, [`WRITER_CHECKPOINT_PAGES`]: past
//! it, the COMMIT copies the few pages the task has not copied yet, and the WAL starts over.
//! Durability does not depend on any of this: a commit is durable once its WAL pages are synced
//! (`synchronous = FULL`); a checkpoint only moves them into the database file.

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::task::JoinHandle;

/// The write connection's `wal_autocheckpoint` (SQLite's default is 1000): 16 MiB of WAL.
pub(crate) const WRITER_CHECKPOINT_PAGES: u32 = 4_096;

/// The pause after a checkpoint that found new pages: short, so that the writer's own
/// checkpoint finds little left to copy.
const BUSY_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause, reached by doubling while the WAL does not change: an idle database is
/// looked at a few times a second.
const IDLE_PAUSE: Duration = Duration::from_millis(320);

/// After a failure (the disk is full, the connection is lost …), the task waits this long.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The checkpoint task; it stops when this is dropped (with the store).
pub(crate) struct Checkpointer {
    task: JoinHandle<()>,
}

impl Checkpointer {
    /// Opens the task's connection to the database `options` name and starts it.
    pub(crate) async fn start(options: &SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let conn = options.connect().await?;
        Ok(Self {
            task: tokio::spawn(checkpoints(conn, options.clone())),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task: a passive checkpoint, then a pause of [`BUSY_PAUSE`] if the WAL had changed
/// since the last one, else twice the last pause up to [`IDLE_PAUSE`]. After a failure it
/// tries again a second later, on a new connection if the old one is gone.
async fn checkpoints(mut conn: SqliteConnection, options: SqliteConnectOptions) {
    let mut last = None;
    let mut pause = BUSY_PAUSE;
    loop {
        tokio::time::sleep(pause).await;
        // `PRAGMA wal_checkpoint` answers (busy, pages in the WAL, pages copied).
        let passive: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut conn)
                .await;
        match passive {
            Ok((_, pages, copied)) => {
                let seen = Some((pages, copied));
                pause = if seen != last {
                    BUSY_PAUSE
                } else {
                    (pause * 2).min(IDLE_PAUSE)
                };
                last = seen;
            }
            Err(e) => {
                tracing::warn!(error = %e, "SQLite WAL checkpoint failed; trying again in a second");
                pause = AFTER_FAILURE;
                last = None;
                if conn.ping().await.is_err() {
                    match options.connect().await {
                        Ok(new) => conn = new,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reopen the checkpoint connection")
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use sqlx::SqlitePool;

    use crate::lifecycle::Rules;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{AccountStore, GroupCommit};

    /// Bytes of one filler row (a page each, about).
    const ROW: u64 = 4_000;

    /// A migrated store on a new file in `dir`, with an empty `filler` table; its write pool
    /// and the file.
    async fn store_in(dir: &Path) -> (SqliteStore, PathBuf) {
        let file = dir.join("wal.db");
        let url = format!("sqlite://{}", file.display());
        let store =
            SqliteStore::connect(&url, 2, Arc::new(Rules::default()), GroupCommit::default())
                .await
                .expect("open");
        store.migrate().await.expect("migrate");
        sqlx::query("CREATE TABLE filler (b BLOB)")
            .execute(store.writer())
            .await
            .expect("create");
        (store, file)
    }

    /// Commits `rows` filler rows in one transaction through the store's write connection.
    async fn fill(writer: &SqlitePool, rows: u64) {
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO filler SELECT randomblob($2) FROM n",
        )
        .bind(rows as i64)
        .bind(ROW as i64)
        .execute(writer)
        .await
        .expect("fill");
    }

    fn size(file: &Path) -> u64 {
        std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn the_task_copies_the_wal_into_the_database_file_and_the_writer_does_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, file) = store_in(dir.path()).await;
        let writer = store.writer();
        let (limit,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(writer)
            .await
            .expect("read the setting");
        assert_eq!(limit, i64::from(super::WRITER_CHECKPOINT_PAGES));
        let (temp_store,): (i64,) = sqlx::query_as("PRAGMA temp_store")
            .fetch_one(writer)
            .await
            .expect("read the setting");
        assert_eq!(temp_store, 2, "MEMORY");
        // ~8 MiB: under the writer's own threshold, so only the task can copy it into the
        // database file while the store is open.
        let rows = 2_000;
        let before = size(&file);
        fill(writer, rows).await;
        assert!(
            size(&dir.path().join("wal.db-wal")) >= rows * ROW,
            "the rows went to the WAL"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while size(&file) < before + rows * ROW {
            assert!(
                Instant::now() < deadline,
                "the database file stayed at {} bytes (from {before}): nothing copied the WAL",
                size(&file)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn writes_that_never_pause_do_not_grow_the_wal_past_the_writers_threshold() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, file) = store_in(dir.path()).await;
        // 60 transactions of ~0.8 MiB back to back: ~48 MiB, three times the writer's
        // threshold of 16 MiB.
        let (transactions, rows) = (60, 200);
        for _ in 0..transactions {
            fill(store.writer(), rows).await;
        }
        let wal = size(&dir.path().join("wal.db-wal"));
        // Past the threshold the WAL restarts after the writer's next checkpoint that is not
        // skipped (it is when the task holds the checkpoint lock at that moment): up to a few
        // transactions late (~18.9 MB seen). Without the writer's own threshold it reached
        // 42 MB of the 48.
        let bound = 2 * u64::from(super::WRITER_CHECKPOINT_PAGES) * 4096;
        assert!(
            wal < bound,
            "the WAL file reached {wal} bytes for {} bytes written (bound {bound})",
            transactions * rows * ROW
        );
        assert!(size(&file) > 0);
    }
}
