//! Caps on the owner links the bridge serves at once: in all, and per peer (an IP address, or a
//! Bluetooth device address). A host that opens connections and sends nothing holds each for up to
//! 5 s (the first-message deadline); without a cap it could exhaust the agent's file descriptors, and with only a total
//! cap it could take every place. A link over the cap is closed at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Links served at once, in all.
pub(crate) const MAX_LINKS: usize = 16;
/// Links served at once from one peer.
pub(crate) const MAX_LINKS_PER_PEER: usize = 4;

/// The links being served, by peer.
#[derive(Debug, Clone)]
pub(crate) struct LinkCaps {
    open: Arc<Mutex<HashMap<String, usize>>>,
    total: usize,
    per_peer: usize,
}

/// A link's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct LinkPermit {
    caps: LinkCaps,
    peer: String,
}

impl Default for LinkCaps {
    fn default() -> Self {
        Self::new(MAX_LINKS, MAX_LINKS_PER_PEER)
    }
}

impl LinkCaps {
    /// At most `total` links at once, `per_peer` from any one peer.
    pub(crate) fn new(total: usize, per_peer: usize) -> Self {
        Self {
            open: Arc::default(),
            total,
            per_peer,
        }
    }

    /// A place for a link from `peer`, or `None` when a cap is reached.
    pub(crate) fn admit(&self, peer: &str) -> Option<LinkPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let from_peer = open.get(peer).copied().unwrap_or(0);
        if total >= self.total || from_peer >= self.per_peer {
            return None;
        }
        open.insert(peer.to_owned(), from_peer + 1);
        Some(LinkPermit {
            caps: self.clone(),
            peer: peer.to_owned(),
        })
    }
}

impl Drop for LinkPermit {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_and_all_together_are_capped_and_places_come_back() {
        let caps = LinkCaps::new(5, 2);
        let a: Vec<_> = (0..2).map(|_| caps.admit("a").expect("a place")).collect();
        assert!(caps.admit("a").is_none(), "a third from one peer");
        let b: Vec<_> = (0..2).map(|_| caps.admit("b").expect("a place")).collect();
        let c = caps.admit("c").expect("the fifth place");
        assert!(caps.admit("d").is_none(), "a sixth in all");
        drop(c);
        let d = caps.admit("d").expect("a place given back");
        drop(a);
        assert!(caps.admit("a").is_some(), "the peer's places came back");
        drop((b, d));
        assert!(caps.open.lock().expect("lock").is_empty(), "nothing left");
    }
}
