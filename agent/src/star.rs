//! The star's handle: [`Star::spawn`] binds the one QUIC endpoint, accepts connections and routes
//! their streams; [`Star::shutdown`] stops it in order: stop accepting, cancel every task, close
//! the endpoint with a code, wait for the peers to see it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, TransportConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use orbit_certs::{PeerIdentity, Role};
use orbit_wire::token::TokenKey;
use orbit_wire::ErrorCode;

use crate::error::varint;
use crate::jail::Jail;
use crate::pool::Pool;

/// How long a peer may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may be silent before it is dropped. Keep-alives keep live ones open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval, well inside the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long shutdown waits for tasks to wind down before closing the endpoint regardless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-stream receive window: enough for a fast LAN, and the bound on what one stream buffers.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Per-connection receive and send windows.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// UDP socket buffers; quinn's defaults drop packets at high rates.
const SOCKET_BUFFER: usize = 16 * 1024 * 1024;
/// The largest UDP payload path MTU discovery may reach: a 9,000-byte jumbo frame less IPv6 and
/// UDP headers. Paths that carry only 1,500 bytes stay at quinn's 1,452 after failed probes;
/// loopback and jumbo-frame networks get fewer, larger packets.
pub(crate) const MAX_UDP_PAYLOAD: u16 = 9000 - 48;

/// Everything a star needs to run, already read from files and flags.
#[derive(Debug, Clone)]
pub struct StarConfig {
    /// The star's name, as its certificate carries it.
    pub name: String,
    /// The UDP address to listen on; port 0 picks one.
    pub listen: SocketAddr,
    /// The grid CA certificate, PEM.
    pub ca_pem: String,
    /// This star's certificate, PEM.
    pub cert_pem: String,
    /// This star's private key, PEM.
    pub key_pem: String,
    /// This star's token key.
    pub token_key: TokenKey,
    /// Directories it serves from and stores into.
    pub roots: Vec<PathBuf>,
    /// Where it keeps its state; `None` keeps none.
    pub state_dir: Option<PathBuf>,
}

/// Why a star could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The name is not a valid star name.
    #[error("invalid star name: {0}")]
    Name(orbit_certs::CertError),
    /// The certificate does not name this star.
    #[error("the certificate is for {found}, not star {expected:?}")]
    WrongCertificate {
        /// The configured name.
        expected: String,
        /// What the certificate names.
        found: String,
    },
    /// No root to serve or store under.
    #[error("no allowed roots: give at least one directory with --allow DIR")]
    NoRoots,
    /// A root could not be opened.
    #[error("{0}")]
    Root(std::io::Error),
    /// The certificates or key could not be used.
    #[error("TLS configuration: {0}")]
    Tls(#[from] orbit_certs::CertError),
    /// The TLS configuration is not usable for QUIC.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The state directory could not be created.
    #[error("state directory {path}: {error}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// What every task of a star shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) token_key: TokenKey,
    pub(crate) jail: Jail,
    pub(crate) endpoint: Endpoint,
    pub(crate) pool: Pool,
    pub(crate) started: Instant,
    pub(crate) transfers_in_flight: AtomicU32,
    pub(crate) reads_in_flight: AtomicU32,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// A running star.
#[derive(Debug)]
pub struct Star {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Star {
    /// Opens the roots, binds the endpoint and starts accepting. Logs `listening on ADDR` once
    /// the endpoint is bound.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] naming what could not be used.
    pub async fn spawn(config: StarConfig) -> Result<Star, SpawnError> {
        orbit_certs::validate_name(&config.name).map_err(SpawnError::Name)?;
        check_certificate_names(&config)?;
        if config.roots.is_empty() {
            return Err(SpawnError::NoRoots);
        }
        let jail = Jail::open(&config.roots).map_err(SpawnError::Root)?;
        if let Some(path) = &config.state_dir {
            std::fs::create_dir_all(path).map_err(|error| SpawnError::StateDir {
                path: path.clone(),
                error,
            })?;
        }

        let transport = Arc::new(transport_config());
        let tls_server = orbit_certs::server_config(
            &config.ca_pem,
            &config.cert_pem,
            &config.key_pem,
            orbit_wire::ALPN,
        )?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(tls_server).map_err(|e| SpawnError::Quic(e.to_string()))?,
        ));
        server.transport_config(transport.clone());
        let tls_client = orbit_certs::client_config(
            &config.ca_pem,
            &config.cert_pem,
            &config.key_pem,
            orbit_wire::ALPN,
        )?;
        let mut client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls_client).map_err(|e| SpawnError::Quic(e.to_string()))?,
        ));
        client.transport_config(transport);

        let socket = bind_socket(config.listen).map_err(|error| SpawnError::Bind {
            addr: config.listen,
            error,
        })?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(MAX_UDP_PAYLOAD)
            .expect("9 KB is a valid UDP payload size");
        let mut endpoint = Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|error| SpawnError::Bind {
            addr: config.listen,
            error,
        })?;
        endpoint.set_default_client_config(client);
        let addr = endpoint.local_addr().map_err(|error| SpawnError::Bind {
            addr: config.listen,
            error,
        })?;

        let shared = Arc::new(Shared {
            name: config.name,
            token_key: config.token_key,
            jail,
            endpoint,
            pool: Pool::default(),
            started: Instant::now(),
            transfers_in_flight: AtomicU32::new(0),
            reads_in_flight: AtomicU32::new(0),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let span = tracing::info_span!("star", name = %shared.name);
        shared
            .tracker
            .spawn(accept_loop(shared.clone()).instrument(span.clone()));
        span.in_scope(|| info!("listening on {addr}"));
        Ok(Star { shared, addr })
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The star's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Stops accepting, cancels every transfer (temporary files are removed, controllers are told
    /// `Unavailable`), closes the endpoint and waits until peers have been told.
    pub async fn shutdown(self) {
        let shared = self.shared;
        info!(name = %shared.name, "shutting down");
        shared.cancel.cancel();
        shared.tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(name = %shared.name, "tasks did not stop within {DRAIN_TIMEOUT:?}; closing anyway");
        }
        shared
            .endpoint
            .close(varint(ErrorCode::Unavailable), b"star shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.endpoint.wait_idle()).await;
        info!(name = %shared.name, "stopped");
    }
}

fn check_certificate_names(config: &StarConfig) -> Result<(), SpawnError> {
    let certs = orbit_certs::load_certs(&config.cert_pem)?;
    let identity = orbit_certs::peer_identity(&certs[0])?;
    if identity.role != Role::Star || identity.name != config.name {
        return Err(SpawnError::WrongCertificate {
            expected: config.name.clone(),
            found: identity.to_string(),
        });
    }
    Ok(())
}

/// Windows sized for a fast link rather than quinn's defaults, keep-alives, and an idle timeout.
pub(crate) fn transport_config() -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(u64::from(CONNECTION_WINDOW))
        .mtu_discovery_config(Some({
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(MAX_UDP_PAYLOAD);
            mtu
        }))
        // With GSO on and 9 KB packets, transfers over loopback lost packets in bursts (no
        // socket buffer drops were counted), and black-hole detection then pinned the packet size
        // at 1,200 bytes for the connection's life. Without GSO: no losses, 8,952-byte packets.
        .enable_segmentation_offload(false)
        // BBR rather than quinn's default CUBIC: on a lossy long link (0.5% loss, 50 ms RTT)
        // loss-based control keeps the window near what Mathis' formula allows, a few Mbit/s.
        .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .expect("30 s is a valid idle timeout"),
        ));
    transport
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A receiver that falls behind for a few milliseconds overflows a small buffer, and the
    // losses make QUIC shrink its window and its packets. The kernel caps these sizes at
    // net.core.{r,w}mem_max unless the process may exceed them (CAP_NET_ADMIN); try that first.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if rustix::net::sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            incoming = shared.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let remote = incoming.remote_address();
        let task = handle_connection(shared.clone(), incoming);
        shared
            .tracker
            .spawn(task.instrument(tracing::info_span!("conn", %remote)));
    }
}

/// The verified identity of a connection's peer.
pub(crate) fn peer_of(conn: &Connection) -> Result<PeerIdentity, String> {
    let any = conn.peer_identity().ok_or("no client certificate")?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type")?;
    let leaf = certs.first().ok_or("empty certificate chain")?;
    orbit_certs::peer_identity(leaf).map_err(|e| e.to_string())
}

async fn handle_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, async { incoming.await }).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return debug!("handshake failed: {e}"),
        Err(_) => return debug!("handshake timed out"),
    };
    let peer = match peer_of(&conn) {
        Ok(peer) => peer,
        Err(reason) => {
            warn!("refused a connection: {reason}");
            conn.close(varint(ErrorCode::Unauthenticated), reason.as_bytes());
            return;
        }
    };
    debug!(%peer, "connected");
    let cancel = shared.cancel.child_token();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let task = crate::control::handle(shared.clone(), peer.clone(), conn.clone(), send, recv);
                    shared.tracker.spawn(task.in_current_span());
                }
                Err(e) => { debug!(%peer, "connection ended: {e}"); break; }
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let task = crate::serve::handle(shared.clone(), peer.clone(), conn.clone(), recv);
                    shared.tracker.spawn(task.in_current_span());
                }
                Err(e) => { debug!(%peer, "connection ended: {e}"); break; }
            },
        }
    }
}
