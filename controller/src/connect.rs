//! The controller's side of a control connection: dialling a star over QUIC with the controller
//! certificate, one control exchange (a request, events until a final one), and the frame
//! reading and writing on quinn streams.
//!
//! Every failure here names the star and says why in words, and carries the wire
//! [`ErrorCode`](orbit_wire::ErrorCode) that fits it. Waiting for a star to answer is bounded
//! ([`CONNECT_TIMEOUT`]); a running exchange is not, but a dead connection ends it within
//! [`MAX_IDLE_TIMEOUT`]. This module never carries file data.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use orbit_wire::{ControlEvent, ControlRequest};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};

use crate::spec::StarAddr;

mod error;
mod frame;

use error::{connect_failure, lost, seconds};
pub use error::{ConnectError, StreamError};
pub use frame::{read_frame, write_frame};

/// How long to wait for a star's address to resolve and for its handshake to complete.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to ping a star while waiting for a long replication, so the path stays open.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a connection may stay silent before it counts as lost.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest to wait, after closing, for the close packet to be sent.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes the controller put on and took off the wire for one connection: UDP payloads,
/// including QUIC and TLS overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// Bytes in UDP datagrams sent.
    pub sent: u64,
    /// Bytes in UDP datagrams received.
    pub received: u64,
}

/// Resolves a star's `HOST:PORT` to the first socket address it names.
///
/// # Errors
///
/// [`ConnectError::Resolve`] if the lookup fails, finds nothing or takes longer than
/// [`CONNECT_TIMEOUT`].
pub async fn resolve(star: &str, addr: &StarAddr) -> Result<SocketAddr, ConnectError> {
    let text = addr.to_string();
    let fail = |reason: String| ConnectError::Resolve {
        star: star.to_owned(),
        addr: text.clone(),
        reason,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(text.clone())).await {
        Err(_) => Err(fail("the name lookup timed out".into())),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Ok(Ok(mut addrs)) => addrs
            .next()
            .ok_or_else(|| fail("the name has no addresses".into())),
    }
}

/// An established connection from the controller to one star.
#[derive(Debug)]
pub struct StarConnection {
    star: String,
    addr: SocketAddr,
    /// Held for the connection's life; its driver sends and receives on the endpoint's socket.
    _endpoint: Endpoint,
    connection: quinn::Connection,
}

impl StarConnection {
    /// Dials the star `star` at `addr` with the controller's TLS configuration, checking that
    /// its certificate names `star`, and waits at most [`CONNECT_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`ConnectError`] saying whether the star was unreachable, failed the handshake or
    /// closed the connection.
    pub async fn connect(
        tls: Arc<rustls::ClientConfig>,
        star: &str,
        addr: SocketAddr,
    ) -> Result<StarConnection, ConnectError> {
        Self::connect_within(tls, star, addr, CONNECT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with another bound on the wait.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_within(
        tls: Arc<rustls::ClientConfig>,
        star: &str,
        addr: SocketAddr,
        wait: Duration,
    ) -> Result<StarConnection, ConnectError> {
        let local = |reason: String| ConnectError::Local {
            star: star.to_owned(),
            reason,
        };
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| local(format!("unusable tls configuration: {e}")))?;
        let mut transport = TransportConfig::default();
        // A control connection carries a few small frames: path MTU probes (up to 1,452-byte
        // datagrams) would be most of its bytes on the wire and buy nothing.
        transport
            .mtu_discovery_config(None)
            .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
            .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
                MAX_IDLE_TIMEOUT.as_millis() as u32,
            ))));
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));

        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        // QUIC's smallest datagrams: announced to the star as max_udp_payload_size, they stop its
        // path MTU probes toward us, which would otherwise be most of the bytes we receive.
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(1200)
            .map_err(|e| local(format!("unusable endpoint configuration: {e}")))?;
        let endpoint = std::net::UdpSocket::bind(bind)
            .and_then(|socket| {
                Endpoint::new(endpoint_config, None, socket, Arc::new(quinn::TokioRuntime))
            })
            .map_err(|e| local(format!("cannot open a udp socket on {bind}: {e}")))?;
        let unreachable = |reason: String| ConnectError::Unreachable {
            star: star.to_owned(),
            addr,
            reason,
        };
        let connecting = endpoint
            .connect_with(config, addr, star)
            .map_err(|e| unreachable(e.to_string()))?;
        let connection = tokio::select! {
            answer = tokio::time::timeout(wait, connecting) => match answer {
                Err(_) => return Err(unreachable(format!("no answer within {}", seconds(wait)))),
                Ok(Err(e)) => return Err(connect_failure(star, addr, &e)),
                Ok(Ok(connection)) => connection,
            },
            reason = unreachable_verdict(addr) => return Err(unreachable(reason)),
        };
        tracing::debug!(star, %addr, "connected");
        Ok(StarConnection {
            star: star.to_owned(),
            addr,
            _endpoint: endpoint,
            connection,
        })
    }

    /// The star's name.
    pub fn star(&self) -> &str {
        &self.star
    }

    /// The address dialled.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate the star presented in the handshake (the first of its chain), which
    /// rustls has verified: how `orbitctl` sees its expiry and which certificate it runs with.
    pub fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        self.connection
            .peer_identity()?
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?
            .into_iter()
            .next()
    }

    /// Sends `request` on a new control stream and reads events until a final one, which it
    /// returns. `on_progress(bytes, total)` sees every progress event on the way.
    ///
    /// Not bounded in time: it lasts as long as the star works, but ends with
    /// [`StreamError::ConnectionLost`] if the star stops answering for [`MAX_IDLE_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`StreamError`] if the stream or connection fails or ends without a final event.
    pub async fn control(
        &self,
        request: &ControlRequest,
        mut on_progress: impl FnMut(u64, u64),
    ) -> Result<ControlEvent, StreamError> {
        self.control_events(request, |event| {
            if let ControlEvent::Progress { bytes, total } = event {
                on_progress(*bytes, *total);
            }
        })
        .await
    }

    /// As [`control`](Self::control), but `on_event` sees every event that is not final
    /// (`Progress`, `Following`).
    ///
    /// # Errors
    ///
    /// As [`control`](Self::control).
    pub async fn control_events(
        &self,
        request: &ControlRequest,
        mut on_event: impl FnMut(&ControlEvent),
    ) -> Result<ControlEvent, StreamError> {
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(|e| lost(&e))?;
        write_frame(&mut send, request).await?;
        // Only fails if the stream is already finished or reset, which the write above rules out.
        let _ = send.finish();
        loop {
            match read_frame::<ControlEvent>(&mut recv).await? {
                None => return Err(StreamError::NoResult),
                Some(event) if !event.is_final() => on_event(&event),
                Some(event) => return Ok(event),
            }
        }
    }

    /// The bytes this connection has sent and received so far.
    pub fn wire_bytes(&self) -> WireBytes {
        let stats = self.connection.stats();
        WireBytes {
            sent: stats.udp_tx.bytes,
            received: stats.udp_rx.bytes,
        }
    }

    /// Closes the connection with code 0 and returns once the close has left this host (at most
    /// [`CLOSE_TIMEOUT`] later), so that the star frees the connection's place at once instead
    /// of after its idle timeout. It does not wait out QUIC's draining period, three probe
    /// timeouts (about 80 ms on loopback, 0.3 s at 50 ms RTT): a close is never acknowledged,
    /// so that wait would only delay the command's exit.
    pub async fn close(self) {
        if self.connection.close_reason().is_some() {
            return; // closed already, by the star or the network: nothing to send
        }
        let sent = self.connection.stats().udp_tx.datagrams;
        self.connection.close(VarInt::from_u32(0), b"done");
        // The connection's driver counts the close packet when it hands it to the socket.
        let on_the_wire = async {
            while self.connection.stats().udp_tx.datagrams == sent {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, on_the_wire)
            .await
            .is_err()
        {
            tracing::debug!(star = %self.star, "the close was not sent in time");
        }
    }
}

/// Completes only if the network says the star cannot be reached: the host reports that
/// nothing listens on the port (ICMP port unreachable, seen as `ECONNREFUSED` on a connected
/// UDP socket), or the host or network is unreachable. QUIC ignores such reports, so without
/// this a stopped star on a reachable host would cost the whole connect timeout. The probes are
/// empty datagrams, which a QUIC endpoint drops unread. When the network reports nothing, this
/// stays pending and the connect timeout decides. Returns the reason in words.
async fn unreachable_verdict(addr: SocketAddr) -> String {
    let probe = async {
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
        socket.connect(addr).await.ok()?;
        let mut buf = [0u8; 64];
        for wait_ms in [50, 200, 750] {
            let answer = match socket.send(&[]).await {
                Err(e) => Err(e),
                Ok(_) => {
                    let wait = Duration::from_millis(wait_ms);
                    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
                        Ok(result) => result.map(drop),
                        Err(_) => Ok(()),
                    }
                }
            };
            let Err(e) = answer else { continue };
            match e.kind() {
                ErrorKind::ConnectionRefused => {
                    return Some(format!(
                        "nothing listens on udp port {} (connection refused)",
                        addr.port()
                    ))
                }
                ErrorKind::HostUnreachable => return Some("the host is unreachable".into()),
                ErrorKind::NetworkUnreachable => return Some("the network is unreachable".into()),
                _ => {}
            }
        }
        None
    };
    match probe.await {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use orbit_certs::{GridCa, Role};
    use orbit_wire::{ErrorCode, StarStatus, WireError};

    use super::*;
    use crate::fake_star::{controller_tls, FakeStar};

    #[tokio::test]
    async fn a_silent_port_is_unreachable_within_the_bound() {
        let ca = GridCa::generate("t").unwrap();
        // Bound but never answering: no ICMP, no handshake.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let started = std::time::Instant::now();
        let err = StarConnection::connect_within(
            controller_tls(&ca),
            "star-b",
            addr,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert_eq!(
            err.to_string(),
            format!("star-b unreachable at {addr}: no answer within 0.3 s: is orbit-star running there?")
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_at_once() {
        let ca = GridCa::generate("t").unwrap();
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let started = std::time::Instant::now();
        let err = StarConnection::connect(controller_tls(&ca), "star-b", port)
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert_eq!(
            err.to_string(),
            format!(
                "star-b unreachable at {port}: nothing listens on udp port {} (connection \
                 refused): is orbit-star running there?",
                port.port()
            )
        );
    }

    #[tokio::test]
    async fn a_star_of_another_grid_fails_the_handshake() {
        let star = FakeStar::spawn("star-b", |_| vec![]).await;
        let other = GridCa::generate("other").unwrap();
        let err = StarConnection::connect(controller_tls(&other), "star-b", star.addr)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Handshake { .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        assert!(err.to_string().starts_with("star-b at "), "{err}");

        // The right grid, but the wrong star at that address.
        let err = StarConnection::connect(star.controller_tls(), "star-c", star.addr)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Handshake { .. }), "{err}");
        assert!(err.to_string().contains("star-c"), "{err}");
    }

    #[tokio::test]
    async fn a_controller_of_another_grid_is_refused() {
        let star = FakeStar::spawn("star-b", |_| {
            vec![ControlEvent::Progress { bytes: 0, total: 0 }]
        })
        .await;
        let other = GridCa::generate("other").unwrap();
        let issued = other.issue(Role::Controller, "orbitctl").unwrap();
        let tls = orbit_certs::client_config(
            &star.ca.cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
            orbit_wire::ALPN,
        )
        .unwrap();
        // In TLS 1.3 the client may finish its side before the server has judged the client's
        // certificate, so the refusal shows on the handshake or on the first exchange.
        let code = match StarConnection::connect(Arc::new(tls), "star-b", star.addr).await {
            Err(e) => {
                assert!(matches!(e, ConnectError::Handshake { .. }), "{e}");
                e.code()
            }
            Ok(conn) => {
                let e = conn
                    .control(&ControlRequest::Status, |_, _| {})
                    .await
                    .unwrap_err();
                assert!(
                    e.to_string()
                        .contains("refused the controller's certificate"),
                    "{e}"
                );
                e.code()
            }
        };
        assert_eq!(code, ErrorCode::PermissionDenied);
    }

    #[tokio::test]
    async fn a_control_exchange_returns_the_final_event() {
        let status = StarStatus {
            name: "star-b".into(),
            version: "0.1.0".into(),
            protocol: 1,
            uptime_seconds: 9,
            roots: vec!["/r".into()],
            transfers_in_flight: 0,
            reads_in_flight: 0,
            transfers: vec![],
        };
        let answer = status.clone();
        let mut star = FakeStar::spawn("star-b", move |_| {
            vec![
                ControlEvent::Progress { bytes: 1, total: 2 },
                ControlEvent::Status(answer.clone()),
            ]
        })
        .await;
        let conn = StarConnection::connect(star.controller_tls(), "star-b", star.addr)
            .await
            .unwrap();
        let mut progress = vec![];
        let event = conn
            .control(&ControlRequest::Status, |b, t| progress.push((b, t)))
            .await
            .unwrap();
        assert_eq!(event, ControlEvent::Status(status));
        assert_eq!(progress, [(1, 2)]);
        assert_eq!(star.requests.recv().await, Some(ControlRequest::Status));
        let bytes = conn.wire_bytes();
        assert!(bytes.sent > 0 && bytes.received > 0);
        conn.close().await;
    }

    #[tokio::test]
    async fn a_stream_without_a_result_is_an_error() {
        let star = FakeStar::spawn("star-b", |_| vec![]).await;
        let conn = StarConnection::connect(star.controller_tls(), "star-b", star.addr)
            .await
            .unwrap();
        let err = conn
            .control(&ControlRequest::Status, |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, StreamError::NoResult), "{err}");

        // A final failure is a result, not a stream error.
        let failed = ControlEvent::Failed(WireError::new(ErrorCode::NotFound, "x"));
        let answer = failed.clone();
        let star = FakeStar::spawn("star-b", move |_| vec![answer.clone()]).await;
        let conn = StarConnection::connect(star.controller_tls(), "star-b", star.addr)
            .await
            .unwrap();
        let event = conn
            .control(&ControlRequest::Status, |_, _| {})
            .await
            .unwrap();
        assert_eq!(event, failed);
    }
}
