//! Failed authentications are limited per client address, so keys cannot be guessed at network
//! speed: after a burst of failures an address is refused (429 `rate_limited`) until its budget
//! refills, whatever key it sends, so a throttled guesser learns nothing from its guesses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flux_types::ErrorCode;

use crate::api_error::{ApiErrorResponse, whole_seconds_up};
use crate::client_addr::ClientKey;

/// Failures an address may make in a row.
pub(crate) const FAILED_AUTH_BURST: u32 = 10;
/// One failure comes back this often (10 a minute).
pub(crate) const FAILED_AUTH_REFILL: Duration = Duration::from_secs(6);
/// Addresses tracked at most; past it new addresses are not tracked until the sweep (memory
/// stays bounded under a flood from many addresses).
const MAX_TRACKED: usize = 100_000;

/// A GCRA per address: the instant at which its failure budget is full again.
#[derive(Debug, Default)]
pub(crate) struct AuthThrottle {
    full_at: Mutex<HashMap<ClientKey, Instant>>,
}

impl AuthThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Instant>> {
        self.full_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses `client` while its failure budget is spent.
    pub(crate) fn check(&self, client: ClientKey) -> Result<(), ApiErrorResponse> {
        let now = Instant::now();
        let Some(full_at) = self.lock().get(&client).copied() else {
            return Ok(());
        };
        let allowance = FAILED_AUTH_REFILL * (FAILED_AUTH_BURST - 1);
        let blocked_for = full_at.saturating_duration_since(now + allowance);
        if blocked_for.is_zero() {
            return Ok(());
        }
        Err(ApiErrorResponse::new(
            ErrorCode::RateLimited,
            format!(
                "too many failed authentications from this address; retry in {} s",
                whole_seconds_up(blocked_for)
            ),
            None,
        )
        .retry_after(blocked_for))
    }

    /// Counts one failed authentication of `client`.
    pub(crate) fn record_failure(&self, client: ClientKey) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= MAX_TRACKED && !entries.contains_key(&client) {
            return;
        }
        let full_at = entries.entry(client).or_insert(now);
        *full_at = (*full_at).max(now) + FAILED_AUTH_REFILL;
    }

    /// Forgets addresses whose budget is full again.
    pub(crate) fn forget_idle(&self) {
        let now = Instant::now();
        self.lock().retain(|_, full_at| *full_at > now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_blocks_that_address_only() {
        let throttle = AuthThrottle::default();
        let guesser = ClientKey::new([192, 0, 2, 1].into());
        let other = ClientKey::new([192, 0, 2, 2].into());
        for _ in 0..FAILED_AUTH_BURST {
            assert!(throttle.check(guesser).is_ok());
            throttle.record_failure(guesser);
        }
        let refused = throttle.check(guesser).unwrap_err();
        assert_eq!(refused.error().code, ErrorCode::RateLimited);
        assert!(throttle.check(other).is_ok());
    }
}
