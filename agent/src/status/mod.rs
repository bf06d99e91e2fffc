//! The read-only status endpoint (`/status`, `/metrics`) and its client. It reads the other
//! subsystems' views and handles; nothing imports it back.

pub(crate) mod client;
pub(crate) mod metrics;
pub(crate) mod report;
pub(crate) mod server;
