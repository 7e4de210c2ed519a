//! The command-line client: `ocs-lifecycle account|accounts|authorize|forecast|events|dead-letters|
//! import|clock|health|report` talk gRPC to a running server (`--server`, env `OCS_SERVER`; `https://` with `--ca-cert`,
//! `--client-cert`, `--client-key` for TLS and mTLS). They read no server configuration and
//! open no database.
//!
//! - here: running one command (`run`, `execute`: which request each command sends).
//! - `args`: the command line (clap); `values`: what its flags' values may be.
//! - `client`: the connection, the bearer token, errors as one line and an exit code.
//! - `account`: `account …` and `accounts list`; `dead_letters`: `dead-letters …`.
//! - `output`: human tables and JSON documents.
//! - `import`: the bulk card import from CSV.
//!
//! Exit codes: 0 success; 2 usage or bad input (clap's own errors, a bad MSISDN or file checked
//! here, and INVALID_ARGUMENT from the server); 1 anything else (the server refused, cannot
//! connect, an import with rejected rows).

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Days, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};

use crate::proto;

mod account;
mod args;
mod client;
mod dead_letters;
mod import;
mod output;
mod report;
mod values;

use account::{account, list_accounts, parse_msisdn};
pub use args::{
    AccountCommand, AccountsCommand, ClientCommand, ClockCommand, Connection, DeadLettersCommand,
    EventsCommand, OutputFormat, RequestIdArg,
};
pub use client::{CliError, Client};
use dead_letters::dead_letters;
pub use import::{ImportRow, parse_csv};
use values::parse_duration;
pub use values::{ChannelArg, EventTypeArg, ServiceArg, StateArg, parse_instant};

/// Runs one client command to completion: its output on stdout, an error as one line on stderr.
pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(command)) {
        Ok(code) => code,
        Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(command: ClientCommand) -> Result<ExitCode, CliError> {
    match command {
        ClientCommand::Account {
            connection,
            command,
        } => account(&connection, command).await,
        ClientCommand::Accounts {
            connection,
            command:
                AccountsCommand::List {
                    state,
                    page_size,
                    page_token,
                    all,
                },
        } => {
            let client = Client::connect(&connection).await?;
            list_accounts(
                &client,
                connection.output,
                state,
                page_size,
                page_token,
                all,
            )
            .await
        }
        ClientCommand::Authorize {
            connection,
            msisdn,
            service,
            destination,
        } => {
            let msisdn = parse_msisdn(&msisdn)?;
            let client = Client::connect(&connection).await?;
            let request = proto::AuthorizeRequest {
                msisdn: msisdn.clone(),
                service: service.wire() as i32,
                destination: destination.clone(),
            };
            let answer = client.accounts().authorize(client.request(request)).await?;
            let (service, answer) = (service.wire(), answer.get_ref());
            let document = output::authorization(&msisdn, service, &destination, answer);
            output::print(connection.output, &document)?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Clock {
            connection,
            command,
        } => {
            let client = Client::connect(&connection).await?;
            let mut clock = client.test_clock();
            let answer = match command {
                ClockCommand::Get => {
                    clock
                        .get_time(client.request(proto::GetTimeRequest {}))
                        .await
                }
                ClockCommand::Set { time } => {
                    let request = proto::SetTimeRequest {
                        time: Some(output::to_timestamp(time)),
                    };
                    clock.set_time(client.request(request)).await
                }
                ClockCommand::Advance { by } => {
                    let request = proto::AdvanceTimeRequest { seconds: by };
                    clock.advance_time(client.request(request)).await
                }
            }
            .map_err(client::without_manual_clock)?
            .into_inner();
            output::print(connection.output, &output::clock(&answer))?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Report { connection, report } => report::run(&connection, report).await,
        ClientCommand::Health {
            connection,
            service,
        } => {
            let client = Client::connect(&connection).await?;
            let services: Vec<String> = match service {
                Some(name) => vec![name],
                None => std::iter::once("")
                    .chain(crate::wire::SERVICE_NAMES)
                    .map(str::to_owned)
                    .collect(),
            };
            let statuses = client::health(&client, &services).await?;
            output::print(connection.output, &output::health(&statuses))?;
            // The first one asked decides: the server as a whole, or the one service named.
            let serving = statuses
                .first()
                .is_some_and(|(_, status)| status == "SERVING");
            Ok(if serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ClientCommand::Forecast {
            connection,
            until,
            timezone,
        } => {
            let as_of = end_of_local_day(until, &timezone)?;
            let client = Client::connect(&connection).await?;
            let request = proto::AdvanceStatesRequest {
                as_of: Some(output::to_timestamp(as_of)),
                dry_run: true,
            };
            let mut api = client.accounts();
            let response = api.advance_states(client.request(request)).await?;
            output::print(connection.output, &output::forecast(response.get_ref()))?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Events {
            connection,
            command:
                EventsCommand::Tail {
                    after,
                    types,
                    follow,
                    idle_timeout,
                },
        } => {
            let idle = (!follow)
                .then(|| Duration::try_from_secs_f64(idle_timeout))
                .transpose()
                .map_err(|_| {
                    CliError::Usage("--idle-timeout must be a number of seconds ≥ 0".into())
                })?;
            let client = Client::connect(&connection).await?;
            let types = types.into_iter().map(|t| t.wire() as i32).collect();
            client::tail_events(&client, connection.output, after, types, idle).await?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::DeadLetters {
            connection,
            command,
        } => {
            let client = Client::connect(&connection).await?;
            dead_letters(&client, connection.output, command).await
        }
        ClientCommand::Import {
            connection,
            file,
            dry_run,
            concurrency,
        } => import::run(&connection, &file, dry_run, usize::from(concurrency)).await,
    }
}

/// 23:59:59 local on `date`: every transition that takes effect during `date` (lifecycle
/// boundaries are at local midnight, i.e. at its start) is in, the next midnight's is not.
fn end_of_local_day(date: NaiveDate, timezone: &str) -> Result<DateTime<Utc>, CliError> {
    let tz: chrono_tz::Tz = timezone.parse().map_err(|_| {
        CliError::Usage(format!(
            "timezone {timezone:?} is not an IANA time zone name"
        ))
    })?;
    let next = date
        .checked_add_days(Days::new(1))
        .ok_or_else(|| CliError::Usage(format!("--until {date} is out of range")))?;
    // Local midnight of the next day; a DST gap at midnight moves it to the first hour that
    // exists.
    let mut at = next.and_time(NaiveTime::MIN);
    for _ in 0..4 {
        match tz.from_local_datetime(&at) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                return Ok(t.with_timezone(&Utc) - chrono::Duration::seconds(1));
            }
            LocalResult::None => at += chrono::Duration::hours(1),
        }
    }
    Err(CliError::Usage(format!(
        "--until {date}: no local midnight after it in {timezone}"
    )))
}

/// `ocs-lifecycle sweep`'s report on stdout: `name: value` lines (times as the client prints
/// them, RFC 3339 UTC), or the JSON document `forecast --output json` prints.
pub fn print_sweep(
    format: OutputFormat,
    as_of: DateTime<Utc>,
    dry_run: bool,
    report: &crate::sweep::SweepReport,
) -> Result<(), CliError> {
    match output::print(format, &output::sweep(as_of, dry_run, report)) {
        Err(CliError::StdoutClosed) => Ok(()),
        printed => printed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecast_until_a_date_is_its_last_second_in_the_operator_zone() {
        let date = NaiveDate::from_ymd_opt(2031, 8, 23).unwrap();
        let as_of = end_of_local_day(date, "Asia/Shanghai").unwrap();
        assert_eq!(as_of.to_rfc3339(), "2031-08-23T15:59:59+00:00");
        let as_of = end_of_local_day(date, "America/New_York").unwrap();
        assert_eq!(as_of.to_rfc3339(), "2031-08-24T03:59:59+00:00");
        assert!(matches!(
            end_of_local_day(date, "Mars/Base"),
            Err(CliError::Usage(_))
        ));
    }
}
