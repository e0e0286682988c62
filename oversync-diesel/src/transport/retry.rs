//! Timeouts and the retry policy.

use std::time::Duration;

/// Timeouts and retry policy of a [`Transport`](super::Transport).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Limit of one request attempt, from connecting until the whole answer is read
    /// (default 30 s). A watch stream uses it for connecting and for its headers only.
    pub request_timeout: Duration,
    /// Retries after the first attempt, for network failures and `5xx` answers (default 4).
    /// `4xx` answers are never retried; a `401` gets one extra attempt after a token refresh
    /// that does not count here.
    pub max_retries: u32,
    /// Backoff before the first retry (default 200 ms); it doubles per retry, with jitter.
    pub backoff_min: Duration,
    /// Upper bound of the backoff (default 5 s).
    pub backoff_max: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            request_timeout: Duration::from_secs(30),
            max_retries: 4,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// The pause before retry number `retry` (1-based): `backoff_min * 2^(retry-1)` capped at
/// `backoff_max`, then jittered uniformly into `[delay/2, delay]`.
pub(crate) fn backoff(config: &TransportConfig, retry: u32) -> Duration {
    jittered_backoff(config.backoff_min, config.backoff_max, retry)
}

/// `min * 2^(retry-1)` capped at `max`, jittered uniformly into `[delay/2, delay]`: the
/// policy of request retries and of the watcher's reconnects.
pub(crate) fn jittered_backoff(min: Duration, max: Duration, retry: u32) -> Duration {
    use rand::Rng;
    let max = max.max(min);
    let factor = 1u32 << retry.saturating_sub(1).min(20);
    let delay = min.saturating_mul(factor).min(max);
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    if nanos < 2 {
        return delay;
    }
    Duration::from_nanos(rand::thread_rng().gen_range(nanos / 2..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let config = TransportConfig {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..TransportConfig::default()
        };
        for _ in 0..50 {
            let first = backoff(&config, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&config, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&config, 40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
        let zero = TransportConfig {
            backoff_min: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..TransportConfig::default()
        };
        assert_eq!(backoff(&zero, 1), Duration::ZERO);
    }
}
