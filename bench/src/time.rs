//! The benchmarks' real time, read through `ec2_api`'s [`SystemClock`] like every other clock reading (clippy
//! refuses `Instant::now` and `SystemTime::now` outside the clock). Readings are durations since the first one.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ec2_api::clock::{Clock, SystemClock};

static CLOCK: LazyLock<SystemClock> = LazyLock::new(SystemClock::default);

/// Monotonic time now.
pub fn now() -> Duration {
    CLOCK.now()
}

/// Time passed since `t` (a reading of [`now`]).
pub fn since(t: Duration) -> Duration {
    now().saturating_sub(t)
}

/// Wall-clock time now.
pub fn wall() -> SystemTime {
    UNIX_EPOCH + CLOCK.wall()
}
