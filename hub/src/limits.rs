//! Request limits kept in memory: a token bucket per key (a device, or a client address),
//! refilled continuously; and the signed requests already seen, so none is taken twice.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets beyond this many are pruned (full ones first) so the map cannot grow without bound.
const MAX_BUCKETS: usize = 100_000;

/// A token-bucket limiter keyed by device id or [`address_key`].
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_second` sustained, up to `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now`; `Err(wait)` when there is none.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

/// The key a client address is limited by: an IPv4 address as it is, an IPv6 one by its /64
/// (one home or one host is given a /64 and can pick any address in it).
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Signed times in use at once per device and path: a device makes a handful of signed
/// requests at a time (a poll, the streams of a bandwidth test).
const MAX_MARKS: usize = 64;

/// Why a signed request is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// This device already signed this path at this time.
    Seen,
    /// The device already has 64 (`MAX_MARKS`) signed requests to this path within the skew window.
    TooMany,
    /// Signed before the hub started: the marks of the hub that ran before are gone, so it may
    /// have been taken already.
    BeforeStart {
        /// When the marks begin, Unix ms.
        since_ms: u64,
    },
}

/// Signed requests taken within the skew window, by device and path: each `(device, path,
/// time)` is taken once. A time outside the window is refused by the skew check before, so
/// older marks are forgotten and the map stays bounded by the devices active in the window.
#[derive(Default)]
pub struct Replays {
    marks: Mutex<HashMap<(String, String), BTreeSet<u64>>>,
    since_ms: u64,
}

impl Replays {
    /// Marks from `since_ms` (the hub's start) on: a request signed before it is refused, as
    /// one the hub may have taken before it restarted. A device signs its next request anew.
    pub fn since(since_ms: u64) -> Self {
        Self {
            marks: Mutex::default(),
            since_ms,
        }
    }

    /// Takes `(device, path, time_ms)` once, forgetting marks older than `window_ms` before
    /// `now_ms`.
    pub fn take(
        &self,
        device: &str,
        path: &str,
        time_ms: u64,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), Replay> {
        if time_ms < self.since_ms {
            return Err(Replay::BeforeStart {
                since_ms: self.since_ms,
            });
        }
        let Ok(mut marks) = self.marks.lock() else {
            return Err(Replay::TooMany);
        };
        let oldest = now_ms.saturating_sub(window_ms);
        if marks.len() >= MAX_BUCKETS {
            marks.retain(|_, times| times.last().is_some_and(|t| *t >= oldest));
        }
        let times = marks
            .entry((device.to_owned(), path.to_owned()))
            .or_default();
        *times = times.split_off(&oldest);
        if times.contains(&time_ms) {
            return Err(Replay::Seen);
        }
        if times.len() >= MAX_MARKS {
            return Err(Replay::TooMany);
        }
        times.insert(time_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let wait = limiter.check("a", t0).expect_err("over the burst");
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        // Another key has its own bucket.
        assert!(limiter.check("b", t0).is_ok());
        // Half a second later one token has come back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check("a", t1).is_ok());
        assert!(limiter.check("a", t1).is_err());
    }

    #[test]
    fn addresses_are_limited_by_ipv4_address_and_ipv6_slash_64() {
        let key = |s: &str| address_key(s.parse().expect("ip"));
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn a_signed_time_is_taken_once_per_path_and_old_marks_are_forgotten() {
        let replays = Replays::default();
        let take = |path, t, now| replays.take("d", path, t, now, 1_000);
        assert_eq!(take("/a", 10, 10), Ok(()));
        assert_eq!(take("/a", 10, 10), Err(Replay::Seen));
        // Another path, or another time out of order, is its own request.
        assert_eq!(take("/b", 10, 10), Ok(()));
        assert_eq!(take("/a", 9, 10), Ok(()));
        for t in 100..100 + MAX_MARKS as u64 - 2 {
            assert_eq!(take("/a", t, 100), Ok(()));
        }
        assert_eq!(take("/a", 5_000, 100), Err(Replay::TooMany));
        // Once the window has moved past them, the marks are gone and room is back.
        assert_eq!(take("/a", 5_000, 4_500), Ok(()));
    }
}
