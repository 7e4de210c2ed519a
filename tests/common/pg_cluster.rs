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

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Not available here: `None` with a visible message, or a panic under `CI=true`.
fn unavailable(why: &str) -> Option<PgCluster> {
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
fn find_bindir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
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
    /// Creates the cluster and starts its server; `None` = skipped (see the module docs).
    pub fn start() -> Option<PgCluster> {
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
        let mut cluster = PgCluster {
            dir,
            bin,
            as_postgres,
            port: 0,
        };
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
        // A port taken between the check and the start fails the start: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            cluster.port = super::free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => return Some(cluster),
                Err(e) => last = e,
            }
        }
        unavailable(&format!("pg_ctl start failed: {last}"))
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

fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
