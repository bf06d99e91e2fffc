//! Network interfaces: addresses from `getifaddrs(3)`, link state and counters from sysfs.
//!
//! The byte and packet counters are the kernel's own (`statistics/*`); bandwidth measurement
//! takes differences between two reads.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::sysfs;

/// Errors listing interfaces.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The net class directory cannot be read.
    #[error("cannot list network interfaces in {path}: {source}")]
    List {
        /// `<sysfs>/class/net`, from [`LinuxInterfaces::sysfs`].
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `getifaddrs(3)` failed.
    #[error("getifaddrs failed: {0}")]
    Addresses(nix::Error),
}

/// An address on an interface with its prefix length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    /// The address as `getifaddrs(3)` gives it (an IPv6 one without its scope id).
    pub ip: IpAddr,
    /// Prefix length of its network; 0 where the kernel gave no netmask.
    pub prefix: u8,
}

/// Kernel counters for one interface since it came up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Bytes received (`statistics/rx_bytes`); 0 where unreadable, as for each counter here.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// One network interface: an entry of `<sysfs>/class/net`, with the addresses `getifaddrs(3)`
/// lists under its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// Hardware address, where the interface has one.
    pub mac: Option<String>,
    /// Its IPv4 and IPv6 addresses, in `getifaddrs(3)` order; empty if it has none.
    pub addresses: Vec<Address>,
    /// Operational state as the kernel says (`up`, `down`, `unknown` for loopback, ...).
    pub oper_state: String,
    /// Link speed in Mbit/s, where the driver reports it.
    pub speed_mbps: Option<u64>,
    /// The kernel's traffic counters since the interface came up.
    pub counters: Counters,
}

/// Lists the machine's network interfaces: [`LinuxInterfaces`], or the fakes' for tests.
pub trait Interfaces: Send + Sync {
    /// All interfaces, sorted by name.
    fn list(&self) -> Result<Vec<Interface>, NetError>;
}

/// Reads `<sysfs>/class/net` and `getifaddrs(3)`.
#[derive(Debug, Clone)]
pub struct LinuxInterfaces {
    /// sysfs mount point, `/sys`.
    pub sysfs: PathBuf,
}

impl Default for LinuxInterfaces {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
        }
    }
}

impl Interfaces for LinuxInterfaces {
    fn list(&self) -> Result<Vec<Interface>, NetError> {
        let dir = self.sysfs.join("class/net");
        let entries = std::fs::read_dir(&dir).map_err(|source| NetError::List {
            path: dir.clone(),
            source,
        })?;
        let mut addresses: BTreeMap<String, Vec<Address>> = BTreeMap::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(NetError::Addresses)? {
            let Some(ip) = ifa.address.as_ref().and_then(ip_of) else {
                continue;
            };
            let prefix = ifa.netmask.as_ref().and_then(ip_of).map_or(0, prefix_len);
            addresses
                .entry(ifa.interface_name)
                .or_default()
                .push(Address { ip, prefix });
        }
        let mut list: Vec<Interface> = entries
            .filter_map(Result::ok)
            .map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let stat = |counter: &str| {
                    sysfs::read_u64(&path.join("statistics").join(counter)).unwrap_or(0)
                };
                let mac = sysfs::read_trimmed(&path.join("address"))
                    .ok()
                    .filter(|mac| !mac.is_empty() && mac != "00:00:00:00:00:00");
                Interface {
                    mac,
                    addresses: addresses.remove(&name).unwrap_or_default(),
                    oper_state: sysfs::read_trimmed(&path.join("operstate"))
                        .unwrap_or_else(|_| "unknown".into()),
                    // Virtual links report -1 or EINVAL: no speed rather than a bogus one.
                    speed_mbps: sysfs::read_u64(&path.join("speed")),
                    counters: Counters {
                        rx_bytes: stat("rx_bytes"),
                        tx_bytes: stat("tx_bytes"),
                        rx_packets: stat("rx_packets"),
                        tx_packets: stat("tx_packets"),
                    },
                    name,
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }
}

fn ip_of(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

fn prefix_len(mask: IpAddr) -> u8 {
    match mask {
        IpAddr::V4(m) => u32::from(m).count_ones() as u8,
        IpAddr::V6(m) => u128::from(m).count_ones() as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};

    fn lo() -> Interface {
        LinuxInterfaces::default()
            .list()
            .expect("list interfaces")
            .into_iter()
            .find(|i| i.name == "lo")
            .expect("every Linux machine has lo")
    }

    #[test]
    fn loopback_exists_with_its_address() {
        let lo = lo();
        assert!(
            lo.addresses.contains(&Address {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                prefix: 8
            }),
            "{lo:?}"
        );
    }

    #[test]
    fn loopback_counters_grow_after_traffic() {
        let before = lo().counters;
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let payload = [0x5a_u8; 1000];
        for _ in 0..64 {
            tx.send_to(&payload, rx.local_addr().expect("addr"))
                .expect("send");
        }
        let after = lo().counters;
        assert!(
            after.tx_bytes >= before.tx_bytes + 64_000,
            "{before:?} -> {after:?}"
        );
        assert!(
            after.rx_packets >= before.rx_packets + 64,
            "{before:?} -> {after:?}"
        );
    }

    #[test]
    fn prefix_lengths() {
        assert_eq!(prefix_len("255.255.255.0".parse().expect("ip")), 24);
        assert_eq!(prefix_len("ffff:ffff:ffff:ffff::".parse().expect("ip")), 64);
    }
}
