//! A small HTTP/1.1 client for the agent's own status endpoint (`edge-agent status`).

use std::net::SocketAddr;
use std::path::PathBuf;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Errors talking to a running agent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error(
        "cannot connect to {endpoint}: {source} (is edge-agent running? `systemctl status edge-agent`)"
    )]
    Connect {
        /// The socket or address.
        endpoint: String,
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("request to {endpoint} failed: {source}")]
    Http {
        /// The socket or address.
        endpoint: String,
        source: hyper::Error,
    },
    /// The agent answered with an error status.
    #[error("{endpoint} answered {status}: {body}")]
    Status {
        /// The socket or address.
        endpoint: String,
        status: u16,
        body: String,
    },
}

/// Where a running agent listens.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "http://{addr}"),
        }
    }
}

/// `GET path` from the agent; the body on 200.
pub(crate) async fn get(endpoint: &Endpoint, path: &str) -> Result<String, ClientError> {
    let name = endpoint.to_string();
    let connect_err = |source| ClientError::Connect {
        endpoint: name.clone(),
        source,
    };
    match endpoint {
        Endpoint::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(connect_err)?;
            exchange(stream, &name, path, "localhost").await
        }
        Endpoint::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(connect_err)?;
            exchange(stream, &name, path, &addr.to_string()).await
        }
    }
}

async fn exchange<S>(stream: S, name: &str, path: &str, host: &str) -> Result<String, ClientError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let http_err = |source| ClientError::Http {
        endpoint: name.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .expect("a GET with a valid path and host is a valid request");
    let response = sender.send_request(request).await.map_err(http_err)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http_err)?
        .to_bytes();
    conn.abort();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(ClientError::Status {
            endpoint: name.to_owned(),
            status: status.as_u16(),
            body,
        });
    }
    Ok(body)
}
