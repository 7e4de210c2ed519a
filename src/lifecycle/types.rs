//! Value types that can only hold valid values (parse, don't validate).

use std::fmt;

use super::error::{DomainError, ErrorReason};

/// An E.164 number: 8 to 15 digits, stored without the optional leading `+`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Msisdn(String);

impl Msisdn {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let digits = raw.strip_prefix('+').unwrap_or(raw);
        let valid_len = (8..=15).contains(&digits.len());
        if valid_len && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(digits.to_owned()))
        } else {
            let shown: String = raw.chars().take(32).collect();
            Err(DomainError::invalid(
                ErrorReason::InvalidMsisdn,
                format!(
                    "msisdn {shown:?} is not an E.164 number (8 to 15 digits, optional leading '+')"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mutating request's idempotency key: 1 to 128 printable characters (spec: every mutating
/// request carries one; a retry with the same key is applied once).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Longest request_id accepted; keys are stored.
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.is_empty() {
            return Err(DomainError::invalid(
                ErrorReason::MissingRequestId,
                "request_id is required on every mutating request (an idempotency key, e.g. a UUID)",
            ));
        }
        if raw.len() > Self::MAX_LEN || raw.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                ErrorReason::InvalidArgument,
                format!(
                    "request_id must be 1 to {} printable characters",
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount of money a command moves, in fen (1 fen = 0.01 yuan): always positive, so a
/// recharge adds and a charge debits. Requests are parsed into it once, at the API's boundary;
/// a command cannot hold another amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    /// `fen` as the value of the request field `field`: INVALID_AMOUNT unless it is positive.
    pub fn parse(field: &str, fen: i64) -> Result<Self, DomainError> {
        if fen <= 0 {
            return Err(DomainError::invalid(
                ErrorReason::InvalidAmount,
                format!("{field} must be a positive number of fen, got {fen}"),
            ));
        }
        Ok(Self(fen))
    }

    pub fn fen(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Declares a fieldless enum whose discriminants are its wire and storage numbers, with `ALL`
/// (every variant, in declaration order) and `from_i32`; with `=> "NAME"` after each variant,
/// also `name()`, the name the wire and the operator use. Every such enum is `Copy`, `Eq` and
/// `Hash`; more derives come as attributes.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $enum:ident { $($variant:ident = $number:literal => $name:literal),+ $(,)? }
    ) => {
        wire_enum! { $(#[$meta])* pub enum $enum { $($variant = $number),+ } }

        impl $enum {
            pub fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name),+
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $enum:ident { $($variant:ident = $number:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $enum {
            $($variant = $number),+
        }

        impl $enum {
            pub const ALL: [$enum; [$($enum::$variant),+].len()] = [$($enum::$variant),+];

            pub fn from_i32(value: i32) -> Option<Self> {
                Self::ALL.into_iter().find(|v| *v as i32 == value)
            }
        }
    };
}
pub(super) use wire_enum;

wire_enum! {
    /// The five lifecycle states; the numbers are the wire and storage values.
    #[derive(PartialOrd, Ord)]
    pub enum AccountState {
        Unactivated = 1 => "UNACTIVATED",
        Valid = 2 => "VALID",
        Grace = 3 => "GRACE",
        Locked = 4 => "LOCKED",
        Recycled = 5 => "RECYCLED",
    }
}

impl fmt::Display for AccountState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

wire_enum! {
    pub enum RechargeChannel { Card10011 = 1, Bank = 2, BusinessHall = 3, Online = 4 }
}

wire_enum! {
    pub enum ServiceType { VoiceOut = 1, VoiceIn = 2, SmsOut = 3, SmsIn = 4, Data = 5 }
}

impl ServiceType {
    /// Incoming services (a call or SMS to the subscriber).
    pub fn is_incoming(self) -> bool {
        matches!(self, Self::VoiceIn | Self::SmsIn)
    }
}

wire_enum! {
    /// What a history row records; the numbers are the wire and storage values.
    pub enum HistoryKind {
        Provisioned = 1,
        Sold = 2,
        Activated = 3,
        Recharge = 4,
        Charge = 5,
        Unlock = 6,
        StateChanged = 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msisdn_accepts_e164_digits_and_strips_plus() {
        assert_eq!(
            Msisdn::parse("+8613800138000").unwrap().as_str(),
            "8613800138000"
        );
        assert_eq!(Msisdn::parse("12345678").unwrap().as_str(), "12345678");
        assert_eq!(
            Msisdn::parse("123456789012345").unwrap().as_str(),
            "123456789012345"
        );
    }

    #[test]
    fn msisdn_rejects_everything_else() {
        for bad in [
            "",
            "+",
            "1234567",
            "1234567890123456",
            "++12345678",
            "86138 0013800",
            "8613800138a00",
            "٣٣٣٣٣٣٣٣٣",
            "-12345678",
            "12345678+",
        ] {
            let err = Msisdn::parse(bad).unwrap_err();
            assert_eq!(err.reason(), ErrorReason::InvalidMsisdn, "{bad:?}");
        }
    }

    #[test]
    fn enum_numbers_round_trip() {
        for s in AccountState::ALL {
            assert_eq!(AccountState::from_i32(s as i32), Some(s));
        }
        assert_eq!(AccountState::from_i32(0), None);
        assert_eq!(RechargeChannel::from_i32(0), None);
        assert_eq!(ServiceType::from_i32(6), None);
        assert_eq!(HistoryKind::from_i32(7), Some(HistoryKind::StateChanged));
    }
}
