//! Logs through `tracing`: journald under systemd, coloured text on a terminal, JSON on request;
//! and always the last [`RECENT`] lines in memory, for the owner's app (`logs`).

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Whether stderr is the journal stream systemd set up for us (`JOURNAL_STREAM=dev:inode`).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

/// Lines kept in memory.
pub const RECENT: usize = 256;

static LINES: OnceLock<Mutex<VecDeque<String>>> = OnceLock::new();

fn lines() -> &'static Mutex<VecDeque<String>> {
    LINES.get_or_init(|| Mutex::new(VecDeque::with_capacity(RECENT)))
}

/// The last `n` log lines (at most [`RECENT`]), oldest first.
pub fn recent(n: usize) -> Vec<String> {
    let lines = lines().lock().unwrap_or_else(|p| p.into_inner());
    lines
        .iter()
        .skip(lines.len().saturating_sub(n))
        .cloned()
        .collect()
}

/// Forgets every line kept (a factory reset: they name the previous owner's networks).
pub fn clear() {
    lines().lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// A writer that keeps each formatted line in the ring.
struct Ring(Vec<u8>);

impl std::io::Write for Ring {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let mut lines = lines().lock().unwrap_or_else(|p| p.into_inner());
        for line in text.lines().filter(|l| !l.is_empty()) {
            if lines.len() == RECENT {
                lines.pop_front();
            }
            lines.push_back(line.to_owned());
        }
    }
}

/// Installs the global subscriber. `level` was validated with the config.
pub fn init(format: LogFormat, level: &str) {
    // `Targets` reads the same `info,edge_agent=debug` directives as `EnvFilter` without
    // linking a regex engine (about 0.5 MiB of the daemon; span-field filters are not needed).
    let filter = level
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let ring = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(|| Ring(Vec::with_capacity(256)));
    let registry = tracing_subscriber::registry().with(filter).with(ring);
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    };
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journald) => registry.with(journald).init(),
            Err(e) => {
                registry.with(text()).init();
                tracing::warn!(error = %e, "journald unavailable; logging text to stderr");
            }
        },
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text | LogFormat::Auto => registry.with(text()).init(),
    }
}
