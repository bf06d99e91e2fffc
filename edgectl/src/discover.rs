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

impl Seen {
    /// A box as its mDNS answer describes it, if the answer is one a box gives: an `id` of 32
    /// lowercase hex digits and a `pairing` of `open` or `closed` (`unknown` if absent). Anyone on
    /// the LAN can answer, and whatever is printed of an answer must not carry their control
    /// characters to the owner's terminal.
    fn from_answer(
        id: Option<&str>,
        pairing: Option<&str>,
        mut addresses: Vec<String>,
    ) -> Option<Self> {
        let id = id.filter(|id| {
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })?;
        let pairing = match pairing {
            None => "unknown",
            Some(p @ ("open" | "closed")) => p,
            Some(_) => return None,
        };
        addresses.sort();
        Some(Self {
            device_id: id.to_owned(),
            addresses,
            pairing: pairing.to_owned(),
        })
    }
}

/// Says, on stderr, that an answer was left out (its name printed escaped).
fn say_left_out(name: &str) {
    eprintln!(
        "edgectl: left out an answer that is not an edge box's: {}",
        name.escape_debug()
    );
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
            let txt = |key| service.txt_properties.get_property_val_str(key);
            let addresses = service
                .addresses
                .iter()
                .map(|a| std::net::SocketAddr::new(a.to_ip_addr(), service.port).to_string())
                .collect();
            match Seen::from_answer(txt("id"), txt("pairing"), addresses) {
                Some(box_) => {
                    seen.insert(box_.device_id.clone(), box_);
                }
                None => say_left_out(&service.fullname),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_is_not_a_boxs_is_left_out_whole() {
        let id = "0123456789abcdef0123456789abcdef";
        let addresses = || vec!["192.0.2.2:7466".to_owned(), "192.0.2.1:7466".to_owned()];
        let found = Seen::from_answer(Some(id), Some("open"), addresses()).expect("a box");
        assert_eq!(found.addresses, ["192.0.2.1:7466", "192.0.2.2:7466"]);
        assert_eq!(
            Seen::from_answer(Some(id), None, addresses()).map(|s| s.pairing),
            Some("unknown".into())
        );
        // A neighbour's answer that would write to the owner's terminal, or claim to be a box
        // without a box's id, is not shown.
        for (id, pairing) in [
            (Some("\x1b]0;owned\x07\x1b[2J"), Some("open")),
            (Some(id), Some("open\x1b[31m")),
            (Some("0123456789ABCDEF0123456789ABCDEF"), Some("open")),
            (None, Some("open")),
        ] {
            assert!(
                Seen::from_answer(id, pairing, addresses()).is_none(),
                "{id:?} {pairing:?}"
            );
        }
    }
}
