//! The star's metrics, kept with `prometheus-client` (the Prometheus project's Rust client) and
//! served as Prometheus text at `GET /metrics` (`--metrics-listen ADDR`, see [`http`]).
//!
//! [`Metrics`] hangs off the star; code anywhere counts with one call, e.g.
//! `metrics.received(len)` as a chunk arrives. Bytes are counted as they cross the network, chunk
//! by chunk, so `rate()` over an hour-long transfer is steady rather than zero and then a spike;
//! failures carry their wire error code. Every series a star can have is there from the start,
//! at zero, so that `rate()` and `increase()` see the first event.
//!
//! The names, labels and meanings are listed in docs/OPERATIONS.md ("Metrics"); the alert rules
//! and the dashboard in `dist/` use them, and a test checks that every name they use is served.
//! Nothing here may ever carry a path, a token or a key: label values are fixed words, error code
//! names, certificate serial numbers and the build's version.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tracing::warn;

use orbit_wire::ErrorCode;

pub(crate) mod http;
mod process;

/// Upper bounds of the transfer duration histogram, in seconds: from 10 ms to a day, so that a
/// WAN copy of hours lands in a bucket of its own rather than in `+Inf`.
pub const DURATION_BUCKETS: [f64; 21] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
    1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];

/// Which way a connection or handshake went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A peer dialled this star.
    Inbound,
    /// This star dialled a peer.
    Outbound,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Which certificate a star holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Held {
    /// The star's own certificate, which it presents to peers.
    Star,
    /// A grid CA certificate, which it checks peers against.
    Ca,
}

/// `status="ok"`, or `status="failed",code="NotFound"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Outcome(Option<ErrorCode>);

impl EncodeLabelSet for Outcome {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        match self.0 {
            None => [("status", "ok")].encode(encoder),
            Some(code) => [("status", "failed"), ("code", code.name())].encode(encoder),
        }
    }
}

/// `direction="received"` or `"sent"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Moved(&'static str);

impl EncodeLabelSet for Moved {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        [("direction", self.0)].encode(encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Handshake {
    direction: Direction,
    ok: bool,
}

impl EncodeLabelSet for Handshake {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        let status = if self.ok { "ok" } else { "failed" };
        [("direction", self.direction.label()), ("status", status)].encode(encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Connections(Direction);

impl EncodeLabelSet for Connections {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        [("direction", self.0.label())].encode(encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Certificate {
    held: Held,
    /// The serial number, its DER bytes in hex: it tells a renewed certificate from the old.
    serial: String,
}

impl EncodeLabelSet for Certificate {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        let held = match self.held {
            Held::Star => "star",
            Held::Ca => "ca",
        };
        [("certificate", held), ("serial", self.serial.as_str())].encode(encoder)
    }
}

const RECEIVED: Moved = Moved("received");
const SENT: Moved = Moved("sent");

/// Every series a star keeps, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    transfers: Family<Outcome, Counter>,
    bytes: Family<Moved, Counter>,
    /// The family's two series, held to count each chunk without a lookup.
    received: Counter,
    sent: Counter,
    transfer_duration: Histogram,
    token_errors: Counter,
    transfers_in_flight: Gauge,
    reads_in_flight: Gauge,
    reads: Family<Outcome, Counter>,
    handshakes: Family<Handshake, Counter>,
    connections: Family<Connections, Gauge>,
    certificates: Family<Certificate, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every series at zero, `orbit_build_info`, and the process's own series read from
    /// `/proc/self` at each scrape.
    pub fn new() -> Metrics {
        let bytes = Family::<Moved, Counter>::default();
        let (received, sent) = (
            bytes.get_or_create_owned(&RECEIVED),
            bytes.get_or_create_owned(&SENT),
        );
        let m = Metrics {
            registry: Registry::default(),
            transfers: Family::default(),
            bytes,
            received,
            sent,
            transfer_duration: Histogram::new(DURATION_BUCKETS),
            token_errors: Counter::default(),
            transfers_in_flight: Gauge::default(),
            reads_in_flight: Gauge::default(),
            reads: Family::default(),
            handshakes: Family::default(),
            connections: Family::default(),
            certificates: Family::default(),
        };
        // Each series is created at zero: the guards returned are not needed.
        for outcome in std::iter::once(None).chain(ErrorCode::ALL.map(Some)) {
            let _ = m.transfers.get_or_create(&Outcome(outcome));
            let _ = m.reads.get_or_create(&Outcome(outcome));
        }
        for direction in [Direction::Inbound, Direction::Outbound] {
            for ok in [true, false] {
                let _ = m.handshakes.get_or_create(&Handshake { direction, ok });
            }
            let _ = m.connections.get_or_create(&Connections(direction));
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let alpn = String::from_utf8_lossy(orbit_wire::ALPN).into_owned();
        let build = Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("protocol", alpn),
        ]);
        let root = &mut self.registry;
        root.register(
            "orbit_build",
            "The star's version and wire protocol; always 1",
            build,
        );
        root.register_collector(Box::new(process::Process));
        let p2p = root.sub_registry_with_prefix("orbit_p2p");
        p2p.register(
            "transfers",
            "Replications run as the destination, by outcome and, when failed, by error code",
            self.transfers.clone(),
        );
        p2p.register(
            "bytes_transferred",
            "File bytes as they cross the network: received as the destination, sent as the \
             source or a relay, counted chunk by chunk, retries included",
            self.bytes.clone(),
        );
        p2p.register_with_unit(
            "transfer_duration",
            "How long replications took on the destination, successful or not",
            Unit::Seconds,
            self.transfer_duration.clone(),
        );
        p2p.register(
            "token_verification_errors",
            "Read requests refused because of their token",
            self.token_errors.clone(),
        );
        p2p.register(
            "transfers_in_flight",
            "Replications in flight as the destination: running, or waiting for a slot",
            self.transfers_in_flight.clone(),
        );
        p2p.register(
            "reads_in_flight",
            "Reads being served now, as the source",
            self.reads_in_flight.clone(),
        );
        p2p.register(
            "reads",
            "Read requests from other stars, by outcome and, when failed, by error code",
            self.reads.clone(),
        );
        p2p.register(
            "handshakes",
            "QUIC handshakes, inbound (a peer dialled this star) and outbound, by outcome",
            self.handshakes.clone(),
        );
        p2p.register(
            "connections_open",
            "Open QUIC connections, inbound and outbound",
            self.connections.clone(),
        );
        p2p.register_with_unit(
            "certificate_expiry_timestamp",
            "When each certificate the star holds expires (its notAfter), as Unix time",
            Unit::Seconds,
            self.certificates.clone(),
        );
        self
    }

    /// Counts a finished replication on the destination: `Err` with its wire code.
    pub(crate) fn transfer_done(&self, outcome: Result<(), ErrorCode>, took: Duration) {
        self.transfers.get_or_create(&Outcome(outcome.err())).inc();
        self.transfer_duration.observe(took.as_secs_f64());
    }

    /// Counts `bytes` of file data received from a source, as they arrive.
    pub(crate) fn received(&self, bytes: u64) {
        self.received.inc_by(bytes);
    }

    /// Counts `bytes` of file data handed to QUIC for a peer, as they go.
    pub(crate) fn sent(&self, bytes: u64) {
        self.sent.inc_by(bytes);
    }

    /// Counts a read request refused because of its token.
    pub(crate) fn token_error(&self) {
        self.token_errors.inc();
    }

    /// Counts `n` reads served in full.
    pub(crate) fn reads_ok(&self, n: u64) {
        self.reads.get_or_create(&Outcome(None)).inc_by(n);
    }

    /// Counts a read refused or not finished, with its wire code.
    pub(crate) fn read_failed(&self, code: ErrorCode) {
        self.reads.get_or_create(&Outcome(Some(code))).inc();
    }

    /// Counts a handshake.
    pub(crate) fn handshake(&self, direction: Direction, ok: bool) {
        self.handshakes
            .get_or_create(&Handshake { direction, ok })
            .inc();
    }

    /// Counts an open connection while the guard lives.
    pub(crate) fn connection_open(&self, direction: Direction) -> OpenConnection {
        let gauge = self
            .connections
            .get_or_create_owned(&Connections(direction));
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Records when the star's certificate (the first in `cert_pem`) and each CA certificate in
    /// `ca_pem` expire, replacing what was recorded before: at start and after each reload.
    /// A certificate that cannot be read is left out and logged; the star checked them already.
    pub(crate) fn set_certificates(&self, cert_pem: &str, ca_pem: &str) {
        // The star's own comes first in its file; what follows, if anything, is its chain.
        let star =
            orbit_certs::load_certs(cert_pem).map(|certs| certs.into_iter().take(1).collect());
        let held = [
            (Held::Star, star),
            (Held::Ca, orbit_certs::load_certs(ca_pem)),
        ];
        self.certificates.clear();
        for (role, certs) in held {
            let certs: Vec<_> = match certs {
                Ok(certs) => certs,
                Err(e) => {
                    warn!("cannot read a certificate for the expiry metric: {e}");
                    continue;
                }
            };
            for cert in &certs {
                let read = orbit_certs::serial_of(cert)
                    .and_then(|serial| Ok((serial, orbit_certs::not_after_of(cert)?)));
                let (serial, not_after) = match read {
                    Ok(read) => read,
                    Err(e) => {
                        warn!("cannot read a certificate for the expiry metric: {e}");
                        continue;
                    }
                };
                let seconds = not_after
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                let labels = Certificate {
                    held: role,
                    serial: hex::encode(serial),
                };
                self.certificates.get_or_create(&labels).set(seconds);
            }
        }
    }

    /// Prometheus text exposition format, version 0.0.4.
    ///
    /// Blocking: reads `/proc/self` for the process's series.
    pub(crate) fn render(&self, transfers_in_flight: u32, reads_in_flight: u32) -> String {
        self.transfers_in_flight.set(transfers_in_flight.into());
        self.reads_in_flight.set(reads_in_flight.into());
        let mut out = String::new();
        // Writing to a String cannot fail, nor can encoding the metrics kept here.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// File bytes received from sources so far.
    pub fn bytes_received(&self) -> u64 {
        self.received.get()
    }

    /// File bytes sent to peers so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.get()
    }

    /// Read requests refused because of their token so far.
    pub fn token_errors(&self) -> u64 {
        self.token_errors.get()
    }

    /// Handshakes in `direction` that succeeded (`ok`) or failed, so far.
    pub fn handshakes(&self, direction: Direction, ok: bool) -> u64 {
        self.handshakes
            .get_or_create(&Handshake { direction, ok })
            .get()
    }
}

/// Holds one open connection in `orbit_p2p_connections_open` while it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn the_histogram_counts_cumulatively_and_reaches_hours() {
        let m = Metrics::new();
        m.transfer_done(Ok(()), Duration::from_millis(30));
        m.transfer_done(Err(ErrorCode::NotFound), Duration::from_secs(3));
        m.transfer_done(Ok(()), Duration::from_secs(5400));
        let text = m.render(0, 0);
        let n = |series: &str| sample(&text, series);
        assert_eq!(n("orbit_p2p_transfers_total{status=\"ok\"}"), 2.0);
        assert_eq!(
            n("orbit_p2p_transfers_total{status=\"failed\",code=\"NotFound\"}"),
            1.0
        );
        assert_eq!(
            n("orbit_p2p_transfers_total{status=\"failed\",code=\"Internal\"}"),
            0.0
        );
        let bucket = |le: &str| {
            n(&format!(
                "orbit_p2p_transfer_duration_seconds_bucket{{le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.01"), 0.0);
        assert_eq!(bucket("0.05"), 1.0);
        assert_eq!(bucket("5"), 2.0);
        // An hour and a half: counted in the two-hour bucket, not only in +Inf.
        assert_eq!(bucket("3600"), 2.0);
        assert_eq!(bucket("7200"), 3.0);
        assert_eq!(bucket("+Inf"), 3.0);
        assert_eq!(n("orbit_p2p_transfer_duration_seconds_sum"), 5403.03);
        assert_eq!(n("orbit_p2p_transfer_duration_seconds_count"), 3.0);
    }

    #[test]
    fn bytes_count_as_they_move_and_failures_by_code() {
        let m = Metrics::new();
        m.received(65536);
        m.received(100);
        m.sent(7);
        m.reads_ok(2);
        m.read_failed(ErrorCode::PermissionDenied);
        let text = m.render(3, 1);
        let n = |series: &str| sample(&text, series);
        assert_eq!(
            n("orbit_p2p_bytes_transferred_total{direction=\"received\"}"),
            65636.0
        );
        assert_eq!(
            n("orbit_p2p_bytes_transferred_total{direction=\"sent\"}"),
            7.0
        );
        assert_eq!(n("orbit_p2p_reads_total{status=\"ok\"}"), 2.0);
        assert_eq!(
            n("orbit_p2p_reads_total{status=\"failed\",code=\"PermissionDenied\"}"),
            1.0
        );
        assert_eq!(n("orbit_p2p_transfers_in_flight"), 3.0);
        assert_eq!(n("orbit_p2p_reads_in_flight"), 1.0);
        assert_eq!((m.bytes_received(), m.bytes_sent()), (65636, 7));
    }

    #[test]
    fn build_info_names_the_version_and_the_protocol() {
        let text = Metrics::new().render(0, 0);
        let series = format!(
            "orbit_build_info{{version=\"{}\",protocol=\"orbit/1\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &series), 1.0);
    }

    #[test]
    fn a_connection_guard_gives_back_what_it_took() {
        let m = Metrics::new();
        let a = m.connection_open(Direction::Inbound);
        let b = m.connection_open(Direction::Inbound);
        let series = "orbit_p2p_connections_open{direction=\"inbound\"}";
        assert_eq!(sample(&m.render(0, 0), series), 2.0);
        drop(a);
        drop(b);
        assert_eq!(sample(&m.render(0, 0), series), 0.0);
    }

    #[test]
    fn certificate_expiry_follows_the_certificates_given_last() {
        let ca = orbit_certs::GridCa::generate("metrics").unwrap();
        let issue = |secs: u64| {
            let options = orbit_certs::IssueOptions {
                not_after: UNIX_EPOCH + Duration::from_secs(secs),
                ..Default::default()
            };
            ca.issue_with(orbit_certs::Role::Star, "star-a", &options)
                .unwrap()
                .cert_pem
        };
        let expiries = |m: &Metrics| -> Vec<String> {
            let name = "orbit_p2p_certificate_expiry_timestamp_seconds{certificate=";
            let text = m.render(0, 0);
            let mut found: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix(name))
                .map(|l| {
                    let (role, rest) = l.split_once(',').unwrap();
                    format!("{role} {}", rest.rsplit(' ').next().unwrap())
                })
                .collect();
            found.sort();
            found
        };
        let m = Metrics::new();
        m.set_certificates(&issue(2_000_000_000), &ca.cert_pem());
        let found = expiries(&m);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("\"ca\" "), "{found:?}");
        assert_eq!(found[1], "\"star\" 2000000000");
        // A renewed certificate replaces the old one's series.
        m.set_certificates(&issue(2_100_000_000), &ca.cert_pem());
        let found = expiries(&m);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1], "\"star\" 2100000000");
        // Unreadable PEM leaves the series out, and nothing panics.
        m.set_certificates("not a certificate", "");
        assert!(expiries(&m).is_empty());
    }
}
