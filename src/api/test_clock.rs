//! The `TestClock` service, registered only when the server runs with `--clock manual`.
//!
//! The clock never goes backwards (FAILED_PRECONDITION `TIME_BACKWARDS`) and stays within years
//! 1–9999, the range of protobuf's `Timestamp` and of `YYYY-MM-DD` dates: a move beyond it —
//! `AdvanceTime(i64::MAX)`, a `SetTime` after 9999-12-31T23:59:59Z — is INVALID_ARGUMENT
//! `TIME_OUT_OF_RANGE` and leaves the clock where it was.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};

use super::convert;
use crate::clock::{Clock, ManualClock, MoveError};
use crate::proto;
use crate::proto::test_clock_server::TestClock;
use crate::scheduler::{ClockMove, ClockMoves};

pub struct TestClockApi {
    clock: Arc<ManualClock>,
    /// The scheduler, told of every move; `None` when it is off.
    scheduler: Option<ClockMoves>,
}

impl TestClockApi {
    pub fn new(clock: Arc<ManualClock>, scheduler: Option<ClockMoves>) -> Self {
        Self { clock, scheduler }
    }

    /// Tells the scheduler the clock moved and waits until any sweep the move triggered has
    /// committed, so SetTime/AdvanceTime return after it.
    async fn moved(&self, from: DateTime<Utc>, to: DateTime<Utc>) {
        let Some(scheduler) = &self.scheduler else {
            return;
        };
        let (done, finished) = oneshot::channel();
        if scheduler.send(ClockMove { from, to, done }).await.is_ok() {
            // An error means the scheduler stopped (shutdown): nothing more to wait for.
            let _ = finished.await;
        }
    }

    fn now(&self) -> Response<proto::GetTimeResponse> {
        Response::new(proto::GetTimeResponse {
            now: Some(convert::timestamp(self.clock.now())),
        })
    }
}

fn refused(err: MoveError) -> Status {
    match err {
        MoveError::Backwards(err) => {
            convert::status(Code::FailedPrecondition, "TIME_BACKWARDS", err.to_string())
        }
        err @ MoveError::OutOfRange { .. } => {
            convert::status(Code::InvalidArgument, "TIME_OUT_OF_RANGE", err.to_string())
        }
    }
}

#[tonic::async_trait]
impl TestClock for TestClockApi {
    async fn get_time(
        &self,
        _request: Request<proto::GetTimeRequest>,
    ) -> Result<Response<proto::GetTimeResponse>, Status> {
        Ok(self.now())
    }

    async fn set_time(
        &self,
        request: Request<proto::SetTimeRequest>,
    ) -> Result<Response<proto::GetTimeResponse>, Status> {
        let Some(requested) = request.get_ref().time.as_ref() else {
            return Err(convert::status(
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
                "time is required",
            ));
        };
        let time = (0..=999_999_999)
            .contains(&requested.nanos)
            .then(|| convert::from_timestamp(requested))
            .flatten()
            .ok_or_else(|| {
                convert::status(
                    Code::InvalidArgument,
                    "TIME_OUT_OF_RANGE",
                    format!(
                        "time {{seconds: {}, nanos: {}}} is not an instant from \
                         0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z (nanos 0 to 999999999)",
                        requested.seconds, requested.nanos
                    ),
                )
            })?;
        // Microseconds, like the system clock: PostgreSQL keeps no finer instants, and an
        // answer must read back the same from either store.
        let to = time.trunc_subsecs(6);
        let from = self.clock.move_to(to).map_err(refused)?;
        self.moved(from, to).await;
        Ok(self.now())
    }

    async fn advance_time(
        &self,
        request: Request<proto::AdvanceTimeRequest>,
    ) -> Result<Response<proto::GetTimeResponse>, Status> {
        let (from, to) = self
            .clock
            .move_by(request.get_ref().seconds)
            .map_err(refused)?;
        self.moved(from, to).await;
        Ok(self.now())
    }
}
