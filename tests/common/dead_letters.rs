//! Waiting for the webhook worker to give up on an event (shared by `tests/cli.rs`, which
//! includes this file with `#[path]`, and the suites that use `common`).

use std::time::Duration;

use ocs_lifecycle::proto;
use ocs_lifecycle::proto::bss_events_client::BssEventsClient;
use tonic::transport::Channel;

/// Polls ListDeadLetters (its first page) until it lists a dead letter, for at most `bound`;
/// the dead letters of that page.
pub async fn wait_for_dead_letters(
    events: &mut BssEventsClient<Channel>,
    bound: Duration,
) -> Vec<proto::DeadLetter> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let dead = events
            .list_dead_letters(proto::ListDeadLettersRequest::default())
            .await
            .expect("ListDeadLetters")
            .into_inner();
        if !dead.events.is_empty() {
            return dead.events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
