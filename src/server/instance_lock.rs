//! One process per SQLite database file: `serve`, `migrate` and `sweep` hold an exclusive lock
//! on `<database>.lock` beside the file for as long as they run, so a second one on the same
//! file (with a scheduler of its own, or migrating under a running server) refuses to start,
//! naming the file and the process that holds it.
//!
//! Why a lock file of our own (`flock` through std's `File::try_lock`) and not SQLite's
//! locking: SQLite's locks are per transaction, and its `locking_mode = EXCLUSIVE` would also
//! shut out the server's own read connections. A separate file keeps our lock apart from
//! SQLite's `fcntl` locks on the database (on NFS `flock` is emulated with `fcntl`, which would
//! meet SQLite's on the database file itself). The kernel releases the lock when the process
//! ends, however it ends (SIGKILL, a crash), so a stale lock file is harmless and left in
//! place: deleting it could let two processes lock two different files of the same name.
//!
//! PostgreSQL needs none: several servers on one PostgreSQL database are supported (row locks,
//! `SKIP LOCKED`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The database file a `sqlite:` URL names; `None` for PostgreSQL and in-memory databases.
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    let url = database_url.trim();
    let rest = url.strip_prefix("sqlite:")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.trim_start_matches("//") == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    Some(options.get_filename().to_path_buf())
}

/// The lock of the SQLite database `database_url` names (`None`: not a SQLite file), or why it
/// cannot be had, in one line that names the file and says what to do.
pub fn claim(database_url: &str) -> Result<Option<InstanceLock>, String> {
    let Some(database) = sqlite_file(database_url) else {
        return Ok(None);
    };
    let directory = match database.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !directory.is_dir() {
        return Err(format!(
            "the directory {} of the SQLite database {} does not exist: create it (mkdir -p {}) \
             or correct database_url",
            directory.display(),
            database.display(),
            directory.display()
        ));
    }
    let mut name = database.clone().into_os_string();
    name.push(".lock");
    let path = PathBuf::from(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            format!(
                "cannot create the lock file {} of the SQLite database {}: {e}; the directory {} \
                 must be writable by this user (SQLite also writes its -wal and -shm files there)",
                path.display(),
                database.display(),
                directory.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(format!(
                "the SQLite database {} is in use by another ocs-lifecycle process{holder}, which \
                 holds {}: one process per database file (serve, migrate and sweep each hold it); \
                 stop that process first, or give this one another database_url",
                database.display(),
                path.display()
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(format!(
                "cannot lock {} (the lock of the SQLite database {}): {e}",
                path.display(),
                database.display()
            ));
        }
    }
    // Who holds it, for the message of the next one that tries.
    let pid = std::process::id();
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"));
    if let Err(e) = written {
        tracing::debug!(error = %e, lock = %path.display(), "cannot write the pid into the lock file");
    }
    Ok(Some(InstanceLock { _file: file, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_on_one_file_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let first = claim(&url).unwrap().expect("a SQLite file is locked");
        assert_eq!(first.path(), dir.path().join("a.db.lock"));
        let err = claim(&url).unwrap_err();
        assert!(
            err.contains("a.db is in use by another ocs-lifecycle process"),
            "{err}"
        );
        assert!(
            err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(claim(&url).unwrap().is_some(), "free again once dropped");
    }

    #[test]
    fn postgresql_and_memory_databases_take_no_lock_and_a_missing_directory_is_named() {
        for url in [
            "postgres://u:p@db/ocs",
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x.db?mode=memory",
        ] {
            assert!(claim(url).unwrap().is_none(), "{url}");
        }
        let err = claim("sqlite:///nonexistent-dir/sub/x.db").unwrap_err();
        assert!(
            err.starts_with("the directory /nonexistent-dir/sub of the SQLite database"),
            "{err}"
        );
    }
}
