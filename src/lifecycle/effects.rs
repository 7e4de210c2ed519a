//! What a change writes besides the account itself: its history rows and outbox events, built
//! here and nowhere else, for every writer (a request's command, a re-provisioning, the sweep).
//!
//! Pure like the rest of the core: the instant and who asked come in as an [`Origin`], and the
//! event ids come from the caller's [`EventIds`] (the store's writers use time-ordered UUIDs).

use chrono::{DateTime, Utc};

use super::account::{Account, ExpiringNotice, Swept, Transition, TransitionReason};
use super::commands::{Applied, Change};
use super::types::{AccountState, HistoryKind, Msisdn, RechargeChannel, wire_enum};

/// The actor recorded for boundary transitions, whoever happened to materialise them: the
/// history reads the same whether the nightly sweep or a request crossed the boundary first.
pub const SWEEP_ACTOR: &str = "sweep";

/// The outbox `reason` of a VALIDITY_EXPIRING notice.
pub const VALIDITY_EXPIRING_REASON: &str = "VALIDITY_EXPIRING";

wire_enum! {
    /// Kinds of outbox events (the numbers are the wire and storage values of `EventType`; the
    /// name is the one on the webhook, in `bss.webhook_events` and in the CLI).
    pub enum EventType {
        NumberRecycled = 1 => "NUMBER_RECYCLED",
        StateChanged = 2 => "STATE_CHANGED",
        ValidityExpiring = 3 => "VALIDITY_EXPIRING",
    }
}

impl EventType {
    /// A name as an operator writes it: any case, with or without the proto's `EVENT_TYPE_`.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_uppercase();
        let name = name.strip_prefix("EVENT_TYPE_").unwrap_or(&name);
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// One row of an account's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecord {
    /// Assigned by the store; ignored when writing.
    pub id: i64,
    pub msisdn: Msisdn,
    pub account_id: String,
    pub generation: u32,
    /// When the change took effect (a boundary transition: its boundary instant).
    pub at: DateTime<Utc>,
    pub kind: HistoryKind,
    pub from_state: Option<AccountState>,
    pub to_state: Option<AccountState>,
    pub amount: i64,
    pub actor: String,
    pub request_id: Option<String>,
    /// A RECHARGE row's channel, from its request (`None` on every other row).
    pub channel: Option<RechargeChannel>,
}

/// One event of the transactional outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Assigned by the store, strictly increasing; ignored when writing.
    pub sequence: i64,
    pub event_id: String,
    pub event_type: EventType,
    pub msisdn: Msisdn,
    pub account_id: String,
    pub generation: u32,
    pub from_state: AccountState,
    pub to_state: AccountState,
    pub reason: String,
    pub effective_at: DateTime<Utc>,
    pub emitted_at: DateTime<Utc>,
}

/// Where event ids come from (spec: `event_id` is a UUID string).
pub trait EventIds {
    fn next_id(&mut self) -> String;
}

impl<F: FnMut() -> String> EventIds for F {
    fn next_id(&mut self) -> String {
        self()
    }
}

/// Who made a change and when: the history's actor and request_id, the events' `emitted_at`.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub actor: &'a str,
    /// `None` for the sweep.
    pub request_id: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// History rows and outbox events of one change, in the order they are written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub history: Vec<HistoryRecord>,
    pub events: Vec<OutboxEvent>,
}

impl Effects {
    /// What an applied command writes: its boundary crossings first (see
    /// [`Effects::transitions`]), then the command's own history row.
    pub fn of_command(applied: &Applied, origin: Origin<'_>, ids: &mut dyn EventIds) -> Self {
        let mut effects = Effects::default();
        effects.transitions(&applied.account, &applied.transitions, origin.now, ids);
        if let Some(change) = &applied.change {
            effects.change(&applied.account, change, origin);
        }
        effects
    }

    /// What a provisioning writes: the previous generation's last boundaries (it is archived
    /// RECYCLED), then the new generation's PROVISIONED row.
    pub fn of_provision(
        provisioned: &Provisioned,
        origin: Origin<'_>,
        ids: &mut dyn EventIds,
    ) -> Self {
        let mut effects = Effects::default();
        if let Some(previous) = &provisioned.archive {
            effects.transitions(previous, &provisioned.archive_transitions, origin.now, ids);
        }
        let account = &provisioned.account;
        let change = Change {
            kind: HistoryKind::Provisioned,
            from: AccountState::Unactivated,
            to: AccountState::Unactivated,
            amount: account.preset_balance,
            channel: None,
        };
        effects.change(account, &change, origin);
        if let Some(row) = effects.history.last_mut() {
            // A new generation comes from no state.
            row.from_state = None;
        }
        effects
    }

    /// What the sweep writes for one account: its boundary crossings and its notice.
    pub fn of_sweep(
        account: &Account,
        swept: &Swept,
        now: DateTime<Utc>,
        ids: &mut dyn EventIds,
    ) -> Self {
        let mut effects = Effects::default();
        effects.transitions(account, &swept.transitions, now, ids);
        if let Some(notice) = &swept.notice {
            effects
                .events
                .push(expiring_event(account, notice, now, ids));
        }
        effects
    }

    /// A STATE_CHANGED history row (actor `sweep`, at the boundary instant) for every boundary
    /// crossing, a STATE_CHANGED event for every transition, and NUMBER_RECYCLED for every
    /// recycle; emitted at `now`.
    pub fn transitions(
        &mut self,
        account: &Account,
        transitions: &[Transition],
        now: DateTime<Utc>,
        ids: &mut dyn EventIds,
    ) {
        for t in transitions {
            if t.reason.is_boundary() {
                self.history.push(HistoryRecord {
                    id: 0,
                    msisdn: account.msisdn.clone(),
                    account_id: account.account_id.clone(),
                    generation: account.generation,
                    at: t.effective_at,
                    kind: HistoryKind::StateChanged,
                    from_state: Some(t.from),
                    to_state: Some(t.to),
                    amount: 0,
                    actor: SWEEP_ACTOR.to_owned(),
                    request_id: None,
                    channel: None,
                });
            }
            let mut event = |event_type| OutboxEvent {
                sequence: 0,
                event_id: ids.next_id(),
                event_type,
                msisdn: account.msisdn.clone(),
                account_id: account.account_id.clone(),
                generation: account.generation,
                from_state: t.from,
                to_state: t.to,
                reason: t.reason.as_str().to_owned(),
                effective_at: t.effective_at,
                emitted_at: now,
            };
            self.events.push(event(EventType::StateChanged));
            if t.to == AccountState::Recycled {
                self.events.push(event(EventType::NumberRecycled));
            }
        }
    }

    /// The history row of a request's own change, at `origin.now`.
    fn change(&mut self, account: &Account, change: &Change, origin: Origin<'_>) {
        self.history.push(HistoryRecord {
            id: 0,
            msisdn: account.msisdn.clone(),
            account_id: account.account_id.clone(),
            generation: account.generation,
            at: origin.now,
            kind: change.kind,
            from_state: Some(change.from),
            to_state: Some(change.to),
            amount: change.amount,
            actor: origin.actor.to_owned(),
            request_id: origin.request_id.map(str::to_owned),
            channel: change.channel,
        });
    }
}

/// The VALIDITY_EXPIRING event of `notice` (from and to state VALID, effective at the instant
/// the notice became due).
pub fn expiring_event(
    account: &Account,
    notice: &ExpiringNotice,
    now: DateTime<Utc>,
    ids: &mut dyn EventIds,
) -> OutboxEvent {
    OutboxEvent {
        sequence: 0,
        event_id: ids.next_id(),
        event_type: EventType::ValidityExpiring,
        msisdn: account.msisdn.clone(),
        account_id: account.account_id.clone(),
        generation: account.generation,
        from_state: AccountState::Valid,
        to_state: AccountState::Valid,
        reason: VALIDITY_EXPIRING_REASON.to_owned(),
        effective_at: notice.due_at,
        emitted_at: now,
    }
}

impl TransitionReason {
    /// A boundary crossing (a period ran out), as opposed to a change a request made.
    pub fn is_boundary(self) -> bool {
        !matches!(
            self,
            TransitionReason::Activated | TransitionReason::Recharged | TransitionReason::Unlocked
        )
    }
}

/// A provisioning decided by [`super::provision_over`]: the new generation, and the previous one
/// it retires (caught up to RECYCLED, to be archived) with the boundaries it crossed to get there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    pub account: Account,
    pub archive: Option<Account>,
    pub archive_transitions: Vec<Transition>,
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::lifecycle::{
        Amount, Command, ProvisionParams, RechargeChannel, Rules, apply, provision_over,
    };

    fn rules() -> Rules {
        Rules::default()
    }

    fn noon(rules: &Rules, y: i32, m: u32, d: u32) -> DateTime<Utc> {
        rules
            .timezone
            .with_ymd_and_hms(y, m, d, 12, 0, 0)
            .single()
            .expect("a local noon")
            .with_timezone(&Utc)
    }

    /// Ids "e1", "e2", … in the order they are asked for.
    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("e{n}")
        }
    }

    fn msisdn() -> Msisdn {
        Msisdn::parse("8613800138000").unwrap()
    }

    fn activated(rules: &Rules, now: DateTime<Utc>) -> Account {
        let params = ProvisionParams {
            preset_balance: 0,
            sold: true,
            initial_validity_days: 0,
        };
        let card = provision_over(None, msisdn(), "a-1".into(), &params, now, rules)
            .unwrap()
            .account;
        apply(&card, &Command::Activate, now, rules)
            .unwrap()
            .account
    }

    #[test]
    fn a_recharge_in_grace_writes_the_boundary_then_its_own_row() {
        let rules = rules();
        let start = noon(&rules, 2026, 1, 10);
        let account = activated(&rules, start);
        // Past the validity: the recharge first materialises VALID → GRACE.
        let later = account.valid_until.unwrap() + Duration::days(3);
        let now = rules.start_of_day(later) + Duration::hours(9);
        let recharge = Command::Recharge {
            amount: Amount::parse("amount", 5000).unwrap(),
            channel: RechargeChannel::Online,
            validity_days: 0,
        };
        let applied = apply(&account, &recharge, now, &rules).unwrap();
        let origin = Origin {
            actor: "billing-1",
            request_id: Some("r-1"),
            now,
        };
        let effects = Effects::of_command(&applied, origin, &mut counter());

        let kinds: Vec<_> = effects.history.iter().map(|h| h.kind).collect();
        assert_eq!(
            kinds,
            vec![HistoryKind::StateChanged, HistoryKind::Recharge]
        );
        let boundary = &effects.history[0];
        assert_eq!(boundary.actor, SWEEP_ACTOR);
        assert_eq!(boundary.request_id, None);
        assert_eq!(boundary.at, applied.transitions[0].effective_at);
        let own = &effects.history[1];
        assert_eq!(
            (own.actor.as_str(), own.request_id.as_deref(), own.at),
            ("billing-1", Some("r-1"), now)
        );
        assert_eq!(own.amount, 5000);
        // One STATE_CHANGED event per transition (VALID → GRACE, GRACE → VALID), no recycle.
        let events: Vec<_> = effects
            .events
            .iter()
            .map(|e| (e.event_id.as_str(), e.event_type, e.from_state, e.to_state))
            .collect();
        assert_eq!(
            events,
            vec![
                (
                    "e1",
                    EventType::StateChanged,
                    AccountState::Valid,
                    AccountState::Grace
                ),
                (
                    "e2",
                    EventType::StateChanged,
                    AccountState::Grace,
                    AccountState::Valid
                ),
            ]
        );
        assert!(effects.events.iter().all(|e| e.emitted_at == now));
    }

    #[test]
    fn a_command_that_changes_nothing_writes_nothing() {
        let rules = rules();
        let now = noon(&rules, 2026, 1, 10);
        let account = activated(&rules, now);
        let applied = apply(&account, &Command::Activate, now, &rules).unwrap();
        let origin = Origin {
            actor: "billing-1",
            request_id: Some("a-2"),
            now,
        };
        assert_eq!(
            Effects::of_command(&applied, origin, &mut counter()),
            Effects::default()
        );
    }

    #[test]
    fn a_number_in_use_is_not_provisioned_again() {
        let rules = rules();
        let now = noon(&rules, 2026, 1, 10);
        let account = activated(&rules, now);
        let params = ProvisionParams {
            preset_balance: 0,
            sold: false,
            initial_validity_days: 0,
        };
        let err = provision_over(Some(&account), msisdn(), "a-2".into(), &params, now, &rules)
            .unwrap_err();
        assert_eq!(err.reason(), crate::lifecycle::ErrorReason::AccountExists);
    }

    #[test]
    fn re_provisioning_archives_the_recycled_generation_with_its_last_boundaries() {
        let rules = rules();
        let start = noon(&rules, 2026, 1, 10);
        let account = activated(&rules, start);
        // Long after the lock ended, before any sweep: GRACE, LOCKED and RECYCLED happen now.
        let now = rules.start_of_day(account.lock_until.unwrap() + Duration::days(5));
        let params = ProvisionParams {
            preset_balance: 1000,
            sold: false,
            initial_validity_days: 0,
        };
        let provisioned =
            provision_over(Some(&account), msisdn(), "a-2".into(), &params, now, &rules).unwrap();
        let archive = provisioned.archive.as_ref().expect("the old generation");
        assert_eq!(archive.state, AccountState::Recycled);
        assert_eq!(provisioned.account.generation, account.generation + 1);
        assert_eq!(provisioned.archive_transitions.len(), 3);

        let origin = Origin {
            actor: "billing-1",
            request_id: Some("p-2"),
            now,
        };
        let effects = Effects::of_provision(&provisioned, origin, &mut counter());
        // Three boundary rows of the old generation, then PROVISIONED from no state.
        assert_eq!(effects.history.len(), 4);
        assert!(effects.history[..3].iter().all(|h| h.generation == 1));
        let provisioned_row = &effects.history[3];
        assert_eq!(provisioned_row.kind, HistoryKind::Provisioned);
        assert_eq!(provisioned_row.from_state, None);
        assert_eq!(provisioned_row.to_state, Some(AccountState::Unactivated));
        assert_eq!(provisioned_row.amount, 1000);
        assert_eq!(provisioned_row.generation, 2);
        // Three STATE_CHANGED events and one NUMBER_RECYCLED.
        let types: Vec<_> = effects.events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            vec![
                EventType::StateChanged,
                EventType::StateChanged,
                EventType::StateChanged,
                EventType::NumberRecycled
            ]
        );
    }

    #[test]
    fn the_sweep_writes_the_notice_as_a_validity_expiring_event() {
        let rules = rules();
        let start = noon(&rules, 2026, 1, 10);
        let mut account = activated(&rules, start);
        let notice = account.pending_notice(&rules).expect("a notice to come");
        let swept = account.sweep(notice.due_at, &rules);
        let effects = Effects::of_sweep(&account, &swept, notice.due_at, &mut counter());
        assert!(effects.history.is_empty());
        assert_eq!(effects.events.len(), 1);
        let event = &effects.events[0];
        assert_eq!(event.event_type, EventType::ValidityExpiring);
        assert_eq!(event.reason, VALIDITY_EXPIRING_REASON);
        assert_eq!(event.effective_at, notice.due_at);
    }

    #[test]
    fn event_type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.name()), Some(t));
            assert_eq!(EventType::from_i32(t as i32), Some(t));
            let proto_name = format!("event_type_{}", t.name().to_lowercase());
            assert_eq!(EventType::parse(&proto_name), Some(t));
        }
        assert_eq!(EventType::parse("RECYCLED"), None);
        assert_eq!(EventType::from_i32(0), None);
    }
}
