//! The one error type of the domain; the API maps it to gRPC codes in one place.

use std::fmt;

/// Machine-readable reasons, sent as `google.rpc.ErrorInfo.reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    InvalidMsisdn,
    InvalidAmount,
    AmountOverflow,
    InvalidArgument,
    MissingRequestId,
    AccountNotFound,
    AccountExists,
    RequestIdReused,
    AccountLocked,
    AccountRecycled,
    AccountInGrace,
    AccountNotLocked,
    NotActivated,
    SaleLocked,
    InsufficientBalance,
}

impl ErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::InvalidMsisdn => "INVALID_MSISDN",
            ErrorReason::InvalidAmount => "INVALID_AMOUNT",
            ErrorReason::AmountOverflow => "AMOUNT_OVERFLOW",
            ErrorReason::InvalidArgument => "INVALID_ARGUMENT",
            ErrorReason::MissingRequestId => "MISSING_REQUEST_ID",
            ErrorReason::AccountNotFound => "ACCOUNT_NOT_FOUND",
            ErrorReason::AccountExists => "ACCOUNT_EXISTS",
            ErrorReason::RequestIdReused => "REQUEST_ID_REUSED",
            ErrorReason::AccountLocked => "ACCOUNT_LOCKED",
            ErrorReason::AccountRecycled => "ACCOUNT_RECYCLED",
            ErrorReason::AccountInGrace => "ACCOUNT_IN_GRACE",
            ErrorReason::AccountNotLocked => "ACCOUNT_NOT_LOCKED",
            ErrorReason::NotActivated => "NOT_ACTIVATED",
            ErrorReason::SaleLocked => "SALE_LOCKED",
            ErrorReason::InsufficientBalance => "INSUFFICIENT_BALANCE",
        }
    }
}

/// Why the domain refused a request. Refusals never change anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainError {
    InvalidArgument {
        reason: ErrorReason,
        message: String,
    },
    NotFound {
        message: String,
    },
    FailedPrecondition {
        reason: ErrorReason,
        message: String,
    },
    AlreadyExists {
        reason: ErrorReason,
        message: String,
    },
}

impl DomainError {
    pub fn invalid(reason: ErrorReason, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            reason,
            message: message.into(),
        }
    }

    pub fn precondition(reason: ErrorReason, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(msisdn: impl fmt::Display) -> Self {
        Self::NotFound {
            message: format!("no account with msisdn {msisdn}"),
        }
    }

    pub fn reason(&self) -> ErrorReason {
        match self {
            DomainError::InvalidArgument { reason, .. }
            | DomainError::FailedPrecondition { reason, .. }
            | DomainError::AlreadyExists { reason, .. } => *reason,
            DomainError::NotFound { .. } => ErrorReason::AccountNotFound,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            DomainError::InvalidArgument { message, .. }
            | DomainError::NotFound { message }
            | DomainError::FailedPrecondition { message, .. }
            | DomainError::AlreadyExists { message, .. } => message,
        }
    }
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason().as_str(), self.message())
    }
}

impl std::error::Error for DomainError {}
