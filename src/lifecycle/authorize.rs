//! Service barring per state (spec section 5). A read: it decides, it changes nothing.

use chrono::{DateTime, Utc};

use super::account::Account;
use super::error::{DomainError, ErrorReason};
use super::rules::Rules;
use super::types::{AccountState, ServiceType};

/// Why a service is barred (the Authorize answer's `reason`; spec section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Barring {
    /// The MSISDN has no account.
    NotFound,
    /// An unsold card: nothing until MarkSold.
    SaleLocked,
    /// UNACTIVATED: only the special numbers.
    NotActivated,
    /// VALID without credit: incoming, the special numbers and the recharge hotline.
    InsufficientBalance,
    /// GRACE: outgoing barred except the special numbers and the hotline.
    OneWayBarred,
    /// LOCKED: only the special numbers, outgoing.
    TwoWayBarred,
    AccountRecycled,
}

impl Barring {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Barring::NotFound => "NOT_FOUND",
            Barring::SaleLocked => "SALE_LOCKED",
            Barring::NotActivated => "NOT_ACTIVATED",
            Barring::InsufficientBalance => "INSUFFICIENT_BALANCE",
            Barring::OneWayBarred => "ONE_WAY_BARRED",
            Barring::TwoWayBarred => "TWO_WAY_BARRED",
            Barring::AccountRecycled => "ACCOUNT_RECYCLED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub allowed: bool,
    /// Why the service is barred; `None` when allowed.
    pub barring: Option<Barring>,
    /// The effective state; `None` for an unknown MSISDN.
    pub state: Option<AccountState>,
}

/// Longest destination Authorize takes.
pub const MAX_DESTINATION_DIGITS: usize = 32;

/// A destination as Authorize takes it: up to 32 digits with an optional leading '+' (returned
/// without it), or empty (a service with no called number, e.g. data).
pub fn parse_destination(raw: &str) -> Result<&str, DomainError> {
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if digits.len() > MAX_DESTINATION_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::invalid(
            ErrorReason::InvalidArgument,
            "destination must be up to 32 digits (optional leading '+'), or empty",
        ));
    }
    Ok(digits)
}

/// Decides whether `service` towards `destination` is allowed for `account` at `now`.
pub fn authorize(
    account: Option<&Account>,
    service: ServiceType,
    destination: &str,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Authorization {
    let Some(account) = account else {
        return Authorization {
            allowed: false,
            barring: Some(Barring::NotFound),
            state: None,
        };
    };
    let state = account.effective_state(now, rules);
    let destination = destination.strip_prefix('+').unwrap_or(destination);
    let special = rules.special_numbers.iter().any(|n| n == destination);
    let hotline = destination == rules.recharge_hotline;
    let incoming = service.is_incoming();
    // An outgoing service towards one of the numbers a state still allows.
    let outgoing_to = |allowed: bool| !incoming && allowed;

    // What the state allows, and the barring named when it does not.
    let (allowed, barring) = match state {
        AccountState::Unactivated if !account.sold => (false, Some(Barring::SaleLocked)),
        AccountState::Unactivated => (outgoing_to(special), Some(Barring::NotActivated)),
        AccountState::Valid if incoming || account.total_balance() > 0 => (true, None),
        AccountState::Valid => (
            outgoing_to(special || hotline),
            Some(Barring::InsufficientBalance),
        ),
        AccountState::Grace if incoming => (true, None),
        AccountState::Grace => (special || hotline, Some(Barring::OneWayBarred)),
        AccountState::Locked => (
            outgoing_to(special && !hotline),
            Some(Barring::TwoWayBarred),
        ),
        AccountState::Recycled => (false, Some(Barring::AccountRecycled)),
    };
    Authorization {
        allowed,
        barring: if allowed { None } else { barring },
        state: Some(state),
    }
}
