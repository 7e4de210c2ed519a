//! `ocs-lifecycle report composition|flows|churn|cohorts`: the `LifecycleAnalytics` reports
//! (docs/analytics.md) as a table for people, one JSON document (`--json` or `--output json`),
//! or CSV with a header line (`--csv`: a spreadsheet, an SMS campaign list).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::output::{Table, write_stdout};
use super::{CliError, Client, Connection, OutputFormat};
use crate::proto;

#[derive(Subcommand, Clone, Debug)]
pub enum ReportCommand {
    /// Accounts per state now and, with --from/--to, at the end of each day.
    Composition {
        /// First day (YYYY-MM-DD, the server's time zone).
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// Last day, at the latest today.
        #[arg(long, requires = "from")]
        to: Option<String>,
        #[command(flatten)]
        format: ReportFormat,
    },
    /// Flows between stages per period, with the win-back rate.
    Flows {
        #[arg(long, value_enum, ignore_case = true, default_value_t = Period::Month)]
        period: Period,
        /// First day (YYYY-MM-DD, the server's time zone); the periods cover it whole.
        #[arg(long)]
        from: String,
        /// Last day.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        format: ReportFormat,
    },
    /// Accounts about to leave VALID (or GRACE) without a recent recharge, by past value.
    Churn {
        #[arg(long, value_enum, ignore_case = true, default_value_t = Stage::Valid)]
        stage: Stage,
        /// The stage ends within this many days.
        #[arg(long, default_value_t = 7)]
        within_days: u32,
        /// And no recharge in this many days (0: no condition).
        #[arg(long, default_value_t = 0)]
        no_recharge_days: u32,
        /// Show MSISDNs with only their first 3 and last 4 digits.
        #[arg(long)]
        mask: bool,
        #[arg(long, default_value_t = 0)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
        /// Every page, one after the other (an export).
        #[arg(long, conflicts_with = "page_token")]
        all: bool,
        #[command(flatten)]
        format: ReportFormat,
    },
    /// Cohorts by activation month: retention, recharge value, LTV percentiles.
    Cohorts {
        /// First month (YYYY-MM).
        #[arg(long)]
        from: String,
        /// Last month.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        format: ReportFormat,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Period {
    Day,
    Week,
    Month,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    Valid,
    Grace,
}

#[derive(Args, Clone, Debug)]
pub struct ReportFormat {
    /// One JSON document (as --output json).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV with a header line.
    #[arg(long)]
    csv: bool,
}

/// A report's rows: named columns of JSON values, and fields of the whole report.
struct Rows {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
    fields: Map<String, Value>,
}

impl Rows {
    /// The rows of `items` under `columns`.
    fn of<T>(columns: &[Column<T>], items: &[T]) -> Self {
        let mut rows = Self {
            columns: columns.iter().map(|(name, _)| *name).collect(),
            rows: Vec::new(),
            fields: Map::new(),
        };
        rows.extend(columns, items);
        rows
    }

    /// More rows, under the same `columns`.
    fn extend<T>(&mut self, columns: &[Column<T>], items: &[T]) {
        self.rows.extend(
            items
                .iter()
                .map(|item| columns.iter().map(|(_, cell)| cell(item)).collect()),
        );
    }

    /// A field of the whole report (shown under the table, beside the rows in JSON).
    fn field(&mut self, name: &str, value: Value) {
        self.fields.insert(name.to_owned(), value);
    }

    /// The rows with the field `timezone`: the zone the report's days are in.
    fn in_zone(mut self, timezone: String) -> Self {
        self.field("timezone", json!(timezone));
        self
    }

    fn text(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let object: Map<String, Value> = self
                    .columns
                    .iter()
                    .map(|c| (*c).to_owned())
                    .zip(row.iter().cloned())
                    .collect();
                Value::Object(object)
            })
            .collect();
        let mut document = self.fields.clone();
        document.insert("rows".into(), Value::Array(rows));
        Value::Object(document)
    }

    fn table(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|c| c.to_uppercase()).collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut table = Table::new(&header);
        for row in &self.rows {
            table.row(row.iter().map(Self::text).collect());
        }
        let mut text = table.render();
        for (name, value) in &self.fields {
            text.push_str(&format!("{name}: {}\n", Self::text(value)));
        }
        text
    }

    fn csv(&self) -> Result<String, CliError> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let failed = |e: csv::Error| CliError::Io(format!("cannot write CSV: {e}"));
        writer.write_record(&self.columns).map_err(failed)?;
        for row in &self.rows {
            writer
                .write_record(row.iter().map(Self::text))
                .map_err(failed)?;
        }
        writer.flush().map_err(|e| CliError::Io(e.to_string()))?;
        let bytes = writer
            .into_inner()
            .map_err(|e| CliError::Io(format!("cannot write CSV: {e}")))?;
        String::from_utf8(bytes).map_err(|e| CliError::Io(e.to_string()))
    }

    fn print(&self, output: OutputFormat, format: &ReportFormat) -> Result<(), CliError> {
        let text = if format.csv {
            self.csv()?
        } else if format.json || output == OutputFormat::Json {
            serde_json::to_string_pretty(&self.json())
                .map_err(|e| CliError::Io(format!("cannot encode JSON: {e}")))?
        } else {
            self.table()
        };
        write_stdout(text.trim_end_matches('\n'))?;
        std::io::stdout()
            .flush()
            .map_err(|e| CliError::Io(e.to_string()))
    }
}

/// One column of a report over items `T`: its name, and the cell an item shows in it.
type Column<T> = (&'static str, fn(&T) -> Value);

/// A day's (or "now") accounts per effective state.
type StageDay = (String, proto::StageCounts);

const STAGE_COLUMNS: &[Column<StageDay>] = &[
    ("date", |(label, _)| json!(label)),
    ("unactivated", |(_, c)| json!(c.unactivated)),
    ("valid", |(_, c)| json!(c.valid)),
    ("grace", |(_, c)| json!(c.grace)),
    ("locked", |(_, c)| json!(c.locked)),
    ("recycled", |(_, c)| json!(c.recycled)),
];

const FLOW_COLUMNS: &[Column<proto::PeriodFlows>] = &[
    ("first_day", |p| json!(p.first_day)),
    ("last_day", |p| json!(p.last_day)),
    ("activations", |p| json!(p.activations)),
    ("valid_to_grace", |p| json!(p.valid_to_grace)),
    ("win_backs", |p| json!(p.win_backs)),
    ("grace_to_locked", |p| json!(p.grace_to_locked)),
    ("unlocks_to_valid", |p| json!(p.unlocks_to_valid)),
    ("unlocks_to_grace", |p| json!(p.unlocks_to_grace)),
    ("recycled_lock_expired", |p| json!(p.recycled_lock_expired)),
    ("recycled_unactivated_expired", |p| {
        json!(p.recycled_unactivated_expired)
    }),
    ("reprovisioned", |p| json!(p.reprovisioned)),
    ("recharges", |p| {
        json!(p.recharges.iter().map(|r| r.count).sum::<i64>())
    }),
    ("recharge_amount", |p| {
        json!(p.recharges.iter().map(|r| r.amount).sum::<i64>())
    }),
    ("recharges_by_channel", |p| {
        let by_channel: Vec<String> = p
            .recharges
            .iter()
            .map(|r| format!("{} {}/{}", channel_name(r.channel), r.count, r.amount))
            .collect();
        json!(by_channel.join(" "))
    }),
    ("entered_grace", |p| json!(p.entered_grace)),
    ("won_back", |p| json!(p.won_back)),
    ("still_in_grace", |p| json!(p.still_in_grace)),
    ("win_back_rate", |p| {
        json!(format!("{:.4}", p.win_back_rate))
    }),
];

const CHURN_COLUMNS: &[Column<proto::ChurnWarning>] = &[
    ("msisdn", |w| json!(w.msisdn)),
    ("account_id", |w| json!(w.account_id)),
    ("state", |w| {
        let state = proto::AccountState::try_from(w.state)
            .map(|s| s.as_str_name().trim_start_matches("ACCOUNT_STATE_"))
            .unwrap_or("UNKNOWN");
        json!(state)
    }),
    ("stage_ends", |w| json!(w.stage_ends)),
    ("days_left", |w| json!(w.days_left)),
    ("recharge_total", |w| json!(w.recharge_total)),
    ("recharge_count", |w| json!(w.recharge_count)),
    ("balance", |w| json!(w.balance)),
];

/// "active/reached" at the `i`-th age of the retention (30, 90, 180, 365 days).
fn retained(cohort: &proto::Cohort, i: usize) -> Value {
    let shown = cohort
        .retention
        .get(i)
        .map(|r| format!("{}/{}", r.active, r.reached));
    json!(shown.unwrap_or_default())
}

const COHORT_COLUMNS: &[Column<proto::Cohort>] = &[
    ("month", |c| json!(c.month)),
    ("accounts", |c| json!(c.accounts)),
    ("active_30d", |c| retained(c, 0)),
    ("active_90d", |c| retained(c, 1)),
    ("active_180d", |c| retained(c, 2)),
    ("active_365d", |c| retained(c, 3)),
    ("recharge_total", |c| json!(c.recharge_total)),
    ("recharge_count", |c| json!(c.recharge_count)),
    ("arpu", |c| json!(format!("{:.2}", c.arpu))),
    ("recharges_per_account", |c| {
        json!(format!("{:.2}", c.recharges_per_account))
    }),
    ("ltv_p50", |c| json!(c.ltv_p50)),
    ("ltv_p90", |c| json!(c.ltv_p90)),
    ("ltv_p99", |c| json!(c.ltv_p99)),
];

fn channel_name(channel: i32) -> &'static str {
    proto::RechargeChannel::try_from(channel)
        .map(|c| c.as_str_name().trim_start_matches("RECHARGE_CHANNEL_"))
        .unwrap_or("UNKNOWN")
}

type Analytics =
    proto::lifecycle_analytics_client::LifecycleAnalyticsClient<tonic::transport::Channel>;

/// Runs one report command against the server: asks for the report, then prints its rows.
pub async fn run(connection: &Connection, command: ReportCommand) -> Result<ExitCode, CliError> {
    let client = Client::connect(connection).await?;
    let mut analytics = client.analytics();
    let (rows, format) = match command {
        ReportCommand::Composition { from, to, format } => {
            let request = client.request(proto::StageCompositionRequest {
                from_date: from.unwrap_or_default(),
                to_date: to.unwrap_or_default(),
            });
            let answer = analytics.stage_composition(request).await?.into_inner();
            let mut days = vec![("now".to_owned(), answer.now.unwrap_or_default())];
            let each_day = answer.days.into_iter();
            days.extend(each_day.map(|day| (day.date, day.counts.unwrap_or_default())));
            let mut rows = Rows::of(STAGE_COLUMNS, &days).in_zone(answer.timezone);
            rows.field("today", json!(answer.today));
            (rows, format)
        }
        ReportCommand::Flows {
            period,
            from,
            to,
            format,
        } => {
            let granularity = match period {
                Period::Day => proto::Granularity::Day,
                Period::Week => proto::Granularity::Week,
                Period::Month => proto::Granularity::Month,
            };
            let request = client.request(proto::FlowsRequest {
                granularity: granularity as i32,
                from_date: from,
                to_date: to,
            });
            let answer = analytics.flows(request).await?.into_inner();
            let rows = Rows::of(FLOW_COLUMNS, &answer.periods).in_zone(answer.timezone);
            (rows, format)
        }
        ReportCommand::Churn {
            stage,
            within_days,
            no_recharge_days,
            mask,
            page_size,
            page_token,
            all,
            format,
        } => {
            let stage = match stage {
                Stage::Valid => proto::AccountState::Valid,
                Stage::Grace => proto::AccountState::Grace,
            };
            let request = proto::ChurnWarningsRequest {
                stage: stage as i32,
                within_days,
                no_recharge_days,
                page_size,
                page_token,
                mask_msisdn: mask,
            };
            (churn(&client, &mut analytics, request, all).await?, format)
        }
        ReportCommand::Cohorts { from, to, format } => {
            let request = client.request(proto::CohortsRequest {
                from_month: from,
                to_month: to,
            });
            let answer = analytics.cohorts(request).await?.into_inner();
            let rows = Rows::of(COHORT_COLUMNS, &answer.cohorts).in_zone(answer.timezone);
            (rows, format)
        }
    };
    rows.print(connection.output, &format)?;
    Ok(ExitCode::SUCCESS)
}

/// The churn warnings from `request`'s page on; with `all`, every following page too.
async fn churn(
    client: &Client,
    analytics: &mut Analytics,
    mut request: proto::ChurnWarningsRequest,
    all: bool,
) -> Result<Rows, CliError> {
    let mut rows = Rows::of(CHURN_COLUMNS, &[]);
    loop {
        let answer = analytics
            .churn_warnings(client.request(request.clone()))
            .await?
            .into_inner();
        rows.extend(CHURN_COLUMNS, &answer.warnings);
        rows.field("today", json!(answer.today));
        request.page_token = answer.next_page_token;
        if !all || request.page_token.is_empty() {
            break;
        }
    }
    if !request.page_token.is_empty() {
        rows.field("next_page_token", json!(request.page_token));
    }
    Ok(rows)
}
