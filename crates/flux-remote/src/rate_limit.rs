//! Per-caller token buckets (governor's GCRA) and the `X-RateLimit-*` headers they report.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::api_error::{ApiErrorResponse, whole_seconds_up};
use crate::auth::Caller;
use crate::config::RateLimit;
use flux_types::ErrorCode;

type KeyedLimiter =
    RateLimiter<Caller, DefaultKeyedStateStore<Caller>, DefaultClock, StateInformationMiddleware>;

/// The rate-limit state to report on an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimitState {
    /// The bucket's size.
    pub limit: u32,
    /// Tokens left after this request.
    pub remaining: u32,
    /// Whole seconds until the bucket is full again.
    pub reset_secs: u64,
}

impl RateLimitState {
    pub(crate) fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

/// A refused request: the answer and the state to report with it.
#[derive(Debug)]
pub(crate) struct Limited {
    pub response: ApiErrorResponse,
    pub state: RateLimitState,
}

pub(crate) struct RateLimiterByKey {
    limiter: KeyedLimiter,
    config: RateLimit,
}

impl std::fmt::Debug for RateLimiterByKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiterByKey")
            .field("config", &self.config)
            .finish()
    }
}

impl RateLimiterByKey {
    pub(crate) fn new(config: RateLimit) -> Self {
        let quota = Quota::with_period(config.replenish_interval())
            .unwrap_or_else(|| Quota::per_second(config.requests))
            .allow_burst(config.burst);
        RateLimiterByKey {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            config,
        }
    }

    /// Takes one token for `caller`, or says how long until one is available.
    pub(crate) fn check(&self, caller: &Caller) -> Result<RateLimitState, Limited> {
        let limit = self.config.burst.get();
        let interval = self.config.replenish_interval();
        match self.limiter.check_key(caller) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let until_full = interval.saturating_mul(limit.saturating_sub(remaining));
                Ok(RateLimitState {
                    limit,
                    remaining,
                    reset_secs: seconds_up_or_zero(until_full),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                let until_full =
                    wait.saturating_add(interval.saturating_mul(limit.saturating_sub(1)));
                let response = ApiErrorResponse::new(
                    ErrorCode::RateLimited,
                    format!(
                        "rate limit of {} exceeded for this API key; retry in {} s",
                        self.config,
                        whole_seconds_up(wait)
                    ),
                    None,
                )
                .retry_after(wait);
                Err(Limited {
                    response,
                    state: RateLimitState {
                        limit,
                        remaining: 0,
                        reset_secs: whole_seconds_up(until_full),
                    },
                })
            }
        }
    }

    /// Forgets buckets that are full again, so idle callers cost no memory.
    pub(crate) fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

fn seconds_up_or_zero(wait: Duration) -> u64 {
    if wait.is_zero() {
        0
    } else {
        whole_seconds_up(wait)
    }
}
