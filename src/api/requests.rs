//! Mutating requests, validated before anything else happens: the wire message becomes a
//! [`Mutating`] (the account it is for, its idempotency key and the domain command) through one
//! `TryFrom` per request, or an `INVALID_ARGUMENT` that touched nothing. The idempotency
//! fingerprint comes from these validated values, never from the request's raw text.

use tonic::Status;

use super::convert::{self, invalid};
use crate::lifecycle::{
    Amount, Command, ErrorReason, Msisdn, ProvisionParams, RechargeChannel, RequestId, Unlock,
};
use crate::logging::CallNote;
use crate::proto;

/// A validated mutating request: whose account, which idempotency key, and what it asks (a
/// lifecycle [`Command`], or the [`ProvisionParams`] of a new card).
#[derive(Clone, Debug)]
pub(super) struct Mutating<C> {
    pub msisdn: Msisdn,
    pub request_id: RequestId,
    pub command: C,
}

impl<C> Mutating<C> {
    fn new(msisdn: &str, request_id: &str, command: C) -> Result<Self, Status> {
        Ok(Self {
            msisdn: convert::msisdn(msisdn)?,
            request_id: convert::request_id(request_id)?,
            command,
        })
    }
}

impl Mutating<Command> {
    /// Checks the command's own values (amounts, lengths), which need no account.
    fn validated(self) -> Result<Self, Status> {
        self.command.validate()?;
        Ok(self)
    }

    pub fn fingerprint(&self) -> String {
        self.command.fingerprint(&self.msisdn)
    }
}

impl Mutating<ProvisionParams> {
    pub fn fingerprint(&self) -> String {
        self.command.fingerprint(&self.msisdn)
    }
}

/// Notes the account and the idempotency key of a call for its log line (`crate::logging`).
pub(super) fn note<T>(request: &tonic::Request<T>, msisdn: &str, request_id: &str) {
    if let Some(note) = request.extensions().get::<std::sync::Arc<CallNote>>() {
        note.request(msisdn, request_id);
    }
}

/// A mutating request's account and idempotency key, as written.
pub(super) trait Keyed {
    fn key(&self) -> (&str, &str);
}

macro_rules! keyed {
    ($($request:ty),* $(,)?) => {
        $(impl Keyed for $request {
            fn key(&self) -> (&str, &str) {
                (&self.msisdn, &self.request_id)
            }
        })*
    };
}

keyed!(
    proto::ProvisionAccountRequest,
    proto::MarkSoldRequest,
    proto::ActivateRequest,
    proto::RechargeRequest,
    proto::ChargeRequest,
    proto::UnlockRequest,
);

/// Notes the call's account and key for its log line, then validates the request.
pub(super) fn validate<R: Keyed, C>(request: &tonic::Request<R>) -> Result<Mutating<C>, Status>
where
    for<'a> Mutating<C>: TryFrom<&'a R, Error = Status>,
{
    let (msisdn, request_id) = request.get_ref().key();
    note(request, msisdn, request_id);
    Mutating::try_from(request.get_ref())
}

/// A proto enum value that must name a known value (UNSPECIFIED is refused).
pub(super) fn required_enum<T>(
    value: i32,
    field: &str,
    parse: fn(i32) -> Option<T>,
) -> Result<T, Status> {
    parse(value).ok_or_else(|| {
        invalid(
            ErrorReason::InvalidArgument,
            format!("{field} {value} is not a known value (UNSPECIFIED is not allowed)"),
        )
    })
}

impl TryFrom<&proto::ProvisionAccountRequest> for Mutating<ProvisionParams> {
    type Error = Status;

    /// The parameters themselves are checked by `ProvisionParams::validate`, which the handler
    /// runs before it touches storage.
    fn try_from(r: &proto::ProvisionAccountRequest) -> Result<Self, Status> {
        let params = ProvisionParams {
            preset_balance: r.preset_balance,
            sold: r.sold,
            initial_validity_days: r.initial_validity_days,
        };
        Mutating::new(&r.msisdn, &r.request_id, params)
    }
}

impl TryFrom<&proto::MarkSoldRequest> for Mutating<Command> {
    type Error = Status;

    fn try_from(r: &proto::MarkSoldRequest) -> Result<Self, Status> {
        Mutating::new(&r.msisdn, &r.request_id, Command::MarkSold)?.validated()
    }
}

impl TryFrom<&proto::ActivateRequest> for Mutating<Command> {
    type Error = Status;

    fn try_from(r: &proto::ActivateRequest) -> Result<Self, Status> {
        Mutating::new(&r.msisdn, &r.request_id, Command::Activate)?.validated()
    }
}

impl TryFrom<&proto::RechargeRequest> for Mutating<Command> {
    type Error = Status;

    fn try_from(r: &proto::RechargeRequest) -> Result<Self, Status> {
        let mutating = Mutating::new(&r.msisdn, &r.request_id, ())?;
        let channel = required_enum(r.channel, "channel", RechargeChannel::from_i32)?;
        let command = Command::Recharge {
            amount: Amount::parse("amount", r.amount)?,
            channel,
            validity_days: r.validity_days,
        };
        mutating.with(command).validated()
    }
}

impl TryFrom<&proto::ChargeRequest> for Mutating<Command> {
    type Error = Status;

    fn try_from(r: &proto::ChargeRequest) -> Result<Self, Status> {
        let mutating = Mutating::new(&r.msisdn, &r.request_id, ())?;
        let command = Command::Charge {
            amount: Amount::parse("amount", r.amount)?,
        };
        mutating.with(command).validated()
    }
}

impl TryFrom<&proto::UnlockRequest> for Mutating<Command> {
    type Error = Status;

    fn try_from(r: &proto::UnlockRequest) -> Result<Self, Status> {
        let unlock = |recharge_amount| {
            Command::Unlock(Unlock {
                operator_id: r.operator_id.clone(),
                branch_id: r.branch_id.clone(),
                recharge_amount,
            })
        };
        // The operator and the branch are checked before the amount (0: no recharge).
        let mut mutating = Mutating::new(&r.msisdn, &r.request_id, unlock(None))?.validated()?;
        let amount =
            (r.recharge_amount != 0).then(|| Amount::parse("recharge_amount", r.recharge_amount));
        mutating.command = unlock(amount.transpose()?);
        Ok(mutating)
    }
}

impl Mutating<()> {
    fn with<C>(self, command: C) -> Mutating<C> {
        Mutating {
            msisdn: self.msisdn,
            request_id: self.request_id,
            command,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_comes_from_the_validated_msisdn() {
        let request = |msisdn: &str| proto::RechargeRequest {
            msisdn: msisdn.into(),
            amount: 5000,
            channel: RechargeChannel::Online as i32,
            validity_days: 0,
            request_id: "r-1".into(),
        };
        let with_plus = Mutating::try_from(&request("+8613800138000")).unwrap();
        let without = Mutating::try_from(&request("8613800138000")).unwrap();
        assert_eq!(with_plus.fingerprint(), without.fingerprint());
        let other = Mutating::try_from(&request("8613800138001")).unwrap();
        assert_ne!(with_plus.fingerprint(), other.fingerprint());
    }

    #[test]
    fn a_provisioning_fingerprint_covers_every_parameter() {
        let request = |sold: bool, days: u32| proto::ProvisionAccountRequest {
            msisdn: "+8613800138000".into(),
            preset_balance: 100,
            sold,
            initial_validity_days: days,
            request_id: "p-1".into(),
        };
        let base = Mutating::try_from(&request(true, 0)).unwrap().fingerprint();
        assert_ne!(
            base,
            Mutating::try_from(&request(false, 0))
                .unwrap()
                .fingerprint()
        );
        assert_ne!(
            base,
            Mutating::try_from(&request(true, 30))
                .unwrap()
                .fingerprint()
        );
    }

    #[test]
    fn an_unspecified_channel_is_refused_before_anything_else_is_checked() {
        let request = proto::RechargeRequest {
            msisdn: "8613800138000".into(),
            amount: -1,
            channel: 0,
            validity_days: 0,
            request_id: "r-1".into(),
        };
        let err = Mutating::<Command>::try_from(&request).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("channel"), "{}", err.message());
    }
}
