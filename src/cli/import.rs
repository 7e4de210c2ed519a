//! `ocs-lifecycle import cards.csv`: provisions cards in bulk.
//!
//! The file is CSV (RFC 4180, read with the `csv` crate) whose first record is a header naming
//! the columns: `msisdn` (required), `preset_balance`, `sold` and `initial_validity_days`, in any
//! order and any letter case. A column left out, or an empty cell, is the default (0 fen, not
//! sold, the server's validity); a column the import does not know is ignored, with one warning
//! on stderr. A field may be quoted, and then holds commas (`"1,000"`), doubled quotes (`""`) and
//! line breaks; fields are trimmed; blank lines are skipped; a row is reported at the line it
//! starts on. A number may group its digits by thousands with commas (`"1,000"` is 1000).
//!
//! Every good row becomes a ProvisionAccount whose `request_id` is `import:<hex SHA-256 of the
//! normalised row>`, so importing the same file again applies nothing twice: the server replays
//! those rows, and they count as "already imported". A bad row is reported with its line number
//! and reason, and skipped; the good rows are still applied.
//!
//! The file is streamed: read and sent [`CHUNK`] rows at a time, so a file of millions of rows is
//! never held in memory. What grows with the file is the set of MSISDNs already seen (a second
//! row of one is rejected: a 64-bit key and a line number per row, in a hash map) and the list of
//! rejected rows.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::Connection;
use super::client::{self, CliError, Client};
use super::output::{self, Document};
use crate::lifecycle::Msisdn;
use crate::proto;

/// The columns an import file may have; only `msisdn` is required.
const COLUMNS: [&str; 4] = ["msisdn", "preset_balance", "sold", "initial_validity_days"];
const MSISDN: usize = 0;
const PRESET_BALANCE: usize = 1;
const SOLD: usize = 2;
const INITIAL_VALIDITY_DAYS: usize = 3;

/// Rows read before they are sent (`--concurrency` at a time): the most the import holds.
pub const CHUNK: usize = 2048;

/// One good row of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    /// 1-based line number in the file where the row starts (the header is line 1).
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
    /// spelling in the file (`+86…` or `86…`, `yes` or `true`, `1,000` or `1000`, spaces).
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

/// Reads an import file one row at a time (see the module docs for the format).
pub struct ImportReader<R> {
    csv: csv::Reader<Lines<R>>,
    lines: Arc<Mutex<LineCounter>>,
    record: csv::ByteRecord,
    /// The number of columns of the header.
    width: usize,
    /// Where each of [`COLUMNS`] is in a record (`msisdn` always is).
    index: [Option<usize>; 4],
    /// The header's columns the import does not know, as written.
    unknown: Vec<String>,
    /// The MSISDN of each good row so far, with its line.
    seen: HashMap<u64, usize>,
}

impl<R: Read> ImportReader<R> {
    /// Reads the header; `Err` when the input cannot be read as an import file as a whole (empty,
    /// no `msisdn` column, a column named twice).
    pub fn new(input: R) -> Result<Self, String> {
        let mut input = BufReader::new(input);
        if input
            .fill_buf()
            .map_err(|e| e.to_string())?
            .starts_with(BOM)
        {
            input.consume(BOM.len());
        }
        let lines = Arc::new(Mutex::new(LineCounter {
            line: 1,
            ..LineCounter::default()
        }));
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(Lines {
                input,
                counter: lines.clone(),
            });
        let mut record = csv::ByteRecord::new();
        let (line, names) = loop {
            if !csv
                .read_byte_record(&mut record)
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "the file is empty; it needs a header line naming its columns: {}",
                    COLUMNS.join(",")
                ));
            }
            let line = line_of(&lines, &record);
            let names =
                cells(&record).map_err(|_| format!("line {line}: the header is not UTF-8 text"))?;
            if !is_blank(&names) {
                break (line, names);
            }
        };
        let mut index = [None; 4];
        let mut unknown = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name)) {
                Some(column) if index[column].is_some() => {
                    return Err(format!(
                        "line {line}: the header names the column {} twice",
                        COLUMNS[column]
                    ));
                }
                Some(column) => index[column] = Some(i),
                None => unknown.push(name.clone()),
            }
        }
        if index[MSISDN].is_none() {
            return Err(format!(
                "line {line}: the header has no msisdn column (the columns are msisdn, \
                 and optionally preset_balance, sold, initial_validity_days, in any order), \
                 found {:?}",
                names.join(",")
            ));
        }
        Ok(ImportReader {
            csv,
            lines,
            record,
            width: names.len(),
            index,
            unknown,
            seen: HashMap::new(),
        })
    }

    /// The header's columns the import does not know (they are ignored).
    pub fn unknown_columns(&self) -> &[String] {
        &self.unknown
    }

    /// The next row, good or rejected; `None` at the end of the file.
    pub fn next_row(&mut self) -> std::io::Result<Option<Result<ImportRow, Rejection>>> {
        loop {
            if !self.csv.read_byte_record(&mut self.record)? {
                return Ok(None);
            }
            let line = line_of(&self.lines, &self.record);
            let Ok(cells) = cells(&self.record) else {
                return Ok(Some(Err(Rejection {
                    line,
                    msisdn: String::new(),
                    reason: "the row is not UTF-8 text".into(),
                })));
            };
            if is_blank(&cells) {
                continue;
            }
            return Ok(Some(self.check(line, &cells)));
        }
    }

    fn check(&mut self, line: usize, cells: &[String]) -> Result<ImportRow, Rejection> {
        let raw_msisdn = self.index[MSISDN]
            .and_then(|i| cells.get(i))
            .cloned()
            .unwrap_or_default();
        let reject = |reason: String| Rejection {
            line,
            msisdn: raw_msisdn.clone(),
            reason,
        };
        if cells.len() != self.width {
            return Err(reject(format!(
                "{} cells, the header has {} columns",
                cells.len(),
                self.width
            )));
        }
        let cell = |column: usize| self.index[column].map_or("", |i| cells[i].as_str());
        let row = parse_row(line, cell).map_err(reject)?;
        // At most 15 digits: the MSISDN is its own compact key.
        let key: u64 = row.msisdn.parse().expect("a parsed MSISDN is digits");
        if let Some(first) = self.seen.get(&key) {
            return Err(reject(format!(
                "msisdn {} is already on line {first}",
                row.msisdn
            )));
        }
        self.seen.insert(key, line);
        Ok(row)
    }
}

/// The line `record` starts on.
fn line_of(lines: &Mutex<LineCounter>, record: &csv::ByteRecord) -> usize {
    let offset = record.position().map_or(0, csv::Position::byte);
    lock(lines).line_at(offset)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The input of the CSV reader, handing what it reads to a [`LineCounter`] too.
struct Lines<R> {
    input: BufReader<R>,
    counter: Arc<Mutex<LineCounter>>,
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        lock(&self.counter).pending.extend(&buf[..n]);
        Ok(n)
    }
}

/// Line numbers counted from the bytes themselves: the `csv` crate positions a record before
/// the blank lines it skips, and counts a line break at the end of a record only once the
/// record after it is read. Holds the bytes read ahead of the rows passed, no more.
#[derive(Default)]
struct LineCounter {
    /// The offset of `pending[0]` in the input.
    offset: u64,
    /// The line `offset` is on.
    line: usize,
    pending: VecDeque<u8>,
}

impl LineCounter {
    /// The line of a record positioned at `offset`: where its first byte that is not a line
    /// break is (records come in order: the bytes before `offset` are passed for good).
    fn line_at(&mut self, offset: u64) -> usize {
        let passed = usize::try_from(offset.saturating_sub(self.offset))
            .unwrap_or(usize::MAX)
            .min(self.pending.len());
        let (front, back) = self.pending.as_slices();
        let newlines = |bytes: &[u8]| bytes.iter().filter(|b| **b == b'\n').count();
        self.line += newlines(&front[..passed.min(front.len())])
            + newlines(&back[..passed.saturating_sub(front.len())]);
        self.pending.drain(..passed);
        self.offset += passed as u64;
        let breaks = self
            .pending
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'));
        self.line + breaks.filter(|b| **b == b'\n').count()
    }
}

/// The fields of a record as trimmed text.
fn cells(record: &csv::ByteRecord) -> Result<Vec<String>, std::str::Utf8Error> {
    record
        .iter()
        .map(|field| std::str::from_utf8(field).map(|text| text.trim().to_owned()))
        .collect()
}

/// A blank line (nothing but white space).
fn is_blank(cells: &[String]) -> bool {
    matches!(cells, [only] if only.is_empty())
}

/// Splits an import file held in memory into good rows and rejected ones; `Err` when the file
/// as a whole cannot be read as one (see [`ImportReader::new`]). The import itself streams.
pub fn parse_csv(text: &str) -> Result<(Vec<ImportRow>, Vec<Rejection>), String> {
    let mut reader = ImportReader::new(text.as_bytes())?;
    let (mut rows, mut rejections) = (Vec::new(), Vec::new());
    while let Some(row) = reader.next_row().map_err(|e| e.to_string())? {
        match row {
            Ok(row) => rows.push(row),
            Err(rejection) => rejections.push(rejection),
        }
    }
    Ok((rows, rejections))
}

/// A whole number written plainly or with its digits grouped by thousands (`1,000`).
fn whole_number<T: std::str::FromStr>(raw: &str) -> Option<T> {
    let mut groups = raw.split(',');
    let first = groups.next()?;
    let mut digits = first.to_owned();
    for group in groups {
        let grouped = (1..=3).contains(&first.len())
            && group.len() == 3
            && first.bytes().all(|b| b.is_ascii_digit());
        if !grouped || !group.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.push_str(group);
    }
    digits.parse().ok()
}

fn parse_row<'a>(line: usize, cell: impl Fn(usize) -> &'a str) -> Result<ImportRow, String> {
    let msisdn = Msisdn::parse(cell(MSISDN)).map_err(|e| e.to_string())?;
    let preset_balance = match cell(PRESET_BALANCE) {
        "" => 0,
        raw => whole_number::<i64>(raw)
            .filter(|v| *v >= 0)
            .ok_or_else(|| format!("preset_balance {raw:?} is not a whole number of fen ≥ 0"))?,
    };
    let sold = match cell(SOLD).to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "no" => false,
        "true" | "1" | "yes" => true,
        raw => return Err(format!("sold {raw:?} is not true/false (or 1/0, yes/no)")),
    };
    let initial_validity_days = match cell(INITIAL_VALIDITY_DAYS) {
        "" => 0,
        raw => whole_number::<u32>(raw).ok_or_else(|| {
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
    let unreadable =
        |e: &dyn std::fmt::Display| CliError::Usage(format!("cannot read {}: {e}", file.display()));
    let input = std::fs::File::open(file).map_err(|e| unreadable(&e))?;
    let mut reader = ImportReader::new(std::io::BufReader::new(input))
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    if !reader.unknown_columns().is_empty() {
        eprintln!(
            "warning: {}: ignoring the column(s) {} (the import reads {})",
            file.display(),
            reader.unknown_columns().join(", "),
            COLUMNS.join(", ")
        );
    }
    let client = if dry_run {
        None
    } else {
        Some(Client::connect(connection).await?)
    };
    let progress = Progress::start();
    let (mut valid, mut imported, mut already_imported) = (0usize, 0usize, 0usize);
    let mut rejections = Vec::new();
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            match reader.next_row().map_err(|e| unreadable(&e))? {
                Some(Ok(row)) => chunk.push(row),
                Some(Err(rejection)) => rejections.push(rejection),
                None => break,
            }
        }
        if chunk.is_empty() {
            break;
        }
        valid += chunk.len();
        let Some(client) = &client else {
            continue;
        };
        let chunk = Arc::new(chunk);
        let outcomes = provision_all(client, chunk.clone(), concurrency, &progress.done).await;
        for (row, outcome) in chunk.iter().zip(outcomes) {
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
    progress.stop();
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

/// Sends every row, `concurrency` at a time, counting each answered one in `done`; the outcomes
/// in row order.
async fn provision_all(
    client: &Client,
    rows: Arc<Vec<ImportRow>>,
    concurrency: usize,
    done: &Arc<AtomicUsize>,
) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
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

/// `import: 1200 rows sent` on a terminal's stderr, rewritten in place; nothing elsewhere.
struct Progress {
    done: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start() -> Progress {
        let done = Arc::new(AtomicUsize::new(0));
        let task = std::io::stderr().is_terminal().then(|| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    eprint!("\rimport: {} rows sent", done.load(Ordering::Relaxed));
                }
            })
        });
        Progress { done, task }
    }

    fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
            eprint!("\r\x1b[K");
        }
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
mod tests;
