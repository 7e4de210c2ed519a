//! `ocs-lifecycle import cards.csv`: provisions cards in bulk.
//!
//! The file is CSV with a header line naming the columns `msisdn,preset_balance,sold,
//! initial_validity_days` in this order; the later columns may be left out (the header then
//! ends earlier) and an empty cell is the default (0 fen, not sold, the server's validity).
//! Cells are separated by commas, may be wrapped in double quotes and are trimmed; blank lines
//! are skipped. Every good row becomes a ProvisionAccount whose `request_id` is
//! `import:<hex SHA-256 of the normalised row>`, so importing the same file again applies
//! nothing twice: the server replays those rows, and they count as "already imported". A bad
//! row is reported with its line number and reason, and skipped; the good rows are still
//! applied.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::Connection;
use super::client::{self, CliError, Client};
use super::output::{self, Document};
use crate::lifecycle::Msisdn;
use crate::proto;

/// The columns of an import file, in order; every one after `msisdn` is optional.
const COLUMNS: [&str; 4] = ["msisdn", "preset_balance", "sold", "initial_validity_days"];

/// One good row of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    /// 1-based line number in the file (the header is line 1).
    pub line: usize,
    /// Normalised (no leading `+`).
    pub msisdn: String,
    pub preset_balance: i64,
    pub sold: bool,
    /// 0 = the server's default.
    pub initial_validity_days: u32,
}

impl ImportRow {
    /// The idempotency key: the same row content always gives the same key, whatever the
    /// spelling in the file (`+86…` or `86…`, `yes` or `true`, spaces).
    pub fn request_id(&self) -> String {
        let normalised = format!(
            "{},{},{},{}",
            self.msisdn, self.preset_balance, self.sold, self.initial_validity_days
        );
        format!(
            "import:{}",
            hex::encode(Sha256::digest(normalised.as_bytes()))
        )
    }
}

/// A row that is not imported, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub line: usize,
    /// The MSISDN cell as written (may be invalid).
    pub msisdn: String,
    pub reason: String,
}

/// Splits an import file into good rows and rejected ones; `Err` when the file as a whole
/// cannot be read as one (no header, or a wrong one).
pub fn parse_csv(text: &str) -> Result<(Vec<ImportRow>, Vec<Rejection>), String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_line, header)) = lines.next() else {
        return Err(format!(
            "the file is empty; it needs a header line: {}",
            COLUMNS.join(",")
        ));
    };
    let names: Vec<String> = split(header)
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if names.is_empty()
        || names.len() > COLUMNS.len()
        || names.iter().zip(COLUMNS).any(|(n, c)| n != c)
    {
        return Err(format!(
            "line {header_line}: the header must be {} (the later columns may be left out), found {:?}",
            COLUMNS.join(","),
            header.trim()
        ));
    }
    let mut rows: Vec<ImportRow> = Vec::new();
    let mut rejections = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (line, text) in lines {
        let cells = split(text);
        let raw_msisdn = cells.first().cloned().unwrap_or_default();
        let reject = |reason: String| Rejection {
            line,
            msisdn: raw_msisdn.clone(),
            reason,
        };
        let row = match parse_row(line, &cells, names.len()) {
            Ok(row) => row,
            Err(reason) => {
                rejections.push(reject(reason));
                continue;
            }
        };
        if let Some(first) = seen.get(&row.msisdn) {
            rejections.push(reject(format!(
                "msisdn {} is already on line {first}",
                row.msisdn
            )));
            continue;
        }
        seen.insert(row.msisdn.clone(), line);
        rows.push(row);
    }
    Ok((rows, rejections))
}

/// The cells of a line: comma-separated, trimmed, one pair of surrounding quotes removed.
fn split(line: &str) -> Vec<String> {
    line.split(',')
        .map(|cell| {
            let cell = cell.trim();
            cell.strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .unwrap_or(cell)
                .trim()
                .to_owned()
        })
        .collect()
}

fn parse_row(line: usize, cells: &[String], columns: usize) -> Result<ImportRow, String> {
    if cells.len() != columns {
        return Err(format!(
            "{} cells, the header has {columns} columns",
            cells.len()
        ));
    }
    let cell = |i: usize| cells.get(i).map(String::as_str).unwrap_or("");
    let msisdn = Msisdn::parse(cell(0)).map_err(|e| e.to_string())?;
    let preset_balance =
        match cell(1) {
            "" => 0,
            raw => raw.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                format!("preset_balance {raw:?} is not a whole number of fen ≥ 0")
            })?,
        };
    let sold = match cell(2).to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" => false,
        "true" | "1" | "yes" => true,
        raw => return Err(format!("sold {raw:?} is not true/false (or 1/0, yes/no)")),
    };
    let initial_validity_days = match cell(3) {
        "" => 0,
        raw => raw.parse::<u32>().map_err(|_| {
            format!("initial_validity_days {raw:?} is not a whole number of days ≥ 0")
        })?,
    };
    Ok(ImportRow {
        line,
        msisdn: msisdn.as_str().to_owned(),
        preset_balance,
        sold,
        initial_validity_days,
    })
}

/// What happened to one row sent to the server.
enum Outcome {
    Imported,
    AlreadyImported,
    Rejected(String),
}

pub async fn run(
    connection: &Connection,
    file: &Path,
    dry_run: bool,
    concurrency: usize,
) -> Result<ExitCode, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let (rows, mut rejections) =
        parse_csv(&text).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    let (mut imported, mut already_imported) = (0usize, 0usize);
    let valid = rows.len();
    if !dry_run {
        let client = Client::connect(connection).await?;
        let outcomes = provision_all(&client, Arc::new(rows.clone()), concurrency).await;
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Imported => imported += 1,
                Outcome::AlreadyImported => already_imported += 1,
                Outcome::Rejected(reason) => rejections.push(Rejection {
                    line: row.line,
                    msisdn: row.msisdn.clone(),
                    reason,
                }),
            }
        }
    }
    rejections.sort_by_key(|r| r.line);
    output::print(
        connection.output,
        &report(
            file,
            dry_run,
            valid,
            imported,
            already_imported,
            &rejections,
        ),
    )?;
    Ok(if rejections.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sends every row, `concurrency` at a time; the outcomes in row order.
async fn provision_all(
    client: &Client,
    rows: Arc<Vec<ImportRow>>,
    concurrency: usize,
) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(done.clone(), rows.len())));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, rows.len().max(1)) {
        let (client, rows, next, done) = (client.clone(), rows.clone(), next.clone(), done.clone());
        workers.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(row) = rows.get(index) else {
                    return outcomes;
                };
                outcomes.push((index, provision(&client, row).await));
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..rows.len()).map(|_| None).collect();
    while let Some(finished) = workers.join_next().await {
        match finished {
            Ok(list) => {
                for (index, outcome) in list {
                    outcomes[index] = Some(outcome);
                }
            }
            // A worker that died leaves its rows without an outcome; they are reported below.
            Err(e) => eprintln!("import: a worker failed: {e}"),
        }
    }
    if let Some(progress) = progress {
        progress.abort();
        eprint!("\r\x1b[K");
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Rejected("not sent (internal error)".into())))
        .collect()
}

async fn provision(client: &Client, row: &ImportRow) -> Outcome {
    let request = proto::ProvisionAccountRequest {
        msisdn: row.msisdn.clone(),
        preset_balance: row.preset_balance,
        sold: row.sold,
        initial_validity_days: row.initial_validity_days,
        request_id: row.request_id(),
    };
    match client
        .accounts()
        .provision_account(client.request(request))
        .await
    {
        Ok(response) if client::replayed(&response) => Outcome::AlreadyImported,
        Ok(_) => Outcome::Imported,
        Err(status) => Outcome::Rejected(client::describe(&status)),
    }
}

/// `import: 1200/5000` on a terminal's stderr, rewritten in place.
async fn show_progress(done: Arc<AtomicUsize>, total: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        eprint!("\rimport: {}/{total}", done.load(Ordering::Relaxed));
    }
}

fn report(
    file: &Path,
    dry_run: bool,
    valid: usize,
    imported: usize,
    already_imported: usize,
    rejections: &[Rejection],
) -> Document {
    let mut text = String::new();
    for r in rejections {
        text.push_str(&format!("line {}: {}: {}\n", r.line, r.msisdn, r.reason));
    }
    let summary = if dry_run {
        output::fields(&[
            ("dry_run", "true (nothing sent)".to_owned()),
            ("valid", valid.to_string()),
            ("rejected", rejections.len().to_string()),
        ])
    } else {
        output::fields(&[
            ("imported", imported.to_string()),
            ("already imported", already_imported.to_string()),
            ("rejected", rejections.len().to_string()),
        ])
    };
    text.push_str(&summary);
    let rejected: Vec<_> = rejections
        .iter()
        .map(|r| json!({ "line": r.line, "msisdn": r.msisdn, "reason": r.reason }))
        .collect();
    let json = if dry_run {
        json!({
            "file": file.display().to_string(),
            "dry_run": true,
            "valid": valid,
            "rejected": rejections.len(),
            "rejections": rejected,
        })
    } else {
        json!({
            "file": file.display().to_string(),
            "dry_run": false,
            "imported": imported,
            "already_imported": already_imported,
            "rejected": rejections.len(),
            "rejections": rejected,
        })
    };
    Document { json, table: text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_rows_are_parsed_and_bad_ones_rejected_by_line() {
        let text = "msisdn,preset_balance,sold,initial_validity_days\n\
                    +8613800000001,500,true,365\n\
                    \n\
                    8613800000002,,,\n\
                    12ab,0,true,0\n\
                    8613800000003,-1,true,0\n\
                    8613800000004,0,maybe,0\n\
                    8613800000005,0,true\n\
                    \"8613800000001\",0,no,0\n";
        let (rows, rejected) = parse_csv(text).unwrap();
        assert_eq!(
            rows,
            vec![
                ImportRow {
                    line: 2,
                    msisdn: "8613800000001".into(),
                    preset_balance: 500,
                    sold: true,
                    initial_validity_days: 365,
                },
                ImportRow {
                    line: 4,
                    msisdn: "8613800000002".into(),
                    preset_balance: 0,
                    sold: false,
                    initial_validity_days: 0,
                },
            ]
        );
        let lines: Vec<usize> = rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![5, 6, 7, 8, 9]);
        assert!(
            rejected[0].reason.contains("INVALID_MSISDN"),
            "{rejected:?}"
        );
        assert!(
            rejected[1].reason.contains("preset_balance"),
            "{rejected:?}"
        );
        assert!(rejected[2].reason.contains("sold"), "{rejected:?}");
        assert!(rejected[3].reason.contains("3 cells"), "{rejected:?}");
        assert!(rejected[4].reason.contains("line 2"), "{rejected:?}");
    }

    #[test]
    fn later_columns_may_be_left_out_but_the_order_is_fixed() {
        let (rows, rejected) = parse_csv("msisdn,preset_balance\r\n8613800000001,100\r\n").unwrap();
        assert!(rejected.is_empty());
        assert_eq!(rows[0].preset_balance, 100);
        assert!(parse_csv("preset_balance,msisdn\n").is_err());
        assert!(parse_csv("").is_err());
        assert!(parse_csv("msisdn,colour\n").is_err());
    }

    #[test]
    fn the_request_id_depends_on_the_content_only() {
        let (a, _) = parse_csv("msisdn,preset_balance,sold\n+8613800000001,,yes\n").unwrap();
        let (b, _) = parse_csv("msisdn,preset_balance,sold\n\n 8613800000001 ,0,true\n").unwrap();
        assert_eq!(a[0].request_id(), b[0].request_id());
        assert!(a[0].request_id().starts_with("import:"));
        assert!(a[0].request_id().len() <= 128);
        let (c, _) = parse_csv("msisdn,preset_balance,sold\n8613800000001,0,no\n").unwrap();
        assert_ne!(a[0].request_id(), c[0].request_id());
    }
}
