//! The command-line client, end to end: the real binary (`CARGO_BIN_EXE_ocs-lifecycle`) talks
//! gRPC to a real in-process server (`common::TestServer`, manual clock) on SQLite and
//! PostgreSQL, and what it printed and what the database holds are both checked
//! (`common/cli.rs`: how the binary is run, and the timeline).
//!
//! This suite: one account's commands, the card import, `accounts list`, `forecast`,
//! Authorize, the clock and health, and the client's own usage errors. The others:
//! `cli_client_events` (`events tail`, dead letters) and `cli_client_tls` (TLS and mTLS).

#[macro_use]
mod common;
#[path = "common/cli.rs"]
#[allow(dead_code)]
mod cli;

use common::{TestDb, TestServer, free_port};
use ocs_lifecycle::config::ClockMode;

use cli::*;

both_backends! {
    provision_activate_recharge_get_and_history_round_trip_in_tables_and_json,
    a_bad_msisdn_is_refused_with_exit_2_and_server_errors_are_one_line,
    import_applies_good_rows_reports_bad_ones_and_a_rerun_applies_nothing_twice,
    import_reads_columns_by_name_and_quoted_fields_and_warns_once_of_unknown_columns,
    accounts_list_filters_by_effective_state_and_pages,
    forecast_until_a_date_lists_the_numbers_recycled_by_its_end_and_writes_nothing,
    authorize_clock_and_health_speak_to_a_real_server,
    mark_sold_on_a_sold_card_says_nothing_changed,
}

async fn provision_activate_recharge_get_and_history_round_trip_in_tables_and_json(
    server: TestServer,
) {
    server.set_time(T0).await;
    let db = server.db().await;
    let run = ocs(
        &server,
        &[
            "account",
            "provision",
            "+8613800138000",
            "--sold",
            "--request-id",
            "p-1",
        ],
    )
    .await
    .ok();
    assert!(run.stdout.contains("UNACTIVATED"), "{run:#?}");
    assert!(run.stdout.contains("request_id"), "{run:#?}");
    assert!(run.stdout.contains("p-1"), "{run:#?}");

    // The same request_id again is a replay: nothing new is written.
    let before = db.counts().await;
    let replay = ocs(
        &server,
        &[
            "account",
            "provision",
            "8613800138000",
            "--sold",
            "--request-id",
            "p-1",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["account"]["state"], "UNACTIVATED");
    assert_eq!(db.counts().await, before);

    let activated = ocs(
        &server,
        &["account", "activate", "8613800138000", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(activated["replayed"], false);
    assert_eq!(activated["account"]["state"], "VALID");
    assert_eq!(activated["account"]["valid_until"], "2030-08-28");
    let generated = activated["request_id"].as_str().expect("request_id");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{activated}");

    let recharge_args = [
        "account",
        "recharge",
        "8613800138000",
        "--amount",
        "5000",
        "--channel",
        "online",
        "--request-id",
        "r-1",
        "--output",
        "json",
    ];
    let recharged = ocs(&server, &recharge_args).await.ok().json();
    assert_eq!(recharged["replayed"], false);
    assert_eq!(recharged["balance_before"], 0);
    assert_eq!(recharged["balance_after"], 5000);
    assert_eq!(recharged["days_granted"], 180);
    assert_eq!(recharged["account"]["balance"], 5000);
    let again = ocs(&server, &recharge_args).await.ok().json();
    assert_eq!(again["replayed"], true);
    assert_eq!(
        db.account("8613800138000").await.expect("row").balance,
        5000
    );

    let table = ocs(&server, &["account", "get", "8613800138000"])
        .await
        .ok();
    assert!(table.stdout.contains("5000 fen (50.00 yuan)"), "{table:#?}");
    let state_line = table
        .stdout
        .lines()
        .find(|l| l.starts_with("state "))
        .expect("a state line");
    assert_eq!(state_line.split_whitespace().nth(1), Some("VALID"));
    let got = ocs(
        &server,
        &["account", "get", "8613800138000", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(got["msisdn"], "8613800138000");
    assert_eq!(got["balance"], 5000);
    assert_eq!(got["provisioned_at"], "2030-03-01T02:00:00Z");

    let history = ocs(
        &server,
        &["account", "history", "8613800138000", "--output", "json"],
    )
    .await
    .ok()
    .json();
    let kinds: Vec<&str> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["PROVISIONED", "ACTIVATED", "RECHARGE"]);
    assert_eq!(history["entries"][2]["request_id"], "r-1");
    assert_eq!(history["entries"][2]["amount"], 5000);
    let table = ocs(&server, &["account", "history", "8613800138000"])
        .await
        .ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three entries: {table:#?}");
    assert!(lines[0].starts_with("AT "), "{table:#?}");
    // Aligned: every row starts its KIND column where the header does.
    let kind_at = lines[0].find("KIND").expect("KIND column");
    assert!(lines[3][kind_at..].starts_with("RECHARGE"), "{table:#?}");
    db.close().await;
}

async fn a_bad_msisdn_is_refused_with_exit_2_and_server_errors_are_one_line(server: TestServer) {
    server.set_time(T0).await;
    let db = server.db().await;
    ocs(
        &server,
        &["account", "provision", "8613800138000", "--sold"],
    )
    .await
    .ok();
    let before = db.snapshot("8613800138000").await;

    let bad = ocs(
        &server,
        &[
            "account",
            "recharge",
            "86138abc",
            "--amount",
            "100",
            "--channel",
            "online",
        ],
    )
    .await;
    assert_eq!(bad.code, 2, "{bad:#?}");
    assert!(bad.error_line().contains("INVALID_MSISDN"), "{bad:#?}");
    assert!(bad.stdout.is_empty(), "{bad:#?}");

    let unknown = ocs(&server, &["account", "get", "8613800000000"]).await;
    assert_eq!(unknown.code, 1, "{unknown:#?}");
    assert!(
        unknown
            .error_line()
            .starts_with("error: NOT_FOUND (ACCOUNT_NOT_FOUND): "),
        "{unknown:#?}"
    );

    // The server's INVALID_ARGUMENT is bad input too; the line names the request_id.
    let zero = ocs(
        &server,
        &[
            "account",
            "recharge",
            "8613800138000",
            "--amount",
            "0",
            "--channel",
            "online",
            "--request-id",
            "z-1",
        ],
    )
    .await;
    assert_eq!(zero.code, 2, "{zero:#?}");
    let line = zero.error_line();
    assert!(
        line.contains("INVALID_ARGUMENT (INVALID_AMOUNT)"),
        "{zero:#?}"
    );
    assert!(line.contains("z-1"), "{zero:#?}");

    let unsold_charge = ocs(
        &server,
        &["account", "charge", "8613800138000", "--amount", "10"],
    )
    .await;
    assert_eq!(unsold_charge.code, 1, "{unsold_charge:#?}");
    assert!(
        unsold_charge
            .error_line()
            .starts_with("error: FAILED_PRECONDITION"),
        "{unsold_charge:#?}"
    );

    let usage = ocs(&server, &["account", "recharge", "8613800138000"]).await;
    assert_eq!(usage.code, 2, "clap's usage error: {usage:#?}");

    assert_eq!(db.snapshot("8613800138000").await, before);
    db.close().await;
}

async fn accounts_list_filters_by_effective_state_and_pages(server: TestServer) {
    server.set_time(T0).await;
    for msisdn in ["8613800000001", "8613800000002", "8613800000003"] {
        ocs(&server, &["account", "provision", msisdn, "--sold"])
            .await
            .ok();
    }
    for msisdn in ["8613800000001", "8613800000003"] {
        ocs(&server, &["account", "activate", msisdn]).await.ok();
    }
    // Valid through 2030-08-28: GRACE from the next day.
    server.set_time("2030-09-01T02:00:00Z").await;
    let grace = ocs(
        &server,
        &["accounts", "list", "--state", "grace", "--output", "json"],
    )
    .await
    .ok()
    .json();
    let msisdns: Vec<&str> = grace["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| a["msisdn"].as_str().expect("msisdn"))
        .collect();
    assert_eq!(msisdns, ["8613800000001", "8613800000003"]);
    assert_eq!(grace["accounts"][0]["state"], "GRACE");
    let table = ocs(&server, &["accounts", "list", "--state", "unactivated"])
        .await
        .ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{table:#?}");
    assert!(
        lines[1].starts_with("8613800000002  UNACTIVATED"),
        "{table:#?}"
    );

    let page = ocs(
        &server,
        &["accounts", "list", "--page-size", "2", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(page["accounts"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["next_page_token"], "8613800000002");
    let all = ocs(
        &server,
        &[
            "accounts",
            "list",
            "--page-size",
            "2",
            "--all",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(all["accounts"].as_array().map(Vec::len), Some(3));
    assert_eq!(all["next_page_token"], "");
}

async fn forecast_until_a_date_lists_the_numbers_recycled_by_its_end_and_writes_nothing(
    server: TestServer,
) {
    server.set_time(T0).await;
    let db = server.db().await;
    let card = ocs(
        &server,
        &["account", "provision", "8613800000001", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(card["account"]["card_expiry"], "2031-08-23");
    server.set_time("2031-08-01T02:00:00Z").await;
    let before = db.counts().await;

    let last_day = ocs(
        &server,
        &["forecast", "--until", "2031-08-23", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(last_day["dry_run"], true);
    assert_eq!(last_day["as_of"], "2031-08-23T15:59:59Z");
    assert_eq!(last_day["to_recycled_unactivated"], 0);
    assert_eq!(last_day["recycled_msisdns"], serde_json::json!([]));

    let next_day = ocs(
        &server,
        &["forecast", "--until", "2031-08-24", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(next_day["to_recycled_unactivated"], 1);
    assert_eq!(
        next_day["recycled_msisdns"],
        serde_json::json!(["8613800000001"])
    );
    let table = ocs(&server, &["forecast", "--until", "2031-08-24"])
        .await
        .ok();
    assert!(table.stdout.contains("  8613800000001"), "{table:#?}");

    // In New York the 24th ends 12 hours later.
    let elsewhere = ocs(
        &server,
        &[
            "forecast",
            "--until",
            "2031-08-24",
            "--timezone",
            "America/New_York",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(elsewhere["as_of"], "2031-08-25T03:59:59Z");

    let bad = ocs(&server, &["forecast", "--until", "2031-02-30"]).await;
    assert_eq!(bad.code, 2, "{bad:#?}");
    assert_eq!(db.counts().await, before, "a forecast writes nothing");
    db.close().await;
}

async fn authorize_clock_and_health_speak_to_a_real_server(server: TestServer) {
    // The manual clock, set and moved from the command line.
    let set = ocs(&server, &["clock", "set", "2030-03-01T10:00:00+08:00"])
        .await
        .ok();
    assert_eq!(set.stdout, format!("now  {T0}\n"), "{set:#?}");
    let moved = ocs(&server, &["clock", "advance", "1d12h", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(moved["now"], "2030-03-02T14:00:00Z");
    let got = ocs(&server, &["clock", "get"]).await.ok();
    assert_eq!(got.stdout, "now  2030-03-02T14:00:00Z\n", "{got:#?}");
    let backwards = ocs(&server, &["clock", "set", T0]).await;
    assert!(
        backwards.error_line().contains("TIME_BACKWARDS"),
        "{backwards:#?}"
    );
    let nonsense = ocs(&server, &["clock", "advance", "soon"]).await;
    assert_eq!(nonsense.code, 2, "{nonsense:#?}");

    // Authorize: a sold, activated card may call; an unsold one may not.
    provision_sold_and_activate(&server, "8613800000001").await;
    ocs(&server, &["account", "provision", "8613800000002"])
        .await
        .ok();
    let broke = ocs(
        &server,
        &["authorize", "8613800000001", "--service", "voice-out"],
    )
    .await
    .ok();
    assert!(broke.stdout.contains("INSUFFICIENT_BALANCE"), "{broke:#?}");
    // Channels in any case too.
    ocs(
        &server,
        &[
            "account",
            "recharge",
            "8613800000001",
            "--amount",
            "5000",
            "--channel",
            "Online",
        ],
    )
    .await
    .ok();
    let allowed = ocs(
        &server,
        &[
            "authorize",
            "8613800000001",
            "--service",
            "VOICE_OUT",
            "--destination",
            "8613900000000",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(allowed["allowed"], true, "{allowed}");
    assert_eq!(allowed["state"], "VALID", "{allowed}");
    assert_eq!(allowed["service"], "VOICE_OUT", "{allowed}");
    let refused = ocs(
        &server,
        &["authorize", "8613800000002", "--service", "data"],
    )
    .await
    .ok();
    assert!(
        refused.stdout.lines().any(|l| l == "allowed      false"),
        "{refused:#?}"
    );
    assert!(
        refused
            .stdout
            .lines()
            .any(|l| l == "reason       SALE_LOCKED"),
        "{refused:#?}"
    );

    // Health: the server and each service.
    let health = ocs(&server, &["health"]).await.ok();
    let lines: Vec<&str> = health.stdout.lines().collect();
    assert_eq!(
        lines[0], "SERVICE                              STATUS",
        "{health:#?}"
    );
    assert_eq!(
        lines[1], "(server)                             SERVING",
        "{health:#?}"
    );
    assert!(
        lines.contains(&"ocs.lifecycle.v1.LifecycleAnalytics  SERVING"),
        "{health:#?}"
    );
    assert!(
        lines.contains(&"ocs.lifecycle.v1.TestClock           SERVING"),
        "{health:#?}"
    );
    let one = ocs(
        &server,
        &[
            "health",
            "--service",
            "ocs.lifecycle.v1.BssEvents",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        one,
        serde_json::json!({"services": [
            {"service": "ocs.lifecycle.v1.BssEvents", "status": "SERVING"}
        ]})
    );
    let unknown = ocs(&server, &["health", "--service", "no.such.Service"]).await;
    assert_eq!(unknown.code, 1, "{unknown:#?}");
    assert!(unknown.stdout.contains("UNKNOWN"), "{unknown:#?}");

    // States, channels and output formats in any case.
    let grace = ocs(
        &server,
        &["accounts", "list", "--state", "GRACE", "--output", "JSON"],
    )
    .await
    .ok()
    .json();
    assert_eq!(grace["accounts"], serde_json::json!([]));
}

async fn mark_sold_on_a_sold_card_says_nothing_changed(server: TestServer) {
    server.set_time(T0).await;
    ocs(&server, &["account", "provision", "8613800000001"])
        .await
        .ok();
    let first = ocs(
        &server,
        &["account", "mark-sold", "8613800000001", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(first["changed"], true, "{first}");
    assert_eq!(first["account"]["sold"], true, "{first}");
    let again = ocs(&server, &["account", "mark-sold", "8613800000001"])
        .await
        .ok();
    assert!(
        again
            .stdout
            .ends_with("the card was already sold: nothing changed\n"),
        "{again:#?}"
    );
    let again = ocs(
        &server,
        &["account", "mark-sold", "8613800000001", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(again["changed"], false, "{again}");
    // One SOLD row in the history: the first mark-sold's.
    let history = ocs(
        &server,
        &["account", "history", "8613800000001", "--output", "json"],
    )
    .await
    .ok()
    .json();
    let sold = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "SOLD")
        .count();
    assert_eq!(sold, 1, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_one_line_saying_it_cannot_connect() {
    let server = format!("http://127.0.0.1:{}", free_port());
    let run = ocs_at(&server, &["account", "get", "8613800138000"]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.error_line()
            .starts_with(&format!("error: cannot connect to the server at {server}")),
        "{run:#?}"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = write_file(dir.path(), "cards.csv", "msisdn\n8613800138000\n");
    let run = ocs_at(&server, &["import", &file]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.error_line().contains("cannot connect"), "{run:#?}");
}

/// Client commands take only client options: a server option is refused (exit 2) with a line
/// saying where it belongs, and `--help` lists none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_refuse_server_options_and_list_only_their_own() {
    let server = "http://127.0.0.1:1";
    let refused = ocs_at(
        server,
        &[
            "account",
            "get",
            "8613800138000",
            "--database-url",
            "mysql://x",
            "--clock",
            "manual",
        ],
    )
    .await;
    assert_eq!(refused.code, 2, "{refused:#?}");
    assert!(refused.stderr.contains("'--database-url'"), "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("--database-url is a server option (serve, migrate, sweep, config check)"),
        "{refused:#?}"
    );
    assert!(refused.stdout.is_empty(), "{refused:#?}");
    let server_flags = [
        "--config",
        "--listen",
        "--http-addr",
        "--database-url",
        "--clock ",
        "--log-format",
        "--insecure",
        "--bss-webhook",
    ];
    for command in [
        &["account", "get", "--help"][..],
        &["accounts", "list", "--help"],
        &["authorize", "--help"],
        &["clock", "advance", "--help"],
        &["health", "--help"],
        &["forecast", "--help"],
        &["events", "tail", "--help"],
        &["dead-letters", "redeliver", "--help"],
        &["import", "--help"],
    ] {
        let help = ocs_at(server, command).await.ok();
        assert!(help.stdout.contains("--server"), "{command:?}: {help:#?}");
        for flag in server_flags {
            assert!(
                !help.stdout.contains(flag),
                "{command:?} lists {flag}: {help:#?}"
            );
        }
    }
    // The server's commands still take them.
    let help = ocs_at(server, &["serve", "--help"]).await.ok();
    for flag in server_flags {
        assert!(help.stdout.contains(flag.trim()), "serve: {flag} {help:#?}");
    }
    assert!(!help.stdout.contains("--server"), "{help:#?}");

    // A token pasted with its scheme gets a hint, before anything is sent.
    let pasted = ocs_at(
        server,
        &[
            "account",
            "get",
            "8613800138000",
            "--token",
            "Bearer ocs_abc",
        ],
    )
    .await;
    assert_eq!(pasted.code, 2, "{pasted:#?}");
    assert!(
        pasted.error_line().contains("without \"Bearer \""),
        "{pasted:#?}"
    );
}

/// `clock` against a server on the system clock says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_on_a_system_clock_server_says_it_needs_the_manual_clock() {
    let Some(db) = TestDb::create(common::Backend::Sqlite).await else {
        return;
    };
    let server = TestServer::start_on(db, ClockMode::System).await;
    let run = ocs(&server, &["clock", "get"]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.error_line().contains("--clock manual"), "{run:#?}");
    let health = ocs(&server, &["health"]).await.ok();
    assert!(
        health
            .stdout
            .lines()
            .any(|l| l == "ocs.lifecycle.v1.TestClock           NOT_SERVING"),
        "{health:#?}"
    );
    server.stop().await;
}

async fn import_applies_good_rows_reports_bad_ones_and_a_rerun_applies_nothing_twice(
    server: TestServer,
) {
    server.set_time(T0).await;
    let db = server.db().await;
    // Already in use, provisioned by someone else: its row is refused by the server.
    ocs(&server, &["account", "provision", "8613800000009"])
        .await
        .ok();
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = write_file(
        dir.path(),
        "cards.csv",
        "msisdn,preset_balance,sold,initial_validity_days\n\
         +8613800000001,1000,true,365\n\
         8613800000002,,false,\n\
         86138abc,0,true,0\n\
         \n\
         8613800000003,0,yes,0\n\
         8613800000004,0,maybe,0\n\
         8613800000009,0,true,0\n",
    );
    let before = db.counts().await;

    let dry = ocs(&server, &["import", &file, "--dry-run", "--output", "json"]).await;
    assert_eq!(dry.code, 1, "rows are rejected: {dry:#?}");
    let report = dry.json();
    assert_eq!(
        (report["valid"].as_u64(), report["rejected"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(db.counts().await, before, "a dry run sends nothing");

    let first = ocs(&server, &["import", &file, "--concurrency", "3"]).await;
    assert_eq!(first.code, 1, "rows were rejected: {first:#?}");
    assert!(
        first.stdout.contains("line 4: 86138abc: INVALID_MSISDN"),
        "{first:#?}"
    );
    assert!(
        first.stdout.contains("line 7: 8613800000004: sold"),
        "{first:#?}"
    );
    assert!(
        first
            .stdout
            .contains("line 8: 8613800000009: ALREADY_EXISTS (ACCOUNT_EXISTS)"),
        "{first:#?}"
    );
    let summary: Vec<&str> = first.stdout.lines().rev().take(3).collect();
    assert_eq!(
        summary,
        [
            "rejected          3",
            "already imported  0",
            "imported          3"
        ],
        "{first:#?}"
    );
    let after_first = db.counts().await;
    assert_eq!(after_first.accounts, before.accounts + 3);
    let card = db.account("8613800000001").await.expect("imported");
    assert_eq!((card.preset_balance, card.state), (1000, 1));
    assert!(db.account("8613800000002").await.is_some());
    assert!(db.account("8613800000003").await.is_some());

    let rerun = ocs(&server, &["import", &file, "--output", "json"]).await;
    assert_eq!(rerun.code, 1, "{rerun:#?}");
    let report = rerun.json();
    assert_eq!(report["imported"], 0, "{report}");
    assert_eq!(report["already_imported"], 3, "{report}");
    assert_eq!(report["rejected"], 3, "{report}");
    let lines: Vec<u64> = report["rejections"]
        .as_array()
        .expect("rejections")
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, [4, 7, 8]);
    assert_eq!(
        db.counts().await,
        after_first,
        "a rerun applies nothing twice"
    );

    // A file with only good rows exits 0.
    let good = write_file(
        dir.path(),
        "good.csv",
        "msisdn,preset_balance\n8613800000010,5\n",
    );
    let run = ocs(&server, &["import", &good]).await.ok();
    assert!(run.stdout.contains("imported          1"), "{run:#?}");
    // A file that is not an import file at all is bad input.
    let wrong = write_file(dir.path(), "wrong.csv", "number,amount\n1,2\n");
    let run = ocs(&server, &["import", &wrong]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.error_line().contains("header"), "{run:#?}");
    db.close().await;
}

/// The import reads CSV as CSV: columns by name in any order, unknown ones ignored with one
/// warning, quoted fields with commas, doubled quotes and line breaks (rows are reported at the
/// line they start on); a header without `msisdn` is bad input naming it.
async fn import_reads_columns_by_name_and_quoted_fields_and_warns_once_of_unknown_columns(
    server: TestServer,
) {
    server.set_time(T0).await;
    let db = server.db().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = write_file(
        dir.path(),
        "cards.csv",
        "note,sold,MSISDN,colour,preset_balance\n\
         plain,yes,8613800000021,red,\"1,000\"\n\
         \"say \"\"hi\"\", twice\",no,+8613800000022,blue,5\n\
         \"two\nlines\",true,8613800000023,,0\n\
         x,maybe,8613800000024,,0\n\
         x,yes,\"86138\"\"25\",,0\n\
         x,yes,8613800000026,red\n",
    );
    let before = db.counts().await;
    let run = ocs(&server, &["import", &file]).await;
    assert_eq!(run.code, 1, "rows are rejected: {run:#?}");
    let stderr: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(stderr.len(), 1, "one warning, not one per row: {run:#?}");
    assert!(stderr[0].starts_with("warning: "), "{run:#?}");
    assert!(
        stderr[0].contains("note, colour"),
        "the warning names the unknown columns: {run:#?}"
    );
    assert!(
        run.stdout.contains("line 6: 8613800000024: sold \"maybe\""),
        "the row after a quoted line break is on line 6: {run:#?}"
    );
    assert!(
        run.stdout.contains("line 7: 86138\"25: INVALID_MSISDN"),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("line 8: 8613800000026: 4 cells, the header has 5 columns"),
        "{run:#?}"
    );
    let summary: Vec<&str> = run.stdout.lines().rev().take(3).collect();
    assert_eq!(
        summary,
        [
            "rejected          3",
            "already imported  0",
            "imported          3"
        ],
        "{run:#?}"
    );
    assert_eq!(db.counts().await.accounts, before.accounts + 3);
    for (msisdn, preset_balance) in [
        ("8613800000021", 1000),
        ("8613800000022", 5),
        ("8613800000023", 0),
    ] {
        let card = db.account(msisdn).await.expect("imported");
        assert_eq!(card.preset_balance, preset_balance, "{msisdn}");
    }
    let json = ocs(&server, &["import", &file, "--output", "json"])
        .await
        .json();
    assert_eq!(json["already_imported"], 3, "{json}");
    let lines: Vec<u64> = json["rejections"]
        .as_array()
        .expect("rejections")
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, [6, 7, 8]);

    // Without the msisdn column the file is bad input, and the error names the column.
    let counts = db.counts().await;
    let no_msisdn = write_file(dir.path(), "no-msisdn.csv", "preset_balance,sold\n5,yes\n");
    let run = ocs(&server, &["import", &no_msisdn]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.error_line().contains("no msisdn column"), "{run:#?}");
    assert_eq!(db.counts().await, counts, "nothing was sent");
    db.close().await;
}
