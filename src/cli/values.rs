//! The values of the client's flags: states, channels, services and event types as the
//! operator types them (each with its wire enum), RFC 3339 instants and durations.

use chrono::{DateTime, Utc};
use clap::ValueEnum;

use crate::proto;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Unactivated,
    Valid,
    Grace,
    Locked,
    Recycled,
}

impl StateArg {
    pub(super) fn wire(self) -> proto::AccountState {
        match self {
            StateArg::Unactivated => proto::AccountState::Unactivated,
            StateArg::Valid => proto::AccountState::Valid,
            StateArg::Grace => proto::AccountState::Grace,
            StateArg::Locked => proto::AccountState::Locked,
            StateArg::Recycled => proto::AccountState::Recycled,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ChannelArg {
    #[value(name = "card_10011", alias = "card-10011")]
    Card10011,
    Bank,
    #[value(name = "business_hall", alias = "business-hall")]
    BusinessHall,
    Online,
}

impl ChannelArg {
    pub(super) fn wire(self) -> proto::RechargeChannel {
        match self {
            ChannelArg::Card10011 => proto::RechargeChannel::Card10011,
            ChannelArg::Bank => proto::RechargeChannel::Bank,
            ChannelArg::BusinessHall => proto::RechargeChannel::BusinessHall,
            ChannelArg::Online => proto::RechargeChannel::Online,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServiceArg {
    #[value(name = "voice_out", alias = "voice-out")]
    VoiceOut,
    #[value(name = "voice_in", alias = "voice-in")]
    VoiceIn,
    #[value(name = "sms_out", alias = "sms-out")]
    SmsOut,
    #[value(name = "sms_in", alias = "sms-in")]
    SmsIn,
    Data,
}

impl ServiceArg {
    pub(super) fn wire(self) -> proto::ServiceType {
        match self {
            ServiceArg::VoiceOut => proto::ServiceType::VoiceOut,
            ServiceArg::VoiceIn => proto::ServiceType::VoiceIn,
            ServiceArg::SmsOut => proto::ServiceType::SmsOut,
            ServiceArg::SmsIn => proto::ServiceType::SmsIn,
            ServiceArg::Data => proto::ServiceType::Data,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventTypeArg {
    #[value(name = "number_recycled", alias = "number-recycled")]
    NumberRecycled,
    #[value(name = "state_changed", alias = "state-changed")]
    StateChanged,
    #[value(name = "validity_expiring", alias = "validity-expiring")]
    ValidityExpiring,
}

impl EventTypeArg {
    pub(super) fn wire(self) -> proto::EventType {
        match self {
            EventTypeArg::NumberRecycled => proto::EventType::NumberRecycled,
            EventTypeArg::StateChanged => proto::EventType::StateChanged,
            EventTypeArg::ValidityExpiring => proto::EventType::ValidityExpiring,
        }
    }
}

/// An RFC 3339 instant, in UTC.
pub fn parse_instant(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{raw:?} is not an RFC 3339 instant (e.g. 2030-03-01T10:00:00+08:00): {e}")
        })
}

/// `90d`, `36h`, `15m`, `30s`, `1d12h` or a number of seconds, in seconds (> 0).
pub(super) fn parse_duration(raw: &str) -> Result<i64, String> {
    let bad = || format!("{raw:?} is not a duration (e.g. 90d, 36h, 15m, 30s, 1d12h, or seconds)");
    let text = raw.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return (seconds > 0).then_some(seconds).ok_or_else(bad);
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: i64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() || total <= 0 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_days_hours_minutes_and_seconds() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("1d12h"), Ok(36 * 3_600));
        assert_eq!(parse_duration("15m30s"), Ok(930));
        for bad in ["", "0", "-5", "5x", "d", "12h5", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
