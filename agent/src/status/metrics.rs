//! `/metrics`: the agent's state in the Prometheus text exposition format (version 0.0.4).
//!
//! Rendered on request from the latest snapshot, so a scrape costs one pass over a few dozen
//! numbers and the agent keeps no metric registry between scrapes.

use edge_hal::GpuStatus;
use edge_hal::net::Counters;
use edge_protocol::exposition::Exposition;

use crate::status::report::AgentState;
use crate::version::VERSIONS;

/// The exposition for the agent's current state.
pub(crate) fn render(state: &AgentState) -> String {
    let snap = state.sources.snapshot.borrow().clone();
    let mut e = Exposition::with_capacity(4096);
    let device = state.device_id.to_string();
    e.family("edge_agent_build_info", "gauge", "Agent build; always 1.")
        .sample(
            "edge_agent_build_info",
            &[
                ("version", VERSIONS.agent),
                ("arch", VERSIONS.arch),
                ("device_id", &device),
            ],
            1.0,
        );
    e.family(
        "edge_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
    )
    .sample(
        "edge_agent_uptime_seconds",
        &[],
        state.started.elapsed().as_secs_f64(),
    );
    e.family(
        "edge_agent_samples_total",
        "counter",
        "Hardware samples taken.",
    )
    .sample("edge_agent_samples_total", &[], state.samples() as f64);
    e.family(
        "edge_agent_sample_errors",
        "gauge",
        "Hardware parts unreadable in the latest sample.",
    )
    .sample("edge_agent_sample_errors", &[], snap.errors.len() as f64);
    e.family(
        "edge_agent_gpu_available",
        "gauge",
        "1 if a GPU adapter was found at start.",
    )
    .sample(
        "edge_agent_gpu_available",
        &[],
        f64::from(u8::from(matches!(
            state.sources.gpu,
            GpuStatus::Available(_)
        ))),
    );

    if let Some(sys) = &snap.system {
        e.family("edge_host_load_average", "gauge", "Load average.");
        for (window, load) in ["1m", "5m", "15m"].iter().zip(sys.load) {
            e.sample("edge_host_load_average", &[("window", window)], load);
        }
        e.family("edge_host_memory_total_bytes", "gauge", "Physical memory.")
            .sample(
                "edge_host_memory_total_bytes",
                &[],
                sys.memory_total_bytes as f64,
            );
        e.family(
            "edge_host_memory_available_bytes",
            "gauge",
            "Memory available without swapping.",
        )
        .sample(
            "edge_host_memory_available_bytes",
            &[],
            sys.memory_available_bytes as f64,
        );
        e.family("edge_host_uptime_seconds", "gauge", "Seconds since boot.")
            .sample("edge_host_uptime_seconds", &[], sys.uptime_secs);
        e.family(
            "edge_host_cpu_frequency_hertz",
            "gauge",
            "Current CPU frequency.",
        );
        for cpu in &sys.cpus {
            if let Some(khz) = cpu.cur_khz {
                e.sample(
                    "edge_host_cpu_frequency_hertz",
                    &[("cpu", &cpu.id.to_string())],
                    khz as f64 * 1e3,
                );
            }
        }
    }
    type Counter = fn(&Counters) -> u64;
    let counters: [(&str, &str, Counter); 4] = [
        (
            "edge_host_network_receive_bytes_total",
            "Bytes received.",
            |c| c.rx_bytes,
        ),
        (
            "edge_host_network_transmit_bytes_total",
            "Bytes sent.",
            |c| c.tx_bytes,
        ),
        (
            "edge_host_network_receive_packets_total",
            "Packets received.",
            |c| c.rx_packets,
        ),
        (
            "edge_host_network_transmit_packets_total",
            "Packets sent.",
            |c| c.tx_packets,
        ),
    ];
    for (name, help, get) in counters {
        e.family(name, "counter", help);
        for iface in &snap.interfaces {
            e.sample(
                name,
                &[("interface", &iface.name)],
                get(&iface.counters) as f64,
            );
        }
    }
    if let Some(storage) = &snap.storage {
        e.family(
            "edge_host_state_fs_size_bytes",
            "gauge",
            "Size of the state directory's filesystem.",
        )
        .sample(
            "edge_host_state_fs_size_bytes",
            &[],
            storage.total_bytes as f64,
        );
        e.family(
            "edge_host_state_fs_available_bytes",
            "gauge",
            "Free space on the state directory's filesystem.",
        )
        .sample(
            "edge_host_state_fs_available_bytes",
            &[],
            storage.available_bytes as f64,
        );
    }
    e.family(
        "edge_host_temperature_celsius",
        "gauge",
        "Thermal zone temperature.",
    );
    for zone in &snap.thermal {
        e.sample(
            "edge_host_temperature_celsius",
            &[("zone", &zone.name), ("type", &zone.kind)],
            zone.celsius,
        );
    }
    let g = &state.sources.gpu_metrics;
    let load =
        |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
    e.family("edge_gpu_queue_depth", "gauge", "GPU jobs waiting.")
        .sample("edge_gpu_queue_depth", &[], load(&g.queue_depth));
    e.family(
        "edge_gpu_jobs_in_flight",
        "gauge",
        "GPU jobs sent to the worker (running or next).",
    )
    .sample("edge_gpu_jobs_in_flight", &[], load(&g.in_flight));
    e.family("edge_gpu_jobs_total", "counter", "GPU jobs by outcome.");
    for (outcome, counter) in [
        ("done", &g.done),
        ("failed", &g.failed),
        ("refused", &g.refused),
        ("cancelled", &g.cancelled),
    ] {
        e.sample(
            "edge_gpu_jobs_total",
            &[("outcome", outcome)],
            load(counter),
        );
    }
    e.family(
        "edge_gpu_busy_seconds_total",
        "counter",
        "Time the GPU spent on jobs; its rate is the duty cycle.",
    )
    .sample("edge_gpu_busy_seconds_total", &[], load(&g.busy_us) / 1e6);
    e.family(
        "edge_gpu_paused",
        "gauge",
        "1 paused for heat, 2 outside the allowed hours, 0 running.",
    )
    .sample("edge_gpu_paused", &[], load(&g.paused));
    e.family(
        "edge_gpu_worker_up",
        "gauge",
        "1 while a GPU worker process holds the device.",
    )
    .sample("edge_gpu_worker_up", &[], load(&g.worker_up));
    if let Some(cap) = state.sources.capability.borrow().as_ref() {
        e.family("edge_gpu_capability", "gauge", "Measured GPU capability.");
        for (what, value) in [
            ("fp32_peak_gflops", cap.fp32_peak_gflops),
            ("sgemm_gflops", cap.sgemm_gflops),
            ("memory_bandwidth_gbps", cap.memory_bandwidth_gbps),
            ("dispatch_round_trip_us", cap.dispatch_round_trip_us),
        ] {
            e.sample("edge_gpu_capability", &[("measure", what)], value);
        }
    }
    if let Some(network) = &state.network {
        let q = network.outbox.counts();
        let registered = network.status.lock().is_ok_and(|v| v.registered);
        e.family(
            "edge_reports_queued",
            "gauge",
            "Reports waiting in the queue.",
        )
        .sample("edge_reports_queued", &[], q.queued as f64);
        for (name, help, value) in [
            (
                "edge_reports_pushed_total",
                "Reports signed and queued.",
                q.pushed,
            ),
            (
                "edge_reports_delivered_total",
                "Reports the hub has.",
                q.delivered,
            ),
            (
                "edge_reports_rejected_total",
                "Reports the hub refused for good.",
                q.rejected,
            ),
            (
                "edge_reports_dropped_total",
                "Reports dropped undelivered (queue bounds).",
                q.dropped,
            ),
        ] {
            e.family(name, "counter", help)
                .sample(name, &[], value as f64);
        }
        e.family(
            "edge_hub_registered",
            "gauge",
            "1 once the hub accepted the registration.",
        )
        .sample("edge_hub_registered", &[], f64::from(u8::from(registered)));
    }
    e.finish()
}
