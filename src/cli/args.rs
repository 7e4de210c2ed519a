//! The client's command line: the connection flags every command shares ([`Connection`]),
//! the subcommands and their flags (clap derives). What a flag's value may be is in `values.rs`.

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand, ValueEnum};

use super::{ChannelArg, EventTypeArg, ServiceArg, StateArg, parse_duration, parse_instant};

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
    pub(super) fn resolve(&self) -> String {
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
        report: super::report::ReportCommand,
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
        #[arg(long, allow_negative_numbers = true)]
        preset_balance: Option<i64>,
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
        #[arg(long, allow_negative_numbers = true)]
        recharge_amount: Option<i64>,
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

/// The operator's time zone when neither `--timezone` nor `OCS_TIMEZONE` names one.
const DEFAULT_TIMEZONE: &str = "Asia/Shanghai";

impl AccountCommand {
    /// The MSISDN as typed.
    pub(super) fn msisdn(&self) -> &str {
        match self {
            AccountCommand::Get { msisdn }
            | AccountCommand::Provision { msisdn, .. }
            | AccountCommand::MarkSold { msisdn, .. }
            | AccountCommand::Activate { msisdn, .. }
            | AccountCommand::Recharge { msisdn, .. }
            | AccountCommand::Charge { msisdn, .. }
            | AccountCommand::Unlock { msisdn, .. }
            | AccountCommand::History { msisdn } => msisdn,
        }
    }

    /// A mutation's idempotency key; `None` for a read.
    pub(super) fn request_id(&self) -> Option<&RequestIdArg> {
        match self {
            AccountCommand::Provision { request_id, .. }
            | AccountCommand::MarkSold { request_id, .. }
            | AccountCommand::Activate { request_id, .. }
            | AccountCommand::Recharge { request_id, .. }
            | AccountCommand::Charge { request_id, .. }
            | AccountCommand::Unlock { request_id, .. } => Some(request_id),
            AccountCommand::Get { .. } | AccountCommand::History { .. } => None,
        }
    }
}
