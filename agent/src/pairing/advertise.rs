//! DNS-SD over mDNS: the box announces `_edge-agent._tcp` so the owner's app finds it on the LAN,
//! with its device id and whether a pairing window is open in the TXT record (`id`, `v`,
//! `pairing=open|closed`).
//!
//! Only where the pairing listener is reachable: on the listener's interface when it is bound to
//! one address, on every interface but loopback when it is bound to all; never for a loopback
//! listener (nobody on the LAN could connect to it).
//!
//! Links that change after the start: the responder (mdns-sd 0.21) never announces a service with
//! a fixed address on an interface that was not yet up when it was registered, so the bridge
//! watches the links ([`links`], [`LinkWatch`]) and starts the announcement afresh once they have
//! changed and settled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use edge_hal::Interface;
use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};

/// The DNS-SD service type.
pub(crate) const SERVICE: &str = "_edge-agent._tcp.local.";

/// Errors announcing.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub(crate) struct AdvertiseError(#[from] mdns_sd::Error);

/// A running announcement; withdrawn on drop.
pub(crate) struct Advertiser {
    daemon: ServiceDaemon,
    device_id: String,
    listen: SocketAddr,
    fullname: String,
    withdrawn: bool,
}

impl Advertiser {
    /// Starts announcing `listen` for `device_id`; `None` for a loopback listener.
    pub(crate) fn start(
        device_id: &str,
        listen: SocketAddr,
        window_open: bool,
    ) -> Result<Option<Self>, AdvertiseError> {
        if listen.ip().is_loopback() {
            return Ok(None);
        }
        let daemon = ServiceDaemon::new()?;
        if listen.ip().is_unspecified() {
            daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        } else {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(IfKind::Addr(listen.ip()))?;
        }
        let mut advertiser = Self {
            daemon,
            device_id: device_id.to_owned(),
            listen,
            fullname: String::new(),
            withdrawn: false,
        };
        advertiser.announce(window_open)?;
        Ok(Some(advertiser))
    }

    /// Re-announces with the window's state.
    pub(crate) fn announce(&mut self, window_open: bool) -> Result<(), AdvertiseError> {
        let short = &self.device_id[..self.device_id.len().min(12)];
        let host = format!("edge-{short}.local.");
        let properties = [
            ("id", self.device_id.as_str()),
            ("v", "1"),
            ("pairing", if window_open { "open" } else { "closed" }),
        ];
        let ip: Vec<IpAddr> = if self.listen.ip().is_unspecified() {
            Vec::new()
        } else {
            vec![self.listen.ip()]
        };
        let mut info = ServiceInfo::new(
            SERVICE,
            &format!("edge-{}", self.device_id),
            &host,
            &ip[..],
            self.listen.port(),
            &properties[..],
        )?;
        if ip.is_empty() {
            info = info.enable_addr_auto();
        }
        self.fullname = info.get_fullname().to_owned();
        self.daemon.register(info)?;
        Ok(())
    }
}

impl Advertiser {
    /// Withdraws the announcement (goodbye packets) and stops the responder, waiting up to a
    /// second for each, so a new announcement that follows is not undone by this one's goodbye.
    /// Blocks.
    pub(crate) fn stop(mut self) {
        self.withdraw(Duration::from_secs(1));
    }

    fn withdraw(&mut self, wait: Duration) {
        if std::mem::replace(&mut self.withdrawn, true) {
            return;
        }
        if let Ok(done) = self.daemon.unregister(&self.fullname)
            && !wait.is_zero()
        {
            let _ = done.recv_timeout(wait);
        }
        if let Ok(done) = self.daemon.shutdown()
            && !wait.is_zero()
        {
            let _ = done.recv_timeout(wait);
        }
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        self.withdraw(Duration::ZERO);
    }
}

/// What an announcement depends on: for each interface it is made on (the listener's, or every
/// one but loopback for a wildcard listener), its operational state and addresses.
pub(crate) type Links = BTreeMap<String, (String, BTreeSet<IpAddr>)>;

/// The links that matter to an announcement of `listen`.
pub(crate) fn links(interfaces: &[Interface], listen: SocketAddr) -> Links {
    interfaces
        .iter()
        .filter(|i| {
            let loopback = i.addresses.iter().any(|a| a.ip.is_loopback()) || i.name == "lo";
            if listen.ip().is_unspecified() {
                !loopback
            } else {
                i.addresses.iter().any(|a| a.ip == listen.ip())
            }
        })
        .map(|i| {
            let ips = i.addresses.iter().map(|a| a.ip).collect();
            (i.name.clone(), (i.oper_state.clone(), ips))
        })
        .collect()
}

/// Says when to start the announcement afresh: when the links differ from those it was started
/// with and have stayed the same over two looks, so that a link still coming up (carrier, DHCP,
/// IPv6 duplicate address detection) is not caught half-way.
#[derive(Debug, Clone)]
pub(crate) struct LinkWatch {
    started_with: Links,
    last: Links,
}

impl LinkWatch {
    /// A watch over an announcement started with `links`.
    pub(crate) fn new(links: Links) -> Self {
        Self {
            started_with: links.clone(),
            last: links,
        }
    }

    /// Takes one look; true when the announcement should be started again (with `now`).
    pub(crate) fn observe(&mut self, now: Links) -> bool {
        let settled = now == self.last;
        self.last = now;
        if settled && self.last != self.started_with {
            self.started_with = self.last.clone();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_hal::net::{Address, Counters};

    fn interface(name: &str, state: &str, ips: &[&str]) -> Interface {
        Interface {
            name: name.into(),
            mac: None,
            addresses: ips
                .iter()
                .map(|ip| Address {
                    ip: ip.parse().expect("ip"),
                    prefix: 24,
                })
                .collect(),
            oper_state: state.into(),
            speed_mbps: None,
            counters: Counters::default(),
        }
    }

    fn host(wlan: Interface) -> Vec<Interface> {
        vec![
            interface("eth0", "up", &["192.0.2.7", "fe80::1"]),
            interface("lo", "unknown", &["127.0.0.1", "::1"]),
            wlan,
        ]
    }

    #[test]
    fn a_wildcard_listener_depends_on_every_link_but_loopback_a_bound_one_on_its_own() {
        let list = host(interface("wlan0", "up", &["198.51.100.4"]));
        let any = links(&list, "0.0.0.0:7466".parse().expect("addr"));
        assert_eq!(any.keys().collect::<Vec<_>>(), ["eth0", "wlan0"]);
        let one = links(&list, "198.51.100.4:7466".parse().expect("addr"));
        assert_eq!(one.keys().collect::<Vec<_>>(), ["wlan0"]);
        assert!(links(&list, "203.0.113.1:7466".parse().expect("addr")).is_empty());
    }

    #[test]
    fn a_link_that_comes_up_restarts_the_announcement_once_it_has_settled() {
        let listen: SocketAddr = "0.0.0.0:7466".parse().expect("addr");
        let down = links(&host(interface("wlan0", "down", &[])), listen);
        let mut watch = LinkWatch::new(down.clone());
        assert!(!watch.observe(down.clone()), "nothing changed");
        let carrier = links(&host(interface("wlan0", "up", &["fe80::2"])), listen);
        assert!(!watch.observe(carrier.clone()), "changed, not settled yet");
        let dhcp = links(
            &host(interface("wlan0", "up", &["fe80::2", "198.51.100.4"])),
            listen,
        );
        assert!(!watch.observe(dhcp.clone()), "still changing");
        assert!(watch.observe(dhcp.clone()), "settled: restart");
        assert!(!watch.observe(dhcp.clone()), "once");
        assert!(!watch.observe(down.clone()));
        assert!(watch.observe(down), "and again when it goes away");
    }
}
