//! Names this service puts on the wire that clients and the server's layers share: the
//! `google.rpc.ErrorInfo` domain of every error, and the metadata key that marks a replay.

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "ocs-lifecycle";

/// Response metadata key set to `true` when an Account-returning mutation (ProvisionAccount,
/// MarkSold, Activate, Unlock) was a replay of an earlier request with the same `request_id`.
pub const REPLAYED_METADATA: &str = "ocs-replayed";

/// The gRPC services health reports on (besides the server as a whole, `""`).
pub const ACCOUNT_LIFECYCLE_SERVICE: &str = "ocs.lifecycle.v1.AccountLifecycle";
pub const BSS_EVENTS_SERVICE: &str = "ocs.lifecycle.v1.BssEvents";
/// Registered (and SERVING) only on a server with the manual clock.
pub const TEST_CLOCK_SERVICE: &str = "ocs.lifecycle.v1.TestClock";
/// The reports (issue 18). Health reports on it too, but it is not (yet) in [`SERVICE_NAMES`],
/// the list the CLI's `health` prints, whose table tests/cli_client.rs fixes.
pub const LIFECYCLE_ANALYTICS_SERVICE: &str = "ocs.lifecycle.v1.LifecycleAnalytics";
pub const SERVICE_NAMES: [&str; 3] = [
    ACCOUNT_LIFECYCLE_SERVICE,
    BSS_EVENTS_SERVICE,
    TEST_CLOCK_SERVICE,
];
