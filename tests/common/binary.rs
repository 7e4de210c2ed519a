//! The tested `ocs-lifecycle` binary, for the suites that run it as an operator does (`config
//! check`, `token generate`, `serve` …): in a working directory of the test's, without the
//! `RUST_LOG` and `OCS_*` variables of the test's environment, waited for within a safety bound
//! (the process harness, [`super::process`], does the spawning and the waiting).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tonic::transport::Channel;

use super::process::{Log, Served, command_in, free_port, run_bounded};

pub const BIN: &str = env!("CARGO_BIN_EXE_ocs-lifecycle");

/// Safety bound of a run or a start (a loaded 2-core machine); no test asserts on elapsed time.
pub const SAFETY: Duration = Duration::from_secs(60);

/// The binary, run in `dir`, without `RUST_LOG` and the `OCS_*` variables of the test.
pub fn ocs(dir: &Path) -> Command {
    command_in(BIN, dir)
}

/// Runs `command` to its end within [`SAFETY`]; its stdout and stderr collected.
pub fn run(command: Command) -> Output {
    run_bounded(command, SAFETY, "ocs-lifecycle")
}

/// Spawns `command` (an `ocs-lifecycle serve` listening for gRPC on `addr`) with its log in
/// `dir/server.log`, and waits until its health is SERVING; panics with the log when it exits
/// first or never serves.
pub async fn serving(command: Command, addr: SocketAddr, dir: &Path) -> (Served, Channel) {
    let mut served = Served::spawn_command(command, addr, Log::File(dir.join("server.log")));
    let channel = served.serving(SAFETY).await;
    (served, channel)
}

/// `ocs-lifecycle serve` in `dir` with the `OCS_*` configuration `env`, on a free port of
/// 127.0.0.1 and without the operations endpoint, once it is SERVING.
pub async fn serve(dir: &Path, env: &[(&str, &str)]) -> (Served, Channel) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = ocs(dir);
    command.envs(env.iter().copied()).args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--http-addr",
        "off",
    ]);
    serving(command, addr, dir).await
}

/// SIGTERM to a [`serving`] process, and a clean exit (status 0); its whole log.
pub async fn stop_cleanly(served: Served, dir: &Path) -> String {
    let status = served.terminate(SAFETY).await;
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "serve after SIGTERM; server log:\n{log}"
    );
    log
}

/// Asserts that `dir` holds no database of the default configuration (`ocs-lifecycle.db`);
/// `why` names what must not have created one.
#[track_caller]
pub fn assert_no_database(dir: &Path, why: &str) {
    assert!(!dir.join("ocs-lifecycle.db").exists(), "{why}");
}
