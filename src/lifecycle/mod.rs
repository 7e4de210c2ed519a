//! The pure lifecycle core: states, the exact date arithmetic, recharge/charge/unlock rules,
//! the tariff and the Authorize table (spec sections 1, 2, 4 and 5).
//!
//! This module owns the rules and nothing else: no tokio, no sqlx, no tonic, no OS clock.
//! Every function takes the instant it evaluates at (`now`) and the operator's [`Rules`].
//! Storage and the API only carry out what these functions decide.

mod account;
mod authorize;
mod commands;
mod effects;
mod error;
mod rules;
mod types;

#[cfg(test)]
mod tests;

pub use account::{Account, ExpiringNotice, Swept, Transition, TransitionReason};
pub use authorize::{Authorization, Barring, MAX_DESTINATION_DIGITS, authorize, parse_destination};
pub use commands::{
    Applied, Change, ChargeOutcome, Command, Outcome, ProvisionParams, RechargeOutcome, Unlock,
    apply, provision, provision_over,
};
pub use effects::{
    Effects, EventIds, EventType, HistoryRecord, Origin, OutboxEvent, Provisioned, SWEEP_ACTOR,
    VALIDITY_EXPIRING_REASON, expiring_event,
};
pub use error::{DomainError, ErrorReason};
pub use rules::{Rules, Tariff, TariffTier};
pub use types::{
    AccountState, Amount, HistoryKind, Msisdn, RechargeChannel, RequestId, ServiceType,
};
