//! The `[grpc]` section: how much the gRPC server takes on at once and how long it waits.
//!
//! - `max_concurrent_requests`: unary calls of the lifecycle services (`AccountLifecycle`,
//!   `BssEvents` but its `Subscribe` stream, `LifecycleAnalytics`, `TestClock`) handled at
//!   once. A call beyond it is answered at once, RESOURCE_EXHAUSTED with ErrorInfo reason
//!   `OVERLOADED`, and counted in `ocs_rpc_shed_total` (load shedding: a flood never queues
//!   without bound). Health and reflection are never shed.
//! - `default_deadline_ms`: the deadline of such a call whose client sent none (`grpc-timeout`);
//!   past it the call is answered DEADLINE_EXCEEDED. As with any gRPC deadline, a mutation may
//!   still have been applied: retry it with the same request_id.
//! - `max_message_bytes`: the largest message received or sent (tonic answers OUT_OF_RANGE).
//! - `keepalive_interval_secs` / `keepalive_timeout_secs`: HTTP/2 PINGs on every connection, so
//!   a quiet `Subscribe` stream keeps its connection through load balancers that drop idle
//!   ones, and a peer that went away without closing is found.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Unary calls handled at once; more are shed (RESOURCE_EXHAUSTED, reason OVERLOADED).
    pub max_concurrent_requests: u32,
    /// The deadline of a unary call that carries none of its own.
    pub default_deadline_ms: u64,
    /// The largest message received or sent, in bytes.
    pub max_message_bytes: u32,
    /// Seconds between HTTP/2 keepalive PINGs on a connection (0: none).
    pub keepalive_interval_secs: u64,
    /// Seconds a PING may go unanswered before the connection is closed.
    pub keepalive_timeout_secs: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 512,
            // AdvanceStates runs a whole sweep: a minute, not the seconds a recharge takes.
            default_deadline_ms: 60_000,
            // tonic's own default for received messages.
            max_message_bytes: 4 * 1024 * 1024,
            // Below the 60 s idle timeout common to cloud load balancers.
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 20,
        }
    }
}

/// `value` of `key` within `range`, or a problem that names the key and says what it means.
pub(super) fn check_range(
    key: &str,
    value: u64,
    range: RangeInclusive<u64>,
    meaning: &str,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(ConfigError(format!(
        "{key} must be between {} and {} ({meaning}), got {value}",
        range.start(),
        range.end()
    )))
}

impl GrpcConfig {
    /// Every problem of the section, each naming its key.
    pub fn problems(&self) -> Vec<ConfigError> {
        [
            check_range(
                "grpc.max_concurrent_requests",
                self.max_concurrent_requests.into(),
                1..=100_000,
                "unary calls handled at once",
            ),
            check_range(
                "grpc.default_deadline_ms",
                self.default_deadline_ms,
                1..=3_600_000,
                "milliseconds a call without a deadline of its own may take",
            ),
            check_range(
                "grpc.max_message_bytes",
                self.max_message_bytes.into(),
                1024..=256 * 1024 * 1024,
                "bytes of the largest message",
            ),
            check_range(
                "grpc.keepalive_interval_secs",
                self.keepalive_interval_secs,
                0..=86_400,
                "seconds between keepalive pings, 0 for none",
            ),
            check_range(
                "grpc.keepalive_timeout_secs",
                self.keepalive_timeout_secs,
                1..=3_600,
                "seconds a keepalive ping may go unanswered",
            ),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect()
    }

    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    /// The keepalive interval; `None` when pings are off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_secs > 0)
            .then(|| Duration::from_secs(self.keepalive_interval_secs))
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }

    /// `max_message_bytes` as tonic takes it.
    pub fn max_message_size(&self) -> usize {
        usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{error_of, load_env};

    #[test]
    fn limits_have_defaults_come_from_the_environment_and_are_checked() {
        let grpc = load_env(&[]).unwrap().grpc;
        assert_eq!(
            (grpc.max_concurrent_requests, grpc.default_deadline_ms),
            (512, 60_000)
        );
        assert_eq!(grpc.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(
            (grpc.keepalive_interval_secs, grpc.keepalive_timeout_secs),
            (30, 20)
        );
        let config = load_env(&[
            ("OCS_GRPC__MAX_CONCURRENT_REQUESTS", "8"),
            ("OCS_GRPC__KEEPALIVE_INTERVAL_SECS", "0"),
            ("OCS_DRAIN_SECS", "5"),
        ])
        .unwrap();
        assert_eq!(config.grpc.max_concurrent_requests, 8);
        assert_eq!(config.grpc.keepalive_interval(), None);
        assert_eq!(config.drain_secs, 5);
        for (variable, key) in [
            (
                "OCS_GRPC__MAX_CONCURRENT_REQUESTS",
                "grpc.max_concurrent_requests",
            ),
            ("OCS_GRPC__DEFAULT_DEADLINE_MS", "grpc.default_deadline_ms"),
            ("OCS_GRPC__MAX_MESSAGE_BYTES", "grpc.max_message_bytes"),
            (
                "OCS_GRPC__KEEPALIVE_TIMEOUT_SECS",
                "grpc.keepalive_timeout_secs",
            ),
        ] {
            let err = error_of(&[(variable, "0")]);
            assert!(err.contains(key), "{err}");
        }
        let err = error_of(&[("OCS_DRAIN_SECS", "100000")]);
        assert!(err.contains("drain_secs"), "{err}");
        let err = error_of(&[("OCS_GRPC__MAX_CONCURENT_REQUESTS", "1")]);
        assert!(err.contains("max_concurent_requests"), "{err}");
    }
}
