//! `BssEvents.ListDeadLetters` and `BssEvents.Redeliver`: the operator's view of webhook
//! deliveries that exhausted their attempts (`crate::notify`), and their re-queue. Reads and
//! writes only the delivery state, never the outbox.

use tonic::{Response, Status};

use super::Context;
use super::convert::{self, invalid};
use crate::lifecycle::ErrorReason;
use crate::proto;

/// Dead letters per page when the request says 0.
const DEFAULT_PAGE_SIZE: u32 = 100;
/// Event ids per Redeliver request at most.
const MAX_REDELIVER: usize = 1000;

pub(super) async fn list(
    ctx: &Context,
    request: &proto::ListDeadLettersRequest,
) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
    let page_size = convert::page_size(request.page_size, DEFAULT_PAGE_SIZE)?;
    let after = match request.page_token.as_str() {
        "" => 0,
        token => token
            .parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| invalid(ErrorReason::InvalidArgument, "page_token is not valid"))?,
    };
    ctx.check_ready()?;
    let mut dead = ctx
        .store
        .dead_webhook_deliveries(after, page_size + 1)
        .await?;
    let next_page_token =
        convert::next_page_token(&mut dead, page_size, |d| d.event.sequence.to_string());
    let events = dead
        .into_iter()
        .map(|d| proto::DeadLetter {
            attempts: d.attempts,
            last_error: d.last_error,
            dead_at: Some(convert::timestamp(d.dead_at)),
            event: Some(convert::lifecycle_event(d.event)),
        })
        .collect();
    Ok(Response::new(proto::ListDeadLettersResponse {
        events,
        next_page_token,
    }))
}

pub(super) async fn redeliver(
    ctx: &Context,
    request: &proto::RedeliverRequest,
) -> Result<Response<proto::RedeliverResponse>, Status> {
    if request.event_ids.len() > MAX_REDELIVER {
        return Err(invalid(
            ErrorReason::InvalidArgument,
            format!("at most {MAX_REDELIVER} event_ids per request"),
        ));
    }
    if let Some(bad) = request
        .event_ids
        .iter()
        .find(|id| uuid::Uuid::parse_str(id).is_err())
    {
        return Err(invalid(
            ErrorReason::InvalidArgument,
            format!("event_ids: {bad:?} is not an event id (a UUID)"),
        ));
    }
    ctx.check_ready()?;
    // Real time, like every webhook timing: due at once.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let requeued = ctx
        .store
        .requeue_webhook_deliveries(&request.event_ids, now_ms)
        .await?;
    tracing::info!(
        requested = request.event_ids.len(),
        requeued,
        "webhook dead letters requeued"
    );
    Ok(Response::new(proto::RedeliverResponse {
        requeued: u32::try_from(requeued).unwrap_or(u32::MAX),
    }))
}
