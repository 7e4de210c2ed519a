//! The command-line client: `ocs-lifecycle account|accounts|authorize|forecast|events|dead-letters|
//! import|clock|health|report` talk gRPC to a running server (`--server`, env `OCS_SERVER`; `https://` with `--ca-cert`,
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
mod report;

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
    #[arg(
        long,
        global = true,
        value_enum,
        ignore_case = true,
        default_value_t = OutputFormat::Table
    )]
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
    /// May this account use a service now (Authorize: the state, the sale lock, the balance)?
    Authorize {
        #[command(flatten)]
        connection: Connection,
        msisdn: String,
        /// The service asked for.
        #[arg(long, value_enum, ignore_case = true)]
        service: ServiceArg,
        /// The called number of an outgoing call or SMS (customer service and emergency
        /// numbers stay reachable from GRACE and LOCKED).
        #[arg(long, default_value = "", hide_default_value = true)]
        destination: String,
    },
    /// What a sweep at the end of DATE would do (AdvanceStates dry run; writes nothing).
    Forecast {
        #[command(flatten)]
        connection: Connection,
        /// The last local day (YYYY-MM-DD, operator time zone from --timezone): as of
        /// 23:59:59 local that day.
        #[arg(long)]
        until: NaiveDate,
        /// The operator's IANA time zone.
        #[arg(long, env = "OCS_TIMEZONE", default_value = DEFAULT_TIMEZONE)]
        timezone: String,
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
    /// The manual clock of a server started with `--clock manual` (the TestClock service).
    Clock {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: ClockCommand,
    },
    /// Whether the server is serving (gRPC health: the server and each of its services).
    /// Exit code 0 when SERVING, 1 otherwise.
    Health {
        #[command(flatten)]
        connection: Connection,
        /// Only this service (e.g. ocs.lifecycle.v1.AccountLifecycle) [default: the server
        /// and every service].
        #[arg(long)]
        service: Option<String>,
    },
    /// Lifecycle analytics (docs/analytics.md): composition, flows, churn, cohorts.
    Report {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        report: report::ReportCommand,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum ClockCommand {
    /// The clock's time.
    Get,
    /// Set the clock to an instant (RFC 3339, e.g. 2030-03-01T10:00:00+08:00); never backwards.
    Set {
        #[arg(value_parser = parse_instant)]
        time: DateTime<Utc>,
    },
    /// Move the clock forward by a duration: 90d, 36h, 15m, 30s, 1d12h, or seconds.
    Advance {
        #[arg(value_parser = parse_duration)]
        by: i64,
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
        #[arg(long, value_enum, ignore_case = true)]
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
        /// Only accounts in this state (any case).
        #[arg(long, value_enum, ignore_case = true)]
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
        #[arg(long = "type", value_enum, ignore_case = true)]
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
pub enum ServiceArg {
    #[value(name = "voice_out", alias = "voice-out")]
    VoiceOut,
    #[value(name = "voice_in", alias = "voice-in")]
    VoiceIn,
    #[value(name = "sms_out", alias = "sms-out")]
    SmsOut,
    #[value(name = "sms_in", alias = "sms-in")]
    SmsIn,
    Data,
}

impl ServiceArg {
    fn wire(self) -> proto::ServiceType {
        match self {
            ServiceArg::VoiceOut => proto::ServiceType::VoiceOut,
            ServiceArg::VoiceIn => proto::ServiceType::VoiceIn,
            ServiceArg::SmsOut => proto::ServiceType::SmsOut,
            ServiceArg::SmsIn => proto::ServiceType::SmsIn,
            ServiceArg::Data => proto::ServiceType::Data,
        }
    }
}

/// An RFC 3339 instant, in UTC.
pub fn parse_instant(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{raw:?} is not an RFC 3339 instant (e.g. 2030-03-01T10:00:00+08:00): {e}")
        })
}

/// `90d`, `36h`, `15m`, `30s`, `1d12h` or a number of seconds, in seconds (> 0).
fn parse_duration(raw: &str) -> Result<i64, String> {
    let bad = || format!("{raw:?} is not a duration (e.g. 90d, 36h, 15m, 30s, 1d12h, or seconds)");
    let text = raw.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return (seconds > 0).then_some(seconds).ok_or_else(bad);
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: i64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() || total <= 0 {
        return Err(bad());
    }
    Ok(total)
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
            let answer = client
                .accounts()
                .authorize(client.request(request))
                .await?
                .into_inner();
            let document = output::authorization(&msisdn, service.wire(), &destination, &answer);
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
            // MarkSold on a sold card succeeds and changes nothing; the account as it was
            // tells which (a failed read leaves it unsaid: MarkSold reports its own error).
            let was_sold = api
                .get_account(client.request(proto::GetAccountRequest {
                    msisdn: msisdn.clone(),
                }))
                .await
                .ok()
                .map(|a| a.into_inner().sold);
            let request = proto::MarkSoldRequest {
                msisdn,
                request_id: request_id.clone(),
            };
            let response = api
                .mark_sold(client.request(request))
                .await
                .map_err(|s| CliError::mutation(s, &request_id))?;
            let replayed = client::replayed(&response);
            // A replay answers as the first request did; whether that one changed anything
            // is not known here.
            let changed = if replayed {
                None
            } else {
                was_sold.map(|sold| !sold)
            };
            output::mark_sold(&request_id, replayed, changed, response.get_ref())
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
            let dead: Vec<String> = all_dead_letters(client)
                .await?
                .into_iter()
                .filter_map(|d| d.event.map(|e| e.event_id))
                .collect();
            // Ids that are not dead letters now (unknown, delivered, or already queued again):
            // the server ignores them; the operator is told which.
            let not_dead: Vec<String> = if all {
                Vec::new()
            } else {
                let dead: std::collections::HashSet<&str> =
                    dead.iter().map(String::as_str).collect();
                event_ids
                    .iter()
                    .filter(|id| !dead.contains(id.as_str()))
                    .cloned()
                    .collect()
            };
            let event_ids = if all { dead } else { event_ids };
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
            let mut table = output::fields(&[
                ("asked", event_ids.len().to_string()),
                ("requeued", requeued.to_string()),
            ]);
            if !not_dead.is_empty() {
                table.push_str(&format!(
                    "not dead letters ({}; unknown, delivered or already queued again):\n",
                    not_dead.len()
                ));
                for id in &not_dead {
                    table.push_str(&format!("  {id}\n"));
                }
            }
            let document = output::Document {
                json: json!({
                    "asked": event_ids.len(),
                    "requeued": requeued,
                    "not_dead_letters": not_dead,
                }),
                table,
            };
            output::print(format, &document)?;
        }
    }
    Ok(ExitCode::SUCCESS)
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
    fn durations_read_as_days_hours_minutes_and_seconds() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("1d12h"), Ok(36 * 3_600));
        assert_eq!(parse_duration("15m30s"), Ok(930));
        for bad in ["", "0", "-5", "5x", "d", "12h5", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

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
