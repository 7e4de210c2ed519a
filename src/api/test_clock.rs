//! The `TestClock` service, registered only when the server runs with `--clock manual`.

use std::sync::Arc;

use chrono::SubsecRound;
use tonic::{Code, Request, Response, Status};

use super::convert;
use crate::clock::{Clock, ManualClock};
use crate::proto;
use crate::proto::test_clock_server::TestClock;

pub struct TestClockApi {
    clock: Arc<ManualClock>,
}

impl TestClockApi {
    pub fn new(clock: Arc<ManualClock>) -> Self {
        Self { clock }
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
        self.clock.set(time.trunc_subsecs(6)).map_err(backwards)?;
        Ok(self.now())
    }

    async fn advance_time(
        &self,
        request: Request<proto::AdvanceTimeRequest>,
    ) -> Result<Response<proto::GetTimeResponse>, Status> {
        self.clock
            .advance(request.get_ref().seconds)
            .map_err(backwards)?;
        Ok(self.now())
    }
}
