//! The build's versions, shown in `/status`, `/metrics`, reports and the owner's app (a leaf).

use serde::Serialize;

/// Build facts shown in `/status` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Versions {
    pub agent: &'static str,
    /// CPU architecture the binary was built for.
    pub arch: &'static str,
}

/// The versions of this build.
pub(crate) const VERSIONS: Versions = Versions {
    agent: env!("CARGO_PKG_VERSION"),
    arch: std::env::consts::ARCH,
};
