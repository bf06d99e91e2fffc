//! The Bluetooth LE transport (feature `ble`): a GATT service served through BlueZ's D-Bus API
//! with `bluer`. One characteristic the app writes to, one the device notifies on; each write and
//! each notification is one frame ([`crate::packet::PacketLink`]), the same frames as over the
//! LAN. The service is advertised with the device's name so the app finds it; the app must be
//! paired at the protocol level (SPAKE2, then the owner's key), not at the Bluetooth level: the
//! link itself is unauthenticated and every message on it is protected by the protocol.
//!
//! BlueZ hands each direction over as a datagram socket (`AcquireWrite`, `AcquireNotify`), so a
//! link is ready once one central has both subscribed to notifications and written once.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bluer::adv::{Advertisement, AdvertisementHandle};
use bluer::gatt::local::{
    Application, ApplicationHandle, Characteristic, CharacteristicControl,
    CharacteristicControlEvent, CharacteristicNotify, CharacteristicNotifyMethod,
    CharacteristicWrite, CharacteristicWriteMethod, Service, characteristic_control,
};
use bluer::gatt::{CharacteristicReader, CharacteristicWriter};
use bluer::{Address, Uuid};
use futures_util::StreamExt;

use crate::link::TransportError;
use crate::packet::PacketLink;

/// The edge box's GATT service.
pub const SERVICE_UUID: Uuid = Uuid::from_u128(0x6a0e_a000_5b1d_4c4e_9a57_3f0c_ed9e_0001);
/// The characteristic the app writes frames to.
pub const RX_UUID: Uuid = Uuid::from_u128(0x6a0e_a000_5b1d_4c4e_9a57_3f0c_ed9e_0002);
/// The characteristic the device notifies frames on.
pub const TX_UUID: Uuid = Uuid::from_u128(0x6a0e_a000_5b1d_4c4e_9a57_3f0c_ed9e_0003);

/// Centrals with one direction open and not yet the other, at most: a peer that subscribes from
/// ever new random addresses and never writes cannot pile up sockets.
pub const MAX_HALF_OPEN: usize = 8;
/// How long a central has to open its second direction after the first.
pub const HALF_OPEN_TTL: Duration = Duration::from_secs(5);

/// A link to one app over BLE.
pub type BleLink = PacketLink<CharacteristicReader, CharacteristicWriter>;

/// The GATT service and its advertisement; withdrawn on drop.
pub struct BleServer {
    adapter: String,
    rx: Pin<Box<CharacteristicControl>>,
    tx: Pin<Box<CharacteristicControl>>,
    /// Each central's half-made link, until it has both directions.
    pending: HalfOpen<Address, CharacteristicReader, CharacteristicWriter>,
    _app: ApplicationHandle,
    _advertisement: AdvertisementHandle,
}

impl BleServer {
    /// Serves the service on the default adapter (powered on if it is not) and advertises it
    /// as `local_name`. Fails with BlueZ's reason where there is no Bluetooth (no system bus, no
    /// `bluetoothd`, no adapter).
    pub async fn start(local_name: &str) -> Result<Self, TransportError> {
        let session = bluer::Session::new().await?;
        let adapter = session.default_adapter().await?;
        adapter.set_powered(true).await?;
        let (rx, rx_handle) = characteristic_control();
        let (tx, tx_handle) = characteristic_control();
        let app = Application {
            services: vec![Service {
                uuid: SERVICE_UUID,
                primary: true,
                characteristics: vec![
                    Characteristic {
                        uuid: RX_UUID,
                        write: Some(CharacteristicWrite {
                            write: true,
                            write_without_response: true,
                            method: CharacteristicWriteMethod::Io,
                            ..Default::default()
                        }),
                        control_handle: rx_handle,
                        ..Default::default()
                    },
                    Characteristic {
                        uuid: TX_UUID,
                        notify: Some(CharacteristicNotify {
                            notify: true,
                            method: CharacteristicNotifyMethod::Io,
                            ..Default::default()
                        }),
                        control_handle: tx_handle,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let app = adapter.serve_gatt_application(app).await?;
        let advertisement = adapter
            .advertise(Advertisement {
                service_uuids: [SERVICE_UUID].into_iter().collect(),
                discoverable: Some(true),
                local_name: Some(local_name.to_owned()),
                ..Default::default()
            })
            .await?;
        Ok(Self {
            adapter: adapter.name().to_owned(),
            rx: Box::pin(rx),
            tx: Box::pin(tx),
            pending: HalfOpen::default(),
            _app: app,
            _advertisement: advertisement,
        })
    }

    /// The adapter served on, e.g. `hci0`.
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    /// The next central with both directions open, and its address.
    pub async fn accept(&mut self) -> Result<(Address, BleLink), TransportError> {
        loop {
            let event = tokio::select! {
                event = self.rx.next() => event,
                event = self.tx.next() => event,
            };
            let Some(event) = event else {
                let gone = std::io::Error::other("BlueZ dropped the GATT service");
                return Err(TransportError::Io(gone));
            };
            let now = Instant::now();
            let whole = match event {
                CharacteristicControlEvent::Write(request) => {
                    let address = request.device_address();
                    let reader = request.accept()?;
                    self.pending.reader(now, address, reader)
                }
                CharacteristicControlEvent::Notify(writer) => {
                    self.pending.writer(now, writer.device_address(), writer)
                }
            };
            if let Some((address, reader, writer)) = whole {
                let (rx_mtu, tx_max) = (reader.mtu(), writer.mtu());
                return Ok((address, PacketLink::new(reader, rx_mtu, writer, tx_max)?));
            }
        }
    }
}

/// Half-made links by central: one direction (`R`, the socket the central writes to, or `W`, the
/// one it is notified on) waiting for the other. Capped at [`MAX_HALF_OPEN`] (the oldest goes) and
/// expired after [`HALF_OPEN_TTL`]; a dropped half closes its socket.
#[derive(Debug)]
struct HalfOpen<K, R, W> {
    waiting: HashMap<K, Half<R, W>>,
}

#[derive(Debug)]
struct Half<R, W> {
    since: Instant,
    reader: Option<R>,
    writer: Option<W>,
}

impl<K, R, W> Default for HalfOpen<K, R, W> {
    fn default() -> Self {
        Self {
            waiting: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, R, W> HalfOpen<K, R, W> {
    /// `key`'s reader came at `now`: the whole link if its writer was waiting.
    fn reader(&mut self, now: Instant, key: K, reader: R) -> Option<(K, R, W)> {
        self.half(now, &key).reader = Some(reader);
        self.take_whole(key)
    }

    /// `key`'s writer came at `now`: the whole link if its reader was waiting.
    fn writer(&mut self, now: Instant, key: K, writer: W) -> Option<(K, R, W)> {
        self.half(now, &key).writer = Some(writer);
        self.take_whole(key)
    }

    /// `key`'s entry, after dropping the expired ones and, when full, the oldest.
    fn half(&mut self, now: Instant, key: &K) -> &mut Half<R, W> {
        self.waiting
            .retain(|_, h| now.saturating_duration_since(h.since) < HALF_OPEN_TTL);
        if !self.waiting.contains_key(key) && self.waiting.len() >= MAX_HALF_OPEN {
            let oldest = self
                .waiting
                .iter()
                .min_by_key(|(_, h)| h.since)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.waiting.remove(&oldest);
            }
        }
        self.waiting.entry(key.clone()).or_insert(Half {
            since: now,
            reader: None,
            writer: None,
        })
    }

    fn take_whole(&mut self, key: K) -> Option<(K, R, W)> {
        let half = self.waiting.get(&key)?;
        if half.reader.is_none() || half.writer.is_none() {
            return None;
        }
        let half = self.waiting.remove(&key)?;
        Some((key, half.reader?, half.writer?))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_make_a_link_in_either_order() {
        let mut map = HalfOpen::<u32, &str, &str>::default();
        let now = Instant::now();
        assert!(map.reader(now, 1, "r1").is_none());
        assert!(map.writer(now, 2, "w2").is_none());
        assert_eq!(map.writer(now, 1, "w1"), Some((1, "r1", "w1")));
        assert_eq!(map.reader(now, 2, "r2"), Some((2, "r2", "w2")));
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn half_open_centrals_are_capped_and_expire() {
        let mut map = HalfOpen::<u32, &str, &str>::default();
        let start = Instant::now();
        // Thousands of random addresses that subscribe and never write.
        for n in 0..5000_u32 {
            let at = start + Duration::from_millis(u64::from(n));
            assert!(map.writer(at, n, "w").is_none());
            assert!(map.len() <= MAX_HALF_OPEN, "{} half-open", map.len());
        }
        // A real app, arriving among them, still completes: it is the newest.
        let at = start + Duration::from_millis(5000);
        assert!(map.writer(at, 9999, "app w").is_none());
        assert!(map.writer(at, 7, "flood").is_none());
        assert_eq!(
            map.reader(at, 9999, "app r"),
            Some((9999, "app r", "app w"))
        );
        // After the deadline nothing is left of the flood.
        let later = at + HALF_OPEN_TTL;
        assert!(map.reader(later, 1, "r").is_none());
        assert_eq!(map.len(), 1, "only the new half is waiting");
    }
}
