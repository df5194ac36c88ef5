//! The star's counters, and a tiny HTTP/1.1 server that serves them as Prometheus text at
//! `GET /metrics` (`--metrics-listen ADDR`).
//!
//! [`Metrics`] is a struct of atomics hung off the star; code anywhere counts with one line, e.g.
//! `metrics.token_errors.inc()`. Rendering reads them without locks. The server answers
//! one request per connection, reads at most [`MAX_REQUEST`] bytes within [`REQUEST_TIMEOUT`],
//! answers within [`ANSWER_TIMEOUT`], holds at most [`MAX_CONNECTIONS`] connections at once (more
//! wait in the kernel's backlog), pauses [`ACCEPT_BACKOFF`] when accepting fails (out of file
//! descriptors, say) rather than retrying at once, and never serves anything but the metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::lifecycle::Lifecycle;

/// The largest request head the metrics server reads.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole exchange may take, the answer included, whatever the client reads.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once: a scraper needs one; what is over waits in the listen backlog
/// and costs the star no file descriptor.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// The pause after a failed accept: when file descriptors run out, accept fails at once and for
/// as long as none is freed, and retrying at once would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Upper bounds of the transfer duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A counter that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one and returns a guard that subtracts it again when dropped.
    pub fn track(self: &Arc<Self>) -> GaugeGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self.clone())
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Holds one unit of a [`Gauge`] while it lives.
#[derive(Debug)]
pub struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A histogram of durations with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Every counter a star keeps. Names are those of the Prometheus output, without `orbit_p2p_`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Replications this star ran as the destination that ended verified and published.
    pub transfers_ok: Counter,
    /// Replications this star ran as the destination that failed.
    pub transfers_failed: Counter,
    /// Bytes of files this star received and published.
    pub bytes_received: Counter,
    /// Bytes of files this star sent to other stars (complete reads only).
    pub bytes_sent: Counter,
    /// How long replications took on the destination, successful or not.
    pub transfer_duration: Histogram,
    /// Read requests refused because of the token (MAC, expiry, audience, holder, path, range).
    pub token_errors: Counter,
    /// Read requests this star served in full.
    pub reads_ok: Counter,
    /// Read requests this star refused or could not finish.
    pub reads_failed: Counter,
    /// Handshakes completed with a peer that dialled this star.
    pub inbound_handshakes_ok: Counter,
    /// Handshakes with a peer that dialled this star that failed or were refused.
    pub inbound_handshakes_failed: Counter,
    /// Handshakes completed when this star dialled a source star.
    pub outbound_handshakes_ok: Counter,
    /// Handshakes that failed when this star dialled a source star.
    pub outbound_handshakes_failed: Counter,
    /// Open connections from peers.
    pub inbound_connections: Arc<Gauge>,
    /// Open connections to source stars.
    pub outbound_connections: Arc<Gauge>,
}

impl Metrics {
    /// Counts a finished replication on the destination.
    pub fn transfer_done(&self, ok: bool, bytes: u64, took: Duration) {
        if ok {
            self.transfers_ok.inc();
            self.bytes_received.add(bytes);
        } else {
            self.transfers_failed.inc();
        }
        self.transfer_duration.observe(took);
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub(crate) fn render(&self, transfers_in_flight: u32, reads_in_flight: u32) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP orbit_p2p_{name} {help}");
            let _ = writeln!(out, "# TYPE orbit_p2p_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "orbit_p2p_{name}{labels} {value}");
            }
        };
        let n = |c: &Counter| c.get().to_string();
        family(
            "transfers_total",
            "counter",
            "Replications run as the destination, by outcome.",
            &[
                ("{status=\"ok\"}", n(&self.transfers_ok)),
                ("{status=\"failed\"}", n(&self.transfers_failed)),
            ],
        );
        family(
            "bytes_transferred_total",
            "counter",
            "File bytes moved: received and published as the destination, sent as the source.",
            &[
                ("{direction=\"received\"}", n(&self.bytes_received)),
                ("{direction=\"sent\"}", n(&self.bytes_sent)),
            ],
        );
        let h = &self.transfer_duration;
        let mut buckets: Vec<(String, String)> = DURATION_BUCKETS
            .iter()
            .zip(&h.buckets)
            .map(|(bound, count)| {
                (
                    format!("_bucket{{le=\"{bound}\"}}"),
                    count.load(Ordering::Relaxed).to_string(),
                )
            })
            .collect();
        let count = h.count.load(Ordering::Relaxed).to_string();
        buckets.push(("_bucket{le=\"+Inf\"}".into(), count.clone()));
        buckets.push((
            "_sum".into(),
            (h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
        ));
        buckets.push(("_count".into(), count));
        let samples: Vec<(&str, String)> = buckets
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        family(
            "transfer_duration_seconds",
            "histogram",
            "How long replications took on the destination, successful or not.",
            &samples,
        );
        family(
            "token_verification_errors_total",
            "counter",
            "Read requests refused because of their token.",
            &[("", n(&self.token_errors))],
        );
        family(
            "transfers_in_flight",
            "gauge",
            "Replications in flight as the destination: running, or waiting for a slot.",
            &[("", transfers_in_flight.to_string())],
        );
        family(
            "reads_in_flight",
            "gauge",
            "Reads being served now, as the source.",
            &[("", reads_in_flight.to_string())],
        );
        family(
            "reads_total",
            "counter",
            "Read requests from other stars, by outcome.",
            &[
                ("{status=\"ok\"}", n(&self.reads_ok)),
                ("{status=\"failed\"}", n(&self.reads_failed)),
            ],
        );
        family(
            "handshakes_total",
            "counter",
            "QUIC handshakes, inbound (a peer dialled this star) and outbound, by outcome.",
            &[
                (
                    "{direction=\"inbound\",status=\"ok\"}",
                    n(&self.inbound_handshakes_ok),
                ),
                (
                    "{direction=\"inbound\",status=\"failed\"}",
                    n(&self.inbound_handshakes_failed),
                ),
                (
                    "{direction=\"outbound\",status=\"ok\"}",
                    n(&self.outbound_handshakes_ok),
                ),
                (
                    "{direction=\"outbound\",status=\"failed\"}",
                    n(&self.outbound_handshakes_failed),
                ),
            ],
        );
        family(
            "connections_open",
            "gauge",
            "Open QUIC connections, inbound and outbound.",
            &[
                (
                    "{direction=\"inbound\"}",
                    self.inbound_connections.get().to_string(),
                ),
                (
                    "{direction=\"outbound\"}",
                    self.outbound_connections.get().to_string(),
                ),
            ],
        );
        out
    }
}

/// Serves `GET /metrics` on `listener`, with what `render` gives, until the star stops.
pub(crate) async fn serve(
    listener: TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
    life: Lifecycle,
) {
    let render = Arc::new(render);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Said once per run of failures, not every pause.
    let mut failing = false;
    loop {
        // A slot first, then the connection: over the cap, clients wait in the backlog.
        let slot = tokio::select! {
            _ = life.cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = life.cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failing = false;
                    stream
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        warn!("metrics listener cannot accept: {e}; retrying every {ACCEPT_BACKOFF:?}");
                    }
                    tokio::select! {
                        _ = life.cancel.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let (render, cancel) = (render.clone(), life.cancel.clone());
        life.tracker.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = tokio::time::timeout(ANSWER_TIMEOUT, answer(&*render, stream)) => match r {
                    Ok(Err(e)) => debug!("metrics request: {e}"),
                    Err(_) => debug!("metrics request: no answer taken within {ANSWER_TIMEOUT:?}"),
                    Ok(Ok(())) => {}
                },
            }
        });
    }
}

async fn answer(
    render: &(dyn Fn() -> String + Send + Sync),
    mut stream: TcpStream,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_REQUEST {
                return Err(std::io::Error::other("incomplete or oversized request"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read_head)
        .await
        .map_err(|_| std::io::Error::other("request timed out"))??;
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", render()),
        (Some("GET"), _) => ("404 Not Found", "not found: try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_counts_cumulatively_and_sums() {
        let m = Metrics::default();
        m.transfer_done(true, 10, Duration::from_millis(30));
        m.transfer_done(false, 99, Duration::from_secs(3));
        let text = m.render(0, 0);
        assert!(
            text.contains("orbit_p2p_transfers_total{status=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("orbit_p2p_transfers_total{status=\"failed\"} 1\n"));
        assert!(text.contains("orbit_p2p_bytes_transferred_total{direction=\"received\"} 10\n"));
        assert!(text.contains("orbit_p2p_transfer_duration_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("orbit_p2p_transfer_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("orbit_p2p_transfer_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("orbit_p2p_transfer_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("orbit_p2p_transfer_duration_seconds_sum 3.03\n"));
        assert!(text.contains("orbit_p2p_transfer_duration_seconds_count 2\n"));
    }

    #[test]
    fn a_gauge_guard_gives_back_what_it_took() {
        let g = Arc::new(Gauge::default());
        let a = g.track();
        let b = g.track();
        assert_eq!(g.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(g.get(), 0);
    }
}
