//! HTTPS serving: TLS 1.3 only (rustls with ring), HTTP/1.1, one task per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use edge_tasks::Tasks;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// A TLS handshake or request head that takes longer than this is dropped (slow-loris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors loading the server's certificate and key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("reading {path}: {reason} (run `edge-hub init` first?)")]
    Pem {
        /// The certificate chain or key file, `server.pem` or `server.key` in the hub's directory.
        path: PathBuf,
        /// The PEM reader's error: the file cannot be read, is not PEM, or holds no key.
        reason: String,
    },
    /// rustls refused the pair.
    #[error("certificate and key do not form a TLS 1.3 server config: {0}")]
    Config(#[from] rustls::Error),
}

/// The peer's address, as the TCP connection has it (handlers read it as an extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A TLS 1.3 server config from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| TlsError::Pem {
            path,
            reason: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem_err(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(cert))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long a connection may take to finish its answer once the hub is stopping.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` over TLS on `listener` until the set's shutdown; each connection is a task of
/// `tasks`, ended gracefully (the request in flight is answered) within 5 s. At most
/// `max_connections` are open at once: when full, the hub stops accepting (new clients wait in
/// the kernel's backlog) until one closes, so a flood of connections costs it no more than that.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    max_connections: usize,
    tasks: Tasks,
) -> Result<(), Infallible> {
    let acceptor = TlsAcceptor::from(tls);
    let shutdown = tasks.shutdown();
    let open = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let slot = match open.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    max_connections,
                    "connection cap reached; accepting again when one closes"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    slot = open.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return Ok(()),
                    },
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    edge_tasks::accept_failed("hub", &e).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone().layer(Extension(Peer(peer)));
        let shutdown = shutdown.clone();
        tasks.spawn_logged("connection", async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return Ok::<_, Infallible>(());
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return Ok(());
                }
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                () = shutdown.cancelled() => {
                    // Graceful means polled on until the answer in flight is written.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
                }
            }
            Ok(())
        });
    }
}
