//! The owner's policy gate between jobs: the heat pause (with hysteresis, failing closed when the
//! sensors cannot be read while paused), the allowed hours (UTC; held while the wall clock is not
//! yet believable, so a box that booted in 1970 does not run jobs in the owner's quiet hours) and
//! the duty-cycle rest. Pure but for the thermal read it is handed: tested on paused time with
//! fake sensors.

use std::time::{Duration, SystemTime};

use edge_hal::Thermal;
use tokio::time::Instant;

use super::Policy;

/// How often a paused scheduler looks at the temperature and the clock again.
const RECHECK: Duration = Duration::from_secs(5);
/// How long a thermal reading stands: a box has dozens of zones, each a file, and temperatures
/// move over seconds, not per job.
const THERMAL_EVERY: Duration = Duration::from_secs(1);

/// Why jobs are held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// Above the pause temperature, until every zone is below the resume one.
    Hot,
    /// Outside the allowed hours; the window opens in this long.
    Hours(Duration),
    /// Allowed hours are set, but the wall clock is before [`edge_hal::CLOCK_FLOOR_UNIX_S`]:
    /// nobody knows the hour until NTP sets it.
    Clock,
}

impl Held {
    /// When to look again.
    pub(super) fn recheck(self) -> Duration {
        match self {
            Self::Hot | Self::Clock => RECHECK,
            Self::Hours(wait) => wait.min(RECHECK * 12),
        }
    }

    /// The `edge_gpu_paused` gauge: 1 for heat, 2 for hours, 3 for an unset clock (0:
    /// running).
    pub(super) fn gauge(held: Option<Self>) -> u64 {
        match held {
            None => 0,
            Some(Self::Hot) => 1,
            Some(Self::Hours(_)) => 2,
            Some(Self::Clock) => 3,
        }
    }
}

/// The gate's state.
#[derive(Debug)]
pub(super) struct Gate {
    hot: bool,
    /// The last thermal reading: when, and the hottest zone.
    thermal_read: Option<(Instant, f64)>,
    rest_until: Instant,
}

impl Gate {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            hot: false,
            thermal_read: None,
            rest_until: now,
        }
    }

    /// What holds jobs back at `now` (`wall` for the hours); `None` when they may run.
    pub(super) fn held(
        &mut self,
        now: Instant,
        wall: SystemTime,
        policy: &Policy,
        thermal: &dyn Thermal,
    ) -> Option<Held> {
        let hottest = self.hottest(now, thermal);
        if !self.hot && hottest >= policy.pause_above_celsius {
            tracing::warn!(celsius = hottest, "GPU paused: too hot");
            self.hot = true;
        } else if self.hot && hottest < policy.resume_below_celsius {
            tracing::info!(celsius = hottest, "GPU resumed: cooled down");
            self.hot = false;
        }
        if self.hot {
            return Some(Held::Hot);
        }
        let hours = policy.allowed_hours_utc?;
        let secs = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs < edge_hal::CLOCK_FLOOR_UNIX_S {
            return Some(Held::Clock);
        }
        wait_for_hours(hours, wall).map(Held::Hours)
    }

    /// Whether the GPU is still resting after the last job.
    pub(super) fn resting(&self, now: Instant) -> bool {
        now < self.rest_until
    }

    /// When the rest ends.
    pub(super) fn rest_until(&self) -> Instant {
        self.rest_until
    }

    /// After a job that ran `ran` and ended at `now`, the GPU rests `ran·(1 - duty)/duty`, so that
    /// over time it works at most `duty` of the time.
    pub(super) fn rest_after(&mut self, ran: Duration, duty: f64, now: Instant) {
        self.rest_until = if duty < 1.0 {
            now + ran.mul_f64((1.0 - duty) / duty)
        } else {
            now
        };
    }

    fn hottest(&mut self, now: Instant, thermal: &dyn Thermal) -> f64 {
        if let Some((at, celsius)) = self.thermal_read
            && now < at + THERMAL_EVERY
        {
            return celsius;
        }
        // Fail closed: when the sensors cannot be read, a pause holds.
        let hottest = match thermal.zones() {
            Ok(zones) => zones
                .iter()
                .map(|z| z.celsius)
                .fold(f64::NEG_INFINITY, f64::max),
            Err(e) if self.hot => {
                tracing::warn!(error = %e, "thermal zones unreadable; staying paused");
                f64::INFINITY
            }
            Err(_) => f64::NEG_INFINITY,
        };
        self.thermal_read = Some((now, hottest));
        hottest
    }
}

/// Time until the allowed window `[start, end)` (hours UTC) opens; `None` if it is open now.
pub fn wait_for_hours((start, end): (u8, u8), now: SystemTime) -> Option<Duration> {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let of_day = secs % 86_400;
    let hour = (of_day / 3600) as u8;
    let open = if start <= end {
        (start..end).contains(&hour)
    } else {
        hour >= start || hour < end
    };
    if open || start == end {
        return None;
    }
    let start_secs = u64::from(start) * 3600;
    let wait = (start_secs + 86_400 - of_day) % 86_400;
    Some(Duration::from_secs(wait))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use edge_hal::fake::FakeThermal;
    use edge_hal::thermal::{ThermalError, ThermalZone};

    fn policy() -> Policy {
        Policy {
            queue_capacity: 8,
            ..Policy::default()
        }
    }

    /// Counts reads; fails them while `broken`.
    #[derive(Default)]
    struct Sensors {
        zones: FakeThermal,
        reads: AtomicUsize,
        broken: std::sync::atomic::AtomicBool,
    }

    impl Thermal for Sensors {
        fn zones(&self) -> Result<Vec<ThermalZone>, ThermalError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if self.broken.load(Ordering::Relaxed) {
                return Err(ThermalError::List {
                    path: "/sys/class/thermal".into(),
                    source: std::io::Error::other("gone"),
                });
            }
            self.zones.zones()
        }
    }

    const NOON: u64 = 1_767_268_800; // 2026-01-01 12:00 UTC

    fn noon() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOON)
    }

    #[tokio::test(start_paused = true)]
    async fn heat_pauses_at_the_limit_and_resumes_only_below_the_lower_one() {
        let sensors = Sensors::default();
        let mut gate = Gate::new(Instant::now());
        let at = |celsius: f64, gate: &mut Gate| {
            sensors.zones.set_all(celsius);
            // Past the reading's lifetime, so each call reads anew.
            let now = Instant::now() + THERMAL_EVERY * 2;
            let held = gate.held(now, noon(), &policy(), &sensors);
            gate.thermal_read = None;
            held
        };
        assert_eq!(at(84.9, &mut gate), None);
        assert_eq!(at(85.0, &mut gate), Some(Held::Hot));
        assert_eq!(
            at(80.0, &mut gate),
            Some(Held::Hot),
            "resumed inside the hysteresis band"
        );
        assert_eq!(at(74.9, &mut gate), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_stands_for_a_second_and_unreadable_sensors_keep_a_pause() {
        let sensors = Sensors::default();
        sensors.zones.set_all(90.0);
        let mut gate = Gate::new(Instant::now());
        let t0 = Instant::now();
        assert_eq!(gate.held(t0, noon(), &policy(), &sensors), Some(Held::Hot));
        gate.held(t0 + Duration::from_millis(500), noon(), &policy(), &sensors);
        assert_eq!(
            sensors.reads.load(Ordering::Relaxed),
            1,
            "read again within a second"
        );
        sensors.broken.store(true, Ordering::Relaxed);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            gate.held(later, noon(), &policy(), &sensors),
            Some(Held::Hot)
        );
        // Not paused and unreadable: jobs run (a box without sensors is not a hot box).
        let mut cool = Gate::new(t0);
        assert_eq!(cool.held(later, noon(), &policy(), &sensors), None);
    }

    #[test]
    fn outside_the_allowed_hours_jobs_wait_for_the_window_to_open() {
        let night_only = Policy {
            allowed_hours_utc: Some((22, 6)),
            ..policy()
        };
        let sensors = Sensors::default();
        let mut gate = Gate::new(Instant::now());
        let held = gate.held(Instant::now(), noon(), &night_only, &sensors);
        assert_eq!(held, Some(Held::Hours(Duration::from_secs(10 * 3600))));
        assert_eq!(held.map(Held::recheck), Some(RECHECK * 12));
        let midnight = SystemTime::UNIX_EPOCH + Duration::from_secs(NOON + 12 * 3600);
        assert_eq!(
            gate.held(Instant::now(), midnight, &night_only, &sensors),
            None
        );
    }

    #[test]
    fn allowed_hours_hold_jobs_while_the_clock_is_unset_and_nothing_else_does() {
        let night_only = Policy {
            allowed_hours_utc: Some((22, 6)),
            ..policy()
        };
        let sensors = Sensors::default();
        let mut gate = Gate::new(Instant::now());
        // 00:30 on 1970-01-01 is inside 22-6, but a box without an RTC reads that before NTP:
        // before, its jobs ran whatever the hour really was.
        let booted = SystemTime::UNIX_EPOCH + Duration::from_secs(1800);
        let held = gate.held(Instant::now(), booted, &night_only, &sensors);
        assert_eq!(held, Some(Held::Clock));
        assert_eq!(Held::gauge(held), 3);
        assert_eq!(gate.held(Instant::now(), booted, &policy(), &sensors), None);
    }

    #[tokio::test(start_paused = true)]
    async fn below_full_duty_the_gpu_rests_in_proportion_to_its_work() {
        let mut gate = Gate::new(Instant::now());
        let end = Instant::now();
        gate.rest_after(Duration::from_secs(2), 0.25, end);
        assert_eq!(gate.rest_until(), end + Duration::from_secs(6));
        assert!(gate.resting(end + Duration::from_secs(5)));
        assert!(!gate.resting(end + Duration::from_secs(6)));
        gate.rest_after(Duration::from_secs(2), 1.0, end);
        assert!(!gate.resting(end));
    }
}
