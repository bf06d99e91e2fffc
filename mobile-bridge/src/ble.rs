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
use std::pin::Pin;

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

/// A link to one app over BLE.
pub type BleLink = PacketLink<CharacteristicReader, CharacteristicWriter>;

/// The GATT service and its advertisement; withdrawn on drop.
pub struct BleServer {
    adapter: String,
    rx: Pin<Box<CharacteristicControl>>,
    tx: Pin<Box<CharacteristicControl>>,
    /// Each central's half-made link, until it has both directions.
    pending: HashMap<Address, (Option<CharacteristicReader>, Option<CharacteristicWriter>)>,
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
            pending: HashMap::new(),
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
            let address = match event {
                CharacteristicControlEvent::Write(request) => {
                    let address = request.device_address();
                    let reader = request.accept()?;
                    self.pending.entry(address).or_default().0 = Some(reader);
                    address
                }
                CharacteristicControlEvent::Notify(writer) => {
                    let address = writer.device_address();
                    self.pending.entry(address).or_default().1 = Some(writer);
                    address
                }
            };
            if let Some((Some(_), Some(_))) = self.pending.get(&address)
                && let Some((Some(reader), Some(writer))) = self.pending.remove(&address)
            {
                let (rx_mtu, tx_max) = (reader.mtu(), writer.mtu());
                return Ok((address, PacketLink::new(reader, rx_mtu, writer, tx_max)?));
            }
        }
    }
}
