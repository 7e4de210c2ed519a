//! A private PostgreSQL cluster for one test: `initdb` into a temporary directory, a server on
//! a free TCP port of 127.0.0.1 (and a Unix socket in the same directory), started and stopped
//! with `pg_ctl` — so a test can stop the database server for real (`-m fast`, `-m immediate`)
//! without touching the shared server the other tests use.
//!
//! The binaries come from `pg_config --bindir`, else the newest `/usr/lib/postgresql/<v>/bin`.
//! PostgreSQL refuses to run as root: when the test runs as root, every binary runs as the
//! `postgres` OS user (`runuser -u postgres --`) and the directory is handed to that user.
//! The server keeps its defaults (fsync on); only `initdb` skips its final sync (`--no-sync`,
//! the files it writes are thrown away with the directory).
//!
//! [`PgCluster::start`] returns `None` (and says `SKIPPED` on stderr) when the binaries are
//! missing, unless `CI=true`, where it panics. Dropping the cluster stops its server
//! (`-m immediate`) and deletes the directory.
//!
//! Replication (tests/ha.rs): [`PgCluster::start_standby`] makes a streaming standby of a
//! running cluster (`pg_basebackup -R`: `standby.signal` and `primary_conninfo`, its own port),
//! [`PgCluster::make_standbys_synchronous`] turns on `synchronous_standby_names = '*'` (with
//! the default `synchronous_commit = on`, a commit returns once a standby has flushed it),
//! [`PgCluster::kill9`] kills the postmaster and every server process with SIGKILL, like a
//! crashed machine, and [`PgCluster::promote`] turns a standby into a primary.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct PgCluster {
    /// Holds `data/`, the server log and the Unix socket.
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Run the binaries as the `postgres` OS user (the test runs as root).
    as_postgres: bool,
    pub port: u16,
}

pub(super) fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The client tools' arguments for the server on 127.0.0.1:`port`, as the `postgres` user.
pub(super) fn local_server(port: &str) -> [&str; 6] {
    ["-h", "127.0.0.1", "-p", port, "-U", "postgres"]
}

/// `psql` arguments that run `sql` on database `db` of the server on 127.0.0.1:`port` and print
/// the bare result.
pub(super) fn psql_args<'a>(port: &'a str, db: &'a str, sql: &'a str) -> Vec<&'a str> {
    [
        &["-X", "-A", "-t"][..],
        &local_server(port),
        &["-d", db, "-c", sql],
    ]
    .concat()
}

/// Not available here: `None` with a visible message, or a panic under `CI=true`.
pub(super) fn unavailable<T>(why: &str) -> Option<T> {
    if in_ci() {
        panic!("CI=true but a private PostgreSQL cluster cannot be started: {why}");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: cannot start a private PostgreSQL cluster ({why})"
    );
    None
}

/// The directory of `initdb`, `pg_ctl` and `postgres`.
pub(super) fn find_bindir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "pg_basebackup", "psql"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if complete(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl PgCluster {
    /// An empty directory for a cluster (owned by `postgres` when the test is root), not
    /// started; `None` = skipped.
    fn prepare() -> Option<PgCluster> {
        let Some(bin) = find_bindir() else {
            return unavailable(
                "no PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin)",
            );
        };
        let as_postgres = std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0);
        let dir = tempfile::Builder::new()
            .prefix("ocs-pg-")
            .tempdir()
            .expect("temporary directory");
        if as_postgres {
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status();
            if !matches!(chown, Ok(s) if s.success()) {
                return unavailable(&format!(
                    "running as root, and chown postgres: of the directory failed: {chown:?}"
                ));
            }
        }
        Some(PgCluster {
            dir,
            bin,
            as_postgres,
            port: 0,
        })
    }

    /// Starts the server of a prepared data directory on a free port (a port taken between
    /// the check and the start fails the start: a few are tried).
    fn start_on_free_port(mut self) -> Option<PgCluster> {
        let mut last = String::new();
        for _ in 0..3 {
            self.port = super::free_port();
            match self.pg_ctl_start() {
                Ok(()) => return Some(self),
                Err(e) => last = e,
            }
        }
        self.port = 0;
        unavailable(&format!("pg_ctl start failed: {last}"))
    }

    /// Creates the cluster and starts its server; `None` = skipped (see the module docs).
    pub fn start() -> Option<PgCluster> {
        let cluster = Self::prepare()?;
        let data = cluster.data_dir();
        let initdb = cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if !initdb.status.success() {
            return unavailable(&format!("initdb failed: {}", describe(&initdb)));
        }
        cluster.start_on_free_port()
    }

    /// A streaming standby of this running cluster, started: `pg_basebackup -R` (the backup
    /// writes `standby.signal` and `primary_conninfo`), its own directory and port. Replication
    /// connections are trusted by `initdb -A trust`'s `pg_hba.conf`.
    pub fn start_standby(&self) -> Option<PgCluster> {
        let standby = Self::prepare()?;
        let data = standby.data_dir();
        let port = self.port.to_string();
        let args = [
            &local_server(&port)[..],
            &["-D", &data, "-R", "-X", "stream", "-c", "fast", "--no-sync"],
        ]
        .concat();
        let backup = standby.run("pg_basebackup", &args);
        if !backup.status.success() {
            return unavailable(&format!("pg_basebackup failed: {}", describe(&backup)));
        }
        let standby = standby.start_on_free_port()?;
        // Streaming before anyone waits on it.
        standby.wait_for(
            "the standby streams from the primary",
            "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            "1",
        );
        Some(standby)
    }

    /// `synchronous_standby_names = '*'`: from now on a commit waits until a standby has
    /// flushed it (`synchronous_commit` keeps its default, `on`). Returns once a standby is
    /// `sync`. Set after the standby exists (with none, every commit would wait), and after
    /// its base backup, so a promoted standby does not wait for a standby of its own.
    pub fn make_standbys_synchronous(&self) {
        self.psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
        self.psql("SELECT pg_reload_conf()");
        self.wait_for(
            "a synchronous standby",
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            "1",
        );
        assert_eq!(self.psql("SHOW synchronous_commit"), "on");
    }

    /// `synchronous_standby_names = ''`: commits no longer wait for a standby.
    pub fn make_standbys_asynchronous(&self) {
        self.psql("ALTER SYSTEM SET synchronous_standby_names = ''");
        self.psql("SELECT pg_reload_conf()");
        self.wait_for(
            "no synchronous standby",
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            "0",
        );
    }

    /// Runs one SQL statement with `psql` and returns its unaligned output; panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let out = self.run("psql", &psql_args(&port, "postgres", sql));
        assert!(
            out.status.success(),
            "psql {sql:?}: {}\nserver log:\n{}",
            describe(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Polls `sql` until it prints `want` (bounded).
    fn wait_for(&self, what: &str, sql: &str, want: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let got = self.psql(sql);
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {sql} gave {got:?}, not {want:?}\nserver log:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGKILL to the postmaster and every process it started, at once: the server vanishes
    /// as on a crashed machine (no shutdown, no goodbye to clients or standbys). The
    /// processes are found by pid (`postmaster.pid`, then their parent in `/proc`).
    pub fn kill9(&self) {
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let postmaster = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", pid_file.display()));
        let postmaster = postmaster
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …; comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid == Some(postmaster.as_str()) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let status = Command::new("kill")
            .arg("-9")
            .args(&pids)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {pids:?}: {status}");
    }

    /// `pg_ctl promote -w`: the standby leaves recovery and accepts writes.
    pub fn promote(&self) {
        let data = self.data_dir();
        let out = self.run("pg_ctl", &["promote", "-w", "-t", "60", "-D", &data]);
        assert!(
            out.status.success(),
            "pg_ctl promote failed: {}\nserver log:\n{}",
            describe(&out),
            self.log()
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Runs one binary of the cluster's installation (as `postgres` when the test is root).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(path);
            runuser
        } else {
            Command::new(path)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.log_file().display().to_string();
        let data = self.data_dir();
        let out = self.run(
            "pg_ctl",
            &[
                "start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options,
            ],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}\nserver log:\n{}", describe(&out), self.log()))
        }
    }

    /// Starts the stopped server again on the same port; panics when it does not come up.
    pub fn restart(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!("pg_ctl start (again) failed: {e}");
        }
    }

    /// `pg_ctl stop -m <mode>` (`smart`, `fast`, `immediate`), waiting until it is down.
    pub fn stop(&self, mode: &str) {
        let data = self.data_dir();
        let out = self.run(
            "pg_ctl",
            &["stop", "-w", "-t", "60", "-D", &data, "-m", mode],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode} failed: {}\nserver log:\n{}",
            describe(&out),
            self.log()
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.port == 0 {
            return;
        }
        let data = self.data_dir();
        // Not running (already stopped by the test) is fine.
        let _ = self.run("pg_ctl", &["stop", "-w", "-D", &data, "-m", "immediate"]);
    }
}

pub(super) fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
