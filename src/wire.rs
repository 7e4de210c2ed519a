//! Names this service puts on the wire that clients and the server's layers share: the
//! `google.rpc.ErrorInfo` domain of every error, and the metadata key that marks a replay.

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "ocs-lifecycle";

/// Response metadata key set to `true` when an Account-returning mutation (ProvisionAccount,
/// MarkSold, Activate, Unlock) was a replay of an earlier request with the same `request_id`.
pub const REPLAYED_METADATA: &str = "ocs-replayed";
