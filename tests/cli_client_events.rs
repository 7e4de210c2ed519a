//! The event commands of the client, end to end (the real binary against a real server on
//! SQLite and PostgreSQL; `common/cli.rs` runs it): `events tail` with and without `--follow`,
//! and `dead-letters list` / `redeliver` against a real webhook receiver.

#[macro_use]
mod common;
#[path = "common/cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "webhook/hook.rs"]
#[allow(dead_code)]
mod hook;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::dead_letters::wait_for_dead_letters;
use common::{TestDb, TestServer};
use hook::{Hook, always_ok};
use ocs_lifecycle::config::{BssConfig, ClockMode, Config};
use serde_json::Value;

use cli::*;

both_backends! {
    events_tail_without_follow_prints_the_backlog,
    events_tail_follow_prints_the_backlog_then_live_events,
}

async fn events_tail_without_follow_prints_the_backlog(server: TestServer) {
    recycle_one(&server, "8613800000001").await;
    let db = server.db().await;
    let outbox = db.outbox().await;
    assert!(outbox.len() >= 2, "{outbox:?}");

    // --idle-timeout only bounds how long a finished backlog is waited on.
    let all = ocs(
        &server,
        &[
            "events",
            "tail",
            "--after",
            "0",
            "--output",
            "json",
            "--idle-timeout",
            "5",
        ],
    )
    .await
    .ok();
    let events = all.json_lines();
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().expect("sequence"))
        .collect();
    assert_eq!(
        sequences,
        outbox.iter().map(|r| r.sequence).collect::<Vec<_>>()
    );
    assert!(events.iter().all(|e| e["msisdn"] == "8613800000001"));

    let recycled = ocs(
        &server,
        &[
            "events",
            "tail",
            "--type",
            "number_recycled",
            "--idle-timeout",
            "5",
            "--output",
            "json",
        ],
    )
    .await
    .ok();
    let recycled = recycled.json_lines();
    assert_eq!(recycled.len(), 1, "{recycled:?}");
    assert_eq!(recycled[0]["type"], "NUMBER_RECYCLED");
    assert_eq!(recycled[0]["reason"], "UNACTIVATED_EXPIRED");

    let last = outbox.last().expect("an event").sequence.to_string();
    let table = ocs(
        &server,
        &["events", "tail", "--after", &last, "--idle-timeout", "1"],
    )
    .await
    .ok();
    assert_eq!(
        table.stdout.lines().count(),
        1,
        "only the header: {table:#?}"
    );
    let table = ocs(&server, &["events", "tail", "--idle-timeout", "5"])
        .await
        .ok();
    assert_eq!(table.stdout.lines().count(), 1 + outbox.len(), "{table:#?}");
    assert!(table.stdout.contains("NUMBER_RECYCLED"), "{table:#?}");
    db.close().await;
}

async fn events_tail_follow_prints_the_backlog_then_live_events(server: TestServer) {
    recycle_one(&server, "8613800000001").await;
    let backlog = server.db().await.outbox().await.len();
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("OCS_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["events", "tail", "--follow", "--output", "json", "--server"])
        .arg(format!("http://{}", server.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ocs-lifecycle events tail --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_event = |what: &str| -> Value {
        // The server runs on this runtime: wait without holding up its worker.
        let line = tokio::task::block_in_place(|| lines.recv_timeout(SAFETY))
            .unwrap_or_else(|e| panic!("no {what} from events tail --follow: {e}"));
        serde_json::from_str(&line).expect("one JSON object per line")
    };
    for _ in 0..backlog {
        next_event("backlog event");
    }
    // A change made while the tail runs arrives on it.
    provision_sold_and_activate(&server, "8613800000002").await;
    let live = next_event("live event");
    assert_eq!(live["msisdn"], "8613800000002", "{live}");
    assert_eq!(live["to_state"], "VALID", "{live}");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "--follow keeps running"
    );
    child.kill().expect("stop the tail");
    child.wait().expect("reap the tail");
    reader.join().expect("reader thread");
}

mod dead_letters {
    use super::*;

    both_databases! { sqlite, postgres: a_dead_letter_is_listed_and_redelivered }

    async fn a_dead_letter_is_listed_and_redelivered(db: Arc<TestDb>) {
        let hook = Hook::start(Box::new(|_| (500, Duration::ZERO))).await;
        let config = Config {
            bss: BssConfig {
                webhook_url: hook.url(),
                webhook_secret: "test-webhook-secret".into(),
                initial_backoff_ms: 20,
                max_backoff_ms: 100,
                timeout_ms: 1_000,
                max_attempts: 1,
                ..BssConfig::default()
            },
            ..common::test_config(ClockMode::Manual)
        };
        let server = TestServer::start_with(db, config).await;
        let empty = ocs(&server, &["dead-letters", "list", "--output", "json"])
            .await
            .ok()
            .json();
        assert_eq!(empty["dead_letters"], serde_json::json!([]));

        recycle_one(&server, "8613800000001").await;
        let event_id = wait_for_one_dead_letter(&server).await;

        let listed = ocs(&server, &["dead-letters", "list", "--output", "json"])
            .await
            .ok()
            .json();
        let letters = listed["dead_letters"].as_array().expect("dead_letters");
        assert_eq!(letters.len(), 1, "{listed}");
        assert_eq!(letters[0]["event"]["event_id"], event_id.as_str());
        assert_eq!(letters[0]["event"]["msisdn"], "8613800000001");
        assert_eq!(letters[0]["attempts"], 1);
        assert!(
            letters[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("500")),
            "{listed}"
        );
        let table = ocs(&server, &["dead-letters", "list"]).await.ok();
        assert_eq!(table.stdout.lines().count(), 2, "{table:#?}");
        assert!(table.stdout.contains(&event_id), "{table:#?}");

        // The BSS is fixed; the operator redelivers (an unknown id counts nothing).
        hook.set_policy(always_ok());
        let unknown = uuid::Uuid::new_v4().to_string();
        let redelivered = ocs(
            &server,
            &[
                "dead-letters",
                "redeliver",
                &event_id,
                &unknown,
                "--output",
                "json",
            ],
        )
        .await
        .ok()
        .json();
        assert_eq!(redelivered["asked"], 2);
        assert_eq!(redelivered["requeued"], 1);
        assert_eq!(
            redelivered["not_dead_letters"],
            serde_json::json!([unknown.clone()])
        );
        hook.wait_for(SAFETY, |r| r.iter().any(|r| r.status == 200))
            .await;
        let none = ocs(&server, &["dead-letters", "redeliver", "--all"])
            .await
            .ok();
        assert!(none.stdout.contains("requeued  0"), "{none:#?}");
        let usage = ocs(&server, &["dead-letters", "redeliver"]).await;
        assert_eq!(usage.code, 2, "{usage:#?}");
        // The delivered one is no longer a dead letter: the table says so.
        let again = ocs(&server, &["dead-letters", "redeliver", &event_id])
            .await
            .ok();
        assert!(again.stdout.contains("requeued  0"), "{again:#?}");
        assert!(
            again.stdout.contains(&format!(
                "not dead letters (1; unknown, delivered or already queued again):
  {event_id}
"
            )),
            "{again:#?}"
        );
        server.stop().await;
    }

    /// Polls ListDeadLetters until the one dead letter is there; its event_id.
    async fn wait_for_one_dead_letter(server: &TestServer) -> String {
        let letters = wait_for_dead_letters(&mut events_client(server), SAFETY).await;
        letters[0].event.as_ref().expect("event").event_id.clone()
    }
}
