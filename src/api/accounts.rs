//! The `AccountLifecycle` gRPC service: parses requests into domain commands, asks the store to
//! carry out the pure decision of the lifecycle core, and answers with the effective state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert::{self, invalid};
use super::requests::{Mutating, note, required_enum, validate};
use crate::auth::Caller;
use crate::clock::Clock;
use crate::lifecycle::{
    self, Account, AccountState, Applied, Barring, Command, DomainError, Effects, ErrorReason,
    Msisdn, Origin, Outcome, ProvisionParams, RequestId, Rules, ServiceType,
};
use crate::proto;
use crate::proto::account_lifecycle_server::AccountLifecycle;
use crate::store::{AccountStore, Committed, Decide, Mutation, RequestKey, new_event_id};
use crate::wire::REPLAYED_METADATA;

/// Shared by the services: storage, rules, clock and readiness.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<dyn AccountStore>,
    pub rules: Arc<Rules>,
    pub clock: Arc<dyn Clock>,
    /// False until migrations have run; requests before that are UNAVAILABLE.
    pub ready: Arc<AtomicBool>,
    /// Accounts per sweep transaction (`sweep.batch_size`).
    pub sweep_batch_size: u32,
    /// Where AdvanceStates records its sweeps.
    pub metrics: Arc<crate::ops::Metrics>,
    /// The account facts Authorize reads (`authorize_cache_ms`).
    pub facts: Arc<super::facts::FactCache>,
    /// Turns health NOT_SERVING when a write finds the storage not writable.
    pub storage_health: Arc<super::StorageHealth>,
}

impl Context {
    /// UNAVAILABLE `NOT_READY` until the migrations have run.
    pub(super) fn check_ready(&self) -> Result<(), Status> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(convert::status(
                tonic::Code::Unavailable,
                "NOT_READY",
                "the service is starting (migrations running); retry shortly",
            ))
        }
    }
}

/// The account the last call of a mutation's `decide` produced: after the store answers
/// `Applied`, the account it committed (a retried attempt calls `decide` again).
#[derive(Clone, Default)]
struct Decided(Arc<std::sync::Mutex<Option<Account>>>);

impl Decided {
    fn set(&self, account: &Account) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(account.clone());
    }

    fn take(&self) -> Option<Account> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The actor recorded when authentication is off.
pub const ANONYMOUS: &str = "anonymous";

pub struct AccountsApi {
    ctx: Context,
}

impl AccountsApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

/// Who made a request, as recorded in history: the name of the caller's token (put into the
/// request by `crate::auth`), or `anonymous` when authentication is off.
fn actor<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| ANONYMOUS.to_owned(), |caller| caller.name.clone())
}

impl AccountsApi {
    /// Carries out a validated command through the store: the core applies it to the stored
    /// account and says what it writes ([`Effects::of_command`]); `respond` encodes the answer
    /// that is stored with it and returned again to a retry.
    async fn execute(
        &self,
        actor: String,
        request: Mutating<Command>,
        respond: impl Fn(&Applied, DateTime<Utc>, &Rules) -> Vec<u8> + Send + Sync + 'static,
    ) -> Result<Committed, Status> {
        self.ctx.check_ready()?;
        let now = self.ctx.clock.now();
        let fingerprint = request.fingerprint();
        let rules = self.ctx.rules.clone();
        let (msisdn, request_id) = (request.msisdn.clone(), request.request_id.clone());
        let decided = Decided::default();
        let decided_in = decided.clone();
        let decide = Arc::new(
            move |current: Option<&Account>| -> Result<Mutation, DomainError> {
                let current = current.ok_or_else(|| DomainError::not_found(&request.msisdn))?;
                let applied = lifecycle::apply(current, &request.command, now, &rules)?;
                decided_in.set(&applied.account);
                let origin = Origin {
                    actor: &actor,
                    request_id: Some(request.request_id.as_str()),
                    now,
                };
                let effects = Effects::of_command(&applied, origin, &mut new_event_id);
                Ok(Mutation {
                    archive: None,
                    response: respond(&applied, now, &rules),
                    account: applied.account,
                    history: effects.history,
                    events: effects.events,
                })
            },
        );
        self.commit(&msisdn, &request_id, &fingerprint, now, decide, decided)
            .await
    }

    /// Hands a decision to the store, once per request_id; the Authorize cache takes the
    /// account `decide` committed (or forgets it: a replay, a refusal, a failure), and a storage
    /// failure reaches the health check.
    ///
    /// The mutation runs on a task of its own: a caller that goes away (a cancelled call) stops
    /// neither the mutation half-way nor the cache hearing of its commit (the cache may keep
    /// an account's facts for long, see `facts`).
    async fn commit(
        &self,
        msisdn: &Msisdn,
        request_id: &RequestId,
        fingerprint: &str,
        now: DateTime<Utc>,
        decide: Decide,
        decided: Decided,
    ) -> Result<Committed, Status> {
        let (store, facts) = (self.ctx.store.clone(), self.ctx.facts.clone());
        let (msisdn, request_id) = (msisdn.clone(), request_id.as_str().to_owned());
        let fingerprint = fingerprint.to_owned();
        let ticket = facts.write_ticket(&msisdn);
        let committed = tokio::spawn(async move {
            let key = RequestKey {
                request_id: &request_id,
                fingerprint: &fingerprint,
                now,
            };
            let committed = store.mutate(&msisdn, key, decide).await;
            let account = match &committed {
                Ok(Committed::Applied(_)) => decided.take(),
                _ => None,
            };
            facts.committed(ticket, &msisdn, account);
            committed
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a mutation's task failed");
            Status::internal("the mutation failed")
        })?;
        committed.map_err(|e| {
            self.ctx.storage_health.observe(&e);
            e.into()
        })
    }

    /// The account answer of a mutation. `Account` has no `replayed` field, so a replay is
    /// announced in the response metadata (`ocs-replayed: true`); the CLI's import counts such
    /// rows as already imported.
    fn account_response(&self, committed: Committed) -> Result<Response<proto::Account>, Status> {
        let (account, replayed) = decode_committed(committed)?;
        let mut response = Response::new(account);
        if replayed {
            response.metadata_mut().insert(
                REPLAYED_METADATA,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        Ok(response)
    }

    /// [`Self::execute`] with the stored answer decoded, and whether it was a replay.
    async fn execute_decoded<M: Message + Default>(
        &self,
        actor: String,
        request: Mutating<Command>,
        respond: impl Fn(&Applied, DateTime<Utc>, &Rules) -> M + Send + Sync + 'static,
    ) -> Result<(M, bool), Status> {
        let committed = self
            .execute(actor, request, move |applied, now, rules| {
                respond(applied, now, rules).encode_to_vec()
            })
            .await?;
        decode_committed(committed)
    }

    /// A command whose answer is the account (MarkSold, Activate, Unlock).
    async fn execute_for_account(
        &self,
        actor: String,
        request: Mutating<Command>,
    ) -> Result<Response<proto::Account>, Status> {
        let committed = self
            .execute(actor, request, |applied, now, rules| {
                convert::account(&applied.account, now, rules).encode_to_vec()
            })
            .await?;
        self.account_response(committed)
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| {
        tracing::error!(error = %e, "stored idempotent response does not decode");
        Status::internal("stored response is corrupt")
    })
}

/// The stored response of a mutation, and whether it is a replay of an earlier request.
fn decode_committed<M: Message + Default>(committed: Committed) -> Result<(M, bool), Status> {
    match committed {
        Committed::Applied(bytes) => Ok((decode(&bytes)?, false)),
        Committed::Replayed(bytes) => Ok((decode(&bytes)?, true)),
    }
}

#[tonic::async_trait]
impl AccountLifecycle for AccountsApi {
    async fn provision_account(
        &self,
        request: Request<proto::ProvisionAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let provisioning: Mutating<ProvisionParams> = validate(&request)?;
        let actor = actor(&request);
        self.ctx.check_ready()?;
        let now = self.ctx.clock.now();
        let rules = self.ctx.rules.clone();
        // The parameters are validated before any storage is touched.
        provisioning.command.validate(&rules)?;
        let msisdn = provisioning.msisdn.clone();
        let fingerprint = provisioning.fingerprint();
        let request_id = provisioning.request_id.clone();
        let decided = Decided::default();
        let decided_in = decided.clone();
        let decide = Arc::new(
            move |current: Option<&Account>| -> Result<Mutation, DomainError> {
                let provisioned = lifecycle::provision_over(
                    current,
                    provisioning.msisdn.clone(),
                    uuid::Uuid::new_v4().to_string(),
                    &provisioning.command,
                    now,
                    &rules,
                )?;
                decided_in.set(&provisioned.account);
                let origin = Origin {
                    actor: &actor,
                    request_id: Some(provisioning.request_id.as_str()),
                    now,
                };
                let effects = Effects::of_provision(&provisioned, origin, &mut new_event_id);
                let response = convert::account(&provisioned.account, now, &rules).encode_to_vec();
                Ok(Mutation {
                    archive: provisioned.archive,
                    account: provisioned.account,
                    history: effects.history,
                    events: effects.events,
                    response,
                })
            },
        );
        let committed = self
            .commit(&msisdn, &request_id, &fingerprint, now, decide, decided)
            .await?;
        self.account_response(committed)
    }

    async fn mark_sold(
        &self,
        request: Request<proto::MarkSoldRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let mutating = validate(&request)?;
        self.execute_for_account(actor(&request), mutating).await
    }

    async fn activate(
        &self,
        request: Request<proto::ActivateRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let mutating = validate(&request)?;
        self.execute_for_account(actor(&request), mutating).await
    }

    async fn recharge(
        &self,
        request: Request<proto::RechargeRequest>,
    ) -> Result<Response<proto::RechargeResult>, Status> {
        let mutating = validate(&request)?;
        let (mut result, replayed) = self
            .execute_decoded(actor(&request), mutating, |applied, now, rules| {
                let mut result = proto::RechargeResult {
                    account: Some(convert::account(&applied.account, now, rules)),
                    ..Default::default()
                };
                if let Outcome::Recharge(o) = &applied.outcome {
                    result.valid_until_before = convert::date(o.valid_until_before);
                    result.valid_until_after = convert::date(o.valid_until_after);
                    result.days_granted = o.days_granted;
                    result.capped = o.capped;
                    result.balance_before = o.balance_before;
                    result.balance_after = o.balance_after;
                }
                result
            })
            .await?;
        result.replayed = replayed;
        Ok(Response::new(result))
    }

    async fn charge(
        &self,
        request: Request<proto::ChargeRequest>,
    ) -> Result<Response<proto::ChargeResult>, Status> {
        let mutating = validate(&request)?;
        let (mut result, replayed) = self
            .execute_decoded(actor(&request), mutating, |applied, now, rules| {
                let mut result = proto::ChargeResult {
                    account: Some(convert::account(&applied.account, now, rules)),
                    ..Default::default()
                };
                if let Outcome::Charge(o) = &applied.outcome {
                    result.charged_preset = o.charged_preset;
                    result.charged_balance = o.charged_balance;
                }
                result
            })
            .await?;
        result.replayed = replayed;
        Ok(Response::new(result))
    }

    async fn unlock(
        &self,
        request: Request<proto::UnlockRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let mutating = validate(&request)?;
        let r = request.get_ref();
        // Unlocks are recorded as done by the business hall's operator.
        let actor = format!("{}@{}", r.operator_id, r.branch_id);
        self.execute_for_account(actor, mutating).await
    }

    async fn get_account(
        &self,
        request: Request<proto::GetAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        note(&request, &request.get_ref().msisdn, "");
        let msisdn = convert::msisdn(&request.get_ref().msisdn)?;
        self.ctx.check_ready()?;
        let account = self.ctx.store.get(&msisdn).await?;
        let account = account.ok_or_else(|| DomainError::not_found(&msisdn))?;
        Ok(Response::new(convert::account(
            &account,
            self.ctx.clock.now(),
            &self.ctx.rules,
        )))
    }

    async fn list_accounts(
        &self,
        request: Request<proto::ListAccountsRequest>,
    ) -> Result<Response<proto::ListAccountsResponse>, Status> {
        let r = request.get_ref();
        let state = match r.state {
            0 => None,
            n => Some(required_enum(n, "state", AccountState::from_i32)?),
        };
        let page_size = convert::page_size(r.page_size, 100)?;
        let after =
            match r.page_token.as_str() {
                "" => None,
                token => Some(Msisdn::parse(token).map_err(|_| {
                    invalid(ErrorReason::InvalidArgument, "page_token is not valid")
                })?),
            };
        self.ctx.check_ready()?;
        let now = self.ctx.clock.now();
        let today = self.ctx.rules.local_date(now);
        let mut accounts = self
            .ctx
            .store
            .list(
                state,
                today,
                after.as_ref().map(Msisdn::as_str),
                page_size + 1,
            )
            .await?;
        let next_page_token =
            convert::next_page_token(&mut accounts, page_size, |a| a.msisdn.to_string());
        let accounts = accounts
            .iter()
            .map(|a| convert::account(a, now, &self.ctx.rules))
            .collect();
        Ok(Response::new(proto::ListAccountsResponse {
            accounts,
            next_page_token,
        }))
    }

    async fn get_account_history(
        &self,
        request: Request<proto::GetAccountHistoryRequest>,
    ) -> Result<Response<proto::GetAccountHistoryResponse>, Status> {
        note(&request, &request.get_ref().msisdn, "");
        let r = request.get_ref();
        let msisdn = convert::msisdn(&r.msisdn)?;
        let page_size = convert::page_size(r.page_size, 100)?;
        let after_id = match r.page_token.as_str() {
            "" => 0,
            token => token
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| invalid(ErrorReason::InvalidArgument, "page_token is not valid"))?,
        };
        self.ctx.check_ready()?;
        let mut records = self
            .ctx
            .store
            .history(&msisdn, after_id, page_size + 1)
            .await?;
        if records.is_empty() && after_id == 0 && self.ctx.store.get(&msisdn).await?.is_none() {
            return Err(DomainError::not_found(&msisdn).into());
        }
        let next_page_token =
            convert::next_page_token(&mut records, page_size, |e| e.id.to_string());
        let entries = records.into_iter().map(convert::history_entry).collect();
        Ok(Response::new(proto::GetAccountHistoryResponse {
            entries,
            next_page_token,
        }))
    }

    async fn advance_states(
        &self,
        request: Request<proto::AdvanceStatesRequest>,
    ) -> Result<Response<proto::AdvanceStatesResponse>, Status> {
        let r = request.get_ref();
        let as_of = match &r.as_of {
            None => None,
            Some(ts) => Some(convert::from_timestamp(ts).ok_or_else(|| {
                invalid(ErrorReason::InvalidArgument, "as_of is not a valid instant")
            })?),
        };
        self.ctx.check_ready()?;
        let now = self.ctx.clock.now();
        let ran = match crate::sweep::asked(self.ctx.sweep_batch_size, as_of, now, r.dry_run) {
            Ok(request) => {
                let observer: &dyn crate::sweep::SweepObserver = &self.ctx.metrics.sweep;
                crate::sweep::run_recorded(Some(observer), self.ctx.store.as_ref(), request).await
            }
            Err(refused) => Err(refused),
        };
        let (as_of, report) = match ran {
            Ok(done) => done,
            Err(e @ crate::sweep::SweepError::AsOfInFuture { .. }) => {
                return Err(invalid(ErrorReason::InvalidArgument, e.to_string()));
            }
            Err(crate::sweep::SweepError::Store(e)) => return Err(e.into()),
        };
        let c = report.counts;
        use crate::lifecycle::TransitionReason;
        Ok(Response::new(proto::AdvanceStatesResponse {
            as_of: Some(convert::timestamp(as_of)),
            dry_run: r.dry_run,
            examined: c.examined,
            to_grace: c.transitions(TransitionReason::ValidityExpired),
            to_locked: c.transitions(TransitionReason::GraceExpired),
            to_recycled_from_locked: c.transitions(TransitionReason::LockExpired),
            to_recycled_unactivated: c.transitions(TransitionReason::UnactivatedExpired),
            expiring_notified: c.expiring_notified,
            recycled_msisdns: report.recycled_msisdns,
        }))
    }

    async fn authorize(
        &self,
        request: Request<proto::AuthorizeRequest>,
    ) -> Result<Response<proto::AuthorizeResponse>, Status> {
        note(&request, &request.get_ref().msisdn, "");
        let r = request.get_ref();
        let msisdn = convert::msisdn(&r.msisdn)?;
        let service = required_enum(r.service, "service", ServiceType::from_i32)?;
        let destination = lifecycle::parse_destination(&r.destination)?;
        self.ctx.check_ready()?;
        let account = self.ctx.facts.get(self.ctx.store.as_ref(), &msisdn).await?;
        let now = self.ctx.clock.now();
        let decision =
            lifecycle::authorize(account.as_ref(), service, destination, now, &self.ctx.rules);
        Ok(Response::new(proto::AuthorizeResponse {
            allowed: decision.allowed,
            reason: decision.barring.map_or("", Barring::as_str).to_owned(),
            state: decision.state.map_or(0, convert::state),
        }))
    }
}
