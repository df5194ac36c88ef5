//! The star's handle: [`Star::spawn`] binds the one QUIC endpoint, accepts connections and routes
//! their streams; [`Star::shutdown`] stops it in order: stop accepting, cancel every task, close
//! the endpoint with a code, wait for the peers to see it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, TransportConfig};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use orbit_certs::{PeerIdentity, Role};
use orbit_wire::token::{KeyRing, TokenKey};
use orbit_wire::ErrorCode;

use crate::error::varint;
use crate::jail::Jail;
use crate::limits::{CongestionControl, LimitError, Limits};
use crate::metrics::Metrics;
use crate::pool::Pool;

/// Keep-alive interval, well inside the idle timeout (a third of it, when that is shorter).
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long shutdown waits for tasks to wind down before closing the endpoint regardless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Star::shutdown`] lets transfers in flight finish before it stops them (in a
/// resumable state when the star keeps a journal).
pub const TRANSFER_DRAIN: Duration = Duration::from_secs(10);
/// The largest UDP payload path MTU discovery may reach: a 9,000-byte jumbo frame less IPv6 and
/// UDP headers. Paths that carry only 1,500 bytes stay at quinn's 1,452 after failed probes;
/// loopback and jumbo-frame networks get fewer, larger packets.
pub(crate) const MAX_UDP_PAYLOAD: u16 = 9000 - 48;

/// Everything a star needs to run, already read from files and flags. `Debug` never prints the
/// private key or the token keys.
#[derive(Clone)]
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
    /// The token key before the last rotation, still accepted until the next one.
    pub previous_token_key: Option<TokenKey>,
    /// The grid's certificate revocation list, PEM: certificates it lists never complete a
    /// handshake with this star.
    pub crl_pem: Option<String>,
    /// Directories it serves from but never stores into (`--allow-read`).
    pub read_only_roots: Vec<PathBuf>,
    /// Caps on what peers may make it hold.
    pub limits: Limits,
}

impl std::fmt::Debug for StarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StarConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("key_pem", &"***")
            .field("token_key", &self.token_key)
            .field("previous_token_key", &self.previous_token_key)
            .field("roots", &self.roots)
            .field("state_dir", &self.state_dir)
            .field("crl", &self.crl_pem.is_some())
            .field("read_only_roots", &self.read_only_roots)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
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
    #[error("no allowed roots: give at least one directory with --allow DIR or --allow-read DIR")]
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
    /// A limit is out of range.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// What every task of a star shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    /// The token keys this star accepts; replaced on reload.
    pub(crate) keys: RwLock<KeyRing>,
    /// How this star dials other stars; replaced on reload.
    pub(crate) client_config: RwLock<quinn::ClientConfig>,
    /// Incoming connections that completed their handshake, by stable id, so that a reload can
    /// close those whose certificate is now revoked.
    pub(crate) conns: Mutex<HashMap<usize, Connection>>,
    pub(crate) jail: Jail,
    pub(crate) endpoint: Endpoint,
    pub(crate) pool: Pool,
    pub(crate) started: Instant,
    pub(crate) transfers_in_flight: AtomicU32,
    pub(crate) reads_in_flight: AtomicU32,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) limits: Limits,
    /// Room for replications as a destination; a permit is taken without waiting.
    pub(crate) transfer_slots: Arc<Semaphore>,
    /// Room for reads served as a source.
    pub(crate) read_slots: Arc<Semaphore>,
    /// Open incoming connections by peer identity.
    peer_conns: Mutex<HashMap<String, u32>>,
    pub(crate) metrics: Arc<Metrics>,
    /// The journal of replications in flight, when the star has a state directory.
    pub(crate) journal: Option<crate::journal::Journal>,
    /// Targets being written now (see `pull::Claim`).
    pub(crate) targets: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Cancelled when shutdown begins: new commands and reads are refused with `Unavailable`,
    /// those in flight may finish.
    pub(crate) draining: CancellationToken,
    pub(crate) transfers: crate::transfers::Transfers,
    /// SHA-256 of whole files served, so that an unchanged file is not hashed again.
    pub(crate) digests: crate::digests::Digests,
}

/// A running star.
#[derive(Debug)]
pub struct Star {
    pub(crate) shared: Arc<Shared>,
    pub(crate) addr: SocketAddr,
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
        if config.roots.is_empty() && config.read_only_roots.is_empty() {
            return Err(SpawnError::NoRoots);
        }
        config.limits.validate()?;
        let jail = Jail::open(&config.roots, &config.read_only_roots).map_err(SpawnError::Root)?;
        let journal = match &config.state_dir {
            Some(path) => {
                let state_dir = |error| SpawnError::StateDir {
                    path: path.clone(),
                    error,
                };
                std::fs::create_dir_all(path).map_err(state_dir)?;
                Some(crate::journal::Journal::open(path).map_err(state_dir)?)
            }
            None => None,
        };

        let crl = revocation_list(&config)?;
        let (server, client) = quic_configs(&config, crl.as_ref())?;

        let runtime = Arc::new(quinn::TokioRuntime);
        let socket =
            crate::udp::bind(config.listen, &*runtime).map_err(|error| SpawnError::Bind {
                addr: config.listen,
                error,
            })?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(MAX_UDP_PAYLOAD)
            .expect("9 KB is a valid UDP payload size");
        let mut endpoint =
            Endpoint::new_with_abstract_socket(endpoint_config, Some(server), socket, runtime)
                .map_err(|error| SpawnError::Bind {
                    addr: config.listen,
                    error,
                })?;
        endpoint.set_default_client_config(client.clone());
        let addr = endpoint.local_addr().map_err(|error| SpawnError::Bind {
            addr: config.listen,
            error,
        })?;

        let shared = Arc::new(Shared {
            name: config.name,
            keys: RwLock::new(KeyRing::new(config.token_key, config.previous_token_key)),
            client_config: RwLock::new(client),
            conns: Mutex::default(),
            jail,
            endpoint,
            pool: Pool::default(),
            started: Instant::now(),
            transfers_in_flight: AtomicU32::new(0),
            reads_in_flight: AtomicU32::new(0),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            limits: config.limits,
            transfer_slots: Arc::new(Semaphore::new(config.limits.max_transfers as usize)),
            read_slots: Arc::new(Semaphore::new(config.limits.max_transfers as usize)),
            peer_conns: Mutex::new(HashMap::new()),
            metrics: Arc::default(),
            journal,
            targets: Default::default(),
            draining: CancellationToken::new(),
            transfers: Default::default(),
            digests: Default::default(),
        });
        let span = tracing::info_span!("star", star = %shared.name);
        shared
            .tracker
            .spawn(accept_loop(shared.clone()).instrument(span.clone()));
        span.in_scope(|| {
            crate::reload::log_keys(&shared, crl.as_ref());
            info!("listening on {addr}");
            crate::control::resume_journaled(&shared);
        });
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

    /// Applies the token keys, certificates and revocation list of `config` to the running
    /// star, then closes every open connection whose peer certificate the new list revokes.
    /// Name, address and roots cannot change this way. On error nothing changes.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] if the new certificates, key or list cannot be used.
    pub async fn reload(&self, config: &StarConfig) -> Result<crate::Reloaded, SpawnError> {
        crate::reload::reload(&self.shared, config).await
    }

    /// Stops gracefully: new commands and reads are refused with `Unavailable`, transfers in
    /// flight get [`TRANSFER_DRAIN`] to finish; then as [`Star::shutdown_with_drain`].
    pub async fn shutdown(self) {
        self.shutdown_with_drain(TRANSFER_DRAIN).await;
    }

    /// Refuses new commands and reads with `Unavailable`, waits at most `drain` for transfers in
    /// flight to finish, then cancels the rest (a replication with a journal keeps its temporary
    /// file to resume on the next start; without one the file is removed, and controllers are
    /// told `Unavailable`), closes the endpoint and waits until peers have been told.
    pub async fn shutdown_with_drain(self, drain: Duration) {
        use std::sync::atomic::Ordering;
        let shared = self.shared;
        info!(name = %shared.name, "shutting down");
        shared.draining.cancel();
        let busy = || {
            shared.transfers_in_flight.load(Ordering::Relaxed) > 0
                || shared.reads_in_flight.load(Ordering::Relaxed) > 0
        };
        let deadline = Instant::now() + drain;
        if busy() && !drain.is_zero() {
            info!(name = %shared.name, "letting transfers in flight finish, for at most {drain:?}");
        }
        // A short poll: the counters are plain atomics shared with the hot paths.
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20).min(deadline - Instant::now())).await;
        }
        if busy() {
            warn!(name = %shared.name, "stopping the transfers still in flight");
        }
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

/// The revocation list of `config`, checked to come from its CA.
pub(crate) fn revocation_list(
    config: &StarConfig,
) -> Result<Option<orbit_certs::RevocationList>, SpawnError> {
    config
        .crl_pem
        .as_deref()
        .map(|pem| orbit_certs::RevocationList::from_pem(pem, &config.ca_pem))
        .transpose()
        .map_err(SpawnError::Tls)
}

/// The QUIC server and client configurations for `config`'s certificates and `crl`.
pub(crate) fn quic_configs(
    config: &StarConfig,
    crl: Option<&orbit_certs::RevocationList>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), SpawnError> {
    let transport = Arc::new(transport_config(&config.limits));
    let tls_server = orbit_certs::server_config_with_crl(
        &config.ca_pem,
        &config.cert_pem,
        &config.key_pem,
        orbit_wire::ALPN,
        crl,
    )?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(tls_server).map_err(|e| SpawnError::Quic(e.to_string()))?,
    ));
    server.transport_config(transport.clone());
    let tls_client = orbit_certs::client_config_with_crl(
        &config.ca_pem,
        &config.cert_pem,
        &config.key_pem,
        orbit_wire::ALPN,
        crl,
    )?;
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls_client).map_err(|e| SpawnError::Quic(e.to_string()))?,
    ));
    client.transport_config(transport);
    Ok((server, client))
}

pub(crate) fn check_certificate_names(config: &StarConfig) -> Result<(), SpawnError> {
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

/// A flow-control window as QUIC carries it; `Limits::validate` keeps it far below the cap.
fn window(bytes: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(bytes).unwrap_or(quinn::VarInt::MAX)
}

/// BBR by default rather than quinn's CUBIC: on a lossy long link (0.5% loss, 50 ms RTT)
/// loss-based control keeps the window near what Mathis' formula allows, a few Mbit/s.
fn congestion_controller(
    choice: CongestionControl,
) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
    match choice {
        CongestionControl::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        CongestionControl::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
    }
}

/// Windows sized for a fast link rather than quinn's defaults, keep-alives, an idle timeout, and
/// the cap on concurrent streams a peer may open.
pub(crate) fn transport_config(limits: &Limits) -> TransportConfig {
    let mut transport = TransportConfig::default();
    let streams = quinn::VarInt::from_u32(limits.max_streams_per_connection);
    transport
        .max_concurrent_bidi_streams(streams)
        .max_concurrent_uni_streams(streams)
        .stream_receive_window(window(limits.stream_window()))
        .receive_window(window(2 * limits.stream_window()))
        .send_window(2 * limits.stream_window())
        .mtu_discovery_config(Some({
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(MAX_UDP_PAYLOAD);
            mtu
        }))
        // Several packets per system call; crate::udp keeps a batch within one send's limit.
        .enable_segmentation_offload(true)
        .congestion_controller_factory(congestion_controller(limits.congestion_control))
        .keep_alive_interval(Some(KEEP_ALIVE.min(limits.idle_timeout / 3)))
        .max_idle_timeout(Some(
            limits
                .idle_timeout
                .try_into()
                .expect("Limits::validate checked the idle timeout"),
        ));
    transport
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
    let handshake = shared.limits.handshake_timeout;
    let conn = match tokio::time::timeout(handshake, async { incoming.await }).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            shared.metrics.inbound_handshakes_failed.inc();
            return debug!("handshake failed: {e}");
        }
        Err(_) => {
            shared.metrics.inbound_handshakes_failed.inc();
            return debug!("handshake timed out");
        }
    };
    let peer = match peer_of(&conn) {
        Ok(peer) if crate::notify::is_self_check(&shared, &peer, &conn) => {
            // The watchdog's self-check (see notify.rs): the handshake was the whole test.
            conn.close(0u32.into(), b"self-check done");
            return;
        }
        Ok(peer) => peer,
        Err(reason) => {
            shared.metrics.inbound_handshakes_failed.inc();
            warn!("refused a connection: {reason}");
            conn.close(varint(ErrorCode::Unauthenticated), reason.as_bytes());
            return;
        }
    };
    let Some(_slot) = PeerSlot::take(&shared, &peer) else {
        let (max, key) = connection_cap(&shared.limits, &peer);
        warn!(%peer, "refused a connection: already {max} open from this peer ({key})");
        let reason = format!("{peer} already has {max} connections open to this star");
        conn.close(varint(ErrorCode::ResourceExhausted), reason.as_bytes());
        return;
    };
    debug!(%peer, "connected");
    let id = conn.stable_id();
    shared
        .conns
        .lock()
        .expect("conns lock")
        .insert(id, conn.clone());
    let _registered = crate::reload::Registered {
        shared: &shared,
        id,
    };
    shared.metrics.inbound_handshakes_ok.inc();
    let _open = shared.metrics.inbound_connections.track();
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
                    let span = tracing::info_span!("read", transfer_id = tracing::field::Empty);
                    shared.tracker.spawn(task.instrument(span));
                }
                Err(e) => { debug!(%peer, "connection ended: {e}"); break; }
            },
        }
    }
}

/// How many connections `peer` may hold open to this star at once, and the settings that say so.
/// A star pools its connections, so `max_connections_per_peer` suits it. Every `orbitctl` command
/// opens its own connection, and a script may run many at once (16 replications in parallel, say),
/// so the controller may hold one per transfer (`max_transfers`) and `max_connections_per_peer`
/// more for `status`, `wait` and `cancel` beside them.
fn connection_cap(limits: &Limits, peer: &PeerIdentity) -> (u32, &'static str) {
    match peer.role {
        Role::Star => (limits.max_connections_per_peer, "max_connections_per_peer"),
        Role::Controller => (
            limits
                .max_transfers
                .saturating_add(limits.max_connections_per_peer),
            "max_transfers + max_connections_per_peer",
        ),
    }
}

/// One incoming connection counted against its peer's cap (see [`connection_cap`]) while it
/// lives.
struct PeerSlot<'a> {
    shared: &'a Shared,
    key: String,
}

impl<'a> PeerSlot<'a> {
    fn take(shared: &'a Shared, peer: &PeerIdentity) -> Option<PeerSlot<'a>> {
        let key = peer.to_string();
        let mut conns = shared.peer_conns.lock().expect("peer_conns lock");
        let open = conns.entry(key.clone()).or_insert(0);
        if *open >= connection_cap(&shared.limits, peer).0 {
            return None;
        }
        *open += 1;
        Some(PeerSlot { shared, key })
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut conns = self.shared.peer_conns.lock().expect("peer_conns lock");
        if let Some(open) = conns.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                conns.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_congestion_setting_picks_the_controller() {
        let build = |choice| congestion_controller(choice).build(std::time::Instant::now(), 1200);
        let bbr = build(CongestionControl::Bbr).into_any();
        assert!(bbr.downcast::<quinn::congestion::Bbr>().is_ok());
        let cubic = build(CongestionControl::Cubic).into_any();
        assert!(cubic.downcast::<quinn::congestion::Cubic>().is_ok());
        assert_eq!(Limits::default().congestion_control, CongestionControl::Bbr);
    }
}
