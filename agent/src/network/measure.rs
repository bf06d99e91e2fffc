//! Measuring what the device offers the network: throughput to the hub's test endpoints, and
//! the public address as echo endpoints see it.
//!
//! Bandwidth: `streams` parallel HTTPS transfers per direction for `warmup + window`, bounded by
//! `max_bytes`; a sampler reads the shared byte count every [`SAMPLE`]; the figure is the bytes
//! moved inside the window over the window's length (the warm-up, with TCP slow start and
//! filling buffers, is left out). Upload bytes are counted as the body hands them to the
//! connection, so in-flight data in socket buffers is counted early; at a steady rate the
//! buffers stay full and the window's difference is unaffected. Latency and jitter come from
//! small round trips on an open connection before the transfers.

use edge_hal::Clock;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_identity::Identity;
use edge_protocol::api;
use edge_protocol::report::{Bandwidth, IpObservation, IpReport};
use futures_util::StreamExt;
use reqwest::RequestBuilder;

use crate::config::BandwidthConfig;
use crate::network::hub_client::{HubClient, HubError, REPLY_LIMIT, read_capped};

/// How often the byte counters are sampled.
pub(crate) const SAMPLE: Duration = Duration::from_millis(250);
/// Round trips taken for latency and jitter (the first, which opens the connection, is not used).
const PINGS: usize = 11;
/// Upload chunk.
const CHUNK: usize = 64 * 1024;

static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// Errors measuring bandwidth.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MeasureError {
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Nothing moved in the window.
    #[error("no bytes moved {0} during the measurement window")]
    Nothing(&'static str),
}

/// Measures latency, then download, then upload against the hub. The transfers are signed
/// as the device: the hub serves them to registered devices only.
pub(crate) async fn bandwidth(
    hub: &HubClient,
    identity: &Arc<Identity>,
    config: &BandwidthConfig,
    clock: &dyn Clock,
) -> Result<Bandwidth, MeasureError> {
    let rtt_ms = pings(hub).await?;
    let (latency_ms, jitter_ms) = latency_and_jitter(&rtt_ms);
    let signer = Signer {
        identity: identity.clone(),
        now_ms: clock.unix_ms(),
    };
    let down = transfer(hub, &signer, config, Direction::Down).await?;
    let signer = Signer {
        now_ms: clock.unix_ms(),
        ..signer
    };
    let up = transfer(hub, &signer, config, Direction::Up).await?;
    Ok(Bandwidth {
        method: "https-multistream".into(),
        server: hub.url(""),
        streams: config.streams,
        down_mbps: down.mbps,
        up_mbps: up.mbps,
        latency_ms,
        jitter_ms,
        warmup_ms: down.warmup.min(up.warmup).as_millis() as u64,
        window_down_ms: down.window.as_millis() as u64,
        window_up_ms: up.window.as_millis() as u64,
        bytes_down: down.bytes,
        bytes_up: up.bytes,
        samples_down_mbps: down.samples,
        samples_up_mbps: up.samples,
        rtt_ms,
        measured_at_ms: clock.unix_ms(),
    })
}

async fn pings(hub: &HubClient) -> Result<Vec<f64>, MeasureError> {
    let url = hub.url(api::PING);
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let start = Instant::now();
        let response = hub.raw(hub.http().get(&url), &url).await?;
        let _ = read_capped(response, REPLY_LIMIT, &url).await;
        rtts.push(start.elapsed().as_secs_f64() * 1e3);
    }
    rtts.remove(0);
    Ok(rtts)
}

/// Median round trip, and the mean absolute difference of consecutive ones.
pub(crate) fn latency_and_jitter(rtts: &[f64]) -> (f64, f64) {
    if rtts.is_empty() {
        return (0.0, 0.0);
    }
    let mut sorted = rtts.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let jitter = if rtts.len() < 2 {
        0.0
    } else {
        rtts.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (rtts.len() - 1) as f64
    };
    (median, jitter)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Down,
    Up,
}

struct Transfer {
    mbps: f64,
    bytes: u64,
    warmup: Duration,
    window: Duration,
    samples: Vec<f64>,
}

/// Who signs a direction's streams, and the time they start from: stream `i` signs
/// `now_ms + i`, since the hub takes each signed time once per path.
#[derive(Clone)]
struct Signer {
    identity: Arc<Identity>,
    now_ms: u64,
}

impl Signer {
    fn sign(
        &self,
        hub: &HubClient,
        request: RequestBuilder,
        path: &str,
        stream: u32,
    ) -> RequestBuilder {
        hub.signed(
            request,
            &self.identity,
            path,
            self.now_ms + u64::from(stream),
        )
    }
}

/// One direction: start the streams, sample, stop at the deadline or the byte budget.
async fn transfer(
    hub: &HubClient,
    signer: &Signer,
    config: &BandwidthConfig,
    direction: Direction,
) -> Result<Transfer, MeasureError> {
    let moved = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let per_stream = (config.max_bytes / u64::from(config.streams)).max(CHUNK as u64);
    let mut streams = tokio::task::JoinSet::new();
    for stream in 0..config.streams {
        let (hub, signer) = (hub.clone(), signer.clone());
        let (moved, stop) = (moved.clone(), stop.clone());
        streams.spawn(async move {
            let sign = (&signer, stream);
            match direction {
                Direction::Down => download(&hub, sign, per_stream, &moved, &stop).await,
                Direction::Up => upload(&hub, sign, per_stream, &moved, &stop).await,
            }
        });
    }
    let start = Instant::now();
    let end = start + config.warmup + config.window;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + SAMPLE, SAMPLE);
    // (time since start, bytes so far), from the start.
    let mut points = vec![(Duration::ZERO, 0u64)];
    let mut finished = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            Some(done) = streams.join_next() => {
                finished += 1;
                if let Ok(Err(e)) = done {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e.into());
                }
                if finished < config.streams {
                    continue;
                }
            }
        }
        let now = Instant::now();
        points.push((now - start, moved.load(Ordering::Relaxed)));
        if now >= end || finished == config.streams {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    streams.abort_all();
    let what = match direction {
        Direction::Down => "down",
        Direction::Up => "up",
    };
    // The window starts at the first point after the warm-up; if the byte budget ran out
    // before that, the whole transfer is the window.
    let from = points
        .iter()
        .position(|&(t, _)| t >= config.warmup)
        .filter(|&i| i + 1 < points.len())
        .unwrap_or(0);
    let window_points = &points[from..];
    let (t0, b0) = window_points[0];
    let (t1, b1) = window_points[window_points.len() - 1];
    let window = t1.saturating_sub(t0);
    if b1 <= b0 || window.is_zero() {
        return Err(MeasureError::Nothing(what));
    }
    let samples = window_points
        .windows(2)
        .map(|w| mbps(w[1].1 - w[0].1, w[1].0 - w[0].0))
        .collect();
    Ok(Transfer {
        mbps: mbps(b1 - b0, window),
        bytes: b1,
        warmup: t0,
        window,
        samples,
    })
}

fn mbps(bytes: u64, over: Duration) -> f64 {
    if over.is_zero() {
        return 0.0;
    }
    bytes as f64 * 8.0 / over.as_secs_f64() / 1e6
}

async fn download(
    hub: &HubClient,
    (signer, stream): (&Signer, u32),
    bytes: u64,
    moved: &AtomicU64,
    stop: &AtomicBool,
) -> Result<(), HubError> {
    let url = format!("{}?bytes={bytes}", hub.url(api::DOWNLOAD));
    let unreachable = HubError::unreachable(&url);
    let response = hub
        .raw(
            signer.sign(hub, hub.http().get(&url), api::DOWNLOAD, stream),
            &url,
        )
        .await?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        moved.fetch_add(chunk.map_err(&unreachable)?.len() as u64, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(())
}

async fn upload(
    hub: &HubClient,
    (signer, stream): (&Signer, u32),
    bytes: u64,
    moved: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Result<(), HubError> {
    let url = hub.url(api::UPLOAD);
    let (counter, stop) = (moved.clone(), stop.clone());
    let chunks = futures_util::stream::unfold(bytes, move |left| {
        let (counter, stop) = (counter.clone(), stop.clone());
        async move {
            if left == 0 || stop.load(Ordering::Relaxed) {
                return None;
            }
            let n = left.min(CHUNK as u64);
            counter.fetch_add(n, Ordering::Relaxed);
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from_static(&ZEROS[..n as usize])),
                left - n,
            ))
        }
    });
    let request = hub
        .http()
        .post(&url)
        .body(reqwest::Body::wrap_stream(chunks));
    let request = signer.sign(hub, request, api::UPLOAD, stream);
    let response = hub.raw(request, &url).await?;
    let _ = read_capped(response, REPLY_LIMIT, &url).await;
    Ok(())
}

/// Asks every echo endpoint which address it sees, and compares with the interfaces' own.
pub(crate) async fn public_ip(
    hub: &HubClient,
    echo_urls: &[String],
    own: &[IpAddr],
    clock: &dyn Clock,
) -> IpReport {
    let answers = futures_util::future::join_all(echo_urls.iter().map(|url| hub.echo(url))).await;
    let observations: Vec<IpObservation> = echo_urls
        .iter()
        .zip(answers)
        .map(|(url, answer)| match answer {
            Ok(echo) => IpObservation {
                endpoint: url.clone(),
                ip: Some(echo.ip),
                error: None,
            },
            Err(e) => IpObservation {
                endpoint: url.clone(),
                ip: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    judge(observations, own, clock.unix_ms())
}

/// The verdict on a set of observations.
pub(crate) fn judge(observations: Vec<IpObservation>, own: &[IpAddr], now_ms: u64) -> IpReport {
    let seen: Vec<&str> = observations
        .iter()
        .filter_map(|o| o.ip.as_deref())
        .collect();
    let all_same = seen.windows(2).all(|w| w[0] == w[1]);
    let public_ip = seen.first().filter(|_| all_same).map(|s| s.to_string());
    let parsed = public_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok());
    IpReport {
        agree: seen.len() >= 2 && all_same,
        family: parsed.map(|ip| if ip.is_ipv4() { "ipv4" } else { "ipv6" }.to_owned()),
        behind_nat: parsed.map(|ip| !own.contains(&ip)),
        public_ip,
        observations,
        measured_at_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(endpoint: &str, ip: Option<&str>) -> IpObservation {
        IpObservation {
            endpoint: endpoint.into(),
            ip: ip.map(Into::into),
            error: ip.is_none().then(|| "refused".into()),
        }
    }

    #[test]
    fn latency_is_the_median_and_jitter_the_mean_step() {
        let (latency, jitter) = latency_and_jitter(&[1.0, 3.0, 2.0, 10.0]);
        assert_eq!(latency, 2.5);
        assert_eq!(jitter, (2.0 + 1.0 + 8.0) / 3.0);
        assert_eq!(latency_and_jitter(&[]), (0.0, 0.0));
    }

    #[test]
    fn two_agreeing_endpoints_give_an_address_and_its_nat_status() {
        let own: Vec<IpAddr> = vec!["192.168.1.20".parse().expect("ip")];
        let report = judge(
            vec![
                seen("a", Some("203.0.113.7")),
                seen("b", Some("203.0.113.7")),
            ],
            &own,
            1,
        );
        assert!(report.agree);
        assert_eq!(report.public_ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(report.family.as_deref(), Some("ipv4"));
        assert_eq!(report.behind_nat, Some(true));
        let direct = judge(
            vec![
                seen("a", Some("192.168.1.20")),
                seen("b", Some("192.168.1.20")),
            ],
            &own,
            1,
        );
        assert_eq!(direct.behind_nat, Some(false));
    }

    #[test]
    fn disagreement_or_a_single_answer_is_not_agreement() {
        let split = judge(
            vec![
                seen("a", Some("203.0.113.7")),
                seen("b", Some("198.51.100.1")),
            ],
            &[],
            1,
        );
        assert!(!split.agree);
        assert_eq!(split.public_ip, None);
        assert_eq!(split.behind_nat, None);
        let one = judge(
            vec![seen("a", Some("2001:db8::1")), seen("b", None)],
            &[],
            1,
        );
        assert!(!one.agree);
        assert_eq!(one.public_ip.as_deref(), Some("2001:db8::1"));
        assert_eq!(one.family.as_deref(), Some("ipv6"));
    }
}
