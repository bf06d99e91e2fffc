//! What both readers print.

use std::time::Instant;

/// One line: the reader, microseconds per read, parts seen, this process's VmRSS.
pub(crate) fn report(reader: &str, n: u32, start: Instant, seen: usize) {
    let per_read = start.elapsed().as_secs_f64() * 1e6 / f64::from(n.max(1));
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("VmRSS: ?");
    println!("{reader}: {per_read:.1} us per read, {seen} parts, {rss}");
}

/// The number of reads asked for (the first argument), 1000 by default.
pub(crate) fn reads() -> u32 {
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
}
