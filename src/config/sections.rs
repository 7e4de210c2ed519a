//! The `[lifecycle]`, `[[tariff]]`, `[sweep]` and `[notify]` sections: the rules of the
//! lifecycle and when the sweep runs.

use std::str::FromStr;

use serde::Deserialize;

use super::ConfigError;
use crate::lifecycle::Rules;

/// The sweep that materialises boundary transitions (spec section 6).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// Accounts per transaction.
    pub batch_size: u32,
    /// When `serve` runs the sweep: 6 fields `sec min hour dom month dow`, operator time zone.
    pub cron: String,
    /// Run the sweep on `cron` inside `serve` (false: only AdvanceStates and the `sweep`
    /// command sweep).
    pub scheduler: bool,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            cron: "0 5 0 * * *".into(),
            scheduler: true,
        }
    }
}

impl SweepConfig {
    /// The parsed `cron` expression.
    pub fn schedule(&self) -> Result<cron::Schedule, ConfigError> {
        cron::Schedule::from_str(&self.cron).map_err(|e| {
            // The cron crate's message spans lines (the expression, a caret, the reason):
            // keep the reason, so the error stays one line.
            let text = e.to_string();
            let reason = text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
                .unwrap_or("invalid")
                .to_owned();
            // The crate says "Hours must be less than 23" of an hour 25, meaning at most 23.
            let reason = reason.replace(" must be less than ", " must be at most ");
            ConfigError(format!(
                "sweep.cron: {:?} is not a cron expression (sec min hour dom month dow): {reason}",
                self.cron
            ))
        })
    }
}

/// Notices sent to the BSS ahead of a boundary.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// VALIDITY_EXPIRING goes out from 00:00 local of `valid_until − expiring_days`.
    pub expiring_days: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            expiring_days: Rules::default().expiring_days,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    pub initial_validity_days: u32,
    pub grace_days: u32,
    pub lock_days: u32,
    pub max_validity_days: u32,
    pub card_life_days: u32,
    pub unlock_grace_days: u32,
    pub special_numbers: Vec<String>,
    pub recharge_hotline: String,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TariffTierConfig {
    pub min_amount: i64,
    pub days: u32,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        let rules = Rules::default();
        Self {
            initial_validity_days: rules.initial_validity_days,
            grace_days: rules.grace_days,
            lock_days: rules.lock_days,
            max_validity_days: rules.max_validity_days,
            card_life_days: rules.card_life_days,
            unlock_grace_days: rules.unlock_grace_days,
            special_numbers: rules.special_numbers,
            recharge_hotline: rules.recharge_hotline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{error_of, load_env};

    #[test]
    fn sweep_and_notify_sections_have_defaults_and_are_checked() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config.sweep.batch_size, 1000);
        assert_eq!(config.sweep.cron, "0 5 0 * * *");
        assert_eq!(config.notify.expiring_days, 7);
        assert_eq!(config.rules().unwrap().expiring_days, 7);
        let config = load_env(&[
            ("OCS_SWEEP__BATCH_SIZE", "10"),
            ("OCS_NOTIFY__EXPIRING_DAYS", "3"),
        ])
        .unwrap();
        assert_eq!(config.sweep.batch_size, 10);
        assert_eq!(config.rules().unwrap().expiring_days, 3);
        let err = error_of(&[("OCS_SWEEP__CRON", "nope")]);
        assert!(err.contains("sweep.cron"), "{err}");
        let err = error_of(&[("OCS_SWEEP__BATCH_SIZE", "0")]);
        assert!(err.contains("sweep.batch_size"), "{err}");
    }
}
