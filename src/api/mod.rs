//! The gRPC services: `AccountLifecycle`, `BssEvents`, `LifecycleAnalytics` (read-only
//! reports) and `TestClock` (manual clock only).
//! A handler validates its request into a domain command (`requests`), has the store carry
//! out the core's decision, and answers; errors become statuses with an ErrorInfo in one place
//! (`convert`). The server that hosts them (health, reflection, authentication, TLS, shutdown)
//! is put together in `crate::server`.

mod accounts;
mod analytics;
pub mod codec;
pub mod convert;
mod dead_letters;
mod events;
pub mod facts;
mod requests;
mod storage_health;
mod test_clock;

pub use crate::lifecycle::SWEEP_ACTOR;
pub use crate::wire::REPLAYED_METADATA;
pub use accounts::{AccountsApi, Context};
pub use analytics::AnalyticsApi;
pub use events::{EventsApi, GAP_WINDOW};
pub use storage_health::{PROBE_INTERVAL, StorageHealth};
pub use test_clock::TestClockApi;
