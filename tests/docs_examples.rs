//! The shell examples of docs/integration.md run against a real server.
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
use std::time::Duration;

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
