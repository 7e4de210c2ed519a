//! Names this service puts on the wire that clients and the server's layers share: the
//! `google.rpc.ErrorInfo` domain of every error (and the one way to build such a status), and
//! the metadata key that marks a replay.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "ocs-lifecycle";

/// A status with a `google.rpc.ErrorInfo` of [`ERROR_DOMAIN`]: how every error of the service,
/// its handlers and its layers alike, reaches the client.
pub fn error_status(code: Code, reason: &str, message: impl Into<String>) -> Status {
    error_status_with(code, reason, message, HashMap::new())
}

/// [`error_status`] with `ErrorInfo.metadata`.
pub fn error_status_with(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// Response metadata key set to `true` when an Account-returning mutation (ProvisionAccount,
/// MarkSold, Activate, Unlock) was a replay of an earlier request with the same `request_id`.
pub const REPLAYED_METADATA: &str = "ocs-replayed";

/// The gRPC services health reports on (besides the server as a whole, `""`).
pub const ACCOUNT_LIFECYCLE_SERVICE: &str = "ocs.lifecycle.v1.AccountLifecycle";
pub const BSS_EVENTS_SERVICE: &str = "ocs.lifecycle.v1.BssEvents";
/// The reports (issue 18).
pub const LIFECYCLE_ANALYTICS_SERVICE: &str = "ocs.lifecycle.v1.LifecycleAnalytics";
/// Registered (and SERVING) only on a server with the manual clock.
pub const TEST_CLOCK_SERVICE: &str = "ocs.lifecycle.v1.TestClock";
/// Every service health reports on, the list the CLI's `health` prints (tests/cli_client.rs
/// fixes its table) and the services whose calls `grpc.max_concurrent_requests` limits.
pub const SERVICE_NAMES: [&str; 4] = [
    ACCOUNT_LIFECYCLE_SERVICE,
    BSS_EVENTS_SERVICE,
    LIFECYCLE_ANALYTICS_SERVICE,
    TEST_CLOCK_SERVICE,
];
