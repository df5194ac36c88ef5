//! Incoming connections: the accept loop, the handshake and its checks (who the peer is, how
//! many connections it holds), and the routing of each stream to its handler: bidirectional
//! streams carry controller commands ([`crate::control`]), unidirectional ones read requests
//! from other stars ([`crate::serve`]).
//!
//! Every open connection is in [`Connections`], one record counted per peer and kept by id, so
//! that a reload can close those whose certificate is now revoked.
//!
//! Under a flood of handshakes (more than [`VALIDATE_ABOVE`] in progress), a client must first
//! show that it receives at its address: it gets a QUIC Retry, and only a second Initial with
//! the token from it starts a handshake. An honest client does that in one more round trip; a
//! spoofed source address cannot, and costs the star no handshake state or TLS work.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use quinn::{Connection, Endpoint};
use tracing::{debug, warn, Instrument};

use orbit_certs::{PeerIdentity, Role};
use orbit_wire::ErrorCode;

use crate::control::Commands;
use crate::error::varint;
use crate::lifecycle::Lifecycle;
use crate::limits::Limits;
use crate::metrics::{Direction, Metrics};
use crate::serve::Server;
use crate::trust::peer_of;

/// Every open incoming connection, by stable id, and how many each peer holds.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    inner: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    by_id: HashMap<usize, Connection>,
    per_peer: HashMap<String, u32>,
}

/// One connection in [`Connections`] while it lives.
struct Registered<'a> {
    connections: &'a Connections,
    id: usize,
    peer: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.by_id.remove(&self.id);
        if let Some(n) = open.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `conn` from `peer` unless the peer holds `max` already.
    fn register(&self, conn: &Connection, peer: &PeerIdentity, max: u32) -> Option<Registered<'_>> {
        let key = peer.to_string();
        let mut open = self.lock();
        let n = open.per_peer.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        let id = conn.stable_id();
        open.by_id.insert(id, conn.clone());
        Some(Registered {
            connections: self,
            id,
            peer: key,
        })
    }

    /// Closes every open connection `revoked` picks, and returns how many.
    pub(crate) fn close_where(&self, revoked: impl Fn(&Connection) -> bool) -> usize {
        let picked: Vec<Connection> = self
            .lock()
            .by_id
            .values()
            .filter(|conn| revoked(conn))
            .cloned()
            .collect();
        for conn in &picked {
            warn!(
                remote = %conn.remote_address(),
                "closing a connection: its peer's certificate is now revoked"
            );
            conn.close(varint(ErrorCode::PermissionDenied), b"certificate revoked");
        }
        picked.len()
    }
}

/// Handshakes in progress above which a client whose address is not yet validated gets a Retry.
/// A grid of a few dozen stars reconnecting at once stays under it; a flood of Initials from
/// spoofed addresses does not.
pub(crate) const VALIDATE_ABOVE: usize = 32;

/// One handshake counted in progress while it lives.
struct Handshaking<'a>(&'a AtomicUsize);

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What accepting connections uses.
#[derive(Debug)]
pub(crate) struct Acceptor {
    pub(crate) name: String,
    pub(crate) endpoint: Endpoint,
    pub(crate) limits: Limits,
    pub(crate) connections: Arc<Connections>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) life: Lifecycle,
    pub(crate) commands: Arc<Commands>,
    pub(crate) server: Arc<Server>,
    /// Handshakes in progress.
    pub(crate) handshakes: AtomicUsize,
}

/// Accepts connections until the star stops.
pub(crate) async fn accept_loop(acceptor: Arc<Acceptor>) {
    loop {
        let incoming = tokio::select! {
            _ = acceptor.life.cancel.cancelled() => break,
            incoming = acceptor.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let remote = incoming.remote_address();
        let busy = acceptor.handshakes.load(Ordering::Relaxed) >= VALIDATE_ABOVE;
        if busy && incoming.may_retry() {
            debug!(%remote, "over {VALIDATE_ABOVE} handshakes in progress: asking for a Retry");
            let _ = incoming.retry();
            continue;
        }
        acceptor.handshakes.fetch_add(1, Ordering::Relaxed);
        let task = handle(acceptor.clone(), incoming);
        acceptor
            .life
            .tracker
            .spawn(task.instrument(tracing::info_span!("conn", %remote)));
    }
}

async fn handle(acceptor: Arc<Acceptor>, incoming: quinn::Incoming) {
    let metrics = &acceptor.metrics;
    let handshaking = Handshaking(&acceptor.handshakes);
    let handshake = acceptor.limits.handshake_timeout;
    let done = tokio::time::timeout(handshake, async { incoming.await }).await;
    drop(handshaking);
    let conn = match done {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            metrics.handshake(Direction::Inbound, false);
            return debug!("handshake failed: {e}");
        }
        Err(_) => {
            metrics.handshake(Direction::Inbound, false);
            return debug!("handshake timed out");
        }
    };
    let own = acceptor.endpoint.local_addr().ok();
    let peer = match peer_of(&conn) {
        Ok(peer) if is_self_check(&acceptor.name, own, &peer, conn.remote_address()) => {
            // The watchdog's self-check (see notify.rs): the handshake was the whole test.
            conn.close(0u32.into(), b"self-check done");
            return;
        }
        Ok(peer) => peer,
        Err(reason) => {
            metrics.handshake(Direction::Inbound, false);
            warn!("refused a connection: {reason}");
            conn.close(
                varint(ErrorCode::Unauthenticated),
                reason.to_string().as_bytes(),
            );
            return;
        }
    };
    let (max, key) = connection_cap(&acceptor.limits, &peer);
    let Some(_registered) = acceptor.connections.register(&conn, &peer, max) else {
        warn!(%peer, "refused a connection: already {max} open from this peer ({key})");
        let reason = format!("{peer} already has {max} connections open to this star");
        conn.close(varint(ErrorCode::ResourceExhausted), reason.as_bytes());
        return;
    };
    // Registered first, then checked: either a reload's scan finds this connection, or this
    // check sees the list that reload put in force.
    if acceptor.server.trust.revokes(&conn) {
        metrics.handshake(Direction::Inbound, false);
        warn!(%peer, "refused a connection: its certificate is revoked");
        conn.close(varint(ErrorCode::PermissionDenied), b"certificate revoked");
        return;
    }
    debug!(%peer, "connected");
    metrics.handshake(Direction::Inbound, true);
    let _open = metrics.connection_open(Direction::Inbound);
    let cancel = acceptor.life.cancel.child_token();
    let tracker = &acceptor.life.tracker;
    let sessions = Arc::new(crate::tree_serve::Sessions::default());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let task = crate::control::handle(acceptor.commands.clone(), sessions.clone(), peer.clone(), conn.clone(), send, recv);
                    tracker.spawn(task.in_current_span());
                }
                Err(e) => { debug!(%peer, "connection ended: {e}"); break; }
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let task = crate::serve::handle(acceptor.server.clone(), peer.clone(), conn.clone(), recv);
                    let span = tracing::info_span!("read", transfer_id = tracing::field::Empty);
                    tracker.spawn(task.instrument(span));
                }
                Err(e) => { debug!(%peer, "connection ended: {e}"); break; }
            },
        }
    }
}

/// Whether an accepted connection is star `name`'s own self-check: its own certificate, from its
/// own UDP socket `own`. A client elsewhere with this star's certificate (a test, say) is not.
fn is_self_check(
    name: &str,
    own: Option<SocketAddr>,
    peer: &PeerIdentity,
    remote: SocketAddr,
) -> bool {
    peer.role == Role::Star
        && peer.name == name
        && own.is_some_and(|own| {
            own.port() == remote.port()
                && (own.ip() == remote.ip()
                    || own.ip().is_unspecified() && remote.ip().is_loopback())
        })
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
