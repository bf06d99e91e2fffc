//! The host facts the agent samples, read by edge-hal's own procfs/sysfs readers, `N` times
//! (default 1000); prints the time per read and this process's resident memory after. Its twin,
//! `read_sysinfo`, reads what `sysinfo` can of the same; docs/benchmarks.md compares the two
//! (binary size, memory, time) and says why the agent keeps these readers.
//!
//!     cargo build --release -p edge-hal --examples
//!     target/release/examples/read_hal 1000; target/release/examples/read_sysinfo 1000

mod common;

use std::path::Path;
use std::time::Instant;

use edge_hal::{
    Interfaces, LinuxInterfaces, LinuxStorage, LinuxSystem, Storage, SysfsThermal, SystemInfo,
    Thermal,
};

fn main() {
    let n = common::reads();
    // The four readers the agent's sampling loop uses, and nothing else of the HAL.
    let (system, interfaces, thermal) = (
        LinuxSystem::default(),
        LinuxInterfaces::default(),
        SysfsThermal::default(),
    );
    let start = Instant::now();
    let mut seen = 0usize;
    for _ in 0..n {
        seen = system.snapshot().map(|s| s.cpus.len()).unwrap_or(0)
            + interfaces.list().map(|i| i.len()).unwrap_or(0)
            + LinuxStorage.usage(Path::new("/")).map(|_| 1).unwrap_or(0)
            + thermal.zones().map(|z| z.len()).unwrap_or(0);
    }
    common::report("edge-hal", n, start, seen);
}
