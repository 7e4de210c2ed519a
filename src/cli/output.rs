//! What the client prints: aligned tables for people, JSON documents for programs. Dates are
//! as in the API (`YYYY-MM-DD` local dates, RFC 3339 UTC instants); amounts are fen, and in
//! tables also yuan.
//!
//! Here: the two forms ([`Document`], [`print`]), tables and the cells every answer shares
//! (amounts, instants, state names). `accounts.rs`: one account, its mutations, history and
//! lists; `events.rs`: the event stream and dead letters; `operations.rs`: Authorize, the clock,
//! health, the sweep and the forecast.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::{CliError, OutputFormat};
use crate::proto;

mod accounts;
mod events;
mod operations;

pub use accounts::{account, account_list, account_mutation, charge, history, mark_sold, recharge};
pub use events::{dead_letters, event_json, event_line, event_line_header};
pub use operations::{authorization, clock, forecast, health, sweep};

/// One answer in both forms; `print` picks one.
pub struct Document {
    pub json: Value,
    pub table: String,
}

pub fn print(format: OutputFormat, document: &Document) -> Result<(), CliError> {
    match format {
        OutputFormat::Table => write_stdout(document.table.trim_end_matches('\n')),
        OutputFormat::Json => {
            let text = serde_json::to_string_pretty(&document.json)
                .map_err(|e| CliError::Io(format!("cannot encode JSON: {e}")))?;
            write_stdout(&text)
        }
    }
}

/// `line` and a newline on stdout, flushed (a tail is read as it happens).
pub fn write_stdout(line: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::StdoutClosed,
            _ => CliError::Io(format!("cannot write to stdout: {e}")),
        })
}

/// Columns aligned on the widest cell; two spaces between columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A vertical `name  value` table.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_owned() + "\n")
        .collect()
}

/// `5000` → `50.00`.
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// `5000 fen (50.00 yuan)`.
pub fn amount(fen: i64) -> String {
    format!("{fen} fen ({} yuan)", yuan(fen))
}

pub fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// RFC 3339 in UTC, or "" when unset.
pub fn instant(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

pub(super) fn instant_json(at: Option<&prost_types::Timestamp>) -> Value {
    match instant(at) {
        text if text.is_empty() => Value::Null,
        text => Value::String(text),
    }
}

/// `VALID`, or "" for UNSPECIFIED.
pub fn state(value: i32) -> String {
    match proto::AccountState::try_from(value) {
        Ok(proto::AccountState::Unspecified) => String::new(),
        Ok(s) => strip(s.as_str_name(), "ACCOUNT_STATE_"),
        Err(_) => value.to_string(),
    }
}

pub fn event_type(value: i32) -> String {
    match proto::EventType::try_from(value) {
        Ok(t) => strip(t.as_str_name(), "EVENT_TYPE_"),
        Err(_) => value.to_string(),
    }
}

pub(super) fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_show_fen_and_yuan() {
        assert_eq!(amount(5000), "5000 fen (50.00 yuan)");
        assert_eq!(amount(5), "5 fen (0.05 yuan)");
        assert_eq!(amount(-105), "-105 fen (-1.05 yuan)");
        assert_eq!(amount(0), "0 fen (0.00 yuan)");
    }

    #[test]
    fn table_columns_are_aligned_on_the_widest_cell() {
        let mut table = Table::new(&["A", "LONG HEADER", "C"]);
        table.row(vec!["wide cell".into(), "x".into(), "".into()]);
        assert_eq!(table.render(), "A          LONG HEADER  C\nwide cell  x\n");
    }

    #[test]
    fn states_and_instants_read_as_in_the_api() {
        assert_eq!(state(proto::AccountState::Grace as i32), "GRACE");
        assert_eq!(state(0), "");
        let at = to_timestamp(
            DateTime::parse_from_rfc3339("2030-03-01T10:00:00+08:00")
                .unwrap()
                .with_timezone(&Utc),
        );
        assert_eq!(instant(Some(&at)), "2030-03-01T02:00:00Z");
        assert_eq!(instant(None), "");
    }
}
