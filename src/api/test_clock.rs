//! The `TestClock` service, registered only when the server runs with `--clock manual`.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};

use super::convert;
use crate::clock::{Clock, ManualClock};
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

fn backwards(err: crate::clock::Backwards) -> Status {
    convert::status(Code::FailedPrecondition, "TIME_BACKWARDS", err.to_string())
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
        let time = request
            .get_ref()
            .time
            .as_ref()
            .and_then(convert::from_timestamp)
            .ok_or_else(|| {
                Status::invalid_argument("time is required and must be a valid instant")
            })?;
        // Microseconds, like the system clock: PostgreSQL keeps no finer instants, and an
        // answer must read back the same from either store.
        let to = time.trunc_subsecs(6);
        let from = self.clock.move_to(to).map_err(backwards)?;
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
            .map_err(backwards)?;
        self.moved(from, to).await;
        Ok(self.now())
    }
}
