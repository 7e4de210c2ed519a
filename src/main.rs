//! `ocs-lifecycle`: parses flags, sets up logging, and calls the library.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use ocs_lifecycle::clock::{Clock, SystemClock};
use ocs_lifecycle::config::{Config, LogFormat, Overrides};
use ocs_lifecycle::{server, store, sweep};

#[derive(Parser)]
#[command(
    name = "ocs-lifecycle",
    version,
    about = "Prepaid account lifecycle engine (gRPC)"
)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service (migrations run at start).
    Serve,
    /// Run the database migrations and exit.
    Migrate,
    /// Run one sweep against the configured database and print its counts.
    Sweep {
        /// The instant to sweep as of (RFC 3339) [default: now]; later than now only with
        /// --dry-run.
        #[arg(long, value_parser = parse_instant)]
        as_of: Option<DateTime<Utc>>,
        /// Forecast: count (and list the numbers that would be recycled) without writing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The configuration: `config check` validates it and prints a summary.
    #[command(subcommand)]
    Config(ocs_lifecycle::config::ConfigCommand),
    /// Bearer tokens for the gRPC API (needs no configuration).
    #[command(subcommand)]
    Token(ocs_lifecycle::auth::TokenCommand),
    /// Client commands: talk gRPC to a running server (`--server`), need no configuration.
    #[command(flatten)]
    Client(ocs_lifecycle::cli::ClientCommand),
}

fn parse_instant(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{raw:?} is not an RFC 3339 instant (e.g. 2026-07-01T00:05:00+08:00): {e}")
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Token(token) = &cli.command {
        return match token.run(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ocs-lifecycle: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Config(command) = &cli.command {
        let mut out = std::io::stdout().lock();
        return match command.run(
            &cli.overrides,
            std::env::vars(),
            &mut out,
            &mut std::io::stderr(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(problems) => {
                for problem in problems {
                    eprintln!("ocs-lifecycle: {problem}");
                }
                ExitCode::from(2)
            }
        };
    }
    if let Command::Client(command) = cli.command {
        // Before the configuration: a client reads no server configuration and warns about nothing.
        return ocs_lifecycle::cli::run(command, cli.overrides.timezone.as_deref());
    }
    let config = match Config::load(&cli.overrides, std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ocs-lifecycle: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(config.log_format) {
        eprintln!("ocs-lifecycle: {e}");
        return ExitCode::from(2);
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        command = cli.command.name(),
        "ocs-lifecycle starting"
    );
    for name in &config.ignored_env {
        tracing::warn!(variable = %name, "environment variable names no configuration key; ignored");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ocs-lifecycle: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                server::serve(config, shutdown).await
            }
            Command::Migrate => {
                let rules = Arc::new(config.rules()?);
                let store =
                    store::connect(&config.database_url, 1, config.db_acquire_timeout(), rules)
                        .await?;
                store.migrate().await?;
                tracing::info!("migrations done");
                Ok(())
            }
            Command::Sweep { as_of, dry_run } => run_sweep(&config, as_of, dry_run).await,
            Command::Token(_) | Command::Config(_) => {
                unreachable!("handled before the configuration is loaded")
            }
            Command::Client(_) => unreachable!("client commands return before this match"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Once, in the log (stderr, in the configured format).
        Err(e) => {
            tracing::error!(error = %e, "ocs-lifecycle stopped on an error");
            ExitCode::FAILURE
        }
    }
}

/// `ocs-lifecycle sweep`: one sweep (migrations first), its counts on stdout.
async fn run_sweep(
    config: &Config,
    as_of: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<(), server::ServeError> {
    let rules = Arc::new(config.rules()?);
    let store = store::connect(&config.database_url, 2, config.db_acquire_timeout(), rules).await?;
    store.migrate().await?;
    let now = SystemClock::default().now();
    let (as_of, report) = sweep::run(store.as_ref(), config.sweep.batch_size, as_of, now, dry_run)
        .await
        .map_err(|e| match e {
            sweep::SweepError::Store(e) => server::ServeError::Store(e),
            other => server::ServeError::Other(other.to_string()),
        })?;
    let c = report.counts;
    println!("as_of: {}", as_of.to_rfc3339());
    println!("dry_run: {dry_run}");
    println!("examined: {}", c.examined);
    for (name, count) in c.named() {
        println!("{name}: {count}");
    }
    if dry_run {
        println!("recycled_msisdns: {}", report.recycled_msisdns.len());
        for msisdn in &report.recycled_msisdns {
            println!("  {msisdn}");
        }
    }
    Ok(())
}

/// Logs to stderr at `RUST_LOG` (default `info`; a value that does not parse is an error, not
/// silently `info`), in colour only when stderr is a terminal (not in a file or journald).
fn init_logging(format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .map_err(|e| format!("RUST_LOG={directives:?} is not a valid log filter: {e}"))?,
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

impl Command {
    /// The subcommand's name, for the start-up log line.
    fn name(&self) -> &'static str {
        match self {
            Command::Serve => "serve",
            Command::Migrate => "migrate",
            Command::Sweep { .. } => "sweep",
            Command::Config(_) => "config",
            Command::Token(_) => "token",
            Command::Client(_) => "client",
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
