//! The soak of `ocs-bench soak` (benches/soak.rs), short: 25 s of mixed traffic at 100 ops/s
//! against a real `ocs-lifecycle serve` process with two SIGKILL restarts, a webhook outage,
//! bad inputs and (on PostgreSQL) two cuts of the database connections, then the consistency
//! check read directly from the database. The test fails when any check fails; the memory
//! figures are printed but not judged (25 s says nothing about a leak; the 10-minute run does).
//! No assertion on elapsed time.
// benches/soak.rs includes the process harness itself (it is built into `ocs-bench` too, where
// there is no tests/common); common's own copy of it goes unused here.
#![allow(clippy::duplicate_mod)]

#[allow(unused_macros)]
#[macro_use]
mod common;
#[path = "../benches/soak.rs"]
mod soak;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;

both_databases! { sqlite, postgres: mixed_traffic_with_kills_and_outages_loses_and_duplicates_nothing }

async fn mixed_traffic_with_kills_and_outages_loses_and_duplicates_nothing(db: Arc<TestDb>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let report = soak::run(soak::SoakOptions {
        database_url: db.url.clone(),
        server_bin: env!("CARGO_BIN_EXE_ocs-lifecycle").into(),
        work_dir: dir.path().to_path_buf(),
        duration: Duration::from_secs(25),
        rate: 100,
        accounts: 100,
        kills: 2,
        rss_every: Duration::from_secs(1),
        judge_memory: false,
        progress: false,
    })
    .await;
    // Written to stderr directly so the figures show in a passing run with --nocapture and in
    // a failing one always.
    eprintln!("{}", report.table());
    assert!(
        report.passed(),
        "the soak's consistency check failed:\n{}\nserver logs: {}",
        report.failures().join("\n"),
        dir.keep().display()
    );
}
