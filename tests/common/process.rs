//! The process harness: a real `ocs-lifecycle serve` child process (spawned, waited for until
//! SERVING, killed or terminated), the binary's other commands run to completion within a
//! bound, and a TCP proxy in front of PostgreSQL that can be cut.
//!
//! Shared by the fault suites (`tests/faults_*.rs`, through `common`) and the soak
//! (`benches/soak.rs`, run by `ocs-bench soak` and by `tests/soak.rs`), which includes this file
//! with `#[path]`: so it uses only the crate's normal dependencies (a binary gets no
//! dev-dependencies) and nothing else of `tests/common`.

use std::ffi::OsStr;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// How to run `ocs-lifecycle serve` as a child process.
#[derive(Clone, Debug)]
pub struct ServeCommand {
    /// The `ocs-lifecycle` binary.
    pub bin: PathBuf,
    /// The working directory.
    pub dir: PathBuf,
    /// The gRPC address (`--listen`); the same on every start of this command.
    pub listen: SocketAddr,
    pub database_url: String,
    /// `--clock`: `system` or `manual`.
    pub clock: &'static str,
    /// `--http-addr`: `off`, or `127.0.0.1:0` (see [`Served::http_addr`]).
    pub http_addr: &'static str,
    pub rust_log: &'static str,
    /// `OCS_*` configuration; every other `OCS_*` variable of this process is removed.
    pub env: Vec<(String, String)>,
    /// Run through `sh` with SIGXFSZ ignored, so a write past the file-size limit fails with
    /// EFBIG instead of killing the process (an ignored signal stays ignored across `exec`).
    pub ignore_sigxfsz: bool,
}

impl ServeCommand {
    /// `bin serve` on `database_url` in `dir`, on a free port: the system clock, no operations
    /// endpoint, `RUST_LOG=info`, no `OCS_*` configuration.
    pub fn new(
        bin: impl Into<PathBuf>,
        dir: impl Into<PathBuf>,
        database_url: impl Into<String>,
    ) -> ServeCommand {
        ServeCommand {
            bin: bin.into(),
            dir: dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            database_url: database_url.into(),
            clock: "system",
            http_addr: "off",
            rust_log: "info",
            env: Vec::new(),
            ignore_sigxfsz: false,
        }
    }

    /// Adds `OCS_*` configuration.
    pub fn with_env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> ServeCommand {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    fn command(&self) -> Command {
        let listen = self.listen.to_string();
        let args = [
            "serve",
            "--listen",
            &listen,
            "--http-addr",
            self.http_addr,
            "--clock",
            self.clock,
            "--database-url",
            &self.database_url,
        ];
        let mut command = if self.ignore_sigxfsz {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
                .arg(&self.bin)
                .args(args);
            sh
        } else {
            let mut bin = Command::new(&self.bin);
            bin.args(args);
            bin
        };
        without_ocs_env(&mut command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", self.rust_log)
            .current_dir(&self.dir);
        command
    }

    /// A gRPC channel to the server's address (connected lazily, so it outlives restarts).
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.listen))
            .expect("endpoint")
            .connect_lazy()
    }
}

/// Where a [`Served`] process's stderr (its log) goes.
pub enum Log {
    /// Into memory, through a pipe drained by a thread (a pipe, unlike a file, is not subject to
    /// a file-size limit set on the process).
    Collected,
    /// Into this file.
    File(PathBuf),
}

enum LogSink {
    Collected(Arc<Mutex<String>>),
    File(PathBuf),
}

/// Why a `serve` process did not become SERVING.
#[derive(Debug)]
pub enum NotServing {
    Exited(ExitStatus),
    TimedOut,
}

/// A running `ocs-lifecycle serve`; killed when dropped.
pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
    log: LogSink,
}

impl Served {
    pub fn spawn(serve: &ServeCommand, log: Log) -> Served {
        Self::spawn_command(serve.command(), serve.listen, log)
    }

    /// Spawns `command`, an `ocs-lifecycle serve` put together by the caller (its arguments
    /// and environment), which listens for gRPC on `addr`.
    pub fn spawn_command(mut command: Command, addr: SocketAddr, log: Log) -> Served {
        command.stdin(Stdio::null()).stdout(Stdio::null());
        let sink = match log {
            Log::Collected => {
                command.stderr(Stdio::piped());
                LogSink::Collected(Arc::new(Mutex::new(String::new())))
            }
            Log::File(path) => {
                let file = std::fs::File::create(&path)
                    .unwrap_or_else(|e| panic!("server log file {}: {e}", path.display()));
                command.stderr(Stdio::from(file));
                LogSink::File(path)
            }
        };
        let mut child = command.spawn().unwrap_or_else(|e| {
            let bin = Path::new(command.get_program()).display();
            panic!("start {bin} serve: {e}")
        });
        if let (LogSink::Collected(text), Some(mut stderr)) = (&sink, child.stderr.take()) {
            let text = text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    lock(&text).push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Served {
            child,
            addr,
            log: sink,
        }
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        match &self.log {
            LogSink::Collected(text) => lock(text).clone(),
            LogSink::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still the same running process (not exited).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_lazy()
    }

    /// Polls gRPC health until the process reports SERVING; an error when it exits first or
    /// `deadline` passes.
    pub async fn wait_serving(&mut self, deadline: Instant) -> Result<Channel, NotServing> {
        let channel = self.channel();
        while health_status(&channel).await != Some(ServingStatus::Serving as i32) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(NotServing::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(NotServing::TimedOut);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(channel)
    }

    /// [`Served::wait_serving`] within `bound`; panics with the log when it is not SERVING.
    pub async fn serving(&mut self, bound: Duration) -> Channel {
        match self.wait_serving(Instant::now() + bound).await {
            Ok(channel) => channel,
            Err(NotServing::Exited(status)) => {
                panic!("serve exited before serving: {status}\n{}", self.log())
            }
            Err(NotServing::TimedOut) => panic!("serve never became SERVING\n{}", self.log()),
        }
    }

    /// The address of the operations endpoint, from the start-up log line
    /// (`operations endpoint listening … http_addr=…`); `serve` prints it before it serves.
    pub fn http_addr(&self) -> SocketAddr {
        let log = strip_ansi(&self.log());
        log.lines()
            .filter(|line| line.contains("operations endpoint listening"))
            .find_map(|line| {
                let value = line.split("http_addr=").nth(1)?;
                value.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no operations endpoint address in the log:\n{log}"))
    }

    /// SIGKILL, as in a crash.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM (a graceful shutdown), then SIGKILL if it has not exited within `grace`: the
    /// exit status of the graceful shutdown, `None` when it had to be killed.
    pub async fn terminate(mut self, grace: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None // dropped here: SIGKILL
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gRPC health (service `""`) `channel` answers, or `None` when it does not answer.
pub async fn health_status(channel: &Channel) -> Option<i32> {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// `text` without the terminal colour sequences (`ESC [ … m`) of the text log format.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The binary's other commands.

/// Removes every `OCS_*` variable of this process from `command`'s environment: a test's own
/// configuration must not reach the binary it runs.
pub fn without_ocs_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OCS_") {
            command.env_remove(name);
        }
    }
    command
}

/// `program` run in `dir`, without `RUST_LOG` and the `OCS_*` variables of this process.
pub fn command_in(program: impl AsRef<OsStr>, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir).env_remove("RUST_LOG");
    without_ocs_env(&mut command);
    command
}

/// Waits for `child` to exit; past `bound` kills it and panics (`{what} did not exit`).
pub fn wait_bounded(child: &mut Child, bound: Duration, what: &str) -> ExitStatus {
    let deadline = std::time::Instant::now() + bound;
    while std::time::Instant::now() <= deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not exit");
}

/// Runs `command` to its end within `bound` (see [`wait_bounded`]): no input, its stdout and
/// stderr collected (read once it has exited, so for small outputs).
pub fn run_bounded(mut command: Command, bound: Duration, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    wait_bounded(&mut child, bound, what);
    child.wait_with_output().expect("output")
}

// ---------------------------------------------------------------------------------------------
// The PostgreSQL connection cutter: a TCP proxy between the server and PostgreSQL.

/// A TCP proxy to the PostgreSQL server of a database URL that can be cut (every open
/// connection dropped, new ones closed at once: the database "refuses") and restored. The
/// shared PostgreSQL server itself is never stopped.
pub struct DbProxy {
    pub addr: SocketAddr,
    /// The database URL, through the proxy.
    pub url: String,
    up: Arc<AtomicBool>,
    /// Cancelled to drop every connection opened while up.
    open: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl DbProxy {
    /// A proxy on 127.0.0.1 in front of the server `database_url` names.
    pub async fn start(database_url: &str) -> DbProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (upstream, url) = split_postgres_url(database_url, addr);
        let up = Arc::new(AtomicBool::new(true));
        let open = Arc::new(Mutex::new(CancellationToken::new()));
        let (task_up, task_open) = (up.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !task_up.load(Ordering::Acquire) {
                    continue; // closed at once: the database "refuses" while cut
                }
                let cut = lock(&task_open).clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.cancelled() => {}
                    }
                    // Both sockets are dropped here: the connection is gone for both sides.
                });
            }
        });
        DbProxy {
            addr,
            url,
            up,
            open,
            task,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::Release);
        let mut open = lock(&self.open);
        open.cancel();
        *open = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::Release);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.open).cancel();
    }
}

/// The `host:port` a PostgreSQL URL names, and the URL with them replaced by `via`.
fn split_postgres_url(url: &str, via: SocketAddr) -> (String, String) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (credentials, host_port) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let upstream = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    let proxied = format!("{}{credentials}{via}{}", &url[..start], &rest[end..]);
    (upstream, proxied)
}
