//! `ocs-lifecycle`: parses flags, sets up logging, and calls the library.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use ocs_lifecycle::cli::OutputFormat;
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
    #[command(subcommand)]
    command: Command,
}

/// The server's options (configuration file, flags over it) belong to the commands that read
/// the configuration; client commands take only their own (`--server`, `--token`, …) and refuse
/// these.
#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service (migrations run at start).
    Serve {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run the database migrations and exit.
    Migrate {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run one sweep against the configured database and print its counts.
    Sweep {
        #[command(flatten)]
        overrides: Overrides,
        /// The instant to sweep as of (RFC 3339) [default: now]; later than now only with
        /// --dry-run.
        #[arg(long, value_parser = ocs_lifecycle::cli::parse_instant)]
        as_of: Option<DateTime<Utc>>,
        /// Forecast: count (and list the numbers that would be recycled) without writing.
        #[arg(long)]
        dry_run: bool,
        /// `table` (one `name: value` line each) or `json` (one JSON document).
        #[arg(long, value_enum, ignore_case = true, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// The configuration: `config check` validates it and prints a summary.
    Config {
        #[command(flatten)]
        overrides: Overrides,
        #[command(subcommand)]
        command: ocs_lifecycle::config::ConfigCommand,
    },
    /// Bearer tokens for the gRPC API (needs no configuration).
    #[command(subcommand)]
    Token(ocs_lifecycle::auth::TokenCommand),
    /// Print a shell completion script to stdout (e.g. `ocs-lifecycle completions bash >
    /// /etc/bash_completion.d/ocs-lifecycle`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout (`ocs-lifecycle man | man -l -`), or with --dir write
    /// one page per command there (ocs-lifecycle.1, ocs-lifecycle-serve.1, …).
    Man {
        /// Write the pages into this directory instead.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Client commands: talk gRPC to a running server (`--server`), need no configuration.
    #[command(flatten)]
    Client(ocs_lifecycle::cli::ClientCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let (overrides, command) = match cli.command {
        Command::Token(token) => {
            return match token.run(&mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ocs-lifecycle: {e}");
                    ExitCode::from(2)
                }
            };
        }
        // Into a buffer first: the generators panic on a closed stdout (`| head`).
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ocs-lifecycle", &mut script);
            return write_stdout(&script);
        }
        Command::Man { dir: Some(dir) } => {
            return match clap_mangen::generate_to(Cli::command(), &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "ocs-lifecycle: cannot write the man pages to {}: {e}",
                        dir.display()
                    );
                    ExitCode::FAILURE
                }
            };
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            // Writing to a Vec cannot fail.
            let _ = clap_mangen::Man::new(Cli::command()).render(&mut page);
            return write_stdout(&page);
        }
        // Before the configuration: a client reads no server configuration and warns about
        // nothing.
        Command::Client(command) => return ocs_lifecycle::cli::run(command),
        Command::Config { overrides, command } => {
            let mut out = std::io::stdout().lock();
            return match command.run(
                &overrides,
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
        Command::Serve { overrides } => (overrides, ServerCommand::Serve),
        Command::Migrate { overrides } => (overrides, ServerCommand::Migrate),
        Command::Sweep {
            overrides,
            as_of,
            dry_run,
            output,
        } => (
            overrides,
            ServerCommand::Sweep {
                as_of,
                dry_run,
                output,
            },
        ),
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = match Config::load(&overrides, env.iter().cloned()) {
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
    let config_file = ocs_lifecycle::config::config_file(&overrides, &env);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        command = command.name(),
        config_file = %config_file
            .as_deref()
            .map_or_else(|| "none (defaults, OCS_* and flags)".into(), |p| p.display().to_string()),
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
        match command {
            ServerCommand::Serve => {
                let shutdown = CancellationToken::new();
                let cut_drain = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone(), cut_drain.clone()));
                server::serve_cutting_drain(config, shutdown, cut_drain).await
            }
            ServerCommand::Migrate => {
                // Not under a running server: it migrated at its start, and a schema change
                // under it is unsafe (a newer binary's migrations, say).
                let _lock = server::claim_database(&config.database_url)?;
                let rules = Arc::new(config.rules()?);
                let store =
                    store::connect(&config.database_url, 1, config.db_acquire_timeout(), rules)
                        .await?;
                store.migrate().await?;
                tracing::info!("migrations done");
                Ok(())
            }
            ServerCommand::Sweep {
                as_of,
                dry_run,
                output,
            } => run_sweep(&config, as_of, dry_run, output).await,
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

/// `bytes` on stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocs-lifecycle: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The commands that load the server configuration.
enum ServerCommand {
    Serve,
    Migrate,
    Sweep {
        as_of: Option<DateTime<Utc>>,
        dry_run: bool,
        output: OutputFormat,
    },
}

impl ServerCommand {
    /// The subcommand's name, for the start-up log line.
    fn name(&self) -> &'static str {
        match self {
            ServerCommand::Serve => "serve",
            ServerCommand::Migrate => "migrate",
            ServerCommand::Sweep { .. } => "sweep",
        }
    }
}

/// Prints clap's error (or help) and exits as clap would; a server option given to a client
/// command gets a line saying where it belongs.
fn usage_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    if let Some(flag) = server_flag(error) {
        eprintln!(
            "note: {flag} is a server option (serve, migrate, sweep, config check); client \
             commands read no server configuration and reach a running server through --server \
             (env OCS_SERVER)"
        );
    }
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}

/// The server option (`--database-url`, …) a command refused as unknown, if that is what it was.
fn server_flag(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(given)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = given.split('=').next().unwrap_or_default();
    let options = <Overrides as clap::Args>::augment_args(clap::Command::new("server"));
    options
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .any(|long| flag.strip_prefix("--") == Some(long))
        .then(|| flag.to_owned())
}

/// `ocs-lifecycle sweep`: one sweep (migrations first), its counts on stdout.
async fn run_sweep(
    config: &Config,
    as_of: Option<DateTime<Utc>>,
    dry_run: bool,
    output: OutputFormat,
) -> Result<(), server::ServeError> {
    // On a SQLite file a server is using, refused: the server sweeps on its own schedule, and
    // `ocs-lifecycle forecast` asks it what a sweep would do.
    let _lock = server::claim_database(&config.database_url)?;
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
    ocs_lifecycle::cli::print_sweep(output, as_of, dry_run, &report)
        .map_err(|e| server::ServeError::Other(e.to_string()))
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

/// Cancels `shutdown` on the first SIGTERM or Ctrl-C, and `cut_drain` on the second (the
/// shutdown's drain then ends at once).
async fn stop_on_signal(shutdown: CancellationToken, cut_drain: CancellationToken) {
    #[cfg(unix)]
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            None
        }
    };
    for (token, what) in [
        (&shutdown, "shutdown requested"),
        (&cut_drain, "second stop signal: the drain ends now"),
    ] {
        #[cfg(unix)]
        {
            let sigterm = async {
                match term.as_mut() {
                    Some(term) => term.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("{what}");
        token.cancel();
    }
}
