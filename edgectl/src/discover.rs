//! `edgectl discover`: browse `_edge-agent._tcp` over mDNS for a while and list what answered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent};

use crate::CtlError;

/// The DNS-SD service type the agent announces.
const SERVICE: &str = "_edge-agent._tcp.local.";

/// One box seen: its TXT `id`, its addresses with the service's port (sorted), and its TXT
/// `pairing` (`unknown` if absent).
#[derive(Debug, serde::Serialize)]
struct Seen {
    device_id: String,
    addresses: Vec<String>,
    pairing: String,
}

/// Browses for `wait` and prints one line (or JSON object) per box.
pub(crate) async fn discover(wait: Duration, json: bool) -> Result<(), CtlError> {
    let fail = |e: mdns_sd::Error| CtlError::Local(format!("mDNS: {e}"));
    let daemon = ServiceDaemon::new().map_err(fail)?;
    let events = daemon.browse(SERVICE).map_err(fail)?;
    let deadline = Instant::now() + wait;
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(Ok(event)) = tokio::time::timeout(left, events.recv_async()).await else {
            break;
        };
        if let ServiceEvent::ServiceResolved(service) = event {
            let Some(id) = service.txt_properties.get_property_val_str("id") else {
                continue;
            };
            let mut addresses: Vec<String> = service
                .addresses
                .iter()
                .map(|a| std::net::SocketAddr::new(a.to_ip_addr(), service.port).to_string())
                .collect();
            addresses.sort();
            let pairing = service
                .txt_properties
                .get_property_val_str("pairing")
                .unwrap_or("unknown")
                .to_owned();
            seen.insert(
                id.to_owned(),
                Seen {
                    device_id: id.to_owned(),
                    addresses,
                    pairing,
                },
            );
        }
    }
    let _ = daemon.shutdown();
    for box_ in seen.values() {
        if json {
            println!("{}", serde_json::to_string(box_).unwrap_or_default());
        } else {
            println!(
                "{}  {}  pairing {}",
                box_.device_id,
                box_.addresses.join(" "),
                box_.pairing
            );
        }
    }
    if seen.is_empty() && !json {
        eprintln!("edgectl: no box answered within {wait:?}");
    }
    Ok(())
}
