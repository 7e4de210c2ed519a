//! The shell examples of docs/integration.md run against a real server, the README's
//! transcript runs as shown in the order shown, and the user documentation links only to files
//! of the repository.
//!
//! Every ```` ```sh ```` block of the file must be preceded by a `<!-- tested -->` line. The
//! blocks are joined, in order, into one `sh` script: each command (a line, with `\`
//! continuations) must exit 0, or N when the line ends in `# exit N`. The real binary runs
//! from `PATH`, in an empty temporary directory, against an in-process server on SQLite with
//! three tokens (`OCS_TOKEN` billing, `HALL_TOKEN` business_hall, `BSS_TOKEN` bss).

#[macro_use]
#[allow(unused_macros)]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::BIN;
use common::process::{command_in, run_bounded};
use common::{Backend, TestDb, TestServer, test_config, with_tokens};
use ocs_lifecycle::auth::Role;
use ocs_lifecycle::config::ClockMode;

const INTEGRATION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/integration.md");
const MARKER: &str = "<!-- tested -->";
/// Safety bound only: no test asserts on elapsed time.
const SAFETY: Duration = Duration::from_secs(120);

/// One command of a tested block: where it is, its text, the exit status it must have.
struct Example {
    line: usize,
    command: String,
    expected: i32,
}

/// The commands of the tested blocks; panics on an untested ```sh block.
fn examples(markdown: &str) -> Vec<Example> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut examples = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```sh" {
            i += 1;
            continue;
        }
        let previous = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
        assert_eq!(
            previous.map(|l| l.trim()),
            Some(MARKER),
            "docs/integration.md line {}: a ```sh block without {MARKER}",
            i + 1
        );
        i += 1;
        let mut pending: Option<(usize, String)> = None;
        while i < lines.len() && lines[i].trim() != "```" {
            let text = lines[i];
            let (start, mut command) = pending.take().unwrap_or((i + 1, String::new()));
            command.push_str(text);
            if let Some(head) = command.strip_suffix('\\') {
                pending = Some((start, format!("{head} ")));
            } else if !command.trim().is_empty() && !command.trim_start().starts_with('#') {
                let expected = command
                    .rsplit_once("# exit ")
                    .map_or(0, |(_, code)| code.trim().parse().expect("# exit N"));
                examples.push(Example {
                    line: start,
                    command,
                    expected,
                });
            }
            i += 1;
        }
        assert!(pending.is_none(), "a block ends in a continuation");
        i += 1;
    }
    examples
}

/// One script: each command, then a check of its exit status that stops the script.
fn script(examples: &[Example]) -> String {
    let mut script = String::new();
    for example in examples {
        script.push_str(&example.command);
        script.push('\n');
        script.push_str(&format!(
            "rc=$?; if [ \"$rc\" != {} ]; then echo \"docs/integration.md line {}: exit $rc, \
             expected {}\" >&2; exit 99; fi\n",
            example.expected, example.line, example.expected
        ));
    }
    script.push_str("echo ALL-EXAMPLES-RAN\n");
    script
}

#[test]
fn the_scheme_reads_commands_continuations_and_expected_codes() {
    let markdown = "<!-- tested -->\n```sh\n# a comment\nocs-lifecycle a \\\n  --b   # exit 2\n\
                    ocs-lifecycle c\n```\n";
    let found = examples(markdown);
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].line, found[0].expected), (4, 2));
    assert!(found[0].command.contains("--b"));
    assert_eq!((found[1].line, found[1].expected), (6, 0));
    let untested = std::panic::catch_unwind(|| examples("text\n```sh\nls\n```\n"));
    assert!(untested.is_err(), "an untested sh block is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integration_guide_examples_run_against_a_real_server() {
    let markdown = std::fs::read_to_string(INTEGRATION).expect("docs/integration.md");
    let examples = examples(&markdown);
    assert!(examples.len() >= 10, "found {} examples", examples.len());
    assert!(examples.iter().any(|e| e.expected != 0));

    let tokens = [
        ("ocs_docs_billing", "billing-gw", Role::Billing),
        ("ocs_docs_hall", "hall-7", Role::BusinessHall),
        ("ocs_docs_bss", "bss-1", Role::Bss),
    ];
    let config = with_tokens(test_config(ClockMode::System), &tokens);
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    let server = TestServer::start_with(db, config).await;

    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("examples.sh");
    std::fs::write(&script_path, script(&examples)).unwrap();
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = command_in("sh", dir.path());
    command
        .arg(&script_path)
        .env("PATH", path)
        .env("OCS_SERVER", format!("http://{}", server.addr))
        .env("OCS_TOKEN", tokens[0].0)
        .env("HALL_TOKEN", tokens[1].0)
        .env("BSS_TOKEN", tokens[2].0);
    let output = tokio::task::spawn_blocking(move || run_bounded(command, SAFETY, "the examples"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ALL-EXAMPLES-RAN"),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The README's transcript.

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
/// Marks a transcript block: `<!-- transcript: today YYYY-MM-DD -->`, the local date it was
/// made on (its dates are compared relative to it).
const TRANSCRIPT: &str = "<!-- transcript: today ";

/// The commands of the marked ```` ```text ```` block (`$ ` lines) with the output shown after
/// each, and the day the transcript was made.
fn transcript(markdown: &str) -> (chrono::NaiveDate, Vec<(String, String)>) {
    let lines: Vec<&str> = markdown.lines().collect();
    let marker = lines
        .iter()
        .position(|l| l.starts_with(TRANSCRIPT))
        .expect("a transcript marker in the README");
    let today = lines[marker][TRANSCRIPT.len()..]
        .trim_end_matches("-->")
        .trim()
        .parse()
        .expect("the transcript's day");
    assert_eq!(
        lines[marker + 1],
        "```text",
        "the marker precedes the block"
    );
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in &lines[marker + 2..] {
        if *line == "```" {
            return (today, steps);
        }
        match line.strip_prefix("$ ") {
            Some(command) => steps.push((command.to_owned(), String::new())),
            None => {
                let (_, output) = steps.last_mut().expect("output after a command");
                output.push_str(line);
                output.push('\n');
            }
        }
    }
    panic!("the transcript block does not end");
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// `YYYY-MM-DD` at the start of `bytes`.
fn date_at(bytes: &[u8]) -> Option<chrono::NaiveDate> {
    let text = std::str::from_utf8(bytes.get(..10)?).ok()?;
    let shape = text.bytes().enumerate().all(|(i, b)| {
        if i == 4 || i == 7 {
            b == b'-'
        } else {
            b.is_ascii_digit()
        }
    });
    if !shape {
        return None;
    }
    text.parse().ok()
}

/// What may differ between two runs, made comparable: UUIDs and instants become placeholders,
/// dates become their distance from `today`, runs of spaces one space (column widths follow
/// the values' lengths).
fn normalize(text: &str, today: chrono::NaiveDate) -> String {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let uuid = rest.len() >= 36
            && rest[..36].iter().enumerate().all(|(k, &b)| match k {
                8 | 13 | 18 | 23 => b == b'-',
                _ => is_hex(b),
            });
        if uuid {
            out.push_str("<uuid>");
            i += 36;
            continue;
        }
        if let Some(date) = date_at(rest) {
            if rest.get(10) == Some(&b'T') {
                let end = rest[10..]
                    .iter()
                    .position(|b| !(b.is_ascii_digit() || b":.T".contains(b)))
                    .map_or(rest.len(), |p| p + 10);
                out.push_str("<instant>");
                i += end + usize::from(rest.get(end) == Some(&b'Z'));
            } else {
                out.push_str(&format!("today{:+}", (date - today).num_days()));
                i += 10;
            }
            continue;
        }
        let c = text[i..].chars().next().expect("a character");
        out.push(c);
        i += c.len_utf8();
    }
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn transcript_outputs_compare_without_times_ids_or_column_widths() {
    let today: chrono::NaiveDate = "2026-12-01".parse().unwrap();
    assert_eq!(
        normalize(
            "valid_until   2026-12-31\n1  X  2026-12-01T06:42:06.2998Z  01a23056-d35b-7773-817a-fdb117fb9955\n",
            today
        ),
        "valid_until today+30\n1 X <instant> <uuid>"
    );
    let (day, steps) =
        transcript("<!-- transcript: today 2026-12-01 -->\n```text\n$ a | b\nout 1\n$ c\n```\n");
    assert_eq!(day, today);
    assert_eq!(
        steps,
        [
            ("a | b".to_owned(), "out 1\n".to_owned()),
            ("c".into(), "".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_transcript_runs_as_shown_in_the_order_shown() {
    let markdown = std::fs::read_to_string(README).expect("README.md");
    let (made_on, steps) = transcript(&markdown);
    assert!(steps.len() >= 10, "found {} commands", steps.len());
    // As the README says: a server started on a new database, without tokens.
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    let server = TestServer::start_with(db, test_config(ClockMode::System)).await;
    let today = ocs_lifecycle::lifecycle::Rules::default().local_date(chrono::Utc::now());
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let server_url = format!("http://{}", server.addr);
    for (command, shown) in steps {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(&command)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("PATH", &path)
            .env("OCS_SERVER", &server_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("OCS_") && name != "OCS_SERVER" {
                sh.env_remove(name);
            }
        }
        let output = tokio::task::spawn_blocking(move || {
            let mut child = sh.spawn().expect("spawn sh");
            let deadline = Instant::now() + SAFETY;
            while child.try_wait().expect("try_wait").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("a transcript command did not finish");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.wait_with_output().expect("output")
        })
        .await
        .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            normalize(&printed, today),
            normalize(&shown, made_on),
            "README transcript: `$ {command}` printed:\n{printed}\nthe README shows:\n{shown}"
        );
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Links.

/// Every relative link of the user documentation names a file or directory inside the
/// repository (a reader has the repository, nothing beside it); web links are left alone.
#[test]
fn user_docs_link_only_to_files_of_the_repository() {
    let root = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).expect("the repository");
    let mut files = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("docs entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    for file in files.iter().filter(|f| f.exists()) {
        let text = std::fs::read_to_string(file).expect("read the document");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split('#').next().unwrap_or_default().trim();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = file
                .parent()
                .expect("the document's directory")
                .join(target);
            match std::fs::canonicalize(&resolved) {
                Ok(path) if path.starts_with(&root) => {}
                _ => broken.push(format!("{}: {target}", file.display())),
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links that leave the repository or name nothing: {broken:#?}"
    );
}
