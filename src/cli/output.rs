//! What the client prints: aligned tables for people, JSON documents for programs. Dates are
//! as in the API (`YYYY-MM-DD` local dates, RFC 3339 UTC instants); amounts are fen, and in
//! tables also yuan.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{CliError, OutputFormat};
use crate::proto;

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

fn instant_json(at: Option<&prost_types::Timestamp>) -> Value {
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

fn history_kind(value: i32) -> String {
    match proto::HistoryKind::try_from(value) {
        Ok(k) => strip(k.as_str_name(), "HISTORY_KIND_"),
        Err(_) => value.to_string(),
    }
}

fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

fn date_json(date: &str) -> Value {
    if date.is_empty() {
        Value::Null
    } else {
        Value::String(date.to_owned())
    }
}

pub fn account_json(a: &proto::Account) -> Value {
    json!({
        "msisdn": a.msisdn,
        "account_id": a.account_id,
        "generation": a.generation,
        "state": state(a.state),
        "balance": a.balance,
        "preset_balance": a.preset_balance,
        "sold": a.sold,
        "provisioned_at": instant_json(a.provisioned_at.as_ref()),
        "activated_at": instant_json(a.activated_at.as_ref()),
        "valid_until": date_json(&a.valid_until),
        "grace_until": date_json(&a.grace_until),
        "lock_until": date_json(&a.lock_until),
        "card_expiry": date_json(&a.card_expiry),
        "recycled_at": instant_json(a.recycled_at.as_ref()),
        "updated_at": instant_json(a.updated_at.as_ref()),
    })
}

fn account_fields(a: &proto::Account) -> Vec<(&'static str, String)> {
    vec![
        ("msisdn", a.msisdn.clone()),
        ("account_id", a.account_id.clone()),
        ("generation", a.generation.to_string()),
        ("state", state(a.state)),
        ("balance", amount(a.balance)),
        ("preset_balance", amount(a.preset_balance)),
        ("sold", a.sold.to_string()),
        ("provisioned_at", instant(a.provisioned_at.as_ref())),
        ("activated_at", instant(a.activated_at.as_ref())),
        ("valid_until", a.valid_until.clone()),
        ("grace_until", a.grace_until.clone()),
        ("lock_until", a.lock_until.clone()),
        ("card_expiry", a.card_expiry.clone()),
        ("recycled_at", instant(a.recycled_at.as_ref())),
        ("updated_at", instant(a.updated_at.as_ref())),
    ]
}

pub fn account(a: &proto::Account) -> Document {
    Document {
        json: account_json(a),
        table: fields(&account_fields(a)),
    }
}

/// ProvisionAccount, MarkSold, Activate, Unlock.
pub fn account_mutation(request_id: &str, replayed: bool, a: &proto::Account) -> Document {
    let mut pairs = account_fields(a);
    pairs.push(("replayed", replayed.to_string()));
    pairs.push(("request_id", request_id.to_owned()));
    Document {
        json: json!({
            "request_id": request_id,
            "replayed": replayed,
            "account": account_json(a),
        }),
        table: fields(&pairs),
    }
}

/// MarkSold: [`account_mutation`] and whether it changed anything (`None`: not known, e.g. a
/// replay).
pub fn mark_sold(
    request_id: &str,
    replayed: bool,
    changed: Option<bool>,
    a: &proto::Account,
) -> Document {
    let mut document = account_mutation(request_id, replayed, a);
    if let Some(changed) = changed {
        document.json["changed"] = json!(changed);
        if !changed {
            document
                .table
                .push_str("the card was already sold: nothing changed\n");
        }
    }
    document
}

/// Authorize's answer.
pub fn authorization(
    msisdn: &str,
    service: proto::ServiceType,
    destination: &str,
    r: &proto::AuthorizeResponse,
) -> Document {
    let service = strip(service.as_str_name(), "SERVICE_TYPE_");
    Document {
        json: json!({
            "msisdn": msisdn,
            "service": service,
            "destination": destination,
            "allowed": r.allowed,
            "reason": r.reason,
            "state": state(r.state),
        }),
        table: fields(&[
            ("msisdn", msisdn.to_owned()),
            ("service", service.clone()),
            ("destination", destination.to_owned()),
            ("allowed", r.allowed.to_string()),
            ("reason", r.reason.clone()),
            ("state", state(r.state)),
        ]),
    }
}

/// The manual clock's time.
pub fn clock(r: &proto::GetTimeResponse) -> Document {
    Document {
        json: json!({ "now": instant_json(r.now.as_ref()) }),
        table: fields(&[("now", instant(r.now.as_ref()))]),
    }
}

/// Health per service (`""`: the server as a whole, shown as `(server)`).
pub fn health(statuses: &[(String, String)]) -> Document {
    let mut table = Table::new(&["SERVICE", "STATUS"]);
    let mut json_statuses = Vec::new();
    for (service, status) in statuses {
        let name = if service.is_empty() {
            "(server)"
        } else {
            service
        };
        table.row(vec![name.to_owned(), status.clone()]);
        json_statuses.push(json!({ "service": service, "status": status }));
    }
    Document {
        json: json!({ "services": json_statuses }),
        table: table.render(),
    }
}

/// `ocs-lifecycle sweep`: `name: value` lines, times as everywhere else (RFC 3339 UTC); JSON as
/// `forecast`.
pub fn sweep(as_of: DateTime<Utc>, dry_run: bool, report: &crate::sweep::SweepReport) -> Document {
    let at = as_of.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let counts = &report.counts;
    let mut text = format!(
        "as_of: {at}\ndry_run: {dry_run}\nexamined: {}\n",
        counts.examined
    );
    let mut json = json!({
        "as_of": at,
        "dry_run": dry_run,
        "examined": counts.examined,
    });
    for (name, count) in counts.named() {
        text.push_str(&format!("{name}: {count}\n"));
        json[name] = json!(count);
    }
    if dry_run {
        text.push_str(&format!(
            "recycled_msisdns: {}\n",
            report.recycled_msisdns.len()
        ));
        for msisdn in &report.recycled_msisdns {
            text.push_str(&format!("  {msisdn}\n"));
        }
        json["recycled_msisdns"] = json!(report.recycled_msisdns);
    }
    Document { json, table: text }
}

pub fn recharge(request_id: &str, r: &proto::RechargeResult) -> Document {
    let mut pairs = r.account.as_ref().map(account_fields).unwrap_or_default();
    pairs.extend([
        ("valid_until_before", r.valid_until_before.clone()),
        ("valid_until_after", r.valid_until_after.clone()),
        ("days_granted", r.days_granted.to_string()),
        ("capped", r.capped.to_string()),
        ("balance_before", amount(r.balance_before)),
        ("balance_after", amount(r.balance_after)),
        ("replayed", r.replayed.to_string()),
        ("request_id", request_id.to_owned()),
    ]);
    Document {
        json: json!({
            "request_id": request_id,
            "replayed": r.replayed,
            "account": r.account.as_ref().map(account_json),
            "valid_until_before": date_json(&r.valid_until_before),
            "valid_until_after": date_json(&r.valid_until_after),
            "days_granted": r.days_granted,
            "capped": r.capped,
            "balance_before": r.balance_before,
            "balance_after": r.balance_after,
        }),
        table: fields(&pairs),
    }
}

pub fn charge(request_id: &str, r: &proto::ChargeResult) -> Document {
    let mut pairs = r.account.as_ref().map(account_fields).unwrap_or_default();
    pairs.extend([
        ("charged_preset", amount(r.charged_preset)),
        ("charged_balance", amount(r.charged_balance)),
        ("replayed", r.replayed.to_string()),
        ("request_id", request_id.to_owned()),
    ]);
    Document {
        json: json!({
            "request_id": request_id,
            "replayed": r.replayed,
            "account": r.account.as_ref().map(account_json),
            "charged_preset": r.charged_preset,
            "charged_balance": r.charged_balance,
        }),
        table: fields(&pairs),
    }
}

pub fn history(msisdn: &str, entries: &[proto::HistoryEntry]) -> Document {
    let mut table = Table::new(&[
        "AT",
        "KIND",
        "FROM",
        "TO",
        "AMOUNT",
        "ACTOR",
        "GEN",
        "REQUEST_ID",
    ]);
    for e in entries {
        table.row(vec![
            instant(e.at.as_ref()),
            history_kind(e.kind),
            state(e.from_state),
            state(e.to_state),
            if e.amount == 0 {
                String::new()
            } else {
                amount(e.amount)
            },
            e.actor.clone(),
            e.generation.to_string(),
            e.request_id.clone(),
        ]);
    }
    let json_entries: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "at": instant_json(e.at.as_ref()),
                "kind": history_kind(e.kind),
                "from_state": state(e.from_state),
                "to_state": state(e.to_state),
                "amount": e.amount,
                "actor": e.actor,
                "request_id": e.request_id,
                "generation": e.generation,
                "account_id": e.account_id,
            })
        })
        .collect();
    Document {
        json: json!({ "msisdn": msisdn, "entries": json_entries }),
        table: table.render(),
    }
}

pub fn account_list(accounts: &[proto::Account], next_page_token: &str) -> Document {
    let mut table = Table::new(&[
        "MSISDN",
        "STATE",
        "BALANCE",
        "PRESET",
        "SOLD",
        "VALID_UNTIL",
        "GRACE_UNTIL",
        "LOCK_UNTIL",
        "CARD_EXPIRY",
        "GEN",
    ]);
    for a in accounts {
        table.row(vec![
            a.msisdn.clone(),
            state(a.state),
            amount(a.balance),
            amount(a.preset_balance),
            a.sold.to_string(),
            a.valid_until.clone(),
            a.grace_until.clone(),
            a.lock_until.clone(),
            a.card_expiry.clone(),
            a.generation.to_string(),
        ]);
    }
    let mut text = table.render();
    if !next_page_token.is_empty() {
        text.push_str(&format!(
            "(more: --page-token {next_page_token}, or --all)\n"
        ));
    }
    Document {
        json: json!({
            "accounts": accounts.iter().map(account_json).collect::<Vec<_>>(),
            "next_page_token": next_page_token,
        }),
        table: text,
    }
}

pub fn forecast(r: &proto::AdvanceStatesResponse) -> Document {
    let mut text = fields(&[
        ("as_of", instant(r.as_of.as_ref())),
        ("dry_run", r.dry_run.to_string()),
        ("examined", r.examined.to_string()),
        ("to_grace", r.to_grace.to_string()),
        ("to_locked", r.to_locked.to_string()),
        (
            "to_recycled_from_locked",
            r.to_recycled_from_locked.to_string(),
        ),
        (
            "to_recycled_unactivated",
            r.to_recycled_unactivated.to_string(),
        ),
        ("expiring_notified", r.expiring_notified.to_string()),
        ("recycled_msisdns", r.recycled_msisdns.len().to_string()),
    ]);
    for msisdn in &r.recycled_msisdns {
        text.push_str(&format!("  {msisdn}\n"));
    }
    Document {
        json: json!({
            "as_of": instant_json(r.as_of.as_ref()),
            "dry_run": r.dry_run,
            "examined": r.examined,
            "to_grace": r.to_grace,
            "to_locked": r.to_locked,
            "to_recycled_from_locked": r.to_recycled_from_locked,
            "to_recycled_unactivated": r.to_recycled_unactivated,
            "expiring_notified": r.expiring_notified,
            "recycled_msisdns": r.recycled_msisdns,
        }),
        table: text,
    }
}

pub fn event_json(e: &proto::LifecycleEvent) -> Value {
    json!({
        "event_id": e.event_id,
        "sequence": e.sequence,
        "type": event_type(e.r#type),
        "msisdn": e.msisdn,
        "account_id": e.account_id,
        "generation": e.generation,
        "from_state": state(e.from_state),
        "to_state": state(e.to_state),
        "reason": e.reason,
        "effective_at": instant_json(e.effective_at.as_ref()),
        "emitted_at": instant_json(e.emitted_at.as_ref()),
    })
}

/// Column widths of a tail line: a stream cannot be measured ahead, so they are fixed.
fn event_cells(cells: [&str; 8]) -> String {
    let [
        sequence,
        kind,
        msisdn,
        from,
        to,
        reason,
        effective_at,
        event_id,
    ] = cells;
    format!(
        "{sequence:>8}  {kind:<17}  {msisdn:<15}  {from:<11}  {to:<11}  {reason:<19}  \
         {effective_at:<27}  {event_id}"
    )
}

pub fn event_line_header() -> String {
    event_cells([
        "SEQUENCE",
        "TYPE",
        "MSISDN",
        "FROM",
        "TO",
        "REASON",
        "EFFECTIVE_AT",
        "EVENT_ID",
    ])
}

pub fn event_line(e: &proto::LifecycleEvent) -> String {
    event_cells([
        &e.sequence.to_string(),
        &event_type(e.r#type),
        &e.msisdn,
        &state(e.from_state),
        &state(e.to_state),
        &e.reason,
        &instant(e.effective_at.as_ref()),
        &e.event_id,
    ])
}

pub fn dead_letters(letters: &[proto::DeadLetter]) -> Document {
    let mut table = Table::new(&[
        "SEQUENCE",
        "EVENT_ID",
        "TYPE",
        "MSISDN",
        "ATTEMPTS",
        "DEAD_AT",
        "LAST_ERROR",
    ]);
    let mut json_letters = Vec::new();
    for d in letters {
        let event = d.event.clone().unwrap_or_default();
        table.row(vec![
            event.sequence.to_string(),
            event.event_id.clone(),
            event_type(event.r#type),
            event.msisdn.clone(),
            d.attempts.to_string(),
            instant(d.dead_at.as_ref()),
            d.last_error
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ]);
        json_letters.push(json!({
            "event": event_json(&event),
            "attempts": d.attempts,
            "last_error": d.last_error,
            "dead_at": instant_json(d.dead_at.as_ref()),
        }));
    }
    Document {
        json: json!({ "dead_letters": json_letters }),
        table: table.render(),
    }
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
