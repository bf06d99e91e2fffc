//! Caps on the owner links the bridge serves at once, and who makes room when one is reached.
//!
//! A link is a *stranger* until it has authenticated (a finished owner session or a pairing);
//! strangers are capped per address, per network (an IPv4 /24, an IPv6 /64, or Bluetooth LE as a
//! whole, where addresses are free to make up) and in all, and [`OWNER_PLACES`] places are kept
//! for the owner's authenticated links. A stranger over a cap does not wait for a place: the
//! oldest stranger in the full scope is evicted to make room. So a host that opens links and
//! stalls cannot keep out anyone who speaks at once (the owner's app finishes its handshake in
//! milliseconds), and a crowd of addresses in one network makes room among itself first.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// Links served at once, in all.
pub(crate) const MAX_LINKS: usize = 16;
/// Places strangers never take: the owner's authenticated links always find one.
pub(crate) const OWNER_PLACES: usize = 4;
/// Strangers served at once from one address.
pub(crate) const MAX_LINKS_PER_PEER: usize = 4;
/// Strangers served at once from one network (/24, /64, or Bluetooth LE).
pub(crate) const MAX_LINKS_PER_NETWORK: usize = 8;

/// Where a link comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A LAN address.
    Ip(IpAddr),
    /// A Bluetooth LE device address, as BlueZ prints it.
    Ble(String),
}

impl Peer {
    /// The network the address is in: its /24 or /64 (an IPv4-mapped IPv6 address counts as
    /// IPv4), or Bluetooth LE as one network.
    fn network(&self) -> Network {
        match self {
            Self::Ip(ip) => match ip.to_canonical() {
                IpAddr::V4(v4) => Network::V4(u32::from(v4) >> 8),
                IpAddr::V6(v6) => Network::V6((u128::from(v6) >> 64) as u64),
            },
            Self::Ble(_) => Network::Ble,
        }
    }

    fn canonical(&self) -> Self {
        match self {
            Self::Ip(ip) => Self::Ip(ip.to_canonical()),
            Self::Ble(address) => Self::Ble(address.clone()),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Ble(address) => write!(f, "ble:{address}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Network {
    V4(u32),
    V6(u64),
    Ble,
}

/// One link being served.
#[derive(Debug)]
struct Entry {
    id: u64,
    peer: Peer,
    network: Network,
    owner: bool,
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct Open {
    /// In the order they were admitted: the first stranger is the oldest.
    links: Vec<Entry>,
    next_id: u64,
}

/// The links being served.
#[derive(Debug, Clone)]
pub(crate) struct LinkCaps {
    open: Arc<Mutex<Open>>,
    limits: Limits,
}

/// The caps, as numbers of links.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub total: usize,
    pub owner_places: usize,
    pub per_peer: usize,
    pub per_network: usize,
}

/// A link's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct LinkPermit {
    caps: LinkCaps,
    id: u64,
    evict: CancellationToken,
}

impl Default for LinkCaps {
    fn default() -> Self {
        Self::new(Limits {
            total: MAX_LINKS,
            owner_places: OWNER_PLACES,
            per_peer: MAX_LINKS_PER_PEER,
            per_network: MAX_LINKS_PER_NETWORK,
        })
    }
}

/// Which cap a newcomer would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Peer,
    Network,
    All,
}

impl LinkCaps {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            open: Arc::default(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a stranger's link from `peer`, evicting the oldest stranger in a full scope
    /// (the peer's own links first, then its network's, then anyone's); `None` only when every
    /// place is the owner's.
    pub(crate) fn admit(&self, peer: &Peer) -> Option<LinkPermit> {
        let peer = peer.canonical();
        let network = peer.network();
        let mut open = self.lock();
        while let Some(scope) = self.full(&open, &peer, network) {
            let in_scope = |e: &Entry| match scope {
                Scope::Peer => e.peer == peer,
                Scope::Network => e.network == network,
                Scope::All => true,
            };
            let oldest = open.links.iter().position(|e| !e.owner && in_scope(e))?;
            let evicted = open.links.remove(oldest);
            tracing::debug!(peer = %evicted.peer, ?scope, "owner link evicted: the oldest stranger makes room");
            evicted.evict.cancel();
        }
        open.next_id += 1;
        let id = open.next_id;
        let evict = CancellationToken::new();
        open.links.push(Entry {
            id,
            peer,
            network,
            owner: false,
            evict: evict.clone(),
        });
        Some(LinkPermit {
            caps: self.clone(),
            id,
            evict,
        })
    }

    /// The scope whose cap one more stranger from `peer` would pass.
    fn full(&self, open: &Open, peer: &Peer, network: Network) -> Option<Scope> {
        let strangers = || open.links.iter().filter(|e| !e.owner);
        let limits = &self.limits;
        if strangers().filter(|e| e.peer == *peer).count() >= limits.per_peer {
            Some(Scope::Peer)
        } else if strangers().filter(|e| e.network == network).count() >= limits.per_network {
            Some(Scope::Network)
        } else if strangers().count() >= limits.total.saturating_sub(limits.owner_places)
            || open.links.len() >= limits.total
        {
            Some(Scope::All)
        } else {
            None
        }
    }
}

impl LinkPermit {
    /// The link has authenticated as the owner: it is no longer a stranger, and is not evicted.
    pub(crate) fn authenticated(&self) {
        if let Some(entry) = self.caps.lock().links.iter_mut().find(|e| e.id == self.id) {
            entry.owner = true;
        }
    }

    /// Completes when the link was evicted to make room for another.
    pub(crate) async fn evicted(&self) {
        self.evict.cancelled().await;
    }
}

impl Drop for LinkPermit {
    fn drop(&mut self) {
        self.caps.lock().links.retain(|e| e.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Peer {
        Peer::Ip(s.parse().expect("address"))
    }

    /// At most 2 strangers per address, 4 per network, `total` links with 2 kept for the owner.
    fn caps_of(total: usize) -> LinkCaps {
        LinkCaps::new(Limits {
            total,
            owner_places: 2,
            per_peer: 2,
            per_network: 4,
        })
    }

    fn caps() -> LinkCaps {
        caps_of(8)
    }

    fn evicted(permit: &LinkPermit) -> bool {
        permit.evict.is_cancelled()
    }

    #[test]
    fn a_peer_over_its_cap_evicts_its_own_oldest_link() {
        let caps = caps();
        let a1 = caps.admit(&ip("10.0.0.1")).expect("a place");
        let a2 = caps.admit(&ip("10.0.0.1")).expect("a place");
        let b = caps.admit(&ip("10.0.0.2")).expect("a place");
        let a3 = caps
            .admit(&ip("10.0.0.1"))
            .expect("a place: the oldest makes room");
        assert!(evicted(&a1), "the peer's oldest");
        assert!(!evicted(&a2) && !evicted(&b) && !evicted(&a3));
        assert_eq!(
            caps.lock().links.len(),
            3,
            "the evicted place is free at once"
        );
        drop(a1);
        assert_eq!(
            caps.lock().links.len(),
            3,
            "dropping an evicted permit frees nothing twice"
        );
    }

    #[test]
    fn a_full_network_evicts_its_oldest_and_other_networks_keep_theirs() {
        let caps = caps_of(16);
        let other = caps.admit(&ip("192.168.7.9")).expect("a place");
        let crowd: Vec<_> = (1..=4)
            .map(|h| caps.admit(&ip(&format!("10.0.0.{h}"))).expect("a place"))
            .collect();
        let fifth = caps.admit(&ip("10.0.0.200")).expect("a place");
        assert!(evicted(&crowd[0]), "the network's oldest");
        assert!(!evicted(&other), "another network's older link stays");
        assert!(!evicted(&fifth));
        // IPv6 /64s, and an IPv4-mapped address counted as IPv4.
        let v6: Vec<_> = (1..=4)
            .map(|h| caps.admit(&ip(&format!("fd00::{h}"))).expect("a place"))
            .collect();
        let _in_other_64 = caps.admit(&ip("fd00:0:0:1::1")).expect("a place");
        assert!(
            v6.iter().all(|p| !evicted(p)),
            "another /64 is another network"
        );
        let _mapped = caps.admit(&ip("::ffff:10.0.0.201")).expect("a place");
        assert!(evicted(&crowd[1]), "the mapped address is in 10.0.0.0/24");
    }

    #[test]
    fn strangers_leave_the_owner_places_free_and_owner_links_are_never_evicted() {
        let caps = caps();
        let owner = caps.admit(&ip("10.0.0.1")).expect("a place");
        owner.authenticated();
        // Six strangers in three networks: total 8 less 2 owner places.
        let strangers: Vec<_> = (1..=6)
            .map(|n| caps.admit(&ip(&format!("10.0.{n}.1"))).expect("a place"))
            .collect();
        let seventh = caps.admit(&ip("10.0.9.1")).expect("a place");
        assert!(
            evicted(&strangers[0]),
            "the oldest stranger, not the older owner link"
        );
        assert!(!evicted(&owner) && !evicted(&seventh));
        // Until it authenticates, a newcomer is a stranger; then the owner's places are its.
        let second_owner = caps.admit(&ip("10.0.0.1")).expect("a place");
        assert!(evicted(&strangers[1]));
        second_owner.authenticated();
        let eighth = caps.admit(&ip("10.0.10.1")).expect("a place");
        assert_eq!(
            caps.lock().links.len(),
            8,
            "every place taken, none evicted"
        );
        assert!(!evicted(&strangers[2]));
        let ninth = caps.admit(&ip("10.0.11.1")).expect("a place");
        assert!(
            evicted(&strangers[2]),
            "strangers make room among themselves"
        );
        // Only owner links: a stranger finds no one to evict.
        drop((strangers, seventh, eighth, ninth));
        let owners: Vec<_> = (0..6)
            .map(|_| {
                let p = caps.admit(&ip("10.0.0.3")).expect("a place");
                p.authenticated();
                p
            })
            .collect();
        assert!(
            caps.admit(&ip("10.0.0.4")).is_none(),
            "every place is the owner's"
        );
        drop(owners);
        assert!(caps.admit(&ip("10.0.0.4")).is_some(), "places come back");
    }

    #[test]
    fn bluetooth_addresses_are_one_network() {
        let caps = caps();
        let ble: Vec<_> = (0..4)
            .map(|n| {
                caps.admit(&Peer::Ble(format!("AA:BB:CC:DD:EE:0{n}")))
                    .expect("a place")
            })
            .collect();
        let lan = caps.admit(&ip("10.0.0.1")).expect("a place");
        let _fifth = caps
            .admit(&Peer::Ble("AA:BB:CC:DD:EE:10".into()))
            .expect("a place");
        assert!(evicted(&ble[0]) && !evicted(&lan));
    }
}
