//! The circuit breaker in front of the cloud: a pure state machine, fed the time (ms
//! from the engine's [`Clock`](hybridsync_core::Clock), so a test can step it).

use hybridsync_core::CircuitState;
use std::time::Duration;

/// Breaker thresholds.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before letting probes through.
    pub open_for: Duration,
    /// Consecutive successful probes that close it again.
    pub half_open_successes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
            half_open_successes: 2,
        }
    }
}

/// CLOSED → OPEN after `failure_threshold` consecutive failures; OPEN for `open_for`;
/// then HALF_OPEN, where calls are probes: `half_open_successes` successes close it,
/// one failure opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: CircuitState,
    failures: u32,
    successes: u32,
    opened_ms: Option<u64>,
}

/// A state change, for events and metrics.
pub type Transition = (CircuitState, CircuitState);

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: CircuitState::Closed,
            failures: 0,
            successes: 0,
            opened_ms: None,
        }
    }

    /// The current state (without advancing time).
    pub fn state(&self) -> CircuitState {
        self.state
    }

    fn go(&mut self, to: CircuitState, now_ms: u64) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        self.failures = 0;
        self.successes = 0;
        self.opened_ms = (to == CircuitState::Open).then_some(now_ms);
        (from != to).then_some((from, to))
    }

    /// Whether a call may go through now; an open circuit whose time is up turns
    /// half-open here.
    pub fn allow(&mut self, now_ms: u64) -> (bool, Option<Transition>) {
        match self.state {
            CircuitState::Closed | CircuitState::HalfOpen => (true, None),
            CircuitState::Open => {
                let opened = self.opened_ms.unwrap_or(now_ms);
                let open_for = u64::try_from(self.config.open_for.as_millis()).unwrap_or(u64::MAX);
                if now_ms.saturating_sub(opened) >= open_for {
                    (true, self.go(CircuitState::HalfOpen, now_ms))
                } else {
                    (false, None)
                }
            }
        }
    }

    /// Records a successful call.
    pub fn on_success(&mut self, now_ms: u64) -> Option<Transition> {
        match self.state {
            CircuitState::Closed => {
                self.failures = 0;
                None
            }
            CircuitState::HalfOpen => {
                self.successes += 1;
                (self.successes >= self.config.half_open_successes)
                    .then(|| self.go(CircuitState::Closed, now_ms))
                    .flatten()
            }
            CircuitState::Open => None,
        }
    }

    /// Records a health check's outcome. A healthy cloud lets an open circuit go
    /// half-open before its time is up, so the backlog starts draining as soon as the
    /// cloud is back (the drain's probes then close it); a sick one keeps it open.
    /// While half-open a health check counts as a probe.
    pub fn on_health(&mut self, healthy: bool, now_ms: u64) -> Option<Transition> {
        match (self.state, healthy) {
            (CircuitState::Open, true) => self.go(CircuitState::HalfOpen, now_ms),
            (CircuitState::Open, false) | (CircuitState::Closed, _) => None,
            (CircuitState::HalfOpen, true) => self.on_success(now_ms),
            (CircuitState::HalfOpen, false) => self.on_failure(now_ms),
        }
    }

    /// Records a failed call.
    pub fn on_failure(&mut self, now_ms: u64) -> Option<Transition> {
        match self.state {
            CircuitState::Closed => {
                self.failures += 1;
                (self.failures >= self.config.failure_threshold)
                    .then(|| self.go(CircuitState::Open, now_ms))
                    .flatten()
            }
            CircuitState::HalfOpen => self.go(CircuitState::Open, now_ms),
            CircuitState::Open => None,
        }
    }
}
