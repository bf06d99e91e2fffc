//! One owner link: pairing while a window is open, or the session handshake of the owner, then the
//! owner's requests over the encrypted channel until the link closes or the owner changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_mobile_bridge::link::{Link, TransportError};
use edge_mobile_bridge::message::{ErrorCode, Message, Request, Response};
use edge_mobile_bridge::pairing::{ConnId, DeviceStep, HANDSHAKE_TIMEOUT, PairingError};
use edge_mobile_bridge::session::{DeviceHandshake, SESSION_HANDSHAKE_TIMEOUT, SecureChannel};

use super::files::{BridgeError, PairingRecord};
use super::link_caps::LinkPermit;
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
    #[error("the handshake ran past its deadline")]
    Deadline,
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
    pub(super) async fn connection<L: Link>(
        self: Arc<Self>,
        mut link: L,
        permit: &LinkPermit,
    ) -> Result<(), LinkError> {
        let first = match tokio::time::timeout(FIRST_MESSAGE, link.recv()).await {
            Ok(first) => first?,
            Err(_) => return Err(LinkError::Idle(FIRST_MESSAGE)),
        };
        let Some(first) = first else {
            return Ok(());
        };
        if matches!(Message::decode(&first), Ok(Message::SessionHello(_))) {
            self.owner_session(link, &first, permit).await
        } else {
            self.pairing(link, first, permit).await
        }
    }

    async fn pairing<L: Link>(
        &self,
        mut link: L,
        first: Vec<u8>,
        permit: &LinkPermit,
    ) -> Result<(), LinkError> {
        let conn = {
            let mut shared = self.lock();
            shared.next_conn += 1;
            ConnId(shared.next_conn)
        };
        // However the link ends (an error, eviction, shutdown), its handshake fails and frees
        // the window's one slot at once, not at the deadline.
        let _leaving = Leaving { served: self, conn };
        // No person is in the loop once the app has sent PakeStart: the whole exchange fits in
        // the handshake deadline, and a link that stalls gives its place back when that passes.
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let mut message = first;
        loop {
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
                    return self
                        .control(link, paired.channel, paired.owner_key, permit)
                        .await;
                }
                Err(e) => {
                    tracing::info!(error = %e, "pairing attempt refused");
                    self.tick();
                    link.send(&e.reply()).await?;
                    return Ok(());
                }
            }
            match recv_by(&mut link, deadline).await? {
                Some(next) => message = next,
                None => return Ok(()),
            }
        }
    }

    async fn owner_session<L: Link>(
        &self,
        mut link: L,
        hello: &[u8],
        permit: &LinkPermit,
    ) -> Result<(), LinkError> {
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
        // The app answers at once; a peer that replays a seen hello and stalls holds nothing.
        let deadline = tokio::time::Instant::now() + SESSION_HANDSHAKE_TIMEOUT;
        let Some(finish) = recv_by(&mut link, deadline).await? else {
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
        self.control(link, channel, owner, permit).await
    }

    fn owner_key(&self) -> Option<[u8; 32]> {
        self.lock()
            .record
            .owner_key
            .as_deref()
            .and_then(edge_identity::hex::decode_array::<32>)
    }

    /// The owner's requests, until the link closes or the owner changes. The link has
    /// authenticated: it holds an owner's place from now on.
    async fn control<L: Link>(
        &self,
        mut link: L,
        mut channel: SecureChannel,
        owner: [u8; 32],
        permit: &LinkPermit,
    ) -> Result<(), LinkError> {
        permit.authenticated();
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
    /// The factory reset without the owner's app (the pairing button held): as the app's, and
    /// said in the log either way.
    pub(super) async fn factory_reset(&self, why: &str) {
        tracing::warn!(%why, "factory reset");
        if self.unpair(true).await != Response::Ok {
            tracing::error!(%why, "the factory reset failed; hold the button again to retry");
        }
    }

    async fn unpair(&self, factory: bool) -> Response {
        if factory {
            // Everything of the owner's first, the owner last: a reset that fails half-way leaves
            // the box with its owner, who is told and can try again.
            let (wifi, state_dir) = (
                self.task.control.hal.wifi.clone(),
                self.task.control.state_dir.clone(),
            );
            let erased = edge_tasks::blocking(move || {
                super::files::erase_owner_data(&state_dir)?;
                if let Err(e) = wifi.forget_all() {
                    // No Wi-Fi manager on the box is not a failure of the reset.
                    tracing::warn!(error = %e, "factory reset: Wi-Fi credentials not erased");
                }
                Ok::<(), BridgeError>(())
            })
            .await;
            if let Err(e) = erased {
                tracing::error!(error = %e, "factory reset failed; the owner is kept");
                return Response::error(ErrorCode::Internal);
            }
            if let Err(e) = self.task.control.binding.unbind().await {
                tracing::error!(error = %e, "factory reset: the network binding not erased; the owner is kept");
                return Response::error(ErrorCode::Internal);
            }
        }
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
            crate::host::logging::clear();
            let journal = self.task.control.hal.journal.clone();
            let journal =
                edge_tasks::blocking(move || super::files::erase_journal(journal.as_ref())).await;
            tracing::warn!(
                journal,
                "factory reset: owner, owner settings, network binding, report queue, files set aside, recent logs and pairing state erased"
            );
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

/// The next message if it comes by `deadline` (a handshake's).
async fn recv_by<L: Link>(
    link: &mut L,
    deadline: tokio::time::Instant,
) -> Result<Option<Vec<u8>>, LinkError> {
    match tokio::time::timeout_at(deadline, link.recv()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LinkError::Deadline),
    }
}

/// Ends a pairing link's part in the window when dropped (see [`Served::pairing`]).
struct Leaving<'a> {
    served: &'a Served,
    conn: ConnId,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.served.lock().pairing.as_mut() {
            p.disconnected(self.conn);
        }
        self.served.tick();
    }
}
