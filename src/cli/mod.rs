//! The command-line client: `ocs-lifecycle account|accounts|forecast|events|dead-letters|import`
//! talk gRPC to a running server (`--server`, env `OCS_SERVER`; `https://` with `--ca-cert`,
//! `--client-cert`, `--client-key` for TLS and mTLS). They read no server configuration and
//! open no database.
//!
//! - `client`: the connection, the bearer token, errors as one line and an exit code.
//! - `output`: human tables and JSON documents.
//! - `import`: the bulk card import from CSV.
//!
//! Exit codes: 0 success; 2 usage or bad input (clap's own errors, a bad MSISDN or file checked
//! here, and INVALID_ARGUMENT from the server); 1 anything else (the server refused, cannot
//! connect, an import with rejected rows).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Days, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::lifecycle::Msisdn;
use crate::proto;

mod client;
mod import;
mod output;

pub use client::{CliError, Client};
pub use import::{ImportRow, parse_csv};

/// Where the server is, how to authenticate, how to print.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// The server's gRPC endpoint: http://HOST:PORT, or https://HOST:PORT for a server with
    /// TLS (the public roots, or --ca-cert, verify its certificate).
    #[arg(
        long,
        global = true,
        env = "OCS_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Bearer token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "OCS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificates (PEM) the server's certificate must chain to, trusted instead of the
    /// public roots (a server URL without a scheme is then https://).
    #[arg(long, global = true, env = "OCS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate chain (PEM) for a server that requires mTLS; with --client-key.
    #[arg(long, global = true, env = "OCS_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, global = true, env = "OCS_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// `table` (aligned columns for people) or `json` (one JSON document; `events tail`: one
    /// JSON object per line).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// The idempotency key of a mutation.
#[derive(Args, Clone, Debug)]
pub struct RequestIdArg {
    /// Idempotency key [default: a fresh UUID v4, printed so that a retry can reuse it].
    #[arg(long)]
    pub request_id: Option<String>,
}

impl RequestIdArg {
    fn resolve(&self) -> String {
        self.request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

/// The client subcommands (flattened into the binary's top-level commands).
#[derive(Subcommand, Clone, Debug)]
pub enum ClientCommand {
    /// One account: get, provision, mark-sold, activate, recharge, charge, unlock, history.
    Account {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Accounts in bulk.
    Accounts {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// What a sweep at the end of DATE would do (AdvanceStates dry run; writes nothing).
    Forecast {
        #[command(flatten)]
        connection: Connection,
        /// The last local day (YYYY-MM-DD, operator time zone from --timezone or
        /// OCS_TIMEZONE, default Asia/Shanghai): as of 23:59:59 local that day.
        #[arg(long)]
        until: NaiveDate,
    },
    /// The lifecycle event stream.
    Events {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Webhook deliveries that exhausted their attempts.
    DeadLetters {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Provision cards from a CSV file (header msisdn,preset_balance,sold,initial_validity_days).
    Import {
        #[command(flatten)]
        connection: Connection,
        /// The CSV file.
        file: PathBuf,
        /// Check the file and report bad rows; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Requests in flight at once (1 to 64).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum AccountCommand {
    /// Show an account in its effective state now.
    Get { msisdn: String },
    /// Provision a card (UNACTIVATED).
    Provision {
        msisdn: String,
        /// Immutable preset balance, in fen [default: 0].
        #[arg(
            long,
            default_value_t = 0,
            hide_default_value = true,
            allow_negative_numbers = true
        )]
        preset_balance: i64,
        /// The card is sold (without: sale-locked until mark-sold).
        #[arg(long)]
        sold: bool,
        /// Validity granted by activation [default: the server's, 180].
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        initial_validity_days: u32,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Lift the sale lock.
    MarkSold {
        msisdn: String,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Activate a sold card (its first call).
    Activate {
        msisdn: String,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Recharge: add to the balance and extend the validity.
    Recharge {
        msisdn: String,
        /// Amount in fen (5000 = 50.00 yuan).
        #[arg(long, allow_negative_numbers = true)]
        amount: i64,
        #[arg(long, value_enum)]
        channel: ChannelArg,
        /// The recharge card's printed validity [default: the tariff table decides].
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        validity_days: u32,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Debit usage (preset bucket first, then cash).
    Charge {
        msisdn: String,
        /// Amount in fen.
        #[arg(long, allow_negative_numbers = true)]
        amount: i64,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Unlock a LOCKED account at a business hall.
    Unlock {
        msisdn: String,
        /// The business hall operator.
        #[arg(long)]
        operator: String,
        /// The business hall.
        #[arg(long)]
        branch: String,
        /// Recharge with the unlock, in fen [default: none, a fresh GRACE].
        #[arg(
            long,
            default_value_t = 0,
            hide_default_value = true,
            allow_negative_numbers = true
        )]
        recharge_amount: i64,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Every change of an account, oldest first (all pages).
    History { msisdn: String },
}

#[derive(Subcommand, Clone, Debug)]
pub enum AccountsCommand {
    /// Accounts ordered by MSISDN, in their effective state now.
    List {
        /// Only accounts in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Accounts per page (1 to 1000) [default: the server's, 100].
        #[arg(long)]
        page_size: Option<u32>,
        /// Continue from a page's next_page_token.
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum EventsCommand {
    /// Events after a sequence: the backlog, then (with --follow) live events.
    Tail {
        /// The last sequence already processed (0 = from the beginning).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only these event types (repeatable) [default: every type].
        #[arg(long = "type", value_enum)]
        types: Vec<EventTypeArg>,
        /// Keep printing live events until interrupted.
        #[arg(long)]
        follow: bool,
        /// Without --follow: stop once no event has arrived for this many seconds.
        #[arg(long, default_value_t = 2.0, conflicts_with = "follow")]
        idle_timeout: f64,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum DeadLettersCommand {
    /// Every dead letter, in sequence order.
    List,
    /// Put dead letters back into the webhook queue with fresh attempts.
    Redeliver {
        /// event_id of the dead letters.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        event_ids: Vec<String>,
        /// Every dead letter there is now.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Unactivated,
    Valid,
    Grace,
    Locked,
    Recycled,
}

impl StateArg {
    fn wire(self) -> proto::AccountState {
        match self {
            StateArg::Unactivated => proto::AccountState::Unactivated,
            StateArg::Valid => proto::AccountState::Valid,
            StateArg::Grace => proto::AccountState::Grace,
            StateArg::Locked => proto::AccountState::Locked,
            StateArg::Recycled => proto::AccountState::Recycled,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ChannelArg {
    #[value(name = "card_10011", alias = "card-10011")]
    Card10011,
    Bank,
    #[value(name = "business_hall", alias = "business-hall")]
    BusinessHall,
    Online,
}

impl ChannelArg {
    fn wire(self) -> proto::RechargeChannel {
        match self {
            ChannelArg::Card10011 => proto::RechargeChannel::Card10011,
            ChannelArg::Bank => proto::RechargeChannel::Bank,
            ChannelArg::BusinessHall => proto::RechargeChannel::BusinessHall,
            ChannelArg::Online => proto::RechargeChannel::Online,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventTypeArg {
    #[value(name = "number_recycled", alias = "number-recycled")]
    NumberRecycled,
    #[value(name = "state_changed", alias = "state-changed")]
    StateChanged,
    #[value(name = "validity_expiring", alias = "validity-expiring")]
    ValidityExpiring,
}

impl EventTypeArg {
    fn wire(self) -> proto::EventType {
        match self {
            EventTypeArg::NumberRecycled => proto::EventType::NumberRecycled,
            EventTypeArg::StateChanged => proto::EventType::StateChanged,
            EventTypeArg::ValidityExpiring => proto::EventType::ValidityExpiring,
        }
    }
}

/// The operator's time zone when neither `--timezone` nor `OCS_TIMEZONE` names one.
const DEFAULT_TIMEZONE: &str = "Asia/Shanghai";

/// Runs one client command to completion: its output on stdout, an error as one line on stderr.
/// `timezone` is the global `--timezone` flag (used by `forecast` only).
pub fn run(command: ClientCommand, timezone: Option<&str>) -> ExitCode {
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
    let timezone = timezone
        .map(str::to_owned)
        .or_else(|| std::env::var("OCS_TIMEZONE").ok())
        .unwrap_or_else(|| DEFAULT_TIMEZONE.to_owned());
    match runtime.block_on(execute(command, &timezone)) {
        Ok(code) => code,
        Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(command: ClientCommand, timezone: &str) -> Result<ExitCode, CliError> {
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
        ClientCommand::Forecast { connection, until } => {
            let as_of = end_of_local_day(until, timezone)?;
            let client = Client::connect(&connection).await?;
            let request = proto::AdvanceStatesRequest {
                as_of: Some(output::to_timestamp(as_of)),
                dry_run: true,
            };
            let response = client
                .accounts()
                .advance_states(client.request(request))
                .await
                .map_err(CliError::from)?
                .into_inner();
            output::print(connection.output, &output::forecast(&response))?;
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

fn parse_msisdn(raw: &str) -> Result<String, CliError> {
    Msisdn::parse(raw)
        .map(|m| m.as_str().to_owned())
        .map_err(|e| CliError::Usage(e.to_string()))
}

async fn account(connection: &Connection, command: AccountCommand) -> Result<ExitCode, CliError> {
    // Input is checked before anything is sent (or even connected).
    let msisdn = match &command {
        AccountCommand::Get { msisdn }
        | AccountCommand::Provision { msisdn, .. }
        | AccountCommand::MarkSold { msisdn, .. }
        | AccountCommand::Activate { msisdn, .. }
        | AccountCommand::Recharge { msisdn, .. }
        | AccountCommand::Charge { msisdn, .. }
        | AccountCommand::Unlock { msisdn, .. }
        | AccountCommand::History { msisdn } => parse_msisdn(msisdn)?,
    };
    let client = Client::connect(connection).await?;
    let mut api = client.accounts();
    let format = connection.output;
    let document = match command {
        AccountCommand::Get { .. } => {
            let request = proto::GetAccountRequest { msisdn };
            let account = api.get_account(client.request(request)).await?.into_inner();
            output::account(&account)
        }
        AccountCommand::Provision {
            preset_balance,
            sold,
            initial_validity_days,
            request_id,
            ..
        } => {
            let request_id = request_id.resolve();
            let request = proto::ProvisionAccountRequest {
                msisdn,
                preset_balance,
                sold,
                initial_validity_days,
                request_id: request_id.clone(),
            };
            let response = api
                .provision_account(client.request(request))
                .await
                .map_err(|s| CliError::mutation(s, &request_id))?;
            output::account_mutation(&request_id, client::replayed(&response), response.get_ref())
        }
        AccountCommand::MarkSold { request_id, .. } => {
            let request_id = request_id.resolve();
            let request = proto::MarkSoldRequest {
                msisdn,
                request_id: request_id.clone(),
            };
            let response = api
                .mark_sold(client.request(request))
                .await
                .map_err(|s| CliError::mutation(s, &request_id))?;
            output::account_mutation(&request_id, client::replayed(&response), response.get_ref())
        }
        AccountCommand::Activate { request_id, .. } => {
            let request_id = request_id.resolve();
            let request = proto::ActivateRequest {
                msisdn,
                request_id: request_id.clone(),
            };
            let response = api
                .activate(client.request(request))
                .await
                .map_err(|s| CliError::mutation(s, &request_id))?;
            output::account_mutation(&request_id, client::replayed(&response), response.get_ref())
        }
        AccountCommand::Recharge {
            amount,
            channel,
            validity_days,
            request_id,
            ..
        } => {
            let request_id = request_id.resolve();
            let request = proto::RechargeRequest {
                msisdn,
                amount,
                channel: channel.wire() as i32,
                validity_days,
                request_id: request_id.clone(),
            };
            let result = api
                .recharge(client.request(request))
                .await
                .map_err(|s| CliError::mutation(s, &request_id))?
                .into_inner();
            output::recharge(&request_id, &result)
        }
        AccountCommand::Charge {
            amount, request_id, ..
        } => {
            let request_id = request_id.resolve();
            let request = proto::ChargeRequest {
                msisdn,
                amount,
                request_id: request_id.clone(),
            };
            let result = api
                .charge(client.request(request))
                .await
                .map_err(|s| CliError::mutation(s, &request_id))?
                .into_inner();
            output::charge(&request_id, &result)
        }
        AccountCommand::Unlock {
            operator,
            branch,
            recharge_amount,
            request_id,
            ..
        } => {
            let request_id = request_id.resolve();
            let request = proto::UnlockRequest {
                msisdn,
                operator_id: operator,
                branch_id: branch,
                recharge_amount,
                request_id: request_id.clone(),
            };
            let response = api
                .unlock(client.request(request))
                .await
                .map_err(|s| CliError::mutation(s, &request_id))?;
            output::account_mutation(&request_id, client::replayed(&response), response.get_ref())
        }
        AccountCommand::History { .. } => {
            let mut entries = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = proto::GetAccountHistoryRequest {
                    msisdn: msisdn.clone(),
                    page_size: 0,
                    page_token,
                };
                let page = api
                    .get_account_history(client.request(request))
                    .await?
                    .into_inner();
                entries.extend(page.entries);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            output::history(&msisdn, &entries)
        }
    };
    output::print(format, &document)?;
    Ok(ExitCode::SUCCESS)
}

async fn list_accounts(
    client: &Client,
    format: OutputFormat,
    state: Option<StateArg>,
    page_size: Option<u32>,
    page_token: Option<String>,
    all: bool,
) -> Result<ExitCode, CliError> {
    let mut api = client.accounts();
    let mut accounts = Vec::new();
    let mut page_token = page_token.unwrap_or_default();
    let next_page_token = loop {
        let request = proto::ListAccountsRequest {
            state: state.map_or(0, |s| s.wire() as i32),
            page_size: page_size.unwrap_or(0),
            page_token,
        };
        let page = api
            .list_accounts(client.request(request))
            .await?
            .into_inner();
        accounts.extend(page.accounts);
        if !all || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        page_token = page.next_page_token;
    };
    output::print(format, &output::account_list(&accounts, &next_page_token))?;
    Ok(ExitCode::SUCCESS)
}

/// Dead letters asked per page.
const DEAD_LETTER_PAGE: u32 = 1000;

async fn all_dead_letters(client: &Client) -> Result<Vec<proto::DeadLetter>, CliError> {
    let mut api = client.events();
    let mut letters = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = proto::ListDeadLettersRequest {
            page_size: DEAD_LETTER_PAGE,
            page_token,
        };
        let page = api
            .list_dead_letters(client.request(request))
            .await?
            .into_inner();
        letters.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok(letters);
        }
        page_token = page.next_page_token;
    }
}

async fn dead_letters(
    client: &Client,
    format: OutputFormat,
    command: DeadLettersCommand,
) -> Result<ExitCode, CliError> {
    match command {
        DeadLettersCommand::List => {
            let letters = all_dead_letters(client).await?;
            output::print(format, &output::dead_letters(&letters))?;
        }
        DeadLettersCommand::Redeliver { event_ids, all } => {
            let event_ids = if all {
                all_dead_letters(client)
                    .await?
                    .into_iter()
                    .filter_map(|d| d.event.map(|e| e.event_id))
                    .collect()
            } else {
                event_ids
            };
            let mut requeued = 0u64;
            // The server takes at most 1000 ids per request.
            for chunk in event_ids.chunks(1000) {
                let request = proto::RedeliverRequest {
                    event_ids: chunk.to_vec(),
                };
                let response = client
                    .events()
                    .redeliver(client.request(request))
                    .await?
                    .into_inner();
                requeued += u64::from(response.requeued);
            }
            let document = output::Document {
                json: json!({ "asked": event_ids.len(), "requeued": requeued }),
                table: output::fields(&[
                    ("asked", event_ids.len().to_string()),
                    ("requeued", requeued.to_string()),
                ]),
            };
            output::print(format, &document)?;
        }
    }
    Ok(ExitCode::SUCCESS)
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

    #[test]
    fn a_bad_msisdn_is_refused_before_sending() {
        assert_eq!(parse_msisdn("+8613800138000").unwrap(), "8613800138000");
        let err = parse_msisdn("12ab").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("INVALID_MSISDN"), "{err}");
    }
}
