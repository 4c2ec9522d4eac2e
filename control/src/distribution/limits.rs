//! How much distribution work one account may ask for: a cap on its unsettled tasks, and a
//! rate of submissions. Each task holds up to 10,000 devices and is rewritten on every commit,
//! so without them one tenant could bury the executor (and every other tenant's tasks) under
//! thousands of tasks.
//!
//! The cap is enforced by the store (see the slots in `distribution.rs`), so it holds across
//! concurrent requests and control-plane replicas. The rate is a token bucket per account
//! (governor's GCRA) in this process's memory, on the registry's clock: with several
//! control-plane replicas each allows its own rate.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;

use meridian_registry::clock::Clock;
use meridian_registry::ids::AccountId;

/// Limits on one account's distribution tasks; `[control.tasks]` in `meridian.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskLimits {
    /// Unsettled (`Initializing` or `Distributing`) tasks one account may have at once. A
    /// submission, or a retry of a `Failed` task, beyond it is refused with 409 until one
    /// settles. At least 1.
    pub max_active_per_account: u32,
    /// Submissions one account may make per minute, sustained; beyond the burst they are
    /// refused with 429 and `Retry-After`. Every submission counts, accepted or not. 0
    /// disables the rate.
    pub submissions_per_minute: u32,
    /// Submissions one account may make at once before the rate applies.
    pub submission_burst: u32,
}

impl Default for TaskLimits {
    fn default() -> TaskLimits {
        TaskLimits {
            max_active_per_account: DEFAULT_MAX_ACTIVE_TASKS,
            submissions_per_minute: 6,
            submission_burst: 20,
        }
    }
}

/// The default of [`TaskLimits::max_active_per_account`].
pub const DEFAULT_MAX_ACTIVE_TASKS: u32 = 5;

/// The rate of [`TaskLimits`], per account.
pub(crate) struct SubmissionRate {
    /// Keyed by account; an account's bucket is its only state, a few dozen bytes, and there
    /// are as many as the operator created accounts.
    limiter: Option<Limiter>,
}

impl SubmissionRate {
    pub(crate) fn new(limits: &TaskLimits, clock: Arc<dyn Clock>) -> SubmissionRate {
        let quota = NonZeroU32::new(limits.submissions_per_minute).map(|rate| {
            let burst = NonZeroU32::new(limits.submission_burst).unwrap_or(NonZeroU32::MIN);
            Quota::per_minute(rate).allow_burst(burst)
        });
        let limiter =
            quota.map(|quota| RateLimiter::dashmap_with_clock(quota, RegistryClock(clock)));
        SubmissionRate { limiter }
    }

    /// Counts one submission by `account`; `Err` with how long until the next is allowed.
    pub(crate) fn check(&self, account: &AccountId) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(account).map_err(|not_until| {
            use governor::clock::Clock as _;
            not_until.wait_time_from(limiter.clock().now())
        })
    }
}

type Limiter =
    RateLimiter<AccountId, DashMapStateStore<AccountId>, RegistryClock, NoOpMiddleware<Duration>>;

/// The registry's clock as governor's: time since the epoch, so tests that move the registry's
/// manual clock move the buckets too.
#[derive(Clone)]
struct RegistryClock(Arc<dyn Clock>);

impl governor::clock::Clock for RegistryClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_millis(self.0.now().millis())
    }
}
