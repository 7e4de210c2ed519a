//! Property tests: random command sequences and clock jumps (`scenarios.rs`) against the spec's
//! model (`model.rs`), checking the invariants after every step.

use chrono::Duration;
use proptest::prelude::*;

use super::model::{expected_refusal, expected_validity, last_day, spec_tariff_days, walk_days};
use super::scenarios::{Jump, Scenario, Step, scenario_strategy};
use super::*;

/// One account's life under a scenario, with the sums the balance must conserve.
struct Life {
    rules: Rules,
    account: Account,
    /// When the account was last written (its state is materialised as of then).
    last_write: DateTime<Utc>,
    now: DateTime<Utc>,
    initial_preset: i128,
    recharged: i128,
    charged: i128,
    /// grace_until/lock_until were set by an unlock without recharge (not derived from
    /// valid_until) and no recharge has happened since.
    grace_from_unlock: bool,
    /// Every transition so far, in order (sweeps, commands' catch-ups and commands' own).
    history: Vec<Transition>,
}

impl Life {
    fn start(scenario: &Scenario) -> Self {
        let rules = scenario.rules.rules();
        let now = utc("2024-01-01T00:00:00Z")
            + Duration::days(i64::from(scenario.start_day))
            + Duration::seconds(i64::from(scenario.start_second));
        let initial_validity_days = scenario.initial_validity_days % (rules.max_validity_days + 1);
        let account = provision_at(
            &rules,
            now,
            &params(scenario.preset, scenario.sold, initial_validity_days),
        );
        assert_eq!(
            account.card_expiry,
            Some(add_days(rules.local_date(now), rules.card_life_days))
        );
        Self {
            rules,
            account,
            last_write: now,
            now,
            initial_preset: i128::from(scenario.preset),
            recharged: 0,
            charged: 0,
            grace_from_unlock: false,
            history: Vec::new(),
        }
    }

    fn advance(&mut self, days: u32, seconds: u32) {
        self.now += Duration::days(i64::from(days)) + Duration::seconds(i64::from(seconds));
    }

    /// Checks the account's view of the clock against the day-by-day walk; returns the walk.
    fn check_calendar(&self) -> (AccountState, Vec<Transition>) {
        let (rules, account, now) = (&self.rules, &self.account, self.now);
        let (state, walked) = walk_days(account, self.last_write, now, rules);
        assert_eq!(
            account.effective_state(now, rules),
            state,
            "effective state at {now}"
        );
        assert_eq!(
            account.pending_transitions(now, rules),
            walked,
            "pending transitions at {now}"
        );
        for t in &walked {
            assert!(t.to > t.from, "{} → {} moves backwards", t.from, t.to);
            let just_before = t.effective_at - Duration::seconds(1);
            assert_eq!(account.effective_state(just_before, rules), t.from);
            assert_eq!(account.effective_state(t.effective_at, rules), t.to);
        }
        (state, walked)
    }

    fn sweep(&mut self, state: AccountState, walked: Vec<Transition>) {
        let before = self.account.clone();
        let mut swept = before.clone();
        let transitions = swept.catch_up(self.now, &self.rules);
        assert_eq!(transitions, walked);
        assert_eq!(swept.state, state);
        if before.state != Recycled && state == Recycled {
            assert_eq!(swept.recycled_at, walked.last().map(|t| t.effective_at));
        } else {
            assert_eq!(swept.recycled_at, before.recycled_at);
        }
        let unchanged = Account {
            state: before.state,
            recycled_at: before.recycled_at,
            ..swept.clone()
        };
        assert_eq!(
            unchanged, before,
            "a sweep changes only the state and recycled_at"
        );
        self.history.extend(transitions);
        self.account = swept;
        self.last_write = self.now;
    }

    fn jump(&mut self, jump: Jump, seconds: u32) {
        let days = match jump {
            Jump::Days(days) => days,
            Jump::NearBoundary { shift } => {
                let (rules, account) = (&self.rules, &self.account);
                let state = account.effective_state(self.now, rules);
                last_day(account, state).map_or(1, |last_day| {
                    let days = (last_day - rules.local_date(self.now)).num_days() + shift;
                    u32::try_from(days.clamp(0, 400)).expect("clamped")
                })
            }
        };
        self.advance(days, seconds);
    }

    fn step(&mut self, step: &Step) {
        self.jump(step.jump, step.seconds);
        let (state, walked) = self.check_calendar();
        let Some(command) = step.command.clone() else {
            self.sweep(state, walked);
            return;
        };
        let before = self.account.clone();
        let expected = expected_refusal(&before, state, &command);
        match (apply(&before, &command, self.now, &self.rules), expected) {
            (Err(err), Some(reason)) => {
                assert_eq!(err.reason(), reason, "{command:?} in {state}: {err}");
                let precondition = matches!(err, DomainError::FailedPrecondition { .. });
                let invalid = matches!(
                    reason,
                    ErrorReason::InvalidAmount
                        | ErrorReason::InvalidArgument
                        | ErrorReason::AmountOverflow
                );
                assert_eq!(precondition, !invalid, "error kind of {err:?}");
                assert_eq!(self.account, before, "a refusal changed the account");
            }
            (Ok(applied), None) => {
                self.check_applied(&before, state, &walked, &command, &applied);
                self.history.extend(applied.transitions.iter().cloned());
                self.account = applied.account;
                self.last_write = self.now;
            }
            (Err(err), None) => panic!("{command:?} in {state} refused: {err}"),
            (Ok(applied), Some(reason)) => panic!(
                "{command:?} in {state} applied, the spec says {}: {applied:?}",
                reason.as_str()
            ),
        }
        self.check_account();
    }

    fn check_applied(
        &mut self,
        before: &Account,
        state: AccountState,
        walked: &[Transition],
        command: &Command,
        applied: &Applied,
    ) {
        let (rules, now) = (&self.rules, self.now);
        let today = rules.local_date(now);
        let after = &applied.account;
        let grace_from_unlock_before = self.grace_from_unlock;

        // The boundaries crossed come first, then the command's own change if it made one.
        assert!(applied.transitions.starts_with(walked), "{applied:?}");
        let own = &applied.transitions[walked.len()..];
        assert!(own.len() <= 1);
        if let Some(t) = own.first() {
            assert_eq!((t.from, t.to, t.effective_at), (state, after.state, now));
        } else {
            assert_eq!(after.state, state, "a state change without a transition");
        }
        assert_eq!(
            after.effective_state(now, rules),
            after.state,
            "materialised"
        );
        if let Some(change) = &applied.change {
            assert_eq!((change.from, change.to), (state, after.state));
            assert_eq!(after.updated_at, now);
        }

        // What never changes within one life.
        assert_eq!(after.msisdn, before.msisdn);
        assert_eq!(after.account_id, before.account_id);
        assert_eq!(after.generation, before.generation);
        assert_eq!(after.initial_validity_days, before.initial_validity_days);
        assert_eq!(after.provisioned_at, before.provisioned_at);
        assert_eq!(after.recycled_at, None);
        if before.activated_at.is_some() {
            assert_eq!(after.activated_at, before.activated_at);
        }

        match command {
            Command::MarkSold => {
                assert!(after.sold);
                assert_eq!(applied.change.is_some(), !before.sold);
                assert_eq!(
                    Account {
                        sold: before.sold,
                        state: before.state,
                        updated_at: before.updated_at,
                        ..after.clone()
                    },
                    *before
                );
            }
            Command::Activate => {
                if state == Unactivated {
                    assert_eq!(after.state, Valid);
                    assert_eq!(after.activated_at, Some(now));
                    assert_eq!(after.card_expiry, None);
                    let valid_until = add_days(today, before.initial_validity_days);
                    assert_eq!(after.valid_until, Some(valid_until));
                    self.grace_from_unlock = false;
                } else {
                    assert_eq!(applied.change, None);
                    assert_eq!(
                        Account {
                            state: before.state,
                            ..after.clone()
                        },
                        *before
                    );
                }
            }
            Command::Recharge {
                amount,
                validity_days,
                ..
            } => {
                let amount = amount.fen();
                assert_eq!(after.balance, before.balance + amount);
                assert_eq!(after.preset_balance, before.preset_balance);
                self.recharged += i128::from(amount);
                let outcome = recharge_outcome(applied);
                assert_eq!(outcome.balance_before, before.balance);
                assert_eq!(outcome.balance_after, after.balance);
                assert_eq!(outcome.valid_until_before, before.valid_until);
                assert_eq!(outcome.valid_until_after, after.valid_until);
                if state == Unactivated {
                    assert_eq!(after.state, Unactivated);
                    assert_eq!(outcome.days_granted, 0);
                    assert!(!outcome.capped);
                    assert_eq!(after.valid_until, None);
                    assert_eq!(after.card_expiry, before.card_expiry);
                } else {
                    let days = match validity_days {
                        0 => spec_tariff_days(amount),
                        days => *days,
                    };
                    let (valid_until, capped) =
                        expected_validity(before, state, days, today, rules);
                    assert_eq!(after.state, Valid);
                    assert_eq!(after.valid_until, Some(valid_until), "{state} {outcome:?}");
                    assert_eq!(outcome.days_granted, days);
                    assert_eq!(outcome.capped, capped);
                    self.grace_from_unlock = false;
                }
            }
            Command::Charge { amount } => {
                let amount = amount.fen();
                let outcome = charge_outcome(applied);
                assert_eq!(outcome.charged_preset, before.preset_balance.min(amount));
                assert_eq!(outcome.charged_preset + outcome.charged_balance, amount);
                assert_eq!(
                    after.preset_balance,
                    before.preset_balance - outcome.charged_preset
                );
                assert_eq!(after.balance, before.balance - outcome.charged_balance);
                self.charged += i128::from(amount);
                let dates = |a: &Account| (a.valid_until, a.grace_until, a.lock_until);
                assert_eq!(dates(after), dates(before), "charging keeps the dates");
            }
            Command::Unlock(unlock) => {
                assert_eq!(state, Locked);
                assert_eq!(after.preset_balance, before.preset_balance);
                if let Some(amount) = unlock.recharge_amount {
                    let amount = amount.fen();
                    let days = spec_tariff_days(amount);
                    let (valid_until, capped) =
                        expected_validity(before, Grace, days, today, rules);
                    assert_eq!(after.state, Valid);
                    assert_eq!(after.valid_until, Some(valid_until));
                    assert_eq!(after.balance, before.balance + amount);
                    let outcome = recharge_outcome(applied);
                    assert_eq!(outcome.capped, capped);
                    assert_eq!(outcome.days_granted, days);
                    self.recharged += i128::from(amount);
                    self.grace_from_unlock = false;
                } else {
                    assert_eq!(after.state, Grace);
                    assert_eq!(after.balance, before.balance);
                    assert_eq!(after.valid_until, before.valid_until);
                    assert_eq!(
                        after.grace_until,
                        Some(add_days(today, rules.unlock_grace_days))
                    );
                    self.grace_from_unlock = true;
                }
            }
        }

        // Dates never move backwards within one life: valid_until never decreases (and once set
        // by activation is never cleared); card_expiry is only ever cleared, by activation;
        // grace_until and lock_until never decrease either, except on the first recharge after
        // an unlock without recharge: the unlock set them from its own day, and the recharge
        // derives them from the new valid_until again (valid_until + grace_days), which is
        // earlier when unlock_grace_days > grace_days + the days recharged.
        assert!(
            after.valid_until >= before.valid_until,
            "valid_until went back"
        );
        let recharge_after_unlock = grace_from_unlock_before
            && matches!(command, Command::Recharge { .. })
            && state == Grace;
        if recharge_after_unlock {
            let valid_until = after.valid_until.expect("a recharged validity");
            assert_eq!(
                after.grace_until,
                Some(add_days(valid_until, rules.grace_days))
            );
        } else {
            assert!(
                after.grace_until >= before.grace_until,
                "grace_until went back"
            );
            assert!(
                after.lock_until >= before.lock_until,
                "lock_until went back"
            );
        }
        if before.activated_at.is_some() || after.activated_at.is_none() {
            assert_eq!(after.card_expiry, before.card_expiry, "card_expiry changed");
        }
        // After a successful recharge (and in fact after every command) the validity never
        // reaches past today + max_validity_days.
        if let Some(valid_until) = after.valid_until {
            assert!(
                valid_until <= add_days(today, rules.max_validity_days),
                "beyond the cap"
            );
        }
    }

    /// Invariants that hold after every step.
    fn check_account(&self) {
        let (account, rules) = (&self.account, &self.rules);
        // Balance conservation and no negative bucket.
        assert!(account.balance >= 0, "negative cash balance");
        assert!(account.preset_balance >= 0, "negative preset balance");
        assert!(i128::from(account.preset_balance) <= self.initial_preset);
        assert_eq!(
            i128::from(account.balance) + i128::from(account.preset_balance),
            self.initial_preset + self.recharged - self.charged,
            "balance conservation"
        );
        // The dates are tied together as the spec says.
        match account.activated_at {
            None => {
                assert!(account.card_expiry.is_some());
                assert_eq!(account.valid_until, None);
                assert_eq!(account.grace_until, None);
                assert_eq!(account.lock_until, None);
            }
            Some(_) => {
                assert_eq!(account.card_expiry, None);
                let (valid, grace, lock) = (
                    account.valid_until.expect("valid_until"),
                    account.grace_until.expect("grace_until"),
                    account.lock_until.expect("lock_until"),
                );
                assert_eq!(lock, add_days(grace, rules.lock_days));
                if self.grace_from_unlock {
                    assert!(grace > valid);
                } else {
                    assert_eq!(grace, add_days(valid, rules.grace_days));
                }
            }
        }
        // Transitions so far only moved forward between commands and were in time order.
        for pair in self.history.windows(2) {
            assert!(pair[0].effective_at <= pair[1].effective_at, "{pair:?}");
            assert_eq!(pair[0].to, pair[1].from, "{pair:?}");
        }
    }
}

fn run(scenario: &Scenario) -> Life {
    let mut life = Life::start(scenario);
    for step in &scenario.steps {
        life.step(step);
    }
    life
}

proptest! {
    #![proptest_config(super::budget::config(2048))]

    /// Every step of a random life agrees with the spec's model: refusals exactly where the spec
    /// refuses (and nothing changed), the spec's dates and balances where it applies, the calendar
    /// walked day by day, balance conservation and dates that never go back.
    #[test]
    fn random_lives_follow_the_operators_rules(scenario in scenario_strategy()) {
        run(&scenario);
    }

    /// Once RECYCLED, a number stays RECYCLED and every well-formed command is refused with
    /// ACCOUNT_RECYCLED, leaving the account as it was.
    #[test]
    fn recycled_is_terminal(
        scenario in scenario_strategy(),
        sweep_first in any::<bool>(),
        later in prop::collection::vec((0u32..=3000, 0u32..86_400), 1..4),
    ) {
        let mut life = run(&scenario);
        // Longer than any validity + grace + lock (or card life) the rules under test allow.
        life.advance(2000, 0);
        let (state, walked) = life.check_calendar();
        prop_assert_eq!(state, Recycled);
        if sweep_first {
            life.sweep(state, walked);
            prop_assert!(life.account.recycled_at.is_some());
        }
        let commands = [
            Command::MarkSold,
            Command::Activate,
            recharge(5000),
            recharge_card(100, 30),
            charge(1),
            unlock(0),
            unlock(5000),
        ];
        for (days, seconds) in later {
            life.advance(days, seconds);
            prop_assert_eq!(life.account.effective_state(life.now, &life.rules), Recycled);
            for command in &commands {
                let err = refused(&life.account, command, life.now, &life.rules);
                assert_precondition(&err, ErrorReason::AccountRecycled);
            }
            let auth = authorize(Some(&life.account), VoiceOut, "110", life.now, &life.rules);
            prop_assert!(!auth.allowed);
            prop_assert_eq!(auth.barring, Some(Barring::AccountRecycled));
        }
        let mut swept = life.account.clone();
        swept.catch_up(life.now, &life.rules);
        prop_assert!(swept.catch_up(life.now, &life.rules).is_empty());
    }

    /// The effective state at any instant is the state the calendar gives for that local day,
    /// and it only moves forward as time passes (for an account left alone).
    #[test]
    fn left_alone_an_account_only_moves_forward(
        scenario in scenario_strategy(),
        probes in prop::collection::vec((0u32..=200, 0u32..86_400), 1..12),
    ) {
        let life = run(&scenario);
        let (rules, account) = (&life.rules, &life.account);
        let mut now = life.now;
        let mut previous = account.effective_state(now, rules);
        for (days, seconds) in probes {
            now += Duration::days(i64::from(days)) + Duration::seconds(i64::from(seconds));
            let state = account.effective_state(now, rules);
            prop_assert!(state >= previous, "{} after {}", state, previous);
            let (walked_state, walked) = walk_days(account, life.last_write, now, rules);
            prop_assert_eq!(state, walked_state);
            prop_assert_eq!(account.pending_transitions(now, rules), walked);
            previous = state;
        }
    }
}
