//! Time: a monotonic clock for intervals and a wall clock for timestamps.

use std::time::{Duration, SystemTime};

/// A wall clock before this (Unix seconds) is certainly wrong: 2026-01-01T00:00:00Z, before this release was
/// built. An RTC-less box boots in 1970 (or at the last time `systemd-timesyncd` saved) until NTP
/// corrects it; decisions that need the true time wait for [`Clock::wall_trusted`].
pub const CLOCK_FLOOR_UNIX_S: u64 = 1_767_225_600;

/// Monotonic and wall time. The fake in [`crate::fake::FakeClock`] moves only when told to.
pub trait Clock: Send + Sync {
    /// Time since a fixed point that holds for the whole boot (the system clock: `CLOCK_BOOTTIME`,
    /// so two processes of one boot agree and a suspend counts); never goes backwards.
    fn monotonic(&self) -> Duration;
    /// Wall-clock time; may jump (NTP, an RTC-less box booting in 1970).
    fn wall(&self) -> SystemTime;

    /// Whether the wall clock can be believed: not before [`CLOCK_FLOOR_UNIX_S`].
    fn wall_trusted(&self) -> bool {
        self.unix_ms() / 1000 >= CLOCK_FLOOR_UNIX_S
    }

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
        use nix::time::{ClockId, clock_gettime};
        // CLOCK_BOOTTIME exists on every kernel this runs on (2.6.39 and later).
        clock_gettime(ClockId::CLOCK_BOOTTIME).map_or(Duration::ZERO, Duration::from)
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
