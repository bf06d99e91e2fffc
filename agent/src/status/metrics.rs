//! `/metrics`: the agent's state in the Prometheus text exposition format (version 0.0.4).
//!
//! Rendered on request from the latest snapshot, so a scrape costs one pass over a few dozen
//! numbers and the agent keeps no metric registry between scrapes.

use edge_jobs::adapter::GpuStatus;
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
        "edge_agent_owner_settings_ignored",
        "gauge",
        "Owner settings left out at start (unknown to this release, or refused).",
    )
    .sample(
        "edge_agent_owner_settings_ignored",
        &[],
        state.owner_ignored.len() as f64,
    );
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

    snap.write_metrics(&mut e);
    state.sources.gpu_metrics.write_metrics(&mut e);
    if let Some(compute) = state.sources.capability.borrow().as_ref() {
        crate::gpu::capability::write_metrics(compute, &mut e);
    }
    if let Some(network) = &state.network {
        network.write_metrics(&mut e);
    }
    e.finish()
}
