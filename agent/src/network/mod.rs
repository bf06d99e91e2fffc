//! The network's side: the hub client, the on-disk report queue, delivery, telemetry, job intake and
//! the measurements of what the box offers.

pub(crate) mod delivery;
pub(crate) mod hub_client;
pub(crate) mod intake;
pub(crate) mod measure;
pub(crate) mod outbox;
pub(crate) mod telemetry;
