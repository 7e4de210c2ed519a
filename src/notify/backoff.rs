//! Retry delays: exponential from `initial`, doubling per failed attempt, capped at `max`, with
//! jitter so that many events failing together do not retry in lockstep.

use std::time::Duration;

/// The delay after failed attempt number `attempt` (1 = the first attempt failed).
///
/// Jitter takes up to a fifth off the nominal delay (never adds), so the first retry comes
/// within 0.4–0.5 s by default and no delay exceeds `max`. `unit` is a random number in [0, 1).
pub fn delay(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let nominal = initial
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max)
        .min(max);
    nominal.mul_f64(1.0 - 0.2 * unit.clamp(0.0, 1.0))
}

/// [`delay`] with a fresh random jitter.
pub fn jittered(attempt: u32, initial: Duration, max: Duration) -> Duration {
    delay(attempt, initial, max, fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_from_half_a_second_to_a_minute() {
        let (initial, max) = (MS(500), MS(60_000));
        let nominal: Vec<u64> = (1..=10)
            .map(|a| delay(a, initial, max, 0.0).as_millis() as u64)
            .collect();
        assert_eq!(
            nominal,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(delay(1_000, initial, max, 0.0), max);
    }

    #[test]
    fn jitter_only_shortens_by_up_to_a_fifth() {
        let (initial, max) = (MS(500), MS(60_000));
        for attempt in 1..40 {
            let d = jittered(attempt, initial, max);
            let nominal = delay(attempt, initial, max, 0.0);
            assert!(
                d <= nominal && d >= nominal.mul_f64(0.8),
                "{attempt}: {d:?}"
            );
        }
    }
}
