//! One owner link: pairing while a window is open, or the session handshake of the owner, then the
//! owner's requests over the encrypted channel until the link closes or the owner changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_mobile_bridge::link::{Link, TransportError};
use edge_mobile_bridge::message::{ErrorCode, Message, Request, Response};
use edge_mobile_bridge::pairing::{ConnId, DeviceStep, PairingError};
use edge_mobile_bridge::session::{DeviceHandshake, SecureChannel};

use super::files::{BridgeError, PairingRecord};
use super::task::Served;

/// A client that says nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(60);
/// How long a new link may take to say its first message: an app that connects speaks at once;
/// a silent connection only holds a place (it held one for a minute before).
const FIRST_MESSAGE: Duration = Duration::from_secs(5);

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] BridgeError),
    #[error("the peer said nothing for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Protocol(String),
}

fn error_reply(code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    Message::Response(Response::Error {
        code,
        message: message.into(),
    })
    .encode()
    .unwrap_or_default()
}

impl Served {
    pub(super) async fn connection<L: Link>(self: Arc<Self>, mut link: L) -> Result<(), LinkError> {
        let first = match tokio::time::timeout(FIRST_MESSAGE, link.recv()).await {
            Ok(first) => first?,
            Err(_) => return Err(LinkError::Idle(FIRST_MESSAGE)),
        };
        let Some(first) = first else {
            return Ok(());
        };
        if matches!(Message::decode(&first), Ok(Message::SessionHello(_))) {
            self.owner_session(link, &first).await
        } else {
            self.pairing(link, first).await
        }
    }

    async fn pairing<L: Link>(&self, mut link: L, first: Vec<u8>) -> Result<(), LinkError> {
        let conn = {
            let mut shared = self.lock();
            shared.next_conn += 1;
            ConnId(shared.next_conn)
        };
        let mut message = first;
        let result = loop {
            let step = {
                let mut shared = self.lock();
                match shared.pairing.as_mut() {
                    Some(p) => p.handle(Instant::now(), conn, &message, &self.task.identity),
                    None => Err(PairingError::WindowClosed {
                        reason: edge_mobile_bridge::pairing::CloseReason::Expired,
                    }),
                }
            };
            match step {
                Ok(DeviceStep::PersistThenSend { failures, reply }) => {
                    let record = PairingRecord {
                        failures,
                        ..self.lock().record.clone()
                    };
                    self.save(record).await?;
                    link.send(&reply).await?;
                }
                Ok(DeviceStep::Wait) => {}
                Ok(DeviceStep::Paired(paired)) => {
                    let record = PairingRecord {
                        owner_key: Some(edge_identity::hex::encode(&paired.owner_key)),
                        failures: paired.failures,
                        paired_before: true,
                    };
                    self.save(record).await?;
                    {
                        let mut shared = self.lock();
                        shared.pairing = None;
                        self.publish(&shared);
                    }
                    tracing::info!(owner = %edge_identity::hex::encode(&paired.owner_key[..8]), "paired with a new owner");
                    link.send(&paired.reply).await?;
                    return self.control(link, paired.channel, paired.owner_key).await;
                }
                Err(e) => {
                    tracing::info!(error = %e, "pairing attempt refused");
                    self.tick();
                    link.send(&e.reply()).await?;
                    break Ok(());
                }
            }
            match recv(&mut link).await {
                Ok(Some(next)) => message = next,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Some(p) = self.lock().pairing.as_mut() {
            p.disconnected(conn);
        }
        self.tick();
        result
    }

    async fn owner_session<L: Link>(&self, mut link: L, hello: &[u8]) -> Result<(), LinkError> {
        let owner = self.owner_key();
        let accepted =
            DeviceHandshake::accept(Instant::now(), hello, &self.task.identity, owner.as_ref());
        let (handshake, accept) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::info!(error = %e, "owner session refused");
                link.send(&error_reply(e.code(), e.code().describe()))
                    .await?;
                return Ok(());
            }
        };
        link.send(&accept).await?;
        let Some(finish) = recv(&mut link).await? else {
            return Ok(());
        };
        let channel = match handshake.finish(Instant::now(), &finish) {
            Ok(channel) => channel,
            Err(e) => {
                link.send(&error_reply(e.code(), e.code().describe()))
                    .await?;
                return Ok(());
            }
        };
        let owner = owner.ok_or_else(|| LinkError::Protocol("owner vanished".into()))?;
        self.control(link, channel, owner).await
    }

    fn owner_key(&self) -> Option<[u8; 32]> {
        self.lock()
            .record
            .owner_key
            .as_deref()
            .and_then(edge_identity::hex::decode_array::<32>)
    }

    /// The owner's requests, until the link closes or the owner changes.
    async fn control<L: Link>(
        &self,
        mut link: L,
        mut channel: SecureChannel,
        owner: [u8; 32],
    ) -> Result<(), LinkError> {
        while let Some(wire) = recv(&mut link).await? {
            // A tampered, replayed or reordered record ends the session.
            let request = match channel.open(&wire) {
                Ok(Message::Request(request)) => request,
                Ok(other) => {
                    return Err(LinkError::Protocol(format!(
                        "{} on the control channel",
                        other.kind()
                    )));
                }
                Err(e) => return Err(LinkError::Protocol(e.to_string())),
            };
            let ends = matches!(request, Request::Unpair | Request::FactoryReset);
            let response = if self.owner_key() == Some(owner) {
                self.answer(request).await
            } else {
                Response::error(ErrorCode::NotOwner)
            };
            let sealed = channel
                .seal(&Message::Response(response))
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            link.send(&sealed).await?;
            if ends {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn answer(&self, request: Request) -> Response {
        tracing::info!(?request, "owner request");
        match request {
            Request::Unpair => self.unpair(false).await,
            Request::FactoryReset => self.unpair(true).await,
            other => self.task.control.answer(other).await,
        }
    }

    /// Forgets the owner; a factory reset also erases Wi-Fi credentials, the owner's settings and
    /// the failure count. The identity stays.
    async fn unpair(&self, factory: bool) -> Response {
        let failures = if factory {
            0
        } else {
            self.lock().record.failures
        };
        if let Err(e) = self
            .save(PairingRecord {
                owner_key: None,
                failures,
                // An unpaired box opens a window now (the owner asked), later ones on a press;
                // a reset box is new again.
                paired_before: !factory,
            })
            .await
        {
            tracing::error!(error = %e, "unpair failed");
            return Response::error(ErrorCode::Internal);
        }
        if factory {
            let (wifi, owner_file) = (
                self.task.control.hal.wifi.clone(),
                crate::config::owner_file(&self.task.control.state_dir),
            );
            let erased = edge_tasks::blocking(move || {
                let _ = std::fs::remove_file(&owner_file);
                wifi.forget_all()
            })
            .await;
            if let Err(e) = erased {
                // No Wi-Fi manager on the box is not a failure of the reset.
                tracing::warn!(error = %e, "factory reset: Wi-Fi credentials not erased");
            }
            tracing::warn!("factory reset: owner, owner settings and pairing state erased");
        } else {
            tracing::info!("unpaired");
        }
        self.open_window(if factory { "factory reset" } else { "unpaired" });
        Response::Ok
    }
}

async fn recv<L: Link>(link: &mut L) -> Result<Option<Vec<u8>>, LinkError> {
    match tokio::time::timeout(IDLE, link.recv()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LinkError::Idle(IDLE)),
    }
}
