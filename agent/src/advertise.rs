//! DNS-SD over mDNS: the box announces `_edge-agent._tcp` so the owner's app finds it on the LAN,
//! with its device id and whether a pairing window is open in the TXT record (`id`, `v`,
//! `pairing=open|closed`).
//!
//! Only where the pairing listener is reachable: on the listener's interface when it is bound to
//! one address, on every interface but loopback when it is bound to all; never for a loopback
//! listener (nobody on the LAN could connect to it).

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};

/// The DNS-SD service type.
pub const SERVICE: &str = "_edge-agent._tcp.local.";

/// Errors announcing.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct AdvertiseError(#[from] mdns_sd::Error);

/// A running announcement; withdrawn on drop.
pub struct Advertiser {
    daemon: ServiceDaemon,
    device_id: String,
    listen: SocketAddr,
    fullname: String,
}

impl Advertiser {
    /// Starts announcing `listen` for `device_id`; `None` for a loopback listener.
    pub fn start(
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
        };
        advertiser.announce(window_open)?;
        Ok(Some(advertiser))
    }

    /// Re-announces with the window's state.
    pub fn announce(&mut self, window_open: bool) -> Result<(), AdvertiseError> {
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

impl Drop for Advertiser {
    fn drop(&mut self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}
