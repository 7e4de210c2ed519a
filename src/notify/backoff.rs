//! Retry delays: exponential from `initial`, doubling per failed attempt, capped at `max`, with
//! jitter so that many events failing together do not retry in lockstep; longer when the BSS
//! answers 429 or 503 with a `Retry-After` (RFC 9110 §10.2.3), up to [`RETRY_AFTER_CAP`].

use std::time::{Duration, SystemTime};

/// The longest wait a `Retry-After` can ask for. A wrong or hostile header (a date years
/// ahead) must not park an event for days; the attempt still counts towards
/// `bss.max_attempts`, so an event the BSS keeps refusing is dead-lettered in the end.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

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

/// The wait a `Retry-After` value asks for: delay-seconds (digits; a number too large for
/// any clock saturates) or an HTTP date (IMF-fixdate, RFC 850 or asctime), counted from `now`
/// (a date in the past asks for no wait). `None` when it is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The delay before the next attempt: the backoff's, or what the BSS asked for when that is
/// longer, at most [`RETRY_AFTER_CAP`] (a backoff longer than the cap is kept).
pub fn next_delay(backoff: Duration, asked: Option<Duration>) -> Duration {
    match asked {
        Some(asked) => backoff.max(asked.min(RETRY_AFTER_CAP)),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06T08:49:37Z
        let s = Duration::from_secs;
        assert_eq!(retry_after("120", now), Some(s(120)));
        assert_eq!(retry_after(" 0 ", now), Some(s(0)));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for date in [
            "Sun, 06 Nov 1994 08:51:37 GMT",
            "Sunday, 06-Nov-94 08:51:37 GMT",
            "Sun Nov  6 08:51:37 1994",
        ] {
            assert_eq!(retry_after(date, now), Some(s(120)), "{date}");
        }
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past asks for no wait"
        );
        for bad in ["", "-5", "1.5", "soon", "Sun, 06 Nov 1994"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_lengthens_the_backoff_up_to_the_cap() {
        let ms = Duration::from_millis;
        assert_eq!(next_delay(ms(500), None), ms(500));
        assert_eq!(next_delay(ms(500), Some(ms(0))), ms(500));
        assert_eq!(next_delay(ms(500), Some(ms(7_000))), ms(7_000));
        assert_eq!(
            next_delay(ms(500), Some(Duration::from_secs(u64::MAX))),
            RETRY_AFTER_CAP
        );
        let long = RETRY_AFTER_CAP * 2;
        assert_eq!(next_delay(long, Some(ms(1))), long);
    }

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
