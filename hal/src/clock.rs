//! Time: a monotonic clock for intervals and a wall clock for timestamps.

use std::time::{Duration, Instant, SystemTime};

/// Monotonic and wall time. The fake in [`crate::fake::FakeClock`] moves only when told to.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed point; never goes backwards.
    fn monotonic(&self) -> Duration;
    /// Wall-clock time; may jump (NTP, an RTC-less box booting in 1970).
    fn wall(&self) -> SystemTime;

    /// Wall-clock time as Unix milliseconds (0 before 1970, which a box without an RTC can see).
    fn unix_ms(&self) -> u64 {
        self.wall()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The operating system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_does_not_go_backwards() {
        let clock = SystemClock;
        let a = clock.monotonic();
        std::thread::sleep(Duration::from_millis(2));
        let b = clock.monotonic();
        assert!(b > a, "{b:?} should be after {a:?}");
    }

    #[test]
    fn wall_clock_is_after_2024() {
        let secs = SystemClock
            .wall()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("wall clock before 1970")
            .as_secs();
        assert!(secs > 1_704_067_200, "wall clock reads {secs}");
    }
}
