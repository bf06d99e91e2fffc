//! The agent's HTTPS client for the hub: TLS 1.3 only, the network's CA pinned (no system
//! roots), no proxies. The device initiates everything; it sits behind NAT.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use edge_identity::Identity;
use edge_jobs::digest::{Hasher, Sha256};
use edge_jobs::job::Job;
use edge_protocol::api::{
    self, ApiError, Batch, BatchReply, HubInfo, IpEcho, JobOffer, Registered,
};
use edge_protocol::{Signed, poll};
use reqwest::StatusCode;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

/// A request that has not finished after this long is abandoned.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting (TCP and TLS) takes at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an API reply: a registration, report verdicts (256 at most), the hub's info, an
/// IP echo, a ping or upload answer. Whoever answers in the hub's place cannot make the agent hold
/// more.
pub(crate) const REPLY_LIMIT: usize = 256 << 10;
/// Most bytes of a job offer: a job with its inputs inline (larger inputs are for blobs).
pub(crate) const JOB_LIMIT: usize = 64 << 20;
/// Most bytes of an error reply kept for its message.
const ERROR_LIMIT: usize = 4 << 10;
/// A blob comes at 1 MiB/s at least (on top of [`REQUEST_TIMEOUT`]), or is abandoned.
const BLOB_BYTES_PER_SEC: u64 = 1 << 20;

/// Errors talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The CA (a file, or the owner's binding) could not be read or holds no certificate.
    #[error("hub CA certificate {origin}: {reason}")]
    Ca { origin: String, reason: String },
    /// The HTTP client could not be built.
    #[error("building the HTTPS client: {0}")]
    Client(String),
    /// No answer: connection refused, TLS failure, timeout. Worth retrying.
    #[error("{url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The hub answered with an error.
    #[error("{url}: hub refused ({status}): {message}")]
    Refused {
        url: String,
        status: StatusCode,
        message: String,
    },
    /// The reply was larger than any the agent takes from there; it was not read further.
    #[error("{url}: the reply is over {limit} bytes, more than this agent takes; not read")]
    TooLarge { url: String, limit: usize },
    /// The reply is not what was asked for.
    #[error("{url}: the reply is not valid: {reason}")]
    BadReply { url: String, reason: String },
    /// What the hub sent could not be written here (a blob into the blob store).
    #[error("{url}: writing {path}: {source}")]
    Local {
        url: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl HubError {
    /// A closure for `map_err` that names what was asked.
    pub fn unreachable(url: &str) -> impl Fn(reqwest::Error) -> Self + use<> {
        let url = url.to_owned();
        move |source| Self::Unreachable {
            url: url.clone(),
            source,
        }
    }

    /// Whether trying again later may succeed (the hub is away, busy, or limiting us).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            // A hub that answers nonsense may be fixed; its answers are not trusted meanwhile.
            Self::TooLarge { .. } | Self::BadReply { .. } => true,
            // A full disk may have room later.
            Self::Local { .. } => true,
            Self::Ca { .. } | Self::Client(_) => false,
        }
    }

    /// Whether the hub refused the request for its size.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE)
    }

    /// Whether the hub does not know this device (it must register again).
    pub fn is_unregistered(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if *status == StatusCode::UNAUTHORIZED)
    }
}

/// The hub's API, over one pooled HTTPS client.
#[derive(Clone)]
pub(crate) struct HubClient {
    http: reqwest::Client,
    base: String,
    /// The hub's clock less the box's, ms, as learned at registration; shared by the clones.
    offset_ms: Arc<AtomicI64>,
}

/// A clock this far off the hub's is said in the log (polls are signed with the hub's time
/// either way).
const SKEW_WARNING_MS: i64 = 60_000;

/// The TLS settings the agent uses for the network: TLS 1.3, ring, only the certificates in
/// `ca_pem` trusted; `origin` names where they came from in errors.
pub(crate) fn tls_config_pem(
    ca_pem: &[u8],
    origin: &str,
) -> Result<rustls::ClientConfig, HubError> {
    let ca_err = |reason: String| HubError::Ca {
        origin: origin.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| ca_err(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_err("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| HubError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl HubClient {
    /// A client for the hub at `base` (`https://host:port`) trusting only the certificates in
    /// `ca_pem` (`ca_origin` names where they came from in errors).
    pub(crate) fn new(base: &str, ca_pem: &[u8], ca_origin: &str) -> Result<Self, HubError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config_pem(ca_pem, ca_origin)?)
            .no_proxy()
            // A redirect is an answer, not an instruction: followed, it would let whoever
            // answers send the box to any address, the owner's LAN included.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("edge-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HubError::Client(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            offset_ms: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Learns how far the box's clock is off the hub's from the hub's time in a reply
    /// (`server_time_ms`) to a request sent at local `sent_ms` and answered at local `got_ms`
    /// (the hub's time is taken as the midpoint's); returns the offset, hub less box, ms. A box
    /// without a battery-backed clock or NTP may be minutes or years off; the hub refuses polls
    /// more than five minutes off its own clock.
    pub(crate) fn learn_hub_time(&self, server_time_ms: u64, sent_ms: u64, got_ms: u64) -> i64 {
        let midpoint = sent_ms / 2 + got_ms / 2;
        let offset = server_time_ms as i64 - midpoint as i64;
        self.offset_ms.store(offset, Ordering::Relaxed);
        if offset.abs() >= SKEW_WARNING_MS {
            tracing::warn!(
                offset_secs = offset / 1000,
                "this box's clock is off the hub's; polls are signed with the hub's time"
            );
        }
        offset
    }

    /// `local_ms` (the box's clock) on the hub's clock.
    pub(crate) fn hub_time(&self, local_ms: u64) -> u64 {
        local_ms.saturating_add_signed(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The underlying client (bandwidth tests stream through it).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `path` on the hub.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers the device with a signed register envelope.
    pub(crate) async fn register(&self, signed: &Signed) -> Result<Registered, HubError> {
        self.send(
            self.http.post(self.url(api::REGISTER)).json(signed),
            api::REGISTER,
        )
        .await
    }

    /// What the hub offers devices (echo endpoints).
    pub(crate) async fn info(&self) -> Result<HubInfo, HubError> {
        self.send(self.http.get(self.url(api::INFO)), api::INFO)
            .await
    }

    /// Delivers a batch of reports; the reply has one verdict per report.
    pub(crate) async fn deliver(&self, batch: &Batch) -> Result<BatchReply, HubError> {
        self.send(
            self.http.post(self.url(api::REPORTS)).json(batch),
            api::REPORTS,
        )
        .await
    }

    /// Long-polls for the device's next job, waiting up to `wait` on the hub; the poll is signed
    /// with `now_ms` (the box's clock) moved onto the hub's ([`HubClient::learn_hub_time`]).
    pub(crate) async fn next_job(
        &self,
        identity: &Identity,
        wait: Duration,
        now_ms: u64,
    ) -> Result<Option<Job>, HubError> {
        let url = format!("{}?wait_secs={}", self.url(api::JOBS_NEXT), wait.as_secs());
        let request = self.http.get(&url).timeout(wait + REQUEST_TIMEOUT);
        let request = self.signed(request, identity, api::JOBS_NEXT, now_ms);
        let response = self.raw(request, &url).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body = read_capped(response, JOB_LIMIT, &url).await?;
        // Up to 64 MiB of JSON with its inputs inline: parsed off the runtime's threads.
        let offer: JobOffer = edge_tasks::blocking(move || parse(&body, &url)).await?;
        Ok(Some(offer.job))
    }

    /// Fetches the job input blob `sha256` into the blob store `dir`, as `<sha256>`, if it is at
    /// most `max` bytes and hashes to its name: streamed to a file aside (never held in memory),
    /// checked, flushed, then renamed, so a blob in the store is always whole and right. It is
    /// made readable by all: the GPU worker runs as another user, and inputs are not secrets.
    pub(crate) async fn fetch_blob(
        &self,
        identity: &Identity,
        sha256: Sha256,
        max: u64,
        now_ms: u64,
        dir: &Path,
    ) -> Result<(), HubError> {
        let path = format!("{}{sha256}", api::BLOBS);
        let url = self.url(&path);
        let timeout = REQUEST_TIMEOUT + Duration::from_secs(max / BLOB_BYTES_PER_SEC);
        let request = self.signed(
            self.http.get(&url).timeout(timeout),
            identity,
            &path,
            now_ms,
        );
        let mut response = self.raw(request, &url).await?;
        let too_large = || HubError::TooLarge {
            url: url.clone(),
            limit: usize::try_from(max).unwrap_or(usize::MAX),
        };
        if response.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let aside = dir.join(format!(".{sha256}.partial"));
        let local = |source| HubError::Local {
            url: url.clone(),
            path: aside.clone(),
            source,
        };
        let written = async {
            let mut file = tokio::fs::File::create(&aside).await.map_err(local)?;
            let (mut hasher, mut len) = (Hasher::new(), 0u64);
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(HubError::unreachable(&url))?
            {
                len += chunk.len() as u64;
                if len > max {
                    return Err(too_large());
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(local)?;
            }
            let got = hasher.finish();
            if got != sha256 {
                return Err(HubError::BadReply {
                    url: url.clone(),
                    reason: format!("the blob's bytes hash to {got}, not to its name"),
                });
            }
            file.sync_all().await.map_err(local)?;
            let readable = std::fs::Permissions::from_mode(0o644);
            tokio::fs::set_permissions(&aside, readable)
                .await
                .map_err(local)?;
            tokio::fs::rename(&aside, dir.join(sha256.to_string()))
                .await
                .map_err(local)
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&aside).await;
        }
        written
    }

    /// `request` to `path` (a request that spends no sequence number: the job poll, the
    /// bandwidth tests) signed as the device, with `now_ms` (the box's clock) moved onto the
    /// hub's. Two requests to one path need different times: the hub takes each time once.
    pub(crate) fn signed(
        &self,
        mut request: reqwest::RequestBuilder,
        identity: &Identity,
        path: &str,
        now_ms: u64,
    ) -> reqwest::RequestBuilder {
        for (name, value) in poll::sign(identity, path, self.hub_time(now_ms)) {
            request = request.header(name, value);
        }
        request
    }

    /// Of echo URLs the hub named, those the box may fetch: `https://` on the hub's own host (any
    /// port), the rest left out with a warning. Fetched as given, they would let a hub use the box
    /// to probe the owner's LAN (a connect error goes back in the IP report). Echo URLs from the
    /// config are the operator's and are not filtered.
    pub(crate) fn on_hub_host(&self, urls: Vec<String>) -> Vec<String> {
        let host = |url: &str| {
            reqwest::Url::parse(url)
                .ok()
                .filter(|u| u.scheme() == "https")
                .and_then(|u| u.host_str().map(str::to_owned))
        };
        let hub = host(&self.base);
        urls.into_iter()
            .filter(|url| {
                let kept = hub.is_some() && host(url) == hub;
                if !kept {
                    tracing::warn!(%url, "an echo URL from the hub is not https:// on the hub's own host; left out");
                }
                kept
            })
            .collect()
    }

    /// Asks an echo endpoint which address it sees.
    pub(crate) async fn echo(&self, url: &str) -> Result<IpEcho, HubError> {
        self.send(self.http.get(url), url).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, HubError> {
        let url = if what.starts_with("https://") {
            what.to_owned()
        } else {
            self.url(what)
        };
        let response = self.raw(request, &url).await?;
        parse(&read_capped(response, REPLY_LIMIT, &url).await?, &url)
    }

    /// Sends `request` (for `url`) and hands back a successful response unread, for callers that
    /// read the body themselves (the bandwidth tests); an error reply is a [`HubError::Refused`].
    pub(crate) async fn raw(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, HubError> {
        let response = request.send().await.map_err(HubError::unreachable(url))?;
        let status = response.status();
        if status.is_success() {
            Ok(response)
        } else {
            Err(refused(url.to_owned(), status, response).await)
        }
    }
}

/// The body of `response` (from `url`), if it is at most `limit` bytes; read no further than that.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
    url: &str,
) -> Result<Vec<u8>, HubError> {
    let too_large = || HubError::TooLarge {
        url: url.to_owned(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(HubError::unreachable(url))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse<T: DeserializeOwned>(body: &[u8], url: &str) -> Result<T, HubError> {
    serde_json::from_slice(body).map_err(|e| HubError::BadReply {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// The hub's error reply as a [`HubError::Refused`].
async fn refused(url: String, status: StatusCode, response: reqwest::Response) -> HubError {
    let text = match read_capped(response, ERROR_LIMIT, &url).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(e) => e.to_string(),
    };
    let message = serde_json::from_str::<ApiError>(&text)
        .map(|e| e.error)
        .unwrap_or(text);
    HubError::Refused {
        url,
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;

    /// A CA, and a server certificate for 127.0.0.1 it signed: (CA PEM, server TLS config).
    fn pki() -> (String, Arc<rustls::ServerConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
        let cert = server.signed_by(&key, &issuer).expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls 1.3")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
            )
            .expect("config");
        (ca_pem, Arc::new(config))
    }

    /// Serves HTTPS on 127.0.0.1 from a thread: every request to `/elsewhere` is counted and
    /// answered with an empty JSON object; every other request is sent there with a 302.
    fn redirecting_server(tls: Arc<rustls::ServerConfig>) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let followed = Arc::new(AtomicUsize::new(0));
        let count = followed.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let Ok(conn) = rustls::ServerConnection::new(tls.clone()) else {
                    continue;
                };
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                let mut head = [0u8; 4096];
                let Ok(n) = stream.read(&mut head) else {
                    continue;
                };
                let answer = if head[..n].starts_with(b"GET /elsewhere") {
                    count.fetch_add(1, Ordering::SeqCst);
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_owned()
                } else {
                    format!(
                        "HTTP/1.1 302 Found\r\nlocation: https://127.0.0.1:{port}/elsewhere\r\n\
                         content-length: 0\r\nconnection: close\r\n\r\n"
                    )
                };
                let _ = stream.write_all(answer.as_bytes());
                let _ = stream.flush();
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        });
        (port, followed)
    }

    #[tokio::test]
    async fn a_redirect_from_the_hub_is_an_answer_never_followed() {
        let (ca_pem, tls) = pki();
        let (port, followed) = redirecting_server(tls);
        let hub = HubClient::new(
            &format!("https://127.0.0.1:{port}"),
            ca_pem.as_bytes(),
            "test",
        )
        .expect("client");
        let err = hub
            .info()
            .await
            .expect_err("a redirect is not the hub's info");
        assert!(
            matches!(&err, HubError::Refused { status, .. } if *status == StatusCode::FOUND),
            "{err}"
        );
        let echo = hub.echo(&hub.url(api::IP_ECHO)).await;
        assert!(echo.is_err(), "{echo:?}");
        assert_eq!(
            followed.load(Ordering::SeqCst),
            0,
            "the box went where it was sent"
        );
    }
}
