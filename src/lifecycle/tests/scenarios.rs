//! Random lives for the property tests: rules, a start, and a sequence of commands and sweeps
//! with clock jumps (many of them onto the boundary days themselves).

use proptest::prelude::*;

use super::*;

#[derive(Clone, Copy, Debug)]
pub(super) enum RulesKind {
    Shanghai,
    NewYork,
    /// grace 10 / lock 5 / cap 100, so sequences cross many boundaries.
    Short,
    /// An unlock grants more grace (200 days) than the validity does (90), so a recharge after an
    /// unlock can bring grace_until earlier: the documented exception to "dates never go back".
    LongUnlockGrace,
}

impl RulesKind {
    pub(super) fn rules(self) -> Rules {
        match self {
            RulesKind::Shanghai => shanghai(),
            RulesKind::NewYork => new_york(),
            RulesKind::Short => short_periods(),
            RulesKind::LongUnlockGrace => Rules {
                unlock_grace_days: 200,
                ..new_york()
            },
        }
    }
}

/// How far the clock moves before a step.
#[derive(Clone, Copy, Debug)]
pub(super) enum Jump {
    /// A plain jump of whole days.
    Days(u32),
    /// To the last day of the current effective state, shifted by `shift` days (−1 ..= 1), so that
    /// sequences hit the boundary days themselves; at most 400 days, never backwards.
    NearBoundary { shift: i64 },
}

#[derive(Clone, Debug)]
pub(super) struct Step {
    pub(super) jump: Jump,
    /// Added to the jump, so commands land at any time of day.
    pub(super) seconds: u32,
    /// `None`: the sweep.
    pub(super) command: Option<Command>,
}

#[derive(Clone, Debug)]
pub(super) struct Scenario {
    pub(super) rules: RulesKind,
    pub(super) start_day: u32,
    pub(super) start_second: u32,
    pub(super) preset: i64,
    pub(super) sold: bool,
    pub(super) initial_validity_days: u32,
    pub(super) steps: Vec<Step>,
}

/// Positive amounts (the API refuses the others before a command exists), some of them large
/// enough to overflow a balance.
fn amount_strategy() -> impl Strategy<Value = Amount> {
    prop_oneof![
        12 => 1i64..=40_000,
        1 => (i64::MAX / 2)..=i64::MAX,
    ]
    .prop_map(|fen| Amount::parse("amount", fen).expect("positive"))
}

/// What a step does: a command, or `None` for the sweep (which materialises the boundaries
/// crossed, `catch_up`).
fn action_strategy() -> impl Strategy<Value = Option<Command>> {
    let channel = prop_oneof![
        Just(RechargeChannel::Card10011),
        Just(RechargeChannel::Bank),
        Just(RechargeChannel::BusinessHall),
        Just(RechargeChannel::Online),
    ];
    let validity_days = prop_oneof![
        3 => Just(0u32),
        3 => 0u32..=600,
        1 => Just(36_501u32),
    ];
    let unlock_amount = prop_oneof![
        3 => Just(None),
        3 => (1i64..=40_000).prop_map(|fen| Amount::parse("recharge_amount", fen).ok()),
        1 => amount_strategy().prop_map(Some),
    ];
    let operator = prop_oneof![8 => Just("op-7"), 1 => Just("")];
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Command::MarkSold)),
        2 => Just(Some(Command::Activate)),
        5 => (amount_strategy(), channel, validity_days).prop_map(
            |(amount, channel, validity_days)| Some(Command::Recharge {
                amount,
                channel,
                validity_days,
            })
        ),
        4 => prop_oneof![
            4 => (1i64..=20_000).prop_map(|fen| Amount::parse("amount", fen).expect("positive")),
            1 => amount_strategy(),
        ]
        .prop_map(|amount| Some(Command::Charge { amount })),
        4 => (operator, unlock_amount).prop_map(|(operator_id, recharge_amount)| {
            Some(Command::Unlock(Unlock {
                operator_id: operator_id.into(),
                branch_id: "hall.01".into(),
                recharge_amount,
            }))
        }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let jump = prop_oneof![
        6 => (0u32..=2).prop_map(Jump::Days),
        3 => (0u32..=45).prop_map(Jump::Days),
        1 => (0u32..=400).prop_map(Jump::Days),
        6 => (-1i64..=1).prop_map(|shift| Jump::NearBoundary { shift }),
    ];
    (jump, 0u32..86_400, action_strategy()).prop_map(|(jump, seconds, command)| Step {
        jump,
        seconds,
        command,
    })
}

prop_compose! {
    /// A random life: rules, a start, a card, and up to 50 steps (most lives begin with the first
    /// call, so that the later states are reached).
    pub(super) fn scenario_strategy()(
        rules in prop_oneof![
            Just(RulesKind::Shanghai),
            Just(RulesKind::NewYork),
            Just(RulesKind::Short),
            Just(RulesKind::LongUnlockGrace),
        ],
        start_day in 0u32..=1500,
        start_second in 0u32..86_400,
        preset in prop_oneof![Just(0i64), 0i64..=20_000],
        sold in prop_oneof![3 => Just(true), 1 => Just(false)],
        initial_validity_days in prop_oneof![Just(0u32), 1u32..=540],
        activate in prop_oneof![3 => Just(true), 1 => Just(false)],
        steps in prop::collection::vec(step_strategy(), 1..50),
    ) -> Scenario {
        let first_call = Step { jump: Jump::Days(0), seconds: 3600, command: Some(Command::Activate) };
        let steps = match activate {
            true => std::iter::once(first_call).chain(steps).collect(),
            false => steps,
        };
        Scenario { rules, start_day, start_second, preset, sold, initial_validity_days, steps }
    }
}
