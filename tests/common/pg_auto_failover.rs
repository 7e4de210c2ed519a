//! A pg_auto_failover formation for one test (Debian's `pg-auto-failover-cli` and
//! `postgresql-15-auto-failover`, installed by `.ci/run`): a monitor and two PostgreSQL nodes,
//! each run by its own `pg_autoctl` in a process group of its own, in a temporary directory,
//! on free ports of 127.0.0.1, as the `postgres` OS user when the test is root. The monitor
//! decides the failover by itself; the test only kills a node.
//!
//! The monitor's timings are shortened for a test (see [`MONITOR_SETTINGS`]); production keeps
//! pg_auto_failover's defaults or chooses its own.
//!
//! [`PgAutoFailover::start`] returns `None` (and says `SKIPPED` on stderr) when `pg_autoctl`
//! or the PostgreSQL binaries are missing, unless `CI=true`, where it panics.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::pg_cluster::{describe, find_bindir, psql_args, unavailable};

/// `pgautofailover.*` settings of the monitor: a node is declared unhealthy after about 2 s
/// without answering (defaults: checks every 5 s, 20 s), and a standby promoted while the old
/// primary cannot be told to demote waits 3 s before it accepts writes (default 30 s: the
/// time a partitioned old primary has to notice and stop accepting writes itself).
pub const MONITOR_SETTINGS: [(&str, &str); 6] = [
    ("health_check_period", "1000"),
    ("health_check_timeout", "1000"),
    ("health_check_max_retries", "1"),
    ("health_check_retry_delay", "500"),
    ("node_considered_unhealthy_timeout", "2000"),
    ("primary_demote_timeout", "3000"),
];

/// How long creating a node and reaching a state may take (a loaded 2-core machine).
const SAFETY: Duration = Duration::from_secs(120);

pub struct PgAutoFailover {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    pub monitor_port: u16,
    monitor: Option<Child>,
    /// The PostgreSQL nodes, in creation order (the first starts as the primary).
    pub nodes: Vec<PafNode>,
}

pub struct PafNode {
    pub port: u16,
    /// `pg_autoctl create postgres … --run`, leader of its process group.
    child: Option<Child>,
}

impl PgAutoFailover {
    /// A monitor and two nodes, the first primary and the second its synchronous secondary
    /// (pg_auto_failover's default: `number_sync_standbys = 0` with one standby still lists
    /// it in `synchronous_standby_names`); `None` = skipped.
    pub fn start() -> Option<PgAutoFailover> {
        let Some(bin) = find_bindir() else {
            return unavailable("no PostgreSQL server binaries for pg_auto_failover");
        };
        if !Command::new("sh")
            .args(["-c", "command -v pg_autoctl"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return unavailable(
                "pg_autoctl is not installed (Debian: postgresql-15-auto-failover, which \
                 .ci/run installs)",
            );
        }
        let as_postgres = std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0);
        let dir = tempfile::Builder::new()
            .prefix("ocs-paf-")
            .tempdir()
            .expect("temporary directory");
        // pg_autoctl keeps its runtime files in XDG_RUNTIME_DIR when it exists (else in a
        // /tmp/pg_autoctl shared with every other formation).
        let run = dir.path().join("run");
        std::fs::create_dir(&run).expect("create the runtime directory");
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod the runtime directory");
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status();
            if !matches!(chown, Ok(s) if s.success()) {
                return unavailable(&format!(
                    "chown postgres: of the directory failed: {chown:?}"
                ));
            }
        }
        let mut formation = PgAutoFailover {
            dir,
            bin,
            as_postgres,
            monitor_port: free_port(),
            monitor: None,
            nodes: Vec::new(),
        };
        let port = formation.monitor_port.to_string();
        let monitor_data = formation.path("monitor");
        let created = formation.autoctl(&[
            "create",
            "monitor",
            "--pgdata",
            &monitor_data,
            "--pgport",
            &port,
            "--hostname",
            "127.0.0.1",
            "--auth",
            "trust",
            "--no-ssl",
        ]);
        if !created.status.success() {
            return unavailable(&format!(
                "pg_autoctl create monitor failed: {}",
                describe(&created)
            ));
        }
        formation.monitor = Some(formation.spawn("monitor", &["run", "--pgdata", &monitor_data]));
        formation.wait_until("the monitor answers", || {
            formation
                .monitor_sql("SELECT 1")
                .is_some_and(|out| out == "1")
        });
        for (name, value) in MONITOR_SETTINGS {
            formation
                .monitor_sql(&format!("ALTER SYSTEM SET pgautofailover.{name} = {value}"))
                .unwrap_or_else(|| panic!("set pgautofailover.{name} on the monitor"));
        }
        formation
            .monitor_sql("SELECT pg_reload_conf()")
            .expect("reload the monitor's settings");

        // Alone, the first node is `single`; it becomes `primary` once the second one is its
        // `secondary`.
        for (index, state) in [(0, "single"), (1, "secondary")] {
            let port = free_port();
            let data = formation.path(&format!("node{}", index + 1));
            let monitor = formation.monitor_uri();
            let port_arg = port.to_string();
            let child = formation.spawn(
                &format!("node{}", index + 1),
                &[
                    "create",
                    "postgres",
                    "--pgdata",
                    &data,
                    "--pgport",
                    &port_arg,
                    "--hostname",
                    "127.0.0.1",
                    "--auth",
                    "trust",
                    "--no-ssl",
                    "--monitor",
                    &monitor,
                    "--run",
                ],
            );
            formation.nodes.push(PafNode {
                port,
                child: Some(child),
            });
            formation.wait_for_state(port, state);
        }
        formation.wait_for_state(formation.nodes[0].port, "primary");
        Some(formation)
    }

    /// `postgres://127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write&…`, as
    /// `pg_autoctl show uri` gives it to applications.
    pub fn formation_uri(&self) -> String {
        let out = self.autoctl(&[
            "show",
            "uri",
            "--formation",
            "default",
            "--monitor",
            &self.monitor_uri(),
        ]);
        assert!(
            out.status.success(),
            "pg_autoctl show uri: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `pg_autoctl show state`, for messages.
    pub fn show_state(&self) -> String {
        let out = self.autoctl(&["show", "state", "--monitor", &self.monitor_uri()]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The log of a process of the formation (`monitor`, `node1`, `node2`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// SIGKILL to node `index`'s `pg_autoctl` and its PostgreSQL (its whole process group):
    /// the node vanishes as on a crashed machine, and nothing restarts it.
    pub fn kill9_node(&mut self, index: usize) {
        let child = self.nodes[index].child.take().expect("node running");
        kill_group(child, "-KILL", Duration::ZERO);
    }

    /// Blocks until node `port` reports `state` to the monitor (its goal reached).
    pub fn wait_for_state(&self, port: u16, state: &str) {
        let sql = format!(
            "SELECT reportedstate || '/' || goalstate FROM pgautofailover.node \
             WHERE nodeport = {port}"
        );
        let want = format!("{state}/{state}");
        self.wait_until(&format!("node on port {port} becomes {state}"), || {
            self.monitor_sql(&sql).is_some_and(|s| s == want)
        });
    }

    fn monitor_uri(&self) -> String {
        format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.monitor_port
        )
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + SAFETY;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "pg_auto_failover: {what} did not happen in time\n{}\nmonitor log:\n{}\n\
                 node1 log:\n{}\nnode2 log:\n{}",
                self.show_state(),
                self.log("monitor"),
                self.log("node1"),
                self.log("node2")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One statement on the monitor's database; `None` when it fails (not up yet).
    fn monitor_sql(&self, sql: &str) -> Option<String> {
        let port = self.monitor_port.to_string();
        let psql = self.bin.join("psql").display().to_string();
        let out = self
            .command(&psql, &psql_args(&port, "pg_auto_failover", sql))
            .output()
            .expect("run psql");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `pg_autoctl ARGS` to completion.
    fn autoctl(&self, args: &[&str]) -> Output {
        self.command("pg_autoctl", args)
            .output()
            .unwrap_or_else(|e| panic!("run pg_autoctl {args:?}: {e}"))
    }

    /// `pg_autoctl ARGS` in the background, leader of a new process group, its output in
    /// `NAME.log`.
    fn spawn(&self, name: &str, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .expect("create the log file");
        let err = log.try_clone().expect("log file");
        self.command("pg_autoctl", args)
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn pg_autoctl {args:?}: {e}"))
    }

    /// `program ARGS` with a clean environment: the PostgreSQL binaries first on the PATH,
    /// pg_autoctl's configuration and state in the formation's directory; as `postgres` when
    /// the test is root.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let dir = self.dir.path().display().to_string();
        let env = [
            format!("PATH={}:/usr/bin:/bin", self.bin.display()),
            format!("HOME={dir}"),
            format!("XDG_CONFIG_HOME={dir}/config"),
            format!("XDG_DATA_HOME={dir}/share"),
            format!("XDG_RUNTIME_DIR={dir}/run"),
        ];
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--", "env", "-i"]);
            runuser
        } else {
            let mut env = Command::new("env");
            env.arg("-i");
            env
        };
        command
            .args(env)
            .arg(program)
            .args(args)
            .current_dir(Path::new(&dir))
            .stdin(Stdio::null());
        command
    }
}

/// Sends `signal` to the process group `child` leads, waits for it up to `grace`, then kills
/// the group for good.
fn kill_group(mut child: Child, signal: &str, grace: Duration) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args([signal, "--", &group]).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
}

impl Drop for PgAutoFailover {
    fn drop(&mut self) {
        // The nodes first (pg_autoctl stops its PostgreSQL on SIGTERM), the monitor last.
        for node in &mut self.nodes {
            if let Some(child) = node.child.take() {
                kill_group(child, "-TERM", Duration::from_secs(15));
            }
        }
        if let Some(monitor) = self.monitor.take() {
            kill_group(monitor, "-TERM", Duration::from_secs(15));
        }
    }
}
