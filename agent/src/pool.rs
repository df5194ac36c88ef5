//! Outgoing connections to source stars, one per peer and *lane*, reused while they live. Lane 0
//! is the connection every pull shares; a pull that spreads one file over several connections
//! ([`super::replication`]'s pieces) asks for lanes 1, 2, ... besides, each its own QUIC
//! connection, so that their packet work and crypto run on different cores. Each connection has
//! a dispatcher that matches incoming data streams to the read requests waiting for them.
//!
//! A dial runs in a task of its own, outside the pool's lock: pulls from different sources never
//! wait for each other's dial (one unreachable source costs only its own pulls the
//! [`CONNECT_TIMEOUT`]), and pulls from the same unconnected source share one dial.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream};
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn, Instrument};

use orbit_certs::Role;
use orbit_wire::{DataFrame, ErrorCode, WANTS_MODE};

use crate::error::varint;
use crate::framed::{self, DataRead};
use crate::lifecycle::Lifecycle;
use crate::metrics::{Direction, Metrics};
use crate::trust::{peer_of, Trust};

/// How long dialling a source star may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a data stream may take to say which request it answers.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// A data stream and its first frame, which is a `Header` or an `Error`.
pub(crate) type DataStream = (DataFrame, RecvStream);

type Waiters = Mutex<HashMap<u64, oneshot::Sender<DataStream>>>;

/// One live connection to a source star.
#[derive(Debug)]
pub(crate) struct PeerConn {
    pub(crate) conn: Connection,
    waiters: Arc<Waiters>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

/// The data stream answering one read request, once it arrives. Dropping it forgets the request,
/// so that a stream arriving later is stopped rather than kept.
pub(crate) struct Expected {
    id: u64,
    rx: oneshot::Receiver<DataStream>,
    waiters: Arc<Waiters>,
}

impl Expected {
    /// The request id to send.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Future for Expected {
    /// The stream, or `None` when the connection's dispatcher is gone.
    type Output = Option<DataStream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.waiters.lock().expect("waiters lock").remove(&self.id);
    }
}

impl PeerConn {
    /// Counts `bytes` of file data received on this connection, as each chunk arrives.
    pub(crate) fn received(&self, bytes: u64) {
        self.metrics.received(bytes);
    }

    /// A fresh request id, and the future of the data stream that will answer it.
    pub(crate) fn expect_stream(&self) -> Expected {
        // Every read asks for the file's permission bits; a source of an earlier release echoes
        // the id all the same.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) | WANTS_MODE;
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters lock").insert(id, tx);
        Expected {
            id,
            rx,
            waiters: self.waiters.clone(),
        }
    }
}

/// Why a source star could not be dialled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum DialError {
    /// The address did not resolve, or nothing answered the handshake in time.
    #[error("cannot reach star {name} at {addr}: {why}")]
    Unreachable {
        /// The source's name.
        name: String,
        /// The address dialled.
        addr: String,
        /// Why.
        why: String,
    },
    /// The peer at the address did not prove it is that star.
    #[error("the peer at {addr} {why}")]
    NotThatStar {
        /// The address dialled.
        addr: String,
        /// What it proved instead.
        why: String,
    },
}

type Dialled = Option<Result<Arc<PeerConn>, DialError>>;

enum Entry {
    Live(Arc<PeerConn>),
    /// A dial in progress; its outcome arrives here.
    Dialling(watch::Receiver<Dialled>),
}

/// The star's outgoing connections, by peer name and lane ([`lane_key`]).
pub(crate) struct Pool {
    conns: Mutex<HashMap<String, Entry>>,
    endpoint: Endpoint,
    trust: Arc<Trust>,
    metrics: Arc<Metrics>,
    life: Lifecycle,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool dialling from `endpoint` with `trust`'s client configuration.
    pub(crate) fn new(
        endpoint: Endpoint,
        trust: Arc<Trust>,
        metrics: Arc<Metrics>,
        life: Lifecycle,
    ) -> Pool {
        Pool {
            conns: Mutex::default(),
            endpoint,
            trust,
            metrics,
            life,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection to star `name`, dialling `addr` if there is none, or joining the
    /// dial already under way. Cancel-safe: the dial goes on for whoever else waits for it.
    ///
    /// # Errors
    ///
    /// [`DialError::Unreachable`] when the star cannot be reached, [`DialError::NotThatStar`]
    /// when the peer there is not that star.
    pub(crate) async fn get(
        self: &Arc<Self>,
        name: &str,
        addr: &str,
    ) -> Result<Arc<PeerConn>, DialError> {
        self.get_lane(name, addr, 0).await
    }

    /// As [`Pool::get`], for connection `lane` to star `name`: lane 0 is the one [`Pool::get`]
    /// gives; every other lane is a connection of its own, dialled and kept apart.
    ///
    /// # Errors
    ///
    /// As [`Pool::get`].
    pub(crate) async fn get_lane(
        self: &Arc<Self>,
        name: &str,
        addr: &str,
        lane: usize,
    ) -> Result<Arc<PeerConn>, DialError> {
        let key = lane_key(name, lane);
        let mut outcome = {
            let mut conns = self.lock();
            match conns.get(&key) {
                Some(Entry::Live(peer)) if peer.conn.close_reason().is_none() => {
                    return Ok(peer.clone())
                }
                // A dial whose task is gone (it panicked) has no outcome to wait for: dial anew.
                Some(Entry::Dialling(outcome)) if outcome.has_changed().is_ok() => outcome.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    conns.insert(key.clone(), Entry::Dialling(rx.clone()));
                    let pool = self.clone();
                    let (name, addr) = (name.to_owned(), addr.to_owned());
                    let span = tracing::debug_span!("dial", peer = %name, lane);
                    self.life.tracker.spawn(
                        async move {
                            let mut result = pool.dial(&name, &addr).await.map(Arc::new);
                            pool.settle(&name, &key, &mut result);
                            tx.send_replace(Some(result));
                        }
                        .instrument(span),
                    );
                    rx
                }
            }
        };
        let dialled = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().expect("waited for Some"),
            Err(_) => Err(DialError::Unreachable {
                name: name.to_owned(),
                addr: addr.to_owned(),
                why: "the dial was abandoned".into(),
            }),
        };
        dialled
    }

    /// Puts a dial's outcome in the map: the connection, with its dispatcher; or nothing, so
    /// that the next pull dials again.
    fn settle(&self, name: &str, key: &str, result: &mut Result<Arc<PeerConn>, DialError>) {
        let mut conns = self.lock();
        // Checked under the pool's lock: either a reload's scan finds this connection in the
        // pool, or this check sees the list that reload put in force (see trust.rs).
        if let Ok(peer) = result {
            if self.trust.revokes(&peer.conn) {
                warn!(
                    peer = name,
                    "closing a new connection: its peer's certificate is revoked"
                );
                peer.conn
                    .close(varint(ErrorCode::PermissionDenied), b"certificate revoked");
                *result = Err(DialError::NotThatStar {
                    addr: peer.conn.remote_address().to_string(),
                    why: format!("presented a revoked certificate for star {name}"),
                });
            }
        }
        match result {
            Ok(peer) => {
                self.metrics.handshake(Direction::Outbound, true);
                let open = self.metrics.connection_open(Direction::Outbound);
                let dispatcher = dispatch(peer.clone(), self.life.clone());
                // The dispatcher lives as long as the connection; so does its count.
                let dispatcher = async move {
                    dispatcher.await;
                    drop(open);
                };
                self.life
                    .tracker
                    .spawn(dispatcher.instrument(tracing::debug_span!("dispatch", peer = name)));
                conns.insert(key.to_owned(), Entry::Live(peer.clone()));
            }
            Err(_) => {
                self.metrics.handshake(Direction::Outbound, false);
                conns.remove(key);
            }
        }
    }

    async fn dial(&self, name: &str, addr: &str) -> Result<PeerConn, DialError> {
        let unavailable = |why: String| DialError::Unreachable {
            name: name.to_owned(),
            addr: addr.to_owned(),
            why,
        };
        let target = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .next()
            .ok_or_else(|| unavailable("the address resolves to nothing".into()))?;
        let connecting = self
            .endpoint
            .connect_with(self.trust.client_config(), target, name)
            .map_err(|e| unavailable(e.to_string()))?;
        let conn = tokio::select! {
            _ = self.life.cancel.cancelled() => return Err(unavailable("this star is shutting down".into())),
            dialled = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => match dialled {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) if is_tls_failure(&e) => {
                    return Err(DialError::NotThatStar {
                        addr: addr.to_owned(),
                        why: format!("did not prove it is star {name}: {e}"),
                    })
                }
                Ok(Err(e)) => return Err(unavailable(e.to_string())),
                Err(_) => return Err(unavailable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
            },
        };
        // The TLS verifier checked the name against the certificate's DNS name; check the role too.
        match peer_of(&conn) {
            Ok(peer) if peer.role == Role::Star && peer.name == name => {}
            Ok(peer) => {
                conn.close(
                    varint(ErrorCode::PermissionDenied),
                    b"not the star that was dialled",
                );
                return Err(DialError::NotThatStar {
                    addr: addr.to_owned(),
                    why: format!("is {peer}, not star {name}"),
                });
            }
            Err(why) => return Err(unavailable(why.to_string())),
        }
        debug!(peer = name, %target, "connected to source");
        Ok(PeerConn {
            conn,
            waiters: Arc::default(),
            next_id: AtomicU64::new(1),
            metrics: self.metrics.clone(),
        })
    }

    /// Closes every pooled connection whose peer certificate `revoked` says is revoked, and
    /// returns how many it closed.
    pub(crate) fn close_where(&self, revoked: impl Fn(&Connection) -> bool) -> usize {
        let mut conns = self.lock();
        let before = conns.len();
        conns.retain(|_, entry| match entry {
            Entry::Live(peer) if revoked(&peer.conn) => {
                peer.conn
                    .close(varint(ErrorCode::PermissionDenied), b"certificate revoked");
                false
            }
            _ => true,
        });
        before - conns.len()
    }
}

/// The pool's key for connection `lane` to star `name`: the name itself for lane 0, and for
/// the others the name with `#lane`, which no star name holds.
fn lane_key(name: &str, lane: usize) -> String {
    match lane {
        0 => name.to_owned(),
        n => format!("{name}#{n}"),
    }
}

/// Whether a handshake failed on identity (a TLS alert, ours or the peer's) rather than on the
/// network. QUIC carries TLS alerts as transport error codes 0x100 to 0x1ff.
fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..0x200).contains(&u64::from(code))
}

/// Accepts data streams on an outgoing connection and hands each to the request it answers,
/// until the connection ends or the star shuts down.
async fn dispatch(peer: Arc<PeerConn>, life: Lifecycle) {
    let cancel = life.cancel.child_token();
    loop {
        let mut recv = tokio::select! {
            _ = cancel.cancelled() => break,
            stream = peer.conn.accept_uni() => match stream {
                Ok(recv) => recv,
                Err(_) => break,
            },
        };
        let waiters = peer.waiters.clone();
        life.tracker.spawn(async move {
            let first =
                tokio::time::timeout(FIRST_FRAME_TIMEOUT, framed::read_data_frame(&mut recv)).await;
            let id = match &first {
                Ok(Ok(DataRead::Frame(DataFrame::Header { request_id, .. })))
                | Ok(Ok(DataRead::Frame(DataFrame::Error { request_id, .. }))) => *request_id,
                _ => {
                    let _ = recv.stop(varint(ErrorCode::InvalidArgument));
                    return;
                }
            };
            let waiter = waiters.lock().expect("waiters lock").remove(&id);
            match (waiter, first) {
                (Some(tx), Ok(Ok(DataRead::Frame(frame)))) => {
                    let _ = tx.send((frame, recv));
                }
                _ => {
                    let _ = recv.stop(varint(ErrorCode::Cancelled));
                }
            }
        });
    }
}
