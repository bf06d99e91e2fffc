//! The local, read-only status endpoint: `GET /status` (JSON) and `GET /metrics` (Prometheus),
//! on a Unix socket (mode 0660) and optionally on a loopback TCP port.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::config::StatusConfig;
use crate::status::report::AgentState;

/// Errors of the status endpoint.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Another process answers on the socket: most likely a second agent.
    #[error("another process answers on the status socket {path}; is an agent already running?")]
    InUse { path: PathBuf },
    /// Binding or preparing a listener failed.
    #[error("cannot listen on {endpoint}: {source}")]
    Listen {
        /// The socket path or address.
        endpoint: String,
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("status server on {endpoint} failed: {source}")]
    Serve {
        /// The socket path or address.
        endpoint: String,
        source: std::io::Error,
    },
}

fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn status(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    let body = serde_json::to_string_pretty(&state.report()).map_err(|e| {
        tracing::error!(error = %e, "cannot encode /status");
        StatusCode::INTERNAL_SERVER_ERROR
    })?;
    Ok::<_, StatusCode>(([(header::CONTENT_TYPE, "application/json")], body + "\n"))
}

async fn metrics(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::status::metrics::render(&state),
    )
}

/// Bound listeners, ready to serve. Binding happens before READY=1 so that a client told the agent
/// is ready can connect at once.
pub(crate) struct StatusServer {
    unix: Option<(UnixListener, SocketFile)>,
    tcp: Option<TcpListener>,
    state: Arc<AgentState>,
}

/// Removes the socket file when the server is gone.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl StatusServer {
    /// Binds the configured listeners. A stale socket file left by a crashed agent is replaced;
    /// one that still answers is not.
    pub(crate) async fn bind(
        config: &StatusConfig,
        state: Arc<AgentState>,
    ) -> Result<Self, StatusError> {
        let unix = match &config.socket {
            Some(path) => Some(bind_unix(path).await?),
            None => None,
        };
        let tcp = match config.tcp {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StatusError::Listen {
                            endpoint: addr.to_string(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        Ok(Self { unix, tcp, state })
    }

    /// Where it listens, for logs and STATUS= lines.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((_, file)) = &self.unix {
            out.push(format!("unix:{}", file.0.display()));
        }
        if let Some(tcp) = &self.tcp
            && let Ok(addr) = tcp.local_addr()
        {
            out.push(format!("http://{addr}"));
        }
        out
    }

    /// Serves until `shutdown`, then finishes in-flight requests.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), StatusError> {
        let app = router(self.state);
        let unix = async {
            let Some((listener, file)) = self.unix else {
                return Ok(());
            };
            let endpoint = file.0.display().to_string();
            let served = axum::serve(listener, app.clone())
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .await;
            drop(file);
            served.map_err(|source| StatusError::Serve { endpoint, source })
        };
        let tcp = async {
            let Some(listener) = self.tcp else {
                return Ok(());
            };
            let endpoint = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            axum::serve(listener, app.clone())
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .await
                .map_err(|source| StatusError::Serve { endpoint, source })
        };
        let (unix, tcp) = tokio::join!(unix, tcp);
        unix.and(tcp)
    }
}

async fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), StatusError> {
    let listen_err = |source| StatusError::Listen {
        endpoint: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(listen_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something that is not a socket is in the way; refusing to remove it",
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(StatusError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen_err)?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_in_the_sockets_place_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status.sock");
        std::fs::write(&path, "precious").expect("write");
        let err = bind_unix(&path).await.err().expect("refused");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
        let (listener, file) = bind_unix(&path).await.expect("replaced");
        drop((listener, file));
        assert!(!path.exists());
    }
}
