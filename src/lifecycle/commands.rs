//! Commands on an account: `apply(account, command, now, rules)` decides the new facts, the
//! transitions and the history entry, or refuses with a [`DomainError`] and changes nothing.

use chrono::{DateTime, NaiveDate, Utc};

use super::account::{Account, Transition, TransitionReason};
use super::effects::Provisioned;
use super::error::{DomainError, ErrorReason};
use super::rules::{Rules, add_days};
use super::types::{AccountState, Amount, HistoryKind, Msisdn, RechargeChannel};

/// What a provisioning request asks for ([`ProvisionParams::validate`], which [`provision`]
/// runs first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionParams {
    pub preset_balance: i64,
    pub sold: bool,
    /// 0 = the configured default.
    pub initial_validity_days: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unlock {
    pub operator_id: String,
    pub branch_id: String,
    /// `None`: unlock without a recharge.
    pub recharge_amount: Option<Amount>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    MarkSold,
    Activate,
    Recharge {
        amount: Amount,
        channel: RechargeChannel,
        validity_days: u32,
    },
    Charge {
        amount: Amount,
    },
    Unlock(Unlock),
}

impl Command {
    /// Checks what can be checked without the account (days, lengths; amounts are valid by
    /// their type, [`Amount`]); runs before any I/O.
    pub fn validate(&self) -> Result<(), DomainError> {
        match self {
            Command::MarkSold | Command::Activate | Command::Charge { .. } => Ok(()),
            Command::Recharge { validity_days, .. } => {
                check_days("validity_days", *validity_days, true)
            }
            Command::Unlock(unlock) => {
                check_actor_part("operator_id", &unlock.operator_id)?;
                check_actor_part("branch_id", &unlock.branch_id)
            }
        }
    }
}

/// The longest validity a request may name (100 years), so date arithmetic cannot overflow.
const MAX_REQUEST_DAYS: u32 = 36_500;

fn check_days(field: &str, days: u32, zero_allowed: bool) -> Result<(), DomainError> {
    if (days == 0 && !zero_allowed) || days > MAX_REQUEST_DAYS {
        return Err(DomainError::invalid(
            ErrorReason::InvalidArgument,
            format!(
                "{field} must be between 1 and {MAX_REQUEST_DAYS} days (0 = default), got {days}"
            ),
        ));
    }
    Ok(())
}

fn check_actor_part(field: &str, value: &str) -> Result<(), DomainError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(DomainError::invalid(
            ErrorReason::InvalidArgument,
            format!("{field} is required: 1 to 64 characters of letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

fn add_balance(balance: i64, amount: i64) -> Result<i64, DomainError> {
    balance.checked_add(amount).ok_or_else(|| {
        DomainError::invalid(
            ErrorReason::AmountOverflow,
            format!("a recharge of {amount} would overflow the balance of {balance}"),
        )
    })
}

/// The details of an applied recharge (also for an unlock that carries one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RechargeOutcome {
    pub valid_until_before: Option<NaiveDate>,
    pub valid_until_after: Option<NaiveDate>,
    pub days_granted: u32,
    pub capped: bool,
    pub balance_before: i64,
    pub balance_after: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeOutcome {
    pub charged_preset: i64,
    pub charged_balance: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    None,
    Recharge(RechargeOutcome),
    Charge(ChargeOutcome),
}

/// The history entry a command writes (boundary transitions write their own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: HistoryKind,
    pub from: AccountState,
    pub to: AccountState,
    pub amount: i64,
    /// A Recharge's channel (`None` for every other command).
    pub channel: Option<RechargeChannel>,
}

/// The result of a command: the new facts and everything that must be written with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub account: Account,
    /// Boundaries crossed since the last write (materialised first), then the command's own
    /// state change if it made one. Each becomes a history row and a STATE_CHANGED event.
    pub transitions: Vec<Transition>,
    /// The command's own history entry; `None` when it changed nothing (e.g. a repeated Activate).
    pub change: Option<Change>,
    pub outcome: Outcome,
}

/// Provisions `msisdn` over what is stored for it (`current`): a number in use cannot be
/// provisioned again until it is RECYCLED (caught up to `now` first, so a number whose lock
/// ran out is free even before the sweep has seen it); a recycled generation is retired — to be
/// archived with the boundaries it crossed — and the next one created as an UNACTIVATED card.
pub fn provision_over(
    current: Option<&Account>,
    msisdn: Msisdn,
    account_id: String,
    params: &ProvisionParams,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Provisioned, DomainError> {
    let mut archive = None;
    let mut archive_transitions = Vec::new();
    if let Some(previous) = current {
        let mut previous = previous.clone();
        archive_transitions = previous.catch_up(now, rules);
        if previous.state != AccountState::Recycled {
            return Err(DomainError::AlreadyExists {
                reason: ErrorReason::AccountExists,
                message: format!(
                    "msisdn {msisdn} is in use (account {}, {})",
                    previous.account_id, previous.state
                ),
            });
        }
        archive = Some(previous);
    }
    let previous_generation = archive.as_ref().map(|a: &Account| a.generation);
    let account = provision(msisdn, account_id, previous_generation, params, now, rules)?;
    Ok(Provisioned {
        account,
        archive,
        archive_transitions,
    })
}

impl ProvisionParams {
    /// Checks the parameters on their own (no account needed): a preset balance that is not
    /// negative, an initial validity within the request bound and the configured cap. Runs
    /// before any I/O; [`provision`] runs it again.
    pub fn validate(&self, rules: &Rules) -> Result<(), DomainError> {
        if self.preset_balance < 0 {
            return Err(DomainError::invalid(
                ErrorReason::InvalidAmount,
                format!(
                    "preset_balance must not be negative, got {}",
                    self.preset_balance
                ),
            ));
        }
        check_days("initial_validity_days", self.initial_validity_days, true)?;
        if self.initial_validity_days > rules.max_validity_days {
            return Err(DomainError::invalid(
                ErrorReason::InvalidArgument,
                format!(
                    "initial_validity_days {} exceeds the {}-day validity cap",
                    self.initial_validity_days, rules.max_validity_days
                ),
            ));
        }
        Ok(())
    }

    /// The idempotency fingerprint of a provisioning of `msisdn` with these parameters: a retry
    /// with the same request_id must carry the same one (spec: otherwise REQUEST_ID_REUSED).
    /// Built from validated values, so `+8613800138000` and `8613800138000` are one request.
    pub fn fingerprint(&self, msisdn: &Msisdn) -> String {
        format!(
            "ProvisionAccount|{msisdn}|{}|{}|{}",
            self.preset_balance, self.sold, self.initial_validity_days
        )
    }
}

impl Command {
    /// The idempotency fingerprint of this command on `msisdn` (see
    /// [`ProvisionParams::fingerprint`]).
    pub fn fingerprint(&self, msisdn: &Msisdn) -> String {
        match self {
            Command::MarkSold => format!("MarkSold|{msisdn}"),
            Command::Activate => format!("Activate|{msisdn}"),
            Command::Recharge {
                amount,
                channel,
                validity_days,
            } => format!(
                "Recharge|{msisdn}|{amount}|{}|{validity_days}",
                *channel as i32
            ),
            Command::Charge { amount } => format!("Charge|{msisdn}|{amount}"),
            Command::Unlock(u) => format!(
                "Unlock|{msisdn}|{}|{}|{}",
                u.operator_id,
                u.branch_id,
                u.recharge_amount.map_or(0, Amount::fen)
            ),
        }
    }
}

/// Creates generation `previous_generation + 1` of `msisdn` as an UNACTIVATED card.
pub fn provision(
    msisdn: Msisdn,
    account_id: String,
    previous_generation: Option<u32>,
    params: &ProvisionParams,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Account, DomainError> {
    params.validate(rules)?;
    let initial_validity_days = match params.initial_validity_days {
        0 => rules.initial_validity_days,
        days => days,
    };
    let generation = previous_generation.map_or(Some(1), |g| g.checked_add(1));
    let generation = generation.ok_or_else(|| {
        DomainError::invalid(
            ErrorReason::InvalidArgument,
            "msisdn has no generations left",
        )
    })?;
    Ok(Account {
        msisdn,
        account_id,
        generation,
        state: AccountState::Unactivated,
        balance: 0,
        preset_balance: params.preset_balance,
        sold: params.sold,
        initial_validity_days,
        provisioned_at: now,
        activated_at: None,
        valid_until: None,
        grace_until: None,
        lock_until: None,
        card_expiry: Some(add_days(rules.local_date(now), rules.card_life_days)),
        recycled_at: None,
        updated_at: now,
        expiring_notified_for: None,
    })
}

/// Applies `command` to `account` at `now`. On error nothing is to be written.
pub fn apply(
    account: &Account,
    command: &Command,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<Applied, DomainError> {
    command.validate()?;
    let mut next = account.clone();
    let mut transitions = next.catch_up(now, rules);
    let today = rules.local_date(now);
    let from = next.state;
    let refuse = |reason: ErrorReason, what: &str| {
        Err(DomainError::precondition(
            reason,
            format!("{what}: account {} is {from}", account.msisdn),
        ))
    };
    if from == AccountState::Recycled {
        return refuse(ErrorReason::AccountRecycled, "the number has been recycled");
    }

    let mut outcome = Outcome::None;
    let change = match command {
        Command::MarkSold => {
            if next.sold {
                None
            } else {
                next.sold = true;
                Some(HistoryKind::Sold)
            }
        }
        Command::Activate => match from {
            AccountState::Unactivated if !next.sold => {
                return refuse(
                    ErrorReason::SaleLocked,
                    "the card is sale-locked until MarkSold",
                );
            }
            AccountState::Unactivated => {
                next.activated_at = Some(now);
                next.card_expiry = None;
                next.set_validity(add_days(today, next.initial_validity_days), rules);
                next.state = AccountState::Valid;
                Some(HistoryKind::Activated)
            }
            // First-call races: an activated account is returned unchanged.
            _ => None,
        },
        Command::Recharge {
            amount,
            validity_days,
            ..
        } => {
            let amount = amount.fen();
            let days = match validity_days {
                0 => rules.tariff.days_for(amount),
                d => *d,
            };
            match from {
                AccountState::Locked => {
                    return refuse(
                        ErrorReason::AccountLocked,
                        "a locked account takes no recharge",
                    );
                }
                AccountState::Unactivated => {
                    let before = next.balance;
                    next.balance = add_balance(before, amount)?;
                    outcome = Outcome::Recharge(RechargeOutcome {
                        valid_until_before: None,
                        valid_until_after: None,
                        days_granted: 0,
                        capped: false,
                        balance_before: before,
                        balance_after: next.balance,
                    });
                }
                _ => outcome = Outcome::Recharge(recharge(&mut next, amount, days, today, rules)?),
            }
            Some(HistoryKind::Recharge)
        }
        Command::Charge { amount } => {
            let amount = amount.fen();
            match from {
                AccountState::Valid => {}
                AccountState::Unactivated => {
                    return refuse(ErrorReason::NotActivated, "only a VALID account is charged");
                }
                AccountState::Grace => {
                    return refuse(
                        ErrorReason::AccountInGrace,
                        "only a VALID account is charged",
                    );
                }
                _ => {
                    return refuse(
                        ErrorReason::AccountLocked,
                        "only a VALID account is charged",
                    );
                }
            }
            let charged_preset = next.preset_balance.clamp(0, amount);
            let charged_balance = amount - charged_preset;
            if next.balance < charged_balance {
                return Err(DomainError::precondition(
                    ErrorReason::InsufficientBalance,
                    format!(
                        "a charge of {amount} exceeds the balance of account {} ({} preset + {} cash)",
                        account.msisdn, next.preset_balance, next.balance
                    ),
                ));
            }
            next.preset_balance -= charged_preset;
            next.balance -= charged_balance;
            outcome = Outcome::Charge(ChargeOutcome {
                charged_preset,
                charged_balance,
            });
            Some(HistoryKind::Charge)
        }
        Command::Unlock(unlock) => {
            if from != AccountState::Locked {
                return refuse(
                    ErrorReason::AccountNotLocked,
                    "only a LOCKED account is unlocked",
                );
            }
            if let Some(amount) = unlock.recharge_amount {
                // An unlock with a recharge acts as a recharge from GRACE.
                next.state = AccountState::Grace;
                let days = rules.tariff.days_for(amount.fen());
                let done = recharge(&mut next, amount.fen(), days, today, rules)?;
                outcome = Outcome::Recharge(done);
            } else {
                let grace_until = add_days(today, rules.unlock_grace_days);
                next.grace_until = Some(grace_until);
                next.lock_until = Some(add_days(grace_until, rules.lock_days));
                next.state = AccountState::Grace;
            }
            Some(HistoryKind::Unlock)
        }
    };

    let Some(kind) = change else {
        return Ok(Applied {
            account: next,
            transitions,
            change: None,
            outcome,
        });
    };
    next.updated_at = now;
    let to = next.state;
    if to != from {
        let reason = match kind {
            HistoryKind::Activated => TransitionReason::Activated,
            HistoryKind::Unlock => TransitionReason::Unlocked,
            _ => TransitionReason::Recharged,
        };
        transitions.push(Transition {
            from,
            to,
            effective_at: now,
            reason,
        });
    }
    let amount = match command {
        Command::Recharge { amount, .. } | Command::Charge { amount } => amount.fen(),
        Command::Unlock(unlock) => unlock.recharge_amount.map_or(0, Amount::fen),
        _ => 0,
    };
    let channel = match command {
        Command::Recharge { channel, .. } => Some(*channel),
        _ => None,
    };
    let change = Change {
        kind,
        from,
        to,
        amount,
        channel,
    };
    Ok(Applied {
        account: next,
        transitions,
        change: Some(change),
        outcome,
    })
}

/// A recharge of a VALID or GRACE account: adds the balance, extends or restarts the validity,
/// caps it at today + max_validity_days, and leaves the account VALID.
fn recharge(
    account: &mut Account,
    amount: i64,
    days: u32,
    today: NaiveDate,
    rules: &Rules,
) -> Result<RechargeOutcome, DomainError> {
    let balance_before = account.balance;
    let balance_after = add_balance(balance_before, amount)?;
    let before = account.valid_until;
    let from_today = add_days(today, days);
    let wanted = match (account.state, before) {
        // The remainder carries over only while there was credit to carry.
        (AccountState::Valid, Some(old)) if account.total_balance() > 0 => add_days(old, days),
        (AccountState::Valid, Some(old)) => old.max(from_today),
        _ => from_today,
    };
    let cap = add_days(today, rules.max_validity_days);
    let capped = wanted > cap;
    let mut after = wanted.min(cap);
    if account.state == AccountState::Valid {
        // A recharge never shortens validity.
        after = after.max(before.unwrap_or(after));
    }
    account.balance = balance_after;
    account.set_validity(after, rules);
    account.state = AccountState::Valid;
    Ok(RechargeOutcome {
        valid_until_before: before,
        valid_until_after: Some(after),
        days_granted: days,
        capped,
        balance_before,
        balance_after,
    })
}
