//! What `sysinfo` reads of the host facts the agent samples (memory, load, uptime, CPU model and
//! frequencies, interface counters and addresses, filesystems, hwmon temperatures), `N` times
//! (default 1000), refreshing as an agent's sampling loop would; prints the time per read and
//! this process's resident memory after. See `read_hal` for the comparison.

mod common;

use std::time::Instant;

use sysinfo::{
    Components, CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System,
};

fn main() {
    let n = common::reads();
    let mut system = or_exit(
        "system",
        System::new_with_specifics(
            RefreshKind::nothing()
                .with_memory(MemoryRefreshKind::everything())
                .with_cpu(CpuRefreshKind::nothing().with_frequency()),
        ),
    );
    let mut networks = or_exit("networks", Networks::new_with_refreshed_list());
    let mut disks = or_exit("disks", Disks::new_with_refreshed_list());
    let mut components = or_exit("components", Components::new_with_refreshed_list());
    let start = Instant::now();
    let mut seen = 0usize;
    for _ in 0..n {
        system.refresh_memory();
        system.refresh_cpu_frequency();
        let load = System::load_average();
        let uptime = System::uptime();
        let model = system.cpus().first().map(|c| c.brand().len()).unwrap_or(0);
        networks.refresh(true);
        disks.refresh(true);
        components.refresh(true);
        seen = system.cpus().len()
            + networks.len()
            + disks.len()
            + components.len()
            + usize::from(load.is_ok_and(|l| l.one >= 0.0))
            + usize::from(uptime.is_ok_and(|u| u > 0))
            + usize::from(model > 0)
            + usize::from(system.available_memory() > 0);
    }
    common::report("sysinfo", n, start, seen);
}

fn or_exit<T>(what: &str, made: Result<T, sysinfo::Error>) -> T {
    made.unwrap_or_else(|e| {
        eprintln!("read_sysinfo: {what}: {e}");
        std::process::exit(1)
    })
}
