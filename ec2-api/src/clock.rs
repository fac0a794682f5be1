//! Time as an outside world: the daemon, the backends and the simulator read it, and wait on it, through
//! [`Clock`] so tests can drive it. `std::time::Instant::now` and `SystemTime::now` are refused by clippy
//! (`clippy.toml`, `disallowed-methods`) everywhere but here.
//!
//! Three clocks:
//! - [`SystemClock`]: the real one (`std::time::Instant`, `tokio::time::sleep`).
//! - [`TokioClock`]: reads tokio's clock. Under a paused tokio runtime (`#[tokio::test(start_paused = true)]`)
//!   time stands still while any task can run and jumps to the next timer when every task waits, so hours of
//!   pool behaviour (cooldowns, shrink intervals, reconcile and leak-cleanup timers, EC2 token-bucket refills,
//!   attach latency) run in milliseconds with every task of the daemon live. This is the clock of the virtual-time
//!   scenario tests and benchmarks.
//! - `ManualClock` (feature `fakes`, and in tests): moves only when told to; `sleep` moves it forward by the
//!   duration at once. For tests that drive one step at a time from a single task.

use std::future::Future;
use std::pin::Pin;
#[cfg(any(test, feature = "fakes"))]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(any(test, feature = "fakes"))]
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A boxed sleep.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Monotonic time for cooldowns and pacing, wall time for timestamps that leave the process, and waiting.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since an arbitrary origin.
    fn now(&self) -> Duration;
    /// Wall-clock time since the Unix epoch.
    fn wall(&self) -> Duration;
    /// Waits `d` on this clock.
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The real clock.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl Default for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the real monotonic clock
    fn default() -> Self {
        SystemClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
    #[allow(clippy::disallowed_methods)] // the one place that reads the real wall clock
    fn wall(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// Tokio's clock: virtual when the runtime is paused (see the module docs). Create it inside a runtime.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
    fn wall(&self) -> Duration {
        // A fixed epoch (2026-01-01T00:00:00Z) plus elapsed virtual time: reproducible timestamps.
        Duration::from_secs(1_767_225_600) + self.now()
    }
}

/// A clock that moves only when told to (tests, and virtual-time simulations).
#[cfg(any(test, feature = "fakes"))]
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

#[cfg(any(test, feature = "fakes"))]
impl ManualClock {
    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "fakes"))]
impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
    fn wall(&self) -> Duration {
        // 2026-01-01T00:00:00Z plus the manual offset: stable and recognisable in test output.
        Duration::from_secs(1_767_225_600) + self.now()
    }
    fn sleep(&self, d: Duration) -> Sleep {
        self.advance(d);
        Box::pin(tokio::task::yield_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    #[allow(clippy::disallowed_methods)] // measures real time on purpose
    async fn tokio_clock_jumps_in_virtual_time() {
        let c = TokioClock::default();
        let real = std::time::Instant::now();
        c.sleep(Duration::from_secs(3600)).await;
        assert!(c.now() >= Duration::from_secs(3600));
        assert!(real.elapsed() < Duration::from_secs(60), "slept for real");
    }

    #[tokio::test]
    async fn manual_clock_sleep_advances() {
        let c = ManualClock::default();
        c.sleep(Duration::from_secs(5)).await;
        assert_eq!(c.now(), Duration::from_secs(5));
    }
}
