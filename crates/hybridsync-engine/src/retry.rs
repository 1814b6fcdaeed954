//! The retry schedule of outbox entries: exponential backoff with equal jitter,
//! through the `backoff` crate. This module is its only user, so swapping the crate
//! (for `backon`, say) is a change to this file alone.

use backoff::backoff::Backoff;
use std::time::Duration;

/// Equal jitter ("half fixed, half random": a delay in `[d/2, d]`) expressed in
/// `backoff`'s terms: a nominal interval of `3/4 · d` randomised by a factor of `1/3`.
const NOMINAL: f64 = 0.75;
const RANDOMIZATION: f64 = 1.0 / 3.0;

/// The delay before retry number `attempt` (1-based): `initial · 2^(attempt-1)`,
/// capped at `max`, with equal jitter so a fleet coming back does not retry in
/// lockstep. Entries keep their attempt count in the outbox, so the schedule survives
/// restarts: the backoff is stepped to the entry's attempt each time rather than kept
/// in memory.
pub fn retry_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let mut schedule = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(initial.mul_f64(NOMINAL))
        .with_max_interval(max.mul_f64(NOMINAL))
        .with_multiplier(2.0)
        .with_randomization_factor(RANDOMIZATION)
        .with_max_elapsed_time(None)
        .build();
    // Past about 64 doublings every interval is the cap; stepping further changes nothing.
    let steps = attempt.clamp(1, 64);
    let mut delay = initial;
    for _ in 0..steps {
        delay = schedule.next_backoff().unwrap_or(max);
    }
    // The randomised value may overshoot by a rounding error; the schedule's bounds hold.
    delay.min(max)
}
