//! Per-tenant retry delays: 5 s doubling to 5 min, +/-20% jitter, reset on success.

use std::time::Duration;

pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Delay before retry number `failures` (1 = first failure). `jitter` in [-1, 1]
/// scales the +/-20% spread, so callers (and tests) choose the randomness.
pub fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = (BACKOFF_MIN.as_secs_f64() * 2f64.powi(exp as i32)).min(BACKOFF_MAX.as_secs_f64());
    Duration::from_secs_f64(base * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0)))
}

/// A uniform jitter in [-1, 1].
pub fn random_jitter() -> f64 {
    rand::random_range(-1.0..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_jitters() {
        assert_eq!(backoff_delay(1, 0.0), Duration::from_secs(5));
        assert_eq!(backoff_delay(2, 0.0), Duration::from_secs(10));
        assert_eq!(backoff_delay(4, 0.0), Duration::from_secs(40));
        assert_eq!(backoff_delay(7, 0.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(1000, 0.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(1, 1.0), Duration::from_secs(6));
        assert_eq!(backoff_delay(1, -1.0), Duration::from_secs(4));
        for _ in 0..100 {
            let d = backoff_delay(3, random_jitter());
            assert!(d >= Duration::from_secs(16) && d <= Duration::from_secs(24), "{d:?}");
        }
    }
}
